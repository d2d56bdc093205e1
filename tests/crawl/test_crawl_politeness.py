"""Politeness and robots.txt of the crawler on a real local Ray instance, measured at loopback servers
that log every request (arrival time, path, Host header):

- per-host spacing holds across actors, for redirect hops to another actor's host and for aliases of one
  address (127.0.0.1, localhost, 127.1, 0x7f000001); robots.txt is fetched once per host;
- a robots.txt with wildcards and overlapping Allow/Disallow: no disallowed path requested, every allowed one;
- Crawl-delay values that are infinite, huge, negative or junk never stall a crawl: it ends within the
  configured cap, writes its stats, and counts the skipped hosts.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # webserver.py (importlib mode)

import time
from collections import Counter, defaultdict
from itertools import pairwise

from webserver import Route, Site, TestServer

from corpus.stats import check_funnel
from crawl.live.config import CrawlConfig
from crawl.live.crawler import Crawler, load_stats
from crawl.live.politeness import partition
from crawl.live.safety import host_key

LOOPBACK = ["127.0.0.0/8"]


def cfg(**kw) -> CrawlConfig:
    base = {
        "allow_private": LOOPBACK,
        "min_delay_s": 0.05,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 1.0,
        "total_timeout_s": 3.0,
        "retries": 0,
        "actors": 2,
        "actor_num_cpus": 0.1,
    }
    base.update(kw)
    return CrawlConfig(**base)


def min_gap(times: list[float]) -> float:
    return min((b - a for a, b in pairwise(sorted(times))), default=float("inf"))


def test_per_host_delay_holds_across_actors_redirects_and_aliases(ray_local, tmp_path):
    delay = 0.4
    b = TestServer(Site(), host="127.0.0.1")  # reached under four names
    aliases = ["127.0.0.1", "localhost", "127.1", "0x7f000001"]
    a = TestServer(Site(), host="127.0.0.2")  # its pages redirect to b, under each alias
    try:
        for i, name in enumerate(aliases):
            b.routes[f"/b/{i}.html"] = Route()
            b.routes[f"/b/r{i}.html"] = Route()
            a.routes[f"/a/{i}.html"] = Route(302, b"", headers={"Location": b.url(f"/b/r{i}.html", name)})
        seeds = [a.url(f"/a/{i}.html") for i in range(len(aliases))]
        seeds += [b.url(f"/b/{i}.html", name) for i, name in enumerate(aliases)]
        hosts = {host_key(u) for u in seeds}
        # enough actors that the hosts are spread over at least two of them
        actors = next(n for n in range(2, 10) if len({partition(h, n) for h in hosts}) >= 2)
        crawler = Crawler(cfg(min_delay_s=delay, actors=actors), tmp_path, progress=False)
        pages = {p.url for p in crawler.iter_pages(seeds)}
    finally:
        a.close()
        b.close()
    assert pages == {b.url(f"/b/r{i}.html", n) for i, n in enumerate(aliases)} | {
        b.url(f"/b/{i}.html", n) for i, n in enumerate(aliases)
    }
    stats = load_stats(tmp_path)
    assert check_funnel(stats) == [] and stats["stages"][0]["out"] == len(seeds)
    # one server address, four names, several actors: every request to it at least min_delay_s apart
    b_hits, a_hits = b.hits(), a.hits()
    assert len(b_hits) == 2 * len(aliases) + len(aliases)  # pages, redirect targets, robots.txt per name
    assert min_gap([h.t for h in b_hits]) >= 0.95 * delay, sorted(h.t for h in b_hits)
    assert min_gap([h.t for h in a_hits]) >= 0.95 * delay
    # robots.txt once per host name (origin), whichever actor asked first
    robots = Counter(h.host for h in b_hits + a_hits if h.path == "/robots.txt")
    assert robots == Counter({f"{n}:{b.port}": 1 for n in aliases} | {f"127.0.0.2:{a.port}": 1})
    assert stats["counters"]["crawl/robots_fetch"] == len(aliases) + 1


ROBOTS = """\
User-agent: otherbot
Disallow: /

User-agent: interloom-crawler
Disallow: /private/
Allow: /private/public/
Disallow: /*?sessionid=
Disallow: /*.pdf$
Disallow: /shop/
Allow: /shop/*/item$
Allow: /search
Disallow: /search/

