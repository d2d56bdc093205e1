"""The crawler and the image fetcher on a real local Ray instance against the loopback server: link
following, robots, per-host spacing measured from the server log, WARCs that hold the pages and images,
the funnel, a crawl killed midway and resumed (nothing archived fetched twice, nothing lost), a crawl actor
killed midway and replaced by the runner (nothing lost or yielded twice)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # webserver.py, crawl_fixtures.py (importlib mode)

import os
import signal
import subprocess
import time
from collections import Counter

import pytest
from crawl_fixtures import server, site  # noqa: E402,F401 - fixtures
from fastwarc.warc import ArchiveIterator, WarcRecordType

from corpus.stats import check_funnel
from crawl.live.config import CrawlConfig
from crawl.live.crawler import Crawler, load_stats, read_seeds
from crawl.live.image_fetcher import FetchResolver
from crawl.live.warc_writer import closed_segments, read_state

REPO = Path(__file__).resolve().parents[2]


def cfg(**kw) -> CrawlConfig:
    base = dict(
        allow_private=["127.0.0.1/32"],
        min_delay_s=0.05,
        connect_timeout_s=1.0,
        read_timeout_s=0.5,
        total_timeout_s=2.0,
        retries=1,
        backoff_s=0.05,
        max_bytes=2_000_000,
        actors=2,
        actor_num_cpus=0.1,
    )
    base.update(kw)
    return CrawlConfig(**base)


def warc_responses(paths) -> list[tuple[str, int, str, bytes]]:
    out = []
    for p in paths:
        with open(p, "rb") as fh:
            for rec in ArchiveIterator(fh, parse_http=True):
                if rec.record_type == WarcRecordType.response:
                    out.append(
                        (
                            rec.headers["WARC-Target-URI"],
                            rec.http_headers.status_code,
                            rec.http_content_type or "",
                            rec.reader.read(),
                        )
                    )
    return out


def test_crawl_follows_links_obeys_robots_and_archives(ray_local, server, tmp_path):
    site = server.site
    c = cfg(follow_links=True, max_depth=1, fetch_images=True, min_delay_s=0.1, warc_max_bytes=200_000)
    seeds = [server.url("/index.html"), server.url("/index.html#dup"), "ftp://127.0.0.1/x", "http://10.0.0.1/"]
    crawler = Crawler(c, tmp_path, progress=False)
    pages = {p.url: p for p in crawler.iter_pages(seeds)}
    res = crawler.result
    # every real page (depth 1) and the index came back, as archived
    assert set(pages) == {server.url(p) for p in site.pages} | {server.url("/index.html")}
    for path, body in site.pages.items():
        assert pages[server.url(path)].body == body
        assert pages[server.url(path)].source.startswith("warc:crawl-a")
    # funnel: every URL in is a page or a counted drop
    stats = load_stats(tmp_path)
    assert check_funnel(stats) == []
    [crawl] = stats["stages"]
    assert crawl["out"] == len(site.pages) + 1
    assert crawl["drops"] == {"robots": 1, "http_404": 1, "duplicate_seed": 1, "bad_scheme": 1, "unsafe_address": 1}
    n_photos = sum(len(v) for v in site.page_photos.values())
    img = stats["items"]["crawl/image"]
    assert img["out"] == len({p for v in site.page_photos.values() for p in v}) and img["out"] <= n_photos
    assert set(img["drops"]) == {"http_404"}
    # robots: the disallowed page was never requested; one robots.txt fetch for the host
    assert server.hits("/private/secret.html") == []
    assert len(server.hits("/robots.txt")) == 1
    # per-host spacing, measured at the server, respects min_delay
    times = [h.t for h in server.hits()]
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.1
    # no URL requested twice
    assert max(Counter(h.path for h in server.hits()).values()) == 1
    # WARCs: several closed files (rotation), valid, holding every page and every photo as served
    assert len(res.warcs) >= 2 and not list(tmp_path.glob("*.open"))
    responses = warc_responses(res.warcs)
    by_uri = {u: (s, body) for u, s, _, body in responses}
    for path, body in site.pages.items():
        assert by_uri[server.url(path)] == (200, body)
    for photos in site.page_photos.values():
        for p in photos:
            assert by_uri[server.url(p)] == (200, site.photos[p])


def test_image_resolver_counts_every_outcome(ray_local, server, tmp_path):
    photos = list(server.site.photos)[:6]
    faults = {
        "/fault/html-image.jpg": "not_an_image",
        "/fault/html-as-jpeg.jpg": "not_an_image",
        "/fault/truncated.jpg": "truncated_image",
        "/fault/noai.jpg": "optout_noai",
        "/photos/nope.jpg": "http_404",
        "/private/x.jpg": "robots",
        "/fault/slow": "timeout",
        "/fault/big.jpg": "too_large",
    }
    urls = [server.url(p) for p in photos + list(faults)] + ["http://10.0.0.1/a.jpg", "file:///etc/passwd"]
    resolver = FetchResolver(cfg(min_delay_s=0.05, max_bytes=1_000_000), warc_dir=tmp_path)
    try:
        got = resolver(urls)
        again = resolver.fetch_many([server.url(photos[0])])  # a second call on live actors
    finally:
        ledger = resolver.close()
    for p in photos:
        assert got[server.url(p)] == server.site.photos[p]
    assert again[server.url(photos[0])] == server.site.photos[photos[0]]
    for p, reason in faults.items():
        assert got[server.url(p)] == reason, p
    assert got["http://10.0.0.1/a.jpg"] == "unsafe_address" and got["file:///etc/passwd"] == "bad_scheme"
    d = ledger.to_dict()
    assert check_funnel(d) == []
    items = d["items"]["fetch_images/image"]
    assert items["out"] == len(photos) + 1 and sum(items["drops"].values()) == len(faults) + 1
    assert server.hits("/private/x.jpg") == []
    times = [h.t for h in server.hits()]
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.05
    # fetched images are archived
    responses = warc_responses(sorted(tmp_path.glob("*.warc.gz")))
    archived = {u: body for u, s, _, body in responses if s == 200}
    for p in photos:
        assert archived[server.url(p)] == server.site.photos[p]


def test_killed_crawl_resumes_without_refetching_or_losing(ray_local, server, tmp_path):
    site = server.site
    seeds = tmp_path / "seeds.txt"
    urls = [server.url(p) for p in site.pages] + [server.url("/fault/notfound"), server.url("/private/a.html")]
    seeds.write_text("\n".join(urls) + "\n")
    out = tmp_path / "crawl"
    overrides = [
        "allow_private=[127.0.0.1/32]",
        "min_delay_s=0.25",
        "warc_max_bytes=30000",
        "actors=1",
        "actor_num_cpus=0.1",
        "read_timeout_s=1",
        "retries=0",
    ]
    address = ray_local.get_runtime_context().gcs_address
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli.crawl",
        str(seeds),
        "--output",
        str(out),
        "--address",
        address,
        "--no-progress",
    ] + [a for o in overrides for a in ("--set", o)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    deadline = time.monotonic() + 60
    while len(list(closed_segments(out, "crawl-a"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "crawl did not close 3 WARC files in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the driver is dead; Ray then stops its actor: wait until the server sees no more requests
    last = len(server.hits())
    while True:
        time.sleep(1.5)
        if len(server.hits()) == last:
            break
        last = len(server.hits())
    archived_first = {e["url"] for e in read_state(out, "crawl-a")}
    assert 0 < len(archived_first) < len(urls), "kill should land midway"
    hits_first = len(server.hits())

    crawler = Crawler(load_cfg(overrides), out, progress=False)
    resumed = list(crawler.iter_pages(read_seeds(seeds)))
    second = [h.path for h in server.hits()[hits_first:]]
    # nothing archived before the kill was fetched again
    assert not {server.url(p) for p in second} & archived_first
    # nothing lost: every URL has exactly one outcome, every page exactly one 200 response in the WARCs
    state = list(read_state(out, "crawl-a"))
    assert sorted(e["url"] for e in state) == sorted(urls)
    ok = Counter(u for u, s, _, _ in warc_responses(crawler.result.warcs) if s == 200 and "/pages/" in u)
    assert ok == Counter({server.url(p): 1 for p in site.pages})
    assert {p.url for p in resumed} == {server.url(p) for p in site.pages} - archived_first
    # the funnel of the resumed run equals the one of an uninterrupted crawl
    [crawl] = load_stats(out)["stages"]
    assert crawl == {"name": "crawl", "in": len(urls), "out": len(site.pages), "drops": {"http_404": 1, "robots": 1}}
    assert not list(out.glob("*.open"))


@pytest.mark.timeout(120)
def test_dead_crawl_actor_is_replaced_and_nothing_is_lost_or_doubled(ray_local, server, tmp_path, caplog):
    import ray

    site = server.site
    urls = [server.url(p) for p in site.pages] + [server.url("/fault/notfound"), server.url("/private/a.html")]
    out = tmp_path / "crawl"
    # one actor, one request at a time, small WARC files: the kill lands after some files were closed
    crawler = Crawler(cfg(actors=1, min_delay_s=0.2, warc_max_bytes=30000, retries=0), out, progress=False)
    pages, archived_before, hits_before = [], set(), 0
    for page in crawler.iter_pages(urls):
        pages.append(page.url)
        if len(pages) == 4:  # SIGKILL the actor's process, as the OOM killer or a lost node would
            [actor] = crawler._actors
            pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
            archived_before = {e["url"] for e in read_state(out, "crawl-a")}
            hits_before = len(server.hits())
            os.kill(pid, signal.SIGKILL)
    assert "was lost" in caplog.text, "the runner replaced the actor"
    assert 0 < len(archived_before) < len(urls), "the kill landed midway"
    # nothing doubled: each page yielded once; nothing in a closed WARC file before the kill fetched again
    assert Counter(pages) == Counter({server.url(p): 1 for p in site.pages})
    assert not {server.url(h.path) for h in server.hits()[hits_before:]} & archived_before
    # nothing lost: every URL has exactly one outcome, every page exactly one 200 response in the WARCs
    assert sorted(e["url"] for e in read_state(out, "crawl-a")) == sorted(urls)
    ok = Counter(u for u, s, _, _ in warc_responses(crawler.result.warcs) if s == 200 and "/pages/" in u)
    assert ok == Counter({server.url(p): 1 for p in site.pages})
    assert crawler.result.pages == len(site.pages)
    [crawl] = load_stats(out)["stages"]
    assert crawl == {"name": "crawl", "in": len(urls), "out": len(site.pages), "drops": {"http_404": 1, "robots": 1}}
    assert not list(out.glob("*.open"))


def load_cfg(overrides: list[str]) -> CrawlConfig:
    from corpus.config import load_config

    return load_config(CrawlConfig, None, overrides)


def test_cli_reports_bad_config_and_missing_seeds(tmp_path):
    from pipeline.cli.crawl import main

    assert main([str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o")]) == 2
    seeds = tmp_path / "s.txt"
    seeds.write_text("http://example.com/\n")
    assert main([str(seeds), "--output", str(tmp_path / "o"), "--set", "bogus=1"]) == 2
    assert main([str(seeds), "--output", str(tmp_path / "o"), "--set", "allow_private=[nonsense]"]) == 2


def test_read_seeds_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"u": ["http://a/", None, "http://b/"]}), tmp_path / "s.parquet")
    assert read_seeds(tmp_path / "s.parquet", "u") == ["http://a/", "http://b/"]
    with pytest.raises(ValueError, match="no column"):
        read_seeds(tmp_path / "s.parquet", "url")
