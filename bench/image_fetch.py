"""Image fetching: interloom's image fetcher (crawl/live/image_fetcher.py) vs img2dataset on the same URLs, in
one process run, with and without resizing to the build's max side.

Servers: `--hosts` ThreadingHTTPServers (tests/crawl/webserver.py) on distinct loopback addresses
127.0.0.2, 127.0.0.3, ... (politeness is per host and per address), each serving the real photos of
../shared/data/real/dev/images/photos; every photo of every host is one URL. Politeness delay 0 on both
sides; both get `--cores` cores (Ray CPUs / img2dataset processes).

- interloom, fetch only: `FetchResolver` (2 async actors, robots.txt per host, safety checks, one request at a
  time per host, each answer decode-checked with Pillow and archived to a gzip WARC), all URLs in one call.
- interloom, fetch + image stage: `--cores` Ray tasks (as the build's unit workers), each running the build's
  image stage (`crawl.images.ImageStep`: fetch through the same resolver, then decode, EXIF orientation,
  size rules, pHash, downscale to images.max_side = 1024, JPEG q90) over its share of the URLs as documents
  of `--doc-images` images: one document at a time (`run_steps`, the fetch and the processing of a document
  one after the other), and with the build's look-ahead (`run_steps_ahead`, `ray.image_prefetch_docs` =
  `--ahead`: the next documents' images are requested while a document is processed).
URLs are listed hosts round-robin (photo 1 of every host, then photo 2, ...), so a batch spans many hosts.
- img2dataset, no resizing: `--resize_mode no`, files output, `--processes_count cores --thread_count 32`.
- img2dataset, resizing: `--resize_mode keep_ratio_largest --image_size 1024 --resize_only_if_bigger True
  --encode_quality 90` (its default encode format is jpg).

Start-up is reported apart: the fetch actors are started (and one URL fetched) before the clock runs;
img2dataset is run on one URL first, and that command's time is subtracted from the whole run's.

CPU seconds: of every `ray::` process (fetch actors, the politeness gate, the tasks) while interloom's rows run,
read from /proc; of img2dataset's processes (children's rusage), its one-URL run subtracted.

    .venv/bin/python -m bench.image_fetch [--hosts 16] [--cores 2] [--doc-images 64] [--ahead 8] [--repeats 3]
        [--no-img2dataset] [--img2dataset /work/venv-img2dataset/bin/img2dataset]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "crawl"))
from webserver import TestServer, load_site  # noqa: E402

from bench.build import PeakRss  # noqa: E402
from corpus.record import Document, Image  # noqa: E402
from corpus.stats import DeferredLedger, Ledger  # noqa: E402
from corpus.steps import run_steps, run_steps_ahead  # noqa: E402
from crawl.images import ImageConfig, ImageStep  # noqa: E402
from crawl.live.config import CrawlConfig  # noqa: E402
from crawl.live.image_fetcher import FetchResolver  # noqa: E402
from pipeline.build import RayConfig  # noqa: E402

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
BATCH = 64


@ray.remote(num_cpus=1)
def _fetch_and_process(
    resolver: FetchResolver, urls: list[str], cfg: dict[str, Any], per_doc: int, ahead: int
) -> dict[str, Any]:
    """What a unit worker does with fetched images: the build's image stage (`ImageStep`) over documents of
    `per_doc` images each, one at a time (`run_steps`) or with the build's look-ahead of `ahead`
    documents (`run_steps_ahead`, `ray.image_prefetch_docs`)."""
    docs = []
    for i in range(0, len(urls), per_doc):
        doc = Document(id=f"d{i}", url=f"http://bench.test/{i}", source="bench")
        doc.append_text("bench")
        for u in urls[i : i + per_doc]:
            doc.append_image(Image(url=u))
        docs.append(doc)
    submit = resolver.submit if ahead else None
    step = ImageStep(ImageConfig(**cfg), resolver.fetch_many, submit, RayConfig().image_prefetch_images)
    ledger = Ledger()
    cpu = time.process_time()
    if ahead:
        out = list(run_steps_ahead(iter(docs), DeferredLedger(), [step], ledger, 0, ahead))
    else:
        out = list(run_steps(iter(docs), [step], ledger))
    count = ledger.items.get("images/image")
    return {
        "kept": sum(len(d.image_list) for d in out),
        "drops": dict(count.drops) if count else {},
        "cpu_s": time.process_time() - cpu,
    }


def run_interloom(
    urls: list[str], cores: int, tmp: Path, resize: bool, per_doc: int = BATCH, ahead: int = 0
) -> dict[str, Any]:
    cfg = CrawlConfig(min_delay_s=0.0, allow_private=["127.0.0.0/8"], actors=2, actor_num_cpus=0, max_bytes=20_000_000)
    t0 = time.perf_counter()
    warcs = tmp / f"warc-{'resize' if resize else 'fetch'}-{per_doc}-{ahead}-{time.monotonic_ns()}"
    resolver = FetchResolver(cfg, warc_dir=warcs)
    resolver.fetch_many(urls[:1])  # actors up; that host's robots.txt cached
    image_cfg = ImageConfig().model_dump()
    if resize:  # the task workers' processes up and their imports done
        ray.get([_fetch_and_process.remote(resolver, urls[:1], image_cfg, 1, 0) for _ in range(cores)])
    start_s = time.perf_counter() - t0
    cpu = PeakRss(every=0.5)
    cpu.sample()  # CPU seconds from here on, of every ray:: process (fetch actors, gate, tasks)
    t0 = time.perf_counter()
    with cpu:
        if resize:
            shares = [urls[i::cores] for i in range(cores)]
            parts = ray.get([_fetch_and_process.remote(resolver, sh, image_cfg, per_doc, ahead) for sh in shares])
            ok = processed = sum(p["kept"] for p in parts)
            task_cpu = sum(p["cpu_s"] for p in parts)
        else:
            got = resolver.fetch_many(urls)
            ok = processed = sum(isinstance(v, bytes) for v in got.values())
            task_cpu = 0.0
        wall = time.perf_counter() - t0
    cpu.sample()
    ledger = resolver.close()
    warc_bytes = sum(f.stat().st_size for f in warcs.rglob("*") if f.is_file())
    ray_cpu = cpu.cpu_of("ray::")
    return {
        "images": len(urls),
        "ok": ok,
        "processed (kept by the image rules)": processed,
        "images_per_doc": per_doc,
        "look_ahead_docs": ahead,
        "start_s": round(start_s, 2),
        "seconds": round(wall, 2),
        "images_per_s": round(len(urls) / wall, 1),
        "images_per_s_per_core": round(len(urls) / wall / cores, 1),
        "cpu_s_ray": ray_cpu,
        "cpu_s_tasks": round(task_cpu, 2),
        "images_per_cpu_s": round(len(urls) / max(ray_cpu, 1e-9), 1),
        "warc_mb": round(warc_bytes / 1e6, 1),
        "drops": {k: v for s in ledger.to_dict()["stages"] for k, v in s["drops"].items()},
    }


def run_img2dataset(exe: str, urls: list[str], cores: int, tmp: Path, resize: bool) -> dict[str, Any]:
    """The whole command on all URLs, and on one URL first: its start-up, reported apart."""
    fixed = _img2dataset(exe, urls[:1], cores, tmp / "fixed", resize)
    res = _img2dataset(exe, urls, cores, tmp, resize)
    steady = res["seconds"] - fixed["seconds"]
    cpu = res["cpu_s"] - fixed["cpu_s"]
    return {
        **res,
        "start_s": fixed["seconds"],
        "cpu_s_steady": round(cpu, 2),
        "images_per_cpu_s": round(len(urls) / max(cpu, 1e-9), 1),
        "images_per_s_steady": round(len(urls) / steady, 1),
        "images_per_s_per_core": round(len(urls) / steady / cores, 1),
    }


def _img2dataset(exe: str, urls: list[str], cores: int, tmp: Path, resize: bool) -> dict[str, Any]:
    tmp.mkdir(exist_ok=True)
    # a new folder per run: img2dataset skips the shards an output folder already holds
    out = tmp / f"i2d-{'resize' if resize else 'fetch'}-{time.monotonic_ns()}"
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
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    wall, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
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
        "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
        "images_per_s": round(len(urls) / wall, 1),
        "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=16, help="loopback servers, one address each")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--doc-images", type=int, default=BATCH, help="images per document in the image stage")
    ap.add_argument(
        "--ahead",
        type=int,
        default=RayConfig().image_prefetch_docs,
        help="the image stage's look-ahead in documents (ray.image_prefetch_docs) of the look-ahead rows",
    )
    ap.add_argument("--repeats", type=int, default=1, help="rounds; each runs every row, the rows alternating")
    ap.add_argument("--no-img2dataset", action="store_true", help="interloom's rows only")
    ap.add_argument("--img2dataset", default="/work/venv-img2dataset/bin/img2dataset")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args()
    if not REAL.exists():
        raise SystemExit(f"../shared/data/real not present: {REAL} is needed")
    site = load_site(REAL, n_pages=1)
    rows: dict[str, Any] = {"load_average_before": os.getloadavg()}
    servers = [TestServer(site, host=f"127.0.0.{i + 2}") for i in range(args.hosts)]
    ray.init(num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
    ahead_row = f"interloom, resize, look-ahead {args.ahead}"
    names = ["interloom, no resize", "img2dataset, no resize", "interloom, resize", ahead_row, "img2dataset, resize"]
    if args.no_img2dataset:
        names = [n for n in names if not n.startswith("img2dataset")]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    try:
        urls = [s.url(p) for p in site.photos for s in servers]  # hosts round-robin: a batch spans many hosts
        rows["photo_mb_per_host"] = round(sum(len(b) for b in site.photos.values()) / 1e6, 2)
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            for _ in range(args.repeats):
                for name in names:
                    resize = "no resize" not in name
                    if name.startswith("img2dataset"):
                        res = run_img2dataset(args.img2dataset, urls, args.cores, tmp, resize)
                    else:
                        ahead = args.ahead if name == ahead_row else 0
                        res = run_interloom(urls, args.cores, tmp, resize, args.doc_images, ahead)
                    runs[name].append(res)
                    print(name, json.dumps(res), flush=True)
    finally:
        ray.shutdown()
        for s in servers:
            s.close()
    rows["load_average_after"] = os.getloadavg()
    rows["runs"] = runs
    print(
        f"| what ({args.hosts} hosts, {len(urls)} URLs, {args.cores} cores, {args.doc_images} images per document; "
        "median of the rounds) | ok | start-up s | seconds after start-up | images/s per core | CPU s | "
        "images per CPU s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    med: dict[str, dict[str, float]] = {}
    for name in names:
        rs = runs[name]
        i2d = name.startswith("img2dataset")
        after = [r["seconds"] - (r["start_s"] if i2d else 0) for r in rs]
        cpu = [r["cpu_s_steady" if i2d else "cpu_s_ray"] for r in rs]
        med[name] = {
            "per_core": statistics.median(r["images_per_s_per_core"] for r in rs),
            "per_cpu_s": statistics.median(r["images_per_cpu_s"] for r in rs),
        }
        print(
            f"| {name} | {rs[0]['ok']} | {statistics.median(r['start_s'] for r in rs)} | "
            f"{statistics.median(after):.2f} | {med[name]['per_core']} | {statistics.median(cpu):.1f} | "
            f"{med[name]['per_cpu_s']} |"
        )
    pairs = [("resize, look-ahead / one document at a time", ahead_row, "interloom, resize")]
    if not args.no_img2dataset:
        pairs += [
            ("interloom / img2dataset, no resize", "interloom, no resize", "img2dataset, no resize"),
            ("interloom / img2dataset, resize", "interloom, resize", "img2dataset, resize"),
            ("interloom look-ahead / img2dataset, resize", ahead_row, "img2dataset, resize"),
        ]
    for label, a, b in pairs:
        wall = med[a]["per_core"] / med[b]["per_core"]
        cpu = med[a]["per_cpu_s"] / med[b]["per_cpu_s"]
        rows[f"ratio {label}"] = {"per_core_wall": round(wall, 2), "per_cpu_s": round(cpu, 2)}
        print(f"ratio {label}: {wall:.2f} per core (wall), {cpu:.2f} per CPU second")
        # per round, the rows of one round ran minutes apart at most
        per_round = [x["images_per_s_per_core"] / y["images_per_s_per_core"] for x, y in zip(runs[a], runs[b])]
        rows[f"ratio {label}"]["per_round_wall"] = [round(r, 2) for r in per_round]
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
