"""Hostile inputs through a whole build on a real local Ray instance: compression bombs keep the build's
memory bounded and cost only their own records."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _warcgen import deflate_bomb, http_response, page_record, warc_record, write_warc
from conftest import DEV_SETTINGS

from corpus.config import load_config
from corpus.format import Corpus
from corpus.stats import check_funnel
from pipeline.build import BuildConfig, build_corpus

pytestmark = pytest.mark.slow

BOMB_BYTES = 1500 << 20  # 1,500 MiB of spaces, about 1.5 MB gzipped, a few KB in a WARC.gz


def _tree_rss() -> int:
    """Resident memory of this process's descendants (the local Ray instance: raylet, workers, actors)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parent[int(entry)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    me, family, total = os.getpid(), set(), 0
    for pid in parent:
        p, seen = pid, 0
        while p in parent and p != me and seen < 64:
            p, seen = parent[p], seen + 1
        if p == me and pid != me:
            family.add(pid)
    for pid in family:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


def _build_with_peak_memory(inputs: list[str], out: Path) -> tuple[dict, int]:
    """Build `inputs` into `out` with 1 worker; returns (stats, peak RSS of the Ray processes)."""
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss())
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        cfg = load_config(BuildConfig, None, ["ray.workers=1", *DEV_SETTINGS, "images.min_side=8"])
        stats = build_corpus(inputs, out, cfg, progress=False)
    finally:
        stop.set()
        watcher.join()
    return stats, peak[0]


def test_compression_bombs_keep_build_memory_bounded(tmp_path, ray_local):
    """A WARC.gz of a few KB whose HTML response and image response (Content-Encoding: gzip) inflate to
    1.5 GiB each: the build's Ray processes peak less than 600 MB above the same build without the bombs,
    each bomb is one counted drop of the read stage, and the ordinary pages around them are built."""
    bomb = deflate_bomb(BOMB_BYTES)
    gz = {"Content-Encoding": "gzip"}
    figure = (
        '<figure><img src="bomb.png" alt="The quay at dawn with boats" width="640" height="480"></figure>'
        "<p>The boats came in as the sun rose over the water, and the gulls followed them to the pier.</p>"
    )
    ordinary = [
        page_record("http://bomb.test/before.html", "The market hall before"),
        page_record("http://bomb.test/after.html", "The quay after", figure),
    ]
    bombs = [
        warc_record("http://bomb.test/bomb.html", http_response(bomb, "text/html", gz)),
        warc_record("http://bomb.test/bomb.png", http_response(bomb, "image/png", gz)),
    ]
    plain = write_warc(tmp_path / "plain.warc.gz", ordinary)
    hostile = write_warc(tmp_path / "hostile.warc.gz", [ordinary[0], bombs[0], ordinary[1], bombs[1]])
    assert hostile.stat().st_size < 64_000

    base_stats, base_peak = _build_with_peak_memory([str(plain)], tmp_path / "base")
    stats, peak = _build_with_peak_memory([str(hostile)], tmp_path / "hostile")

    assert base_peak > 0
    assert peak - base_peak < 600 << 20, f"peak {peak >> 20} MiB vs {base_peak >> 20} MiB without the bombs"
    assert check_funnel(stats) == []
    read = stats["stages"][0]
    assert read == {"name": "read", "in": 4, "out": 2, "drops": {"html_too_large": 1, "image_too_large": 1}}
    assert stats["items"]["images/image"]["drops"] == {"too_large_bytes": 1}
    urls = sorted(d.url for d in Corpus(tmp_path / "hostile").iter_documents())
    assert urls == sorted(d.url for d in Corpus(tmp_path / "base").iter_documents())
    assert urls == ["http://bomb.test/after.html", "http://bomb.test/before.html"]
    rejects = pq.read_table(tmp_path / "hostile" / "rejects").to_pylist()
    too_large = {r["url"]: r["reason"] for r in rejects if r["reason"].endswith("too_large")}
    assert too_large == {"http://bomb.test/bomb.html": "html_too_large", "http://bomb.test/bomb.png": "image_too_large"}
    assert base_stats["stages"][0]["out"] == 2
