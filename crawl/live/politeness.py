"""Per-host politeness: at most `concurrency` requests in flight per host and a minimum gap between the end
of one request and the start of the next. A host's gap can be raised (robots.txt Crawl-delay) and its next
slot pushed back (Retry-After, retry backoff), which then holds for every URL of that host.

Cluster-wide, `partition(host, n)` gives each host to exactly one actor, so one `HostPoliteness` sees all
requests to a host."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass
class _Host:
    sem: asyncio.Semaphore
    delay: float
    next_ok: float = 0.0  # monotonic time before which no request may start
    requests: int = 0
    starts: list[float] = field(default_factory=list)


class HostPoliteness:
    def __init__(self, min_delay_s: float, concurrency: int = 1):
        self.min_delay_s = min_delay_s
        self.concurrency = concurrency
        self._hosts: dict[str, _Host] = {}

    def _host(self, host: str) -> _Host:
        h = self._hosts.get(host)
        if h is None:
            h = self._hosts[host] = _Host(asyncio.Semaphore(self.concurrency), self.min_delay_s)
        return h

    def set_delay(self, host: str, delay_s: float) -> None:
        """Raise a host's gap (never below the configured minimum)."""
        h = self._host(host)
        h.delay = max(self.min_delay_s, delay_s)

    def defer(self, host: str, seconds: float) -> None:
        """No request to `host` before `seconds` from now."""
        h = self._host(host)
        h.next_ok = max(h.next_ok, time.monotonic() + seconds)

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        h = self._host(host)
        async with h.sem:
            while (wait := h.next_ok - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            h.next_ok = time.monotonic() + h.delay  # other holders of the semaphore (concurrency > 1)
            h.requests += 1
            try:
                yield
            finally:
                h.next_ok = max(h.next_ok, time.monotonic() + h.delay)


def partition(host: str, n: int) -> int:
    """Stable actor index of a host (sha1, so every process and every run agrees)."""
    return int(hashlib.sha1(host.encode("utf-8")).hexdigest()[:16], 16) % n
