"""`interloom inspect`: a self-contained HTML report and a JSON summary of a corpus.

`make_report(corpus, output)` streams the index once (summary.py), reads a seeded bottom-k sample of documents
from their shards (docs.py), and writes `OUTPUT/index.html` with inline SVG charts (charts.py, render.py),
`OUTPUT/assets/img/*.jpg` and `OUTPUT/summary.json` (the same figures, for machines). The page also embeds a
seeded sample of per-document signals for its what-if controls (summary.py `SignalStats`, `what_if`).
`compare.py` is `inspect A --against B`.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corpus.format import Corpus
from pipeline.report.docs import load_documents, repeated_image
from pipeline.report.render import render_html
from pipeline.report.summary import summarize


def default_output(corpus: str) -> Path:
    if "://" in corpus:
        raise ValueError(f"corpus {corpus} is not a local folder: give --output DIR for the report")
    return Path(corpus) / "report"


def make_report(
    corpus_path: str | Path,
    output: str | Path | None = None,
    *,
    sample: int = 200,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the report folder; returns the summary (also written as summary.json)."""
    if sample < 0:
        raise ValueError(f"--sample must be >= 0, got {sample}")
    corpus = Corpus(corpus_path)
    out = Path(output) if output is not None else default_output(str(corpus_path))
    summary, scan, rejects = summarize(corpus, sample=sample, seed=seed, progress=progress)

    img_dir = out / "assets" / "img"
    if img_dir.exists():
        shutil.rmtree(img_dir)  # a re-run must not leave images of an older sample behind
    img_dir.mkdir(parents=True)
    wanted = scan.sample  # shard by shard, in offset order
    sampled_ids = {doc_id for _, _, doc_id in wanted}
    keepers = sorted(
        (shard, off, doc_id) for doc_id, (shard, off) in scan.found_ids.items() if doc_id not in sampled_ids
    )
    documents, load_errors = load_documents(
        corpus,
        [(s, o, "sample", i) for s, o, i in wanted] + [(s, o, "keeper", i) for s, o, i in keepers],
        out,
        progress,
    )
    for d in documents:  # a sampled document that is also a cluster keeper links from the dedup view too
        if d["role"] == "sample" and d["id"] in scan.found_ids:
            d["role"] = "keeper"

    repeated = []
    for i, im in enumerate((summary["dedup"]["images"] or {}).get("top", [])):
        item = dict(im)
        where = scan.found_phash.get(im["phash"])
        if where is None:
            item["error"] = "no copy in the corpus"
        else:
            name = f"rep{i:03d}.jpg"
            error = repeated_image(corpus, where[0], where[1], where[2], img_dir / name)
            if error:
                item["error"] = error
            else:
                item["src"] = f"assets/img/{name}"
        repeated.append(item)

    generated_at = datetime.now(UTC).isoformat(timespec="seconds")
    summary["generated_at"] = generated_at
    summary["sample"]["load_errors"] = load_errors
    html = render_html(
        summary,
        documents,
        rejects["sample"],
        repeated,
        load_errors,
        generated_at,
        scan.signals.what_if_data(scan.documents),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.html").write_text(html, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return summary
