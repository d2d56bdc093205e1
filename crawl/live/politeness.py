"""Per-host politeness, shared by every actor of a crawl (or of an image fetch).

`HostGate` grants request slots by key: at most `concurrency` requests in flight per key and a minimum gap
between the end of one request and the start of the next. A request holds the keys of its host name *and*
of every address the name resolves to (`politeness_keys`), so aliases of one server (`localhost`,
`127.0.0.1`, `127.1`, `0x7f000001`) share one slot. A key's gap can be raised (robots.txt Crawl-delay) and
its next slot pushed back (Retry-After, retry backoff). The gate also holds each origin's robots.txt
answer, so it is fetched once per origin whichever actor asks first.

Each caller names itself (`holder`): when a crawl actor dies, `forget(holder)` gives back the slots it held
and the robots.txt fetches it had promised (another caller fetches them), so its replacement is not locked
out of its own hosts; a late call of a forgotten holder takes nothing.

One `HostGateActor` (a Ray actor running a `HostGate`) serves all actors of a run, so the limits hold for
every request whichever actor makes it: seeds, links, redirect hops to other hosts, images. A `Fetcher`
outside Ray uses a `HostGate` in process; `GateClient` is the one interface over both.

`partition(host, n)` spreads the frontier (seeds and links) over the actors; politeness does not depend on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import ray


@dataclass
class _Key:
    delay: float
    next_ok: float = 0.0  # monotonic time before which no request may start
    last_end: float = float("-inf")  # when the last request ended
    in_flight: int = 0


def politeness_keys(host_key: str, addresses: Iterable[str], port: int, default_port: bool) -> list[str]:
    """The slot keys of a request: its host key and each resolved address in the same form
    (`127.0.0.1:8080`, `[::1]:8080`, no port when it is the scheme's default)."""
    keys = [host_key]
    for addr in addresses:
        ip = ipaddress.ip_address(addr)
        name = f"[{ip}]" if ip.version == 6 else str(ip)
        keys.append(name if default_port else f"{name}:{port}")
    return sorted(set(keys))


class HostGate:
    """Politeness slots by key and the robots.txt answers of a run (see the module docstring).

    Async methods only, one event loop: it runs in process or as a Ray async actor (`HostGateActor`), where
    waiters park in `acquire`/`robots` while the calls that wake them (`release`, `robots_done`) run."""

    def __init__(self, min_delay_s: float, concurrency: int = 1):
        self.min_delay_s = min_delay_s
        self.concurrency = concurrency
        self._keys: dict[str, _Key] = {}
        self._changed: asyncio.Condition | None = None  # created in the loop that uses it
        self._robots: dict[str, tuple[int, bytes] | asyncio.Event] = {}
        self._robots_by: dict[str, str] = {}  # origin -> holder that promised its robots.txt
        self._held: dict[str, Counter[str]] = {}  # holder -> keys it holds (with multiplicity)
        self._gone: set[str] = set()  # forgotten holders (dead actors)

    def _key(self, key: str) -> _Key:
        k = self._keys.get(key)
        if k is None:
            k = self._keys[key] = _Key(self.min_delay_s)
        return k

    @property
    def _cond(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self, keys: list[str], holder: str = "") -> None:
        """Wait until every key has a free slot and its gap has passed, then take them all at once
        (all or none, so requests sharing some keys can never deadlock) for `holder`."""
        slots = [self._key(k) for k in keys]
        async with self._cond:
            while True:
                now = time.monotonic()
                free = all(s.in_flight < self.concurrency for s in slots)
                wait = max(s.next_ok for s in slots) - now if free else None
                if wait is not None and wait <= 0:
                    break
                try:  # woken by a release or a changed gap, else when the gap has passed
                    await asyncio.wait_for(self._cond.wait(), wait)
                except TimeoutError:
                    pass
            if holder in self._gone:  # a call parked here by an actor that has since died
                return
            for s in slots:
                s.in_flight += 1
                s.next_ok = now + s.delay  # spaces the starts of concurrent holders (concurrency > 1)
            self._held.setdefault(holder, Counter()).update(keys)

    async def release(self, keys: list[str], holder: str = "") -> None:
        if holder in self._gone:
            return
        now = time.monotonic()
        async with self._cond:
            self._held[holder].subtract(keys)
            for k in keys:
                s = self._key(k)
                assert s.in_flight > 0, f"release of {k} without acquire"
                s.in_flight -= 1
                s.last_end = now
                s.next_ok = max(s.next_ok, now + s.delay)
            self._cond.notify_all()

    async def set_delay(self, key: str, delay_s: float) -> None:
        """Raise a key's gap (never below the configured minimum), from its last request on (the robots.txt
        fetch that brought the Crawl-delay, typically)."""
        s = self._key(key)
        s.delay = max(self.min_delay_s, delay_s)
        s.next_ok = max(s.next_ok, s.last_end + s.delay)

    async def defer(self, keys: list[str], seconds: float) -> None:
        """No request on any of `keys` before `seconds` from now."""
        until = time.monotonic() + seconds
        for k in keys:
            s = self._key(k)
            s.next_ok = max(s.next_ok, until)

    async def forget(self, holder: str) -> None:
        """`holder` died: give back its slots and its promised robots.txt fetches; ignore its late calls."""
        assert holder, "only a named holder can be forgotten"
        self._gone.add(holder)
        async with self._cond:
            for k, n in (+self._held.pop(holder, Counter())).items():  # + keeps the keys still held
                s = self._key(k)
                s.in_flight -= n
                assert s.in_flight >= 0, f"{k}: more released than held"
            self._cond.notify_all()
        for origin in [o for o, h in self._robots_by.items() if h == holder]:
            del self._robots_by[origin]
            pending = self._robots.pop(origin)
            assert isinstance(pending, asyncio.Event), "a promised robots.txt is pending until done"
            pending.set()  # its waiters ask again: the first of them fetches it

    # ---- robots.txt, shared ----------------------------------------------------------------------------
    async def robots(self, origin: str, holder: str = "") -> tuple[int, bytes] | None:
        """The robots.txt answer (status, body) of `origin`; None: nobody asked before, so the caller must
        fetch it and hand it over with `robots_done` (the others wait for that)."""
        while True:
            entry = self._robots.get(origin)
            if entry is None:
                self._robots[origin] = asyncio.Event()
                self._robots_by[origin] = holder
                return None
            if not isinstance(entry, asyncio.Event):
                return entry
            await entry.wait()  # answered, or its fetcher died (then the entry is gone: ask again)

    async def robots_done(self, origin: str, status: int, body: bytes) -> None:
        self._robots_by.pop(origin, None)
        pending = self._robots.get(origin)
        self._robots[origin] = (status, body)
        if isinstance(pending, asyncio.Event):
            pending.set()


HostGateActor = ray.remote(HostGate)


def start_gate(min_delay_s: float, concurrency: int, fetches: int) -> Any:
    """A `HostGateActor` for one run (no CPU reserved: it only keeps time).

    `fetches`: the most fetches in flight across all actors of the run. Each fetch has at most one call in
    the gate at a time, so with room for all of them (plus a margin) a parked `acquire` can never keep out
    the `release` that would wake it."""
    return HostGateActor.options(num_cpus=0, max_concurrency=fetches + 64).remote(min_delay_s, concurrency)


class GateClient:
    """A fetcher's handle on a `HostGate`: in process, or a `HostGateActor` shared across actors."""

    def __init__(self, gate: HostGate | Any, holder: str = ""):
        self.gate = gate
        self.holder = holder  # this caller's name at the gate (see `HostGate.forget`)
        self.local = isinstance(gate, HostGate)

    def _call(self, method: str, *args: Any) -> Awaitable[Any]:
        fn = getattr(self.gate, method)
        return fn(*args) if self.local else fn.remote(*args)

    @asynccontextmanager
    async def slot(self, keys: list[str]) -> AsyncIterator[None]:
        await self._call("acquire", keys, self.holder)
        try:
            yield
        finally:
            await self._call("release", keys, self.holder)

    async def set_delay(self, key: str, delay_s: float) -> None:
        await self._call("set_delay", key, delay_s)

    async def defer(self, keys: list[str], seconds: float) -> None:
        await self._call("defer", keys, seconds)

    async def robots(self, origin: str) -> tuple[int, bytes] | None:
        return await self._call("robots", origin, self.holder)

    async def robots_done(self, origin: str, status: int, body: bytes) -> None:
        await self._call("robots_done", origin, status, body)


def partition(host: str, n: int) -> int:
    """Stable actor index of a host (sha1, so every process and every run agrees)."""
    return int(hashlib.sha1(host.encode("utf-8")).hexdigest()[:16], 16) % n