User-agent: *
Disallow: /
"""
ALLOWED = [
    "/private/public/a.html",
    "/page?x=1",
    "/files/doc.pdf?download=1",
    "/files/doc.pdf.html",
    "/shop/shoes/item",
    "/search",
    "/search?q=1",
    "/about.html",
]
DISALLOWED = [
    "/private/a.html",
    "/private/publicity.html",
    "/page?sessionid=1",
    "/a/b?sessionid=2",
    "/files/doc.pdf",
    "/shop/shoes/item/2",
    "/shop/index.html",
    "/search/a.html",
]


def test_robots_wildcards_and_longest_match_end_to_end(ray_local, tmp_path):
    links = "".join(f'<a href="{p}">{p}</a>' for p in ALLOWED + DISALLOWED)
    index = f"<!doctype html><html><head><title>i</title></head><body>{links}</body></html>".encode()
    routes = {"/": Route(body=index), **{p: Route() for p in ALLOWED + DISALLOWED}}
    srv = TestServer(Site(), robots_txt=ROBOTS, routes=routes)
    try:
        crawler = Crawler(cfg(follow_links=True, max_depth=1), tmp_path, progress=False)
        pages = {p.url for p in crawler.iter_pages([srv.url("/")])}
    finally:
        srv.close()
    requested = [h.path for h in srv.hits()]
    assert sorted(requested) == sorted(["/robots.txt", "/", *ALLOWED])  # every allowed path once, nothing else
    assert pages == {srv.url(p) for p in ["/", *ALLOWED]}
    stats = load_stats(tmp_path)
    assert check_funnel(stats) == []
    assert stats["stages"][0]["drops"] == {"robots": len(DISALLOWED)}


def test_hostile_crawl_delays_never_stall_the_crawl(ray_local, tmp_path):
    """`inf`, `nan`, `-1` and junk are not finite non-negative numbers: ignored (counted), min_delay_s
    applies. `1e308`, `99999` and `0.61` exceed max_crawl_delay_s: the host is skipped, each URL a counted
    drop. A fraction up to the cap is honoured."""
    cap = 0.6
    values = {
        "inf": "ignored",
        "nan": "ignored",
        "-1": "ignored",
        "soon": "ignored",
        "1e308": "skipped",
        "99999": "skipped",
        "0.61": "skipped",
        "0.6": "honoured",
    }
    servers = {v: TestServer(Site(), crawl_delay=v, routes={"/1.html": Route(), "/2.html": Route()}) for v in values}
    try:
        seeds = [s.url(p) for s in servers.values() for p in ("/1.html", "/2.html")]
        t0 = time.monotonic()
        crawler = Crawler(cfg(max_crawl_delay_s=cap, actors=2), tmp_path, progress=False)
        pages = {p.url for p in crawler.iter_pages(seeds)}
        elapsed = time.monotonic() - t0
    finally:
        for s in servers.values():
            s.close()
    stats = load_stats(tmp_path)  # written: the crawl ended
    assert check_funnel(stats) == []
    assert elapsed < 30, elapsed  # each host at most 2 pages x the cap, plus Ray start-up
    fetched = {u.rsplit("/", 1)[0] for u in pages}
    by_outcome = defaultdict(set)
    for v, outcome in values.items():
        by_outcome[outcome].add(servers[v].url(""))
    assert fetched == by_outcome["ignored"] | by_outcome["honoured"]
    for v, outcome in values.items():
        paths = [h.path for h in servers[v].hits()]
        assert paths[0] == "/robots.txt" and len(paths) == (1 if outcome == "skipped" else 3), (v, paths)
    [crawl] = stats["stages"]
    assert crawl["drops"] == {"crawl_delay_too_long": 2 * len(by_outcome["skipped"])}
    assert stats["counters"]["crawl/robots_bad_crawl_delay"] == len(by_outcome["ignored"])
    honoured = [h.t for h in servers["0.6"].hits()]  # robots.txt, then its 2 pages
    assert min_gap(honoured) >= 0.95 * cap


def test_gate_forgets_a_dead_holder_slots_and_robots_promise():
    import asyncio

    from crawl.live.politeness import HostGate

    async def scenario() -> None:
        gate = HostGate(min_delay_s=0.0, concurrency=1)
        await gate.acquire(["h"], "a00.1")  # the actor dies holding the slot of host h ...
        assert await gate.robots("http://h", "a00.1") is None  # ... and the promise to fetch h's robots.txt
        waiter = asyncio.create_task(gate.robots("http://h", "b"))
        blocked = asyncio.create_task(gate.acquire(["h"], "a00.2"))
        await asyncio.sleep(0.05)
        assert not blocked.done() and not waiter.done()
        await gate.forget("a00.1")
        await asyncio.wait_for(blocked, 1)  # the replacement gets the slot
        assert await asyncio.wait_for(waiter, 1) is None  # a waiter now fetches robots.txt itself
        await gate.release(["h"], "a00.1")  # a late call of the dead actor changes nothing
        late = asyncio.create_task(gate.acquire(["h"], "c"))
        await asyncio.sleep(0.05)
        assert not late.done(), "the slot is still the replacement's"
        await gate.release(["h"], "a00.2")
        await asyncio.wait_for(late, 1)

    asyncio.run(scenario())
