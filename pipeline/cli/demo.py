"""`interloom demo`: the three jobs together on the embedded sample, on one machine, CPU only.

1. make the sample WARC (real prose from Python's bundled docs, real photos from scikit-image, planted
   duplicates and junk; see pipeline/sample.py),
2. build it into a corpus on a local Ray instance,
3. train the `debug-cpu` recipe on that corpus (loss printed as it falls),
4. write the inspection report,
and print where everything is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = """\
Run the whole interloom job on a small sample the project makes itself (CPU only, a few minutes):
sample WARC -> corpus (Ray) -> debug-cpu MoE VLM training -> HTML report. Nothing is downloaded.

The output folder gets sample/ (the WARC), corpus/, run/ (checkpoints, metrics.jsonl, tb/) and
report/index.html.
"""

EXAMPLES = """\
examples:
  interloom demo                                 everything, into demo-out/
  interloom demo --skip-train --output /tmp/d    corpus and report only (under a minute)
  interloom demo --pages 79 --steps 600
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="sample -> corpus -> training -> report, on this machine",
        description=HELP,
        epilog=EXAMPLES,
    )
    p.add_argument(
        "--output", "-o", default="demo-out", metavar="DIR", help="where everything goes (default: demo-out)"
    )
    p.add_argument(
        "--pages", type=int, default=60, metavar="N", help="article pages in the sample (default: 60, max 79)"
    )
    p.add_argument("--steps", type=int, default=300, metavar="N", help="training steps (default: 300)")
    p.add_argument("--skip-train", action="store_true", help="no training: sample, corpus and report only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydoc_data.topics import topics  # the prose of the sample's article pages

    from corpus.config import load_config
    from pipeline.build import BuildConfig, build_corpus
    from pipeline.cli.build import print_summary
    from pipeline.sample import make_sample

    if not 1 <= args.pages <= len(topics):
        raise ValueError(f"--pages {args.pages}: the sample has 1 to {len(topics)} article pages")
    if args.steps < 1 and not args.skip_train:
        raise ValueError(f"--steps {args.steps}: train at least 1 step (or --skip-train)")
    out = Path(args.output).resolve()
    t0 = time.time()
    print(f"[1/4] writing the sample WARC to {out / 'sample'}")
    warc = make_sample(out / "sample", n_pages=args.pages)
    corpus = out / "corpus"
    print(f"[2/4] building the corpus into {corpus}")
    cfg = load_config(BuildConfig, None, [])
    stats = build_corpus([str(warc)], corpus, cfg)
    print_summary(stats, str(corpus))
    where = {"sample": warc, "corpus": corpus}
    if not args.skip_train:
        print(f"[3/4] training the debug-cpu recipe on the corpus ({args.steps} steps, 2 Ray workers)")
        where.update(train_debug(corpus, out / "run", steps=args.steps))
    from pipeline.report import make_report

    print("[4/4] writing the inspection report")
    make_report(str(corpus), out / "report", progress=True)
    where["report"] = out / "report" / "index.html"
    print(f"\ndone in {time.time() - t0:.0f}s. Everything is under {out}/:")
    for k, v in where.items():
        print(f"  {k:<10} {v}")
    return 0


def train_debug(corpus: Path, run_dir: Path, steps: int) -> dict[str, Path]:
    """Train the debug-cpu recipe on the corpus and print how the loss fell."""
    import json

    from corpus.config import load_config
    from train.config import TrainConfig, resolve_recipe
    from train.trainer import run_training

    cfg = load_config(
        TrainConfig,
        resolve_recipe("debug-cpu"),
        [f"data.corpus={corpus}", f"run.output={run_dir}", f"stages=[{{trainable: all, steps: {steps}}}]"],
    )
    run_training(cfg)
    metrics = run_dir / "metrics.jsonl"
    losses = [json.loads(line)["loss"] for line in metrics.read_text().splitlines() if '"loss"' in line]
    if losses:
        k = max(1, len(losses) // 5)
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        print(f"\n  loss: first {k} log steps {first:.3f} -> last {k} log steps {last:.3f}")
    return {"run": run_dir, "metrics": metrics, "tensorboard": run_dir / "tb"}
