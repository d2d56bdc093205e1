"""Build throughput on the dev WARCs: documents/s per core of `interloom build`, beside the cost of plain
trafilatura extraction of the same pages (the floor any extraction-based build pays), in one run.

    .venv/bin/python -m bench.build [--workers 1] [--out build.json]

"documents" = HTML pages that reached extraction (the `extract` stage's `in`); the build does everything
(read, extract, filters, images, dedup, shards), the peer only `trafilatura.extract` on the same pages.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "dev" / "warc"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1, help="unit workers = cores used (default 1)")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args()
    if not REAL.exists():
        raise SystemExit(f"dev WARCs not found at {REAL} (../shared/data/real)")
    warcs = sorted(str(p) for p in REAL.iterdir() if ".warc" in p.name)

    import ray
    import trafilatura

    from corpus.config import load_config
    from corpus.stats import Ledger
    from crawl.extract import decode_html
    from crawl.sources import discover_units, open_source
    from pipeline.build import BuildConfig, build_corpus

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    cfg = load_config(BuildConfig, None, [f"ray.workers={args.workers}", "extract.timeout_s=300"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stats = build_corpus(warcs, Path(tmp) / "corpus", cfg, progress=False)
        build_s = time.perf_counter() - t0
    pages = next(s for s in stats["stages"] if s["name"] == "extract")["in"]
    kept = stats["build"]["documents"]

    # the peer: plain trafilatura.extract over the same pages, one core
    htmls = []
    for unit in discover_units(warcs):
        src = open_source(unit)
        src.index_images()
        for page in src.pages(Ledger()):
            try:
                htmls.append((decode_html(page.body, page.charset), page.url))
            except ValueError:
                pass
    t0 = time.perf_counter()
    for html, url in htmls:
        trafilatura.extract(html, url=url)
    peer_s = time.perf_counter() - t0

    rows = {
        "pages": pages,
        "kept": kept,
        "workers": args.workers,
        "build_seconds": round(build_s, 2),
        "build_docs_per_s_per_core": round(pages / build_s / args.workers, 2),
        "trafilatura_seconds": round(peer_s, 2),
        "trafilatura_docs_per_s": round(len(htmls) / peer_s, 2),
    }
    rows["ratio_build_vs_trafilatura"] = round(rows["build_docs_per_s_per_core"] / rows["trafilatura_docs_per_s"], 3)
    print("| what | pages | seconds | documents/s per core |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| interloom build (all stages, {args.workers} worker) | {pages} | {build_s:.1f} | "
        f"{rows['build_docs_per_s_per_core']:.2f} |"
    )
    print(
        f"| plain trafilatura.extract, same pages | {len(htmls)} | {peer_s:.1f} | {rows['trafilatura_docs_per_s']:.2f} |"
    )
    print(f"ratio build / plain extraction: {rows['ratio_build_vs_trafilatura']:.2f}; kept {kept} documents")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
