"""Build throughput at scale: `interloom build` (every stage) with 1 and 2 unit workers beside datatrove's
text-only pipeline on the same input, in one process run.

Input: the dev WARCs (`../shared/data/real/dev/warc`, 160 HTML pages) copied `--copies` times with distinct
page URLs (bench/replicate.py; 13 copies = 2,080 pages). For each worker count and build variant:

- Ray start-up: `ray.init` seconds, reported apart;
- fixed cost of a build: a build of the smallest WARC (1 page) on the started instance (actor start-up,
  model loads, the dedup passes' fixed Ray cost), measured right before the big one;
- the build of the whole input; steady-state pages/s per core = pages / (build s - fixed s) / workers;
- peak RSS of every `ray::UnitWorker` process (VmHWM from /proc) and of the other Ray workers (dedup tasks).

Variants: `cuts` is the default config (lossless early cuts on: with filters.image_count.min_images = 1, a
page none of whose images the WARC holds skips trafilatura as `no_image_candidates`); `nocuts` sets
extract.early_cuts=false, so every page is extracted and filtered before the same rule drops it.

Peer: datatrove's WarcReader -> Trafilatura -> LanguageFilter -> GopherQualityFilter -> JsonlWriter with
LocalPipelineExecutor(tasks=1, workers=1), set up exactly as bench/text_path.py does (offline language model).

    .venv/bin/python -m bench.build [--copies 13] [--workers 1 2] [--variants cuts nocuts] [--out build.json]
    .venv/bin/python -m bench.build --profile [--copies 2]   # where phase 1's time goes, per stage

"pages" = HTML pages that reached extraction (the `extract` stage's `in`); datatrove counts the pages its
WarcReader yields (every HTML response, whatever its status, so 181 per copy against our 160).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.replicate import dev_warcs, replicate

VARIANTS = {"cuts": [], "nocuts": ["extract.early_cuts=false"]}


class PeakRss:
    """Samples VmHWM (peak RSS) of the Ray worker processes every `every` s, by process title."""

    def __init__(self, every: float = 0.25):
        self.every, self.peaks = every, {}  # pid -> (title, peak MiB)
        self.cpu: dict[str, float] = {}  # pid -> CPU seconds (user + system) since the sampling began
        self._base: dict[str, float] = {}  # pid -> CPU seconds it had used at the first sample (older workers)
        self._first = True
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def sample(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                if not title.startswith("ray::"):
                    continue
                status = Path(f"/proc/{pid}/status").read_text()
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used = (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime
            if self._first:
                self._base[pid] = used  # a worker process Ray reuses: count only what it uses from now on
            self.cpu[pid] = used - self._base.get(pid, 0.0)
            hwm = next((ln for ln in status.splitlines() if ln.startswith("VmHWM:")), None)
            if hwm:
                mib = int(hwm.split()[1]) / 1024
                self.peaks[pid] = (title, max(mib, self.peaks.get(pid, ("", 0.0))[1]))
        self._first = False

    def cpu_of(self, prefix: str) -> float:
        """CPU seconds of the processes whose title starts with `prefix` (up to each one's last sample)."""
        return round(
            sum(self.cpu.get(pid, 0.0) for pid, (title, _) in self.peaks.items() if title.startswith(prefix)), 2
        )

    def max_of(self, prefix: str, exclude: bool = False) -> float:
        values = [mib for title, mib in self.peaks.values() if title.startswith(prefix) != exclude]
        return round(max(values, default=0.0), 1)


def _stage(stats: dict[str, Any], name: str) -> dict[str, Any]:
    return next((s for s in stats["stages"] if s["name"] == name), {"in": 0, "out": 0, "drops": {}})


def run_build(files: list[Path], smallest: Path, workers: int, overrides: list[str], tmp: Path) -> dict[str, Any]:
    import ray

    from corpus.config import load_config
    from pipeline.build import BuildConfig, build_corpus

    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    ray_s = time.perf_counter() - t0
    cfg = load_config(BuildConfig, None, [f"ray.workers={workers}", *overrides])
    try:
        t0 = time.perf_counter()
        build_corpus([str(smallest)], tmp / f"fixed-{workers}", cfg, progress=False)
        fixed_s = time.perf_counter() - t0
        with PeakRss() as rss:
            t0 = time.perf_counter()
            stats = build_corpus([str(f) for f in files], tmp / f"corpus-{workers}", cfg, progress=False)
            build_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    pages = _stage(stats, "extract")["in"]
    dedup = Counter()
    for s in stats["stages"]:
        if s["name"].startswith("dedup"):
            dedup.update({f"{s['name']}: {reason}": n for reason, n in s["drops"].items()})
    extract_drops = _stage(stats, "extract")["drops"]
    cut = {reason: extract_drops.get(reason, 0) for reason in ("no_image_candidates", "no_usable_image")}
    return {
        "workers": workers,
        "pages": pages,
        "early_cuts": cut,
        "extracted": pages - sum(cut.values()),
        "kept": stats["build"]["documents"],
        "dedup_removals": dict(dedup),
        # images the pages show after the junk rules, and those looked up by the image stage (what a build
        # with images.fetch=true would fetch): the basis of the image-fetching part of the sizing
        "image_candidates": stats["items"].get("extract/image", {}).get("in", 0),
        "image_lookups": stats["items"].get("images/image", {}).get("in", 0),
        "ray_start_s": round(ray_s, 2),
        "fixed_s": round(fixed_s, 2),
        "build_s": round(build_s, 2),
        "pages_per_s_per_core_all_in": round(pages / (build_s + ray_s) / workers, 2),
        "pages_per_s_per_core": round(pages / (build_s - fixed_s) / workers, 2),
        # CPU seconds of the unit workers, all Ray workers (dedup tasks too), and pages per CPU second of all of
        # them: a rate that other jobs on the machine do not skew (the driver's own CPU is left out)
        "cpu_s_unit_workers": rss.cpu_of("ray::UnitWorker"),
        "cpu_s_ray_workers": rss.cpu_of("ray::"),
        "pages_per_cpu_s": round(pages / max(rss.cpu_of("ray::"), 1e-9), 2),
        "peak_rss_mib_unit_worker": rss.max_of("ray::UnitWorker"),
        "peak_rss_mib_other_ray_workers": rss.max_of("ray::UnitWorker", exclude=True),
    }


def run_datatrove(files: list[Path], tmp: Path) -> dict[str, Any]:
    from bench.text_path import run_datatrove as dt

    out = tmp / "datatrove"
    out.mkdir()
    res = dt(files, out)
    return {
        "pages": res.docs_in,
        "kept": res.kept,
        "seconds": round(res.wall_s, 2),
        "cpu_s": round(res.cpu_s, 2),
        "pages_per_s_per_core": round(res.docs_in / res.wall_s, 2),
        "pages_per_cpu_s": round(res.docs_in / res.cpu_s, 2),
    }


def profile_phase1(files: list[Path], overrides: list[str], out: Path) -> dict[str, Any]:
    """Phase 1 (read -> extract -> filters -> images -> staged Parquet) in this process, no Ray: seconds per
    stage (each step's `process` timed) and cProfile's top functions; then the dedup passes (on Ray) and
    phase 3 (in this process), timed whole."""
    import ray

    from corpus.config import dump_config, load_config
    from crawl.sources import discover_units
    from filters.dedup import run_dedup
    from pipeline.build import BuildConfig, UnitWorker

    cfg = load_config(BuildConfig, None, ["ray.workers=1", *overrides])
    worker = UnitWorker(dump_config(cfg))
    t0 = time.perf_counter()
    worker.steps.setup()
    setup_s = time.perf_counter() - t0
    per_stage: Counter[str] = Counter()
    unit_steps = worker.steps.unit

    def timed_unit(*a, **k):
        steps = unit_steps(*a, **k)
        for step in steps:
            if not getattr(step, "_bench_timed", False):
                inner = step.process

                def process(item, ledger, _inner=inner, _name=step.name):
                    t = time.perf_counter()
                    try:
                        return _inner(item, ledger)
                    finally:
                        per_stage[_name] += time.perf_counter() - t

                step.process = process  # type: ignore[method-assign]
                step._bench_timed = True  # type: ignore[attr-defined]
        return steps

    worker.steps.unit = timed_unit  # type: ignore[method-assign]
    units = discover_units([str(f) for f in files])
    work = out / "work"
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    summaries = [worker.run_unit(u, str(work)) for u in units]
    prof.disable()
    phase1_s = time.perf_counter() - t0
    pages = sum(_stage(s["ledger"], "extract")["in"] for s in summaries)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        staged = [str(work / "units" / u.name / "docs.parquet") for u in units]
        run_dedup(staged, str(work / "dedup"), cfg.dedup, str(out / "corpus"), progress=False)
        dedup_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    t0 = time.perf_counter()
    for i, u in enumerate(units):
        worker.write_unit(i, u, str(work), str(out / "corpus"))
    write_s = time.perf_counter() - t0
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
    stages = {k: round(v, 2) for k, v in per_stage.most_common()}
    return {
        "pages": pages,
        "setup_s (models)": round(setup_s, 2),
        "phase1_s": round(phase1_s, 2),
        "phase1_per_stage_s": stages,
        "phase1_rest_s (read, WARC index, staged Parquet)": round(phase1_s - sum(per_stage.values()), 2),
        "dedup_passes_s (Ray, 1 CPU)": round(dedup_s, 2),
        "phase3_write_s": round(write_s, 2),
        "cprofile_top_tottime": text.getvalue(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=13, help="copies of the dev WARCs (13: 2,080 pages)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="unit workers (= cores) to run")
    ap.add_argument("--variants", nargs="+", default=["cuts", "nocuts"], choices=sorted(VARIANTS))
    ap.add_argument("--no-datatrove", action="store_true", help="leave the datatrove peer out")
    ap.add_argument("--profile", action="store_true", help="profile phase 1 per stage instead (first variant)")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args()
    rows: dict[str, Any] = {"load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        files = replicate(dev_warcs(), tmp / "in", args.copies)
        rows["replicate_s"] = round(time.perf_counter() - t0, 1)
        smallest = min(files, key=lambda p: p.stat().st_size)
        if args.profile:
            for variant in args.variants:
                rows[f"profile {variant}"] = profile_phase1(files, VARIANTS[variant], tmp / f"profile-{variant}")
                print(rows[f"profile {variant}"].pop("cprofile_top_tottime"))
                print(json.dumps(rows[f"profile {variant}"], indent=2))
        else:
            for variant in args.variants:
                for w in args.workers:
                    rows[f"build {variant} w{w}"] = run_build(files, smallest, w, VARIANTS[variant], tmp / variant)
                    print(json.dumps(rows[f"build {variant} w{w}"]), flush=True)
            if not args.no_datatrove:
                rows["datatrove"] = run_datatrove(files, tmp)
                print(json.dumps(rows["datatrove"]), flush=True)
            report(rows, args.workers, args.variants)
    rows["load_average_after"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


def report(rows: dict[str, Any], workers: list[int], variants: list[str]) -> None:
    dt = rows.get("datatrove")
    print(
        "| what | pages | extracted | kept | Ray start s | fixed s | build s | pages/s/core steady | vs datatrove | "
        "pages per CPU s | vs datatrove | peak RSS/worker MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for variant in variants:
        for w in workers:
            r = rows[f"build {variant} w{w}"]
            ratio = f"{r['pages_per_s_per_core'] / dt['pages_per_s_per_core']:.2f}x" if dt else "-"
            cpu_ratio = f"{r['pages_per_cpu_s'] / dt['pages_per_cpu_s']:.2f}x" if dt else "-"
            print(
                f"| interloom build, {variant}, {w} worker(s) | {r['pages']} | {r['extracted']} | {r['kept']} | "
                f"{r['ray_start_s']} | {r['fixed_s']} | {r['build_s']} | {r['pages_per_s_per_core']} | {ratio} | "
                f"{r['pages_per_cpu_s']} | {cpu_ratio} | {r['peak_rss_mib_unit_worker']} |"
            )
        if 1 in workers and 2 in workers:
            one, two = rows[f"build {variant} w1"], rows[f"build {variant} w2"]
            eff = two["pages_per_s_per_core"] / one["pages_per_s_per_core"]
            cpu_eff = two["pages_per_cpu_s"] / one["pages_per_cpu_s"]
            rows[f"scaling_efficiency_{variant}"] = round(eff, 3)
            rows[f"cpu_efficiency_{variant}"] = round(cpu_eff, 3)
            print(
                f"scaling efficiency 1 -> 2 workers, {variant}: {eff:.2f} (wall, per core); "
                f"{cpu_eff:.2f} (pages per CPU second)"
            )
    if dt:
        print(
            f"| datatrove text-only, 1 task | {dt['pages']} | - | {dt['kept']} | - | - | {dt['seconds']} | "
            f"{dt['pages_per_s_per_core']} | 1.00x | {dt['pages_per_cpu_s']} | 1.00x | - |"
        )


if __name__ == "__main__":
    main()
