"""robots.txt: fetched once per origin (scheme://host:port), cached, obeyed for the configured user agent.

RFC 9309 semantics: a 2xx file is parsed (urllib.robotparser); 4xx means no rules (allow all); 5xx, a
timeout or a refused connection means disallow all (reason `robots_unreachable`). Crawl-delay raises the
host's politeness gap.
"""

from __future__ import annotations

import asyncio
import urllib.robotparser
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class RobotsRules:
    parser: urllib.robotparser.RobotFileParser | None  # None: no rules
    allow_all: bool = False
    disallow_all: bool = False
    crawl_delay: float | None = None

    def allowed(self, url: str, user_agent: str) -> bool:
        if self.disallow_all:
            return False
        if self.allow_all or self.parser is None:
            return True
        return self.parser.can_fetch(user_agent, url)


def crawl_delay(lines: list[str], user_agent: str) -> float | None:
    """Crawl-delay of the group naming our agent, else of the `*` group (fractions allowed, unlike
    urllib.robotparser which reads integers only)."""
    token = user_agent.split("/", 1)[0].strip().lower()
    delays: dict[str, float] = {}
    agents: list[str] = []
    in_rules = False
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "user-agent":
            if in_rules:
                agents, in_rules = [], False
            agents.append(value.lower())
        elif key:
            in_rules = True
            if key == "crawl-delay":
                try:
                    d = float(value)
                except ValueError:
                    continue
                for a in agents:
                    delays.setdefault(a, d)
    for a, d in delays.items():
        if a != "*" and a and a in token:
            return d
    return delays.get("*")


def parse_robots(text: str, user_agent: str) -> RobotsRules:
    lines = text.splitlines()
    rp = urllib.robotparser.RobotFileParser()
    rp.parse(lines)
    return RobotsRules(rp, crawl_delay=crawl_delay(lines, user_agent))


def origin_of(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme.lower()}://{p.netloc.lower()}"


# fetch_text(robots_url) -> (status, body) with status 0 when nothing came back (timeout, refused)
RobotsFetch = Callable[[str], Awaitable[tuple[int, bytes]]]


class RobotsCache:
    def __init__(self, fetch: RobotsFetch, user_agent: str):
        self.fetch = fetch
        self.user_agent = user_agent
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
                self._rules[origin] = rules
            return self._rules[origin]
