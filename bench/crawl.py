"""Crawler throughput on loopback: pages/s and images/s of interloom's Ray crawler and image fetcher vs a
plain httpx.AsyncClient loop (the peer: same URLs, same one-request-per-host concurrency, but no robots.txt,
no safety checks, no WARC archiving, no state), then the crawler again with the politeness delay on, with
the per-host request spacing measured at the server.

Servers: `--hosts` ThreadingHTTPServers on 127.0.0.1 (tests/crawl/webserver.py), each serving the 56 real
readability pages and 45 real photos of ../shared/data/real/dev. Run: .venv/bin/python -m bench.crawl
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "crawl"))
from webserver import TestServer, load_site  # noqa: E402

from crawl.live.config import CrawlConfig  # noqa: E402
from crawl.live.crawler import Crawler  # noqa: E402
from crawl.live.image_fetcher import FetchResolver  # noqa: E402

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"


def peer(urls: list[str]) -> float:
    """Seconds for httpx to GET every URL, one request at a time per host, hosts in parallel."""
    by_host: dict[str, list[str]] = defaultdict(list)
    for u in urls:
        by_host[httpx.URL(u).netloc.decode()].append(u)

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:

            async def host(us):
                for u in us:
                    r = await client.get(u)
                    r.raise_for_status()

            t = time.perf_counter()
            await asyncio.gather(*(host(us) for us in by_host.values()))
            return time.perf_counter() - t

    return asyncio.run(go())


def min_spacing(servers: list[TestServer]) -> float:
    gaps = []
    for s in servers:
        t = [h.t for h in s.hits()]
        gaps += [b - a for a, b in zip(t, t[1:])]
    return min(gaps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--delay", type=float, default=0.2, help="min_delay_s of the polite run")
    ap.add_argument("--actors", type=int, default=2)
    args = ap.parse_args()
    if not REAL.exists():
        raise SystemExit(f"../shared/data/real not present: {REAL} is needed")
    site = load_site(REAL, n_pages=56)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    base = dict(allow_private=["127.0.0.1/32"], actors=args.actors, actor_num_cpus=0.5, max_bytes=20_000_000)
    rows = []
    try:
        servers = [TestServer(site) for _ in range(args.hosts)]
        pages = [s.url(p) for s in servers for p in site.pages]
        photos = [s.url(p) for s in servers for p in site.photos]
        n_bytes = sum(len(b) for b in site.pages.values()) * args.hosts

        t_peer_pages = peer(pages)
        t_peer_imgs = peer(photos)
        for s in servers:
            s.reset()

        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            res = Crawler(CrawlConfig(min_delay_s=0.0, **base), Path(tmp) / "c0", progress=False).run(pages)
            t_pages = time.perf_counter() - t
            assert res.pages == len(pages), res.ledger.to_dict()
            resolver = FetchResolver(CrawlConfig(min_delay_s=0.0, **base), warc_dir=Path(tmp) / "i0")
            resolver.fetch_many(photos[:1])  # actors up, robots cached for one host
            t = time.perf_counter()
            got = resolver.fetch_many(photos)
            t_imgs = time.perf_counter() - t
            resolver.close()
            assert all(isinstance(v, bytes) for v in got.values()), {v for v in got.values() if isinstance(v, str)}
            for s in servers:
                s.reset()
            n_polite = 10
            polite_urls = [s.url(p) for s in servers for p in list(site.pages)[:n_polite]]
            t = time.perf_counter()
            res = Crawler(CrawlConfig(min_delay_s=args.delay, **base), Path(tmp) / "c1", progress=False).run(
                polite_urls
            )
            t_polite = time.perf_counter() - t
            spacing = min_spacing(servers)
        rows = [
            ("pages, delay 0", len(pages), t_pages, t_peer_pages, f"{n_bytes / t_pages / 1e6:.1f} MB/s archived"),
            ("images, delay 0", len(photos), t_imgs, t_peer_imgs, "decode-checked, archived"),
        ]
        print("| what | n | interloom items/s | httpx loop items/s | ratio | note |")
        print("| --- | ---: | ---: | ---: | ---: | --- |")
        for name, n, ours, theirs, note in rows:
            print(f"| {name} | {n} | {n / ours:.1f} | {n / theirs:.1f} | {theirs / ours:.2f} | {note} |")
        print(
            f"| pages, min_delay_s={args.delay} | {len(polite_urls)} | {len(polite_urls) / t_polite:.1f} | - | - | "
            f"measured min spacing per host {spacing:.3f} s (>= {args.delay}); bound "
            f"{args.hosts / args.delay:.1f} pages/s |"
        )
    finally:
        for s in servers:
            s.close()
        ray.shutdown()


if __name__ == "__main__":
    main()
