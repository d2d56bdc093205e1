"""The build's `crawl` source and its image fetcher, against a real HTTP server on 127.0.0.1 serving real
pages and photos: a corpus built straight from a crawl equals the corpus rebuilt later from the crawl's WARCs
(no network), and images missing from the source are fetched over HTTP and archived."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "crawl"))  # webserver.py (importlib mode)

from crawl_fixtures import server, site  # noqa: E402,F401 - fixtures

from corpus.config import load_config  # noqa: E402
from corpus.format import Corpus  # noqa: E402
from pipeline.build import BuildConfig, build_corpus  # noqa: E402

pytestmark = pytest.mark.slow

CRAWL = [
    "crawl.allow_private=['127.0.0.1/32']",
    "crawl.min_delay_s=0",
    "crawl.follow_links=true",
    "crawl.max_depth=1",
    "extract.timeout_s=300",
    "ray.workers=2",
]


def test_corpus_from_a_crawl_equals_the_corpus_rebuilt_from_its_warcs(ray_local, server, tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(server.url("/index.html") + "\n")
    direct = tmp_path / "direct"
    cfg = load_config(BuildConfig, None, [*CRAWL, "crawl.fetch_images=true", f"input.crawl_seeds={seeds}"])
    build_corpus([], direct, cfg, progress=False)
    warcs = sorted(str(p) for p in (direct / "crawl").glob("crawl-*.warc.gz"))
    assert warcs
    n_requests = len(server.hits())
    rebuilt = tmp_path / "rebuilt"
    build_corpus(warcs, rebuilt, load_config(BuildConfig, None, CRAWL), progress=False)
    assert len(server.hits()) == n_requests  # the rebuild needed no network
    assert (rebuilt / "manifest.jsonl").read_bytes() == (direct / "manifest.jsonl").read_bytes()
    docs = list(Corpus(direct).iter_documents())
    # the image model (crawl/image_select.py) keeps few of these real pages' images, so image_count leaves 2
    assert len(docs) >= 2
    assert sum(len(d.image_list) for d in docs) >= 3 and all(im.data for d in docs for im in d.image_list)


def test_images_not_in_the_source_are_fetched_and_archived(ray_local, server, tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(server.url("/index.html") + "\n")
    # a crawl of pages only: their photos are not in the WARCs
    pages_only = load_config(BuildConfig, None, [*CRAWL, f"input.crawl_seeds={seeds}"])
    no_fetch = build_corpus([], tmp_path / "a", pages_only, progress=False)
    # (filters.image_count.min_images is 1: the early cut skips pages whose photos are not in the WARCs, so
    # seeing the image stage's image_not_in_source needs the cut off)
    extract = next(s for s in no_fetch["stages"] if s["name"] == "extract")
    assert extract["drops"].get("no_image_candidates", 0) > 0
    warcs = sorted(str(p) for p in (tmp_path / "a" / "crawl").glob("crawl-*.warc.gz"))
    uncut = load_config(BuildConfig, None, [*CRAWL, "extract.early_cuts=false"])
    no_cut = build_corpus(warcs, tmp_path / "a2", uncut, progress=False)
    assert no_cut["items"]["images/image"]["drops"].get("image_not_in_source", 0) > 0
    assert (tmp_path / "a2" / "manifest.jsonl").read_bytes() == (tmp_path / "a" / "manifest.jsonl").read_bytes()
    server.reset()
    fetch = load_config(BuildConfig, None, [*CRAWL, "images.fetch=true", f"input.crawl_output={tmp_path / 'fx'}"])
    stats = build_corpus(warcs, tmp_path / "b", fetch, progress=False)
    images = stats["items"]["images/image"]
    assert images["drops"].get("image_not_in_source", 0) == 0
    assert images["out"] > 0
    assert any(h.path.startswith("/photos/") for h in server.hits())
    assert list((tmp_path / "fx" / "images").glob("*.warc.gz"))  # fetched images archived
    docs = list(Corpus(tmp_path / "b").iter_documents())
    assert all(im.data for d in docs for im in d.image_list) and any(d.image_list for d in docs)


def _corpus_files(root: Path) -> dict[str, bytes]:
    """Every file a build wrote but build.json (start and end times) and the WARCs of fetched images (record
    ids and dates); stats.json without its elapsed seconds."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != "build.json" and not rel.startswith("crawl/"):
            out[rel] = p.read_bytes()
    stats = json.loads(out.pop("stats.json"))
    stats["build"] = {k: v for k, v in stats["build"].items() if "second" not in k and "elapsed" not in k}
    out["stats.json"] = json.dumps(stats, sort_keys=True).encode()
    return out


def test_image_look_ahead_builds_the_same_corpus_byte_for_byte(ray_local, server, tmp_path):
    """ray.image_prefetch_docs (the image stage's look-ahead while fetching) changes when images are
    fetched, never what the build writes: shards, index, manifest, stats and rejects as one document at a
    time."""
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(server.url("/index.html") + "\n")
    build_corpus([], tmp_path / "a", load_config(BuildConfig, None, [*CRAWL, f"input.crawl_seeds={seeds}"]))
    warcs = sorted(str(p) for p in (tmp_path / "a" / "crawl").glob("crawl-*.warc.gz"))
    built = {}
    for ahead in (0, 1, 8):
        fetch = load_config(
            BuildConfig,
            None,
            [*CRAWL, "images.fetch=true", "extract.early_cuts=false", f"ray.image_prefetch_docs={ahead}"],
        )
        stats = build_corpus(warcs, tmp_path / f"b{ahead}", fetch, progress=False)
        assert stats["items"]["images/image"]["out"] > 0
        built[ahead] = _corpus_files(tmp_path / f"b{ahead}")
    assert any(k.startswith("shards/") for k in built[0]) and any(k.startswith("rejects/") for k in built[0])
    for ahead in (1, 8):
        assert built[ahead].keys() == built[0].keys()
        assert [k for k in built[0] if built[ahead][k] != built[0][k]] == []


def test_image_look_ahead_with_a_warc_that_ends_in_a_page(ray_local, server, site, tmp_path):
    """The source's own checks under the look-ahead: a WARC whose last record is a page (its read count is
    compared with its start value after the last page) and read drops between pages; every image fetched
    from the loopback server. The same corpus byte for byte with look-ahead 0 and 8."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _warcgen import http_response, warc_record, write_warc

    records = [warc_record(server.url("/robots.txt"), http_response(b"User-agent: *", "text/plain"))]
    for i, (path, html) in enumerate(sorted(site.pages.items())):
        if i % 4 == 1:
            records.append(warc_record(server.url(f"/data{i}.json"), http_response(b"{}", "application/json")))
        records.append(warc_record(server.url(path), http_response(html)))
    warc = write_warc(tmp_path / "pages.warc.gz", records)
    built = {}
    for ahead in (0, 8):
        cfg = load_config(
            BuildConfig,
            None,
            [*CRAWL, "images.fetch=true", "extract.early_cuts=false", f"ray.image_prefetch_docs={ahead}"],
        )
        stats = build_corpus([str(warc)], tmp_path / f"c{ahead}", cfg, progress=False)
        read = next(s for s in stats["stages"] if s["name"] == "read")
        assert read["in"] == len(records) and sum(read["drops"].values()) == len(records) - len(site.pages)
        built[ahead] = _corpus_files(tmp_path / f"c{ahead}")
    assert built[8].keys() == built[0].keys()
    assert [k for k in built[0] if built[8][k] != built[0][k]] == []
