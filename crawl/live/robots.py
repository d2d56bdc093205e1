"""robots.txt: fetched once per origin (scheme://host:port), cached, obeyed for the configured user agent.

RFC 9309 semantics, parsed by `protego` (Scrapy's parser): the group naming our product token (else `*`),
`*` and `$` wildcards, the longest matching rule wins and an Allow wins a tie, `/robots.txt` itself is
always allowed. A 2xx file is parsed; 4xx means no rules (allow all); 5xx, a timeout or a refused
connection means disallow all (reason `robots_unreachable`).

Crawl-delay (fractions allowed) raises the host's politeness gap. A value that is not a finite,
non-negative number (`inf`, `nan`, `-1`, `soon`) is ignored and counted (`RobotsRules.bad_crawl_delay`); a
finite one above `max_crawl_delay_s` is not waited for: the fetcher skips the host
(`crawl_delay_too_long`), so no robots.txt can stall a crawl.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from protego import Protego

_CRAWL_DELAY = re.compile(r"^\s*crawl-delay\s*:\s*([^#]*)", re.IGNORECASE | re.MULTILINE)


@dataclass
class RobotsRules:
    parser: Protego | None  # None: no rules
    allow_all: bool = False
    disallow_all: bool = False
    crawl_delay: float | None = None  # finite, >= 0
    bad_crawl_delay: int = 0  # Crawl-delay lines ignored because their value is not a finite number >= 0

    def allowed(self, url: str, user_agent: str) -> bool:
        if self.disallow_all:
            return False
        if self.allow_all or self.parser is None:
            return True
        return self.parser.can_fetch(url, user_agent)


def delay_value(value: str) -> float | None:
    """A Crawl-delay value as seconds: a finite, non-negative number, else None."""
    try:
        d = float(value.strip())
    except ValueError:
        return None
    return d if math.isfinite(d) and d >= 0 else None


def parse_robots(text: str, user_agent: str) -> RobotsRules:
    parser = Protego.parse(text)
    delay = parser.crawl_delay(user_agent)
    bad = sum(1 for v in _CRAWL_DELAY.findall(text) if delay_value(v) is None)
    return RobotsRules(parser, crawl_delay=None if delay is None else delay_value(str(delay)), bad_crawl_delay=bad)


def origin_of(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme.lower()}://{p.netloc.lower()}"


# fetch_text(robots_url) -> (status, body) with status 0 when nothing came back (timeout, refused)
RobotsFetch = Callable[[str], Awaitable[tuple[int, bytes]]]
# on_new(origin, rules): called once per origin, before any URL of it gets its answer
RobotsHook = Callable[[str, "RobotsRules"], Awaitable[None]]


class RobotsCache:
    """Rules per origin, each robots.txt asked for once (`fetch` may itself consult a cache shared by actors)."""

    def __init__(self, fetch: RobotsFetch, user_agent: str, on_new: RobotsHook | None = None):
        self.fetch = fetch
        self.user_agent = user_agent
        self.on_new = on_new
        self._rules: dict[str, RobotsRules] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def rules(self, url: str) -> RobotsRules:
        origin = origin_of(url)
        lock = self._locks.setdefault(origin, asyncio.Lock())
        async with lock:  # one fetch per origin even with many URLs waiting
            if origin not in self._rules:
                status, body = await self.fetch(origin + "/robots.txt")
                if 200 <= status < 300:
                    rules = parse_robots(body.decode("utf-8", "replace"), self.user_agent)
                elif 400 <= status < 500:
                    rules = RobotsRules(None, allow_all=True)
                else:
                    rules = RobotsRules(None, disallow_all=True)
                if self.on_new is not None:
                    await self.on_new(origin, rules)
                self._rules[origin] = rules
            return self._rules[origin]
