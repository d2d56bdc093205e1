"""`interloom inspect` on a synthetic corpus of N documents (default 1,000,000): wall time, peak memory of
the process and the size of the report. Run: .venv/bin/python -m bench.inspect_scale [--docs N]

The corpus: one template shard of `--per-shard` small documents (text, every 20th with a JPEG) written by
`write_shards`, hard-linked as N / per-shard shards whose index rows get their own ids and random quality
signals (so every index row is a distinct document and the histograms have shape); a rejects file per shard
(as a build writes one per unit) with one document drop (with signals) per 3 kept documents and one
text-block drop per kept document; stats.json
and build.json with the default filters' thresholds. `inspect` runs in a fresh process (`--sample 200`),
so its peak RSS (`ru_maxrss` of the child) is the report's alone. Use --docs 100000 for a second point:
memory that does not grow with N is the bounded-memory check.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image as PILImage

from corpus.format import ShardInfo, append_manifest, write_shards
from corpus.record import Document, Image, make_doc_id
from corpus.stats import REJECTS_SCHEMA
from filters.config import FiltersConfig
from filters.registry import declared_signals

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
]


def template_docs(n: int, rng: np.random.Generator) -> list[Document]:
    buf = io.BytesIO()
    PILImage.new("RGB", (96, 64), (200, 120, 40)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    docs = []
    for i in range(n):
        doc = Document(
            id=make_doc_id(f"t:{i}"),
            url=f"https://site{i % 997}.example/p/{i}",
            source=f"warc:f{i % 40}.warc.gz#{i}",
            lang=["en", "de", "fr", "zh"][i % 4],
            lang_score=0.9,
            title=f"Page {i}",
        )
        for _ in range(1 + i % 3):
            doc.append_text(" ".join(rng.choice(WORDS, size=40 + i % 200)) + ".")
        if i % 20 == 0:
            doc.append_image(
                Image(
                    url=f"https://img.example/{i}.jpg",
                    alt="",
                    width=96,
                    height=64,
                    format="jpeg",
                    phash="0" * 16,
                    data=jpeg,
                )
            )
        docs.append(doc)
    return docs


def signals_json(rng: np.random.Generator, n: int) -> list[str]:
    words = rng.integers(50, 3000, n)
    lang = rng.uniform(0.65, 1.0, n)
    alpha = rng.uniform(0.8, 1.0, n)
    dup = rng.uniform(0.0, 0.3, n)
    return [
        f'{{"lang_score": {a:.4f}, "gopher_n_words": {w}, "gopher_alpha_words_ratio": {b:.4f}, '
        f'"gopher_dup_line_frac": {c:.4f}, "n_images": {w % 4}}}'
        for a, w, b, c in zip(lang, words, alpha, dup)
    ]


def make_corpus(root: Path, n_docs: int, per_shard: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    [template] = write_shards(template_docs(per_shard, rng), root, "template", max_docs=per_shard, max_bytes=1 << 40)
    index = pq.read_table(root / "index" / f"{template.name}.parquet")
    shards = []
    for s in range(n_docs // per_shard):
        name = f"syn-{s:05d}"
        os.link(root / "shards" / f"{template.name}.tar", root / "shards" / f"{name}.tar")
        n = index.num_rows
        ids = pa.array([make_doc_id(f"syn:{s}:{j}") for j in range(n)])
        t = index.set_column(index.schema.get_field_index("id"), "id", ids)
        t = t.set_column(t.schema.get_field_index("shard"), "shard", pa.array([name] * n))
        t = t.set_column(t.schema.get_field_index("signals"), "signals", pa.array(signals_json(rng, n)))
        pq.write_table(t, root / "index" / f"{name}.parquet")
        shards.append(ShardInfo(name, n, template.images, template.bytes, template.sha256))
    (root / "index" / f"{template.name}.parquet").unlink()
    (root / "shards" / f"{template.name}.tar").unlink()
    (root / "manifest.jsonl").unlink(missing_ok=True)
    append_manifest(root, shards)
    (root / "rejects").mkdir()
    # one rejects file per shard, as a build writes one per unit of work: a document drop (with signals) per
    # 3 kept documents, one text-block drop per kept document
    reasons = np.array(["gopher_too_few_words", "lang_low_score", "near_duplicate", "c4_too_few_sentences"])
    stage_of = np.array(["gopher_quality", "language", "dedup", "c4"])
    n_rej = 0
    for s, shard in enumerate(shards):
        m = per_shard // 3
        pick = rng.integers(0, len(reasons), m)
        docs = pa.table(
            {
                "id": [make_doc_id(f"rej:{s}:{j}") for j in range(m)],
                "url": [f"https://rej{j % 991}.example/{s}/{j}" for j in range(m)],
                "stage": pa.array(stage_of[pick]),
                "item": ["document"] * m,
                "reason": pa.array(reasons[pick]),
                "detail": ["gopher_n_words=12 (min 50: min_doc_words)"] * m,
                "signals": signals_json(rng, m),
                "text": [("rejected text " * 20) if j < 20 else "" for j in range(m)],
                "key": rng.random(m),
            },
            schema=REJECTS_SCHEMA,
        )
        k = per_shard
        blocks = pa.table(
            {
                "id": [""] * k,
                "url": [""] * k,
                "stage": ["text_blocks"] * k,
                "item": ["text"] * k,
                "reason": ["no_terminal_punct"] * k,
                "detail": [""] * k,
                "signals": [""] * k,
                "text": [""] * k,
                "key": np.ones(k),
            },
            schema=REJECTS_SCHEMA,
        )
        pq.write_table(pa.concat_tables([docs, blocks]), root / "rejects" / f"{shard.name}.parquet")
        n_rej += m
    kept = len(shards) * per_shard
    stages = [
        {"name": "language", "in": kept + n_rej, "out": kept + n_rej * 3 // 4, "drops": {"lang_low_score": n_rej // 4}},
        {
            "name": "gopher_quality",
            "in": kept + n_rej * 3 // 4,
            "out": kept,
            "drops": {"gopher_too_few_words": n_rej * 3 // 4},
        },
    ]
    (root / "stats.json").write_text(json.dumps({"stages": stages, "items": {}, "counters": {}}))
    (root / "build.json").write_text(
        json.dumps(
            {
                "started_at": "synthetic",
                "finished_at": "synthetic",
                "config": {},
                "signals": declared_signals(FiltersConfig()),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--per-shard", type=int, default=10_000)
    ap.add_argument("--keep", action="store_true", help="keep the synthetic corpus (path printed)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="interloom-inspect-bench-")) / "corpus"
    t0 = time.perf_counter()
    make_corpus(root, args.docs, args.per_shard)
    made = time.perf_counter() - t0
    out = root.parent / "report"
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "inspect",
            str(root),
            "--output",
            str(out),
            "--sample",
            "200",
            "--no-progress",
            "--json",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    html = (out / "index.html").stat().st_size
    assets = sum(p.stat().st_size for p in (out / "assets").rglob("*") if p.is_file())
    summary = json.loads((out / "summary.json").read_text())
    result = {
        "documents": summary["totals"]["documents"],
        "rejects_rows": summary["rejects"]["rows"],
        "what_if_sample": summary["what_if"],
        "corpus_made_s": round(made, 1),
        "inspect_s": round(wall, 1),
        "peak_rss_mib": round(peak_mib),
        "index_html_mib": round(html / 2**20, 2),
        "assets_mib": round(assets / 2**20, 2),
    }
    print(json.dumps(result, indent=2))
    if args.keep:
        print(f"corpus kept in {root}")
    else:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
