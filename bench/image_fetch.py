"""Image fetching: interloom's image fetcher (crawl/live/image_fetcher.py) vs img2dataset on the same URLs, in
one process run, with and without resizing to the build's max side.

Servers: `--hosts` ThreadingHTTPServers (tests/crawl/webserver.py) on distinct loopback addresses
127.0.0.2, 127.0.0.3, ... (politeness is per host and per address), each serving the real photos of
../shared/data/real/dev/images/photos; every photo of every host is one URL. Politeness delay 0 on both
sides; both get `--cores` cores (Ray CPUs / img2dataset processes).

- interloom, fetch only: `FetchResolver` (2 async actors, robots.txt per host, safety checks, one request at a
  time per host, each answer decode-checked with Pillow and archived to a gzip WARC), all URLs in one call.
- interloom, fetch + image stage: `--cores` Ray tasks (as the build's unit workers), each fetching its share
  in batches of 64 through the same resolver and running `crawl.images.process_image` on every image
  (decode, EXIF orientation, size rules, pHash, downscale to images.max_side = 1024, JPEG q90), a batch's
  fetch and its processing one after the other, as the build's image stage does per document.
URLs are listed hosts round-robin (photo 1 of every host, then photo 2, ...), so a batch spans many hosts.
- img2dataset, no resizing: `--resize_mode no`, files output, `--processes_count cores --thread_count 32`.
- img2dataset, resizing: `--resize_mode keep_ratio_largest --image_size 1024 --resize_only_if_bigger True
  --encode_quality 90` (its default encode format is jpg).

Start-up is reported apart: the fetch actors are started (and one URL fetched) before the clock runs;
img2dataset is run on one URL first, and that command's time is subtracted from the whole run's.

    .venv/bin/python -m bench.image_fetch [--hosts 16] [--cores 2] [--img2dataset /work/venv-img2dataset/bin/img2dataset]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "crawl"))
from webserver import TestServer, load_site  # noqa: E402

from crawl.images import ImageConfig, process_image  # noqa: E402
from crawl.live.config import CrawlConfig  # noqa: E402
from crawl.live.image_fetcher import FetchResolver  # noqa: E402

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
BATCH = 64


@ray.remote(num_cpus=1)
def _fetch_and_process(resolver: FetchResolver, urls: list[str], cfg: dict[str, Any]) -> dict[str, int]:
    """What a unit worker does with fetched images: fetch a batch, run the image stage on each answer."""
    image_cfg = ImageConfig(**cfg)
    counts = {"fetched": 0, "processed": 0}
    for i in range(0, len(urls), BATCH):
        for got in resolver.fetch_many(urls[i : i + BATCH]).values():
            if isinstance(got, bytes):
                counts["fetched"] += 1
                counts["processed"] += not isinstance(process_image(got, image_cfg), str)
    return counts


def run_interloom(urls: list[str], cores: int, tmp: Path, resize: bool) -> dict[str, Any]:
    cfg = CrawlConfig(min_delay_s=0.0, allow_private=["127.0.0.0/8"], actors=2, actor_num_cpus=0, max_bytes=20_000_000)
    t0 = time.perf_counter()
    resolver = FetchResolver(cfg, warc_dir=tmp / ("warc-resize" if resize else "warc"))
    resolver.fetch_many(urls[:1])  # actors up; that host's robots.txt cached
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if resize:
        shares = [urls[i::cores] for i in range(cores)]
        image_cfg = ImageConfig().model_dump()
        parts = ray.get([_fetch_and_process.remote(resolver, share, image_cfg) for share in shares])
        ok = sum(p["fetched"] for p in parts)
        processed = sum(p["processed"] for p in parts)
    else:
        got = resolver.fetch_many(urls)
        ok = processed = sum(isinstance(v, bytes) for v in got.values())
    wall = time.perf_counter() - t0
    ledger = resolver.close()
    warc_bytes = sum(f.stat().st_size for f in (tmp / ("warc-resize" if resize else "warc")).rglob("*") if f.is_file())
    return {
        "images": len(urls),
        "ok": ok,
        "processed (kept by the image rules)": processed,
        "start_s": round(start_s, 2),
        "seconds": round(wall, 2),
        "images_per_s": round(len(urls) / wall, 1),
        "images_per_s_per_core": round(len(urls) / wall / cores, 1),
        "warc_mb": round(warc_bytes / 1e6, 1),
        "drops": {k: v for s in ledger.to_dict()["stages"] for k, v in s["drops"].items()},
    }


def run_img2dataset(exe: str, urls: list[str], cores: int, tmp: Path, resize: bool) -> dict[str, Any]:
    """The whole command on all URLs, and on one URL first: its start-up, reported apart."""
    fixed = _img2dataset(exe, urls[:1], cores, tmp / "fixed", resize)
    res = _img2dataset(exe, urls, cores, tmp, resize)
    steady = res["seconds"] - fixed["seconds"]
    return {
        **res,
        "start_s": fixed["seconds"],
        "images_per_s_steady": round(len(urls) / steady, 1),
        "images_per_s_per_core": round(len(urls) / steady / cores, 1),
    }


def _img2dataset(exe: str, urls: list[str], cores: int, tmp: Path, resize: bool) -> dict[str, Any]:
    tmp.mkdir(exist_ok=True)
    out = tmp / ("i2d-resize" if resize else "i2d")
    url_list = tmp / "urls.txt"
    url_list.write_text("".join(u + "\n" for u in urls))
    cmd = [
        exe,
        f"--url_list={url_list}",
        "--input_format=txt",
        f"--output_folder={out}",
        "--output_format=files",
        f"--processes_count={cores}",
        "--thread_count=32",
        "--retries=0",
        "--timeout=10",
        "--enable_wandb=False",
        "--compute_hash=None",
    ]
    if resize:
        cmd += [
            "--resize_mode=keep_ratio_largest",
            "--image_size=1024",
            "--resize_only_if_bigger=True",
            "--encode_quality=90",
        ]
    else:
        cmd += ["--resize_mode=no"]
    env = {**os.environ, "NO_PROXY": "*", "no_proxy": "*"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"img2dataset failed: {done.stderr[-2000:]}")
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    ok = sum(s.get("successes", 0) for s in stats)
    errors: dict[str, int] = {}
    for s in stats:
        for k, v in (s.get("status_dict") or {}).items():
            if k != "success":
                errors[k] = errors.get(k, 0) + v
    return {
        "images": len(urls),
        "ok": ok,
        "seconds": round(wall, 2),
        "images_per_s": round(len(urls) / wall, 1),
        "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=16, help="loopback servers, one address each")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--img2dataset", default="/work/venv-img2dataset/bin/img2dataset")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args()
    if not REAL.exists():
        raise SystemExit(f"../shared/data/real not present: {REAL} is needed")
    site = load_site(REAL, n_pages=1)
    rows: dict[str, Any] = {"load_average_before": os.getloadavg()}
    servers = [TestServer(site, host=f"127.0.0.{i + 2}") for i in range(args.hosts)]
    ray.init(num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
    try:
        urls = [s.url(p) for p in site.photos for s in servers]  # hosts round-robin: a batch spans many hosts
        rows["photo_mb_per_host"] = round(sum(len(b) for b in site.photos.values()) / 1e6, 2)
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            for resize in (False, True):
                tag = "resize" if resize else "no resize"
                rows[f"img2dataset, {tag}"] = run_img2dataset(args.img2dataset, urls, args.cores, tmp, resize)
                print(tag, "img2dataset", json.dumps(rows[f"img2dataset, {tag}"]), flush=True)
                rows[f"interloom, {tag}"] = run_interloom(urls, args.cores, tmp, resize)
                print(tag, "interloom", json.dumps(rows[f"interloom, {tag}"]), flush=True)
    finally:
        ray.shutdown()
        for s in servers:
            s.close()
    rows["load_average_after"] = os.getloadavg()
    print(
        f"| what ({args.hosts} hosts, {len(urls)} URLs, {args.cores} cores) | ok | start-up s | seconds after "
        "start-up | images/s per core |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in ("interloom, no resize", "img2dataset, no resize", "interloom, resize", "img2dataset, resize"):
        r = rows[name]
        after = r["seconds"] - (r["start_s"] if name.startswith("img2dataset") else 0)
        print(f"| {name} | {r['ok']} | {r['start_s']} | {after:.2f} | {r['images_per_s_per_core']} |")
    for tag in ("no resize", "resize"):
        ours, theirs = rows[f"interloom, {tag}"], rows[f"img2dataset, {tag}"]
        ratio = ours["images_per_s_per_core"] / theirs["images_per_s_per_core"]
        rows[f"ratio interloom / img2dataset, {tag}"] = round(ratio, 2)
        print(f"ratio interloom / img2dataset, {tag}: {ratio:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
