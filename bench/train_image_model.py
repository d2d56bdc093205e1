"""Rebuild crawl/image_model.json: the image model of crawl/image_select.py fitted on all dev pages.

Labels: the readability gold images where a page has them, Readability.js silver images elsewhere
(../shared/data/real/dev). Features come from `crawl.extract.extract_parts` with the default `ExtractConfig`,
so the shipped model sees what the build sees. bench/extraction.py fits the same model inside site-grouped
folds to measure how well it carries to unseen sites.

    .venv/bin/python -m bench.train_image_model [--out crawl/image_model.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.extraction import (
    DATA,
    choose_hyper,
    compute_parts,
    fit_image_model,
    load_pages,
    training_rows,
)
from crawl.extract import ExtractConfig
from crawl.image_select import MODEL_PATH


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the shared real-data folder")
    ap.add_argument("--out", type=Path, default=MODEL_PATH)
    args = ap.parse_args(argv)
    if not (args.data / "dev" / "html" / "manifest.jsonl").is_file():
        print(f"no dev HTML data under {args.data}", file=sys.stderr)
        return 2
    pages = load_pages(args.data)
    parts = compute_parts(pages, ExtractConfig().focus)
    l2, power = choose_hyper(pages, parts)  # as bench.extraction chooses them
    model = fit_image_model(pages, parts, l2, power)
    _, y_N = training_rows(pages, parts)
    model.note = (
        f"fitted by bench/train_image_model.py on {len(pages)} dev pages, {len(y_N)} candidate images "
        f"({int(y_N.sum())} positive; gold labels on readability pages, Readability.js silver elsewhere), "
        f"l2={l2}, page weight n_rows**-{power}"
    )
    args.out.write_text(json.dumps(model.to_dict(), indent=1) + "\n")
    print(f"wrote {args.out}: threshold {model.threshold}; {model.note}")
    for name, w in sorted(zip(model.features, model.weights), key=lambda t: t[1]):
        print(f"  {name:24s} {w:+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
