"""`interloom build`: turn WARC files or folders of HTML pages into a corpus."""

from __future__ import annotations

import argparse
import json

from corpus.config import load_config

HELP = """\
Build a corpus of interleaved image-text documents from web archives.

Each input (a WARC/WARC.gz file, an .html/.html.gz file or a folder of HTML files) is one unit of work.
The build runs on Ray: a local instance by default, a cluster with --address. Killing a build and
running the same command again resumes it: finished units are skipped, nothing is lost or doubled.

The output folder gets: shards/*.tar (WebDataset), index/*.parquet (one row per document,
OBELICS columns), manifest.jsonl, stats.json (the funnel), rejects/*.parquet, dedup/, build.json.
"""

EXAMPLES = """\
examples:
  interloom build --input '../shared/data/real/dev/warc/*.warc.gz' --output corpus/
  interloom build --input 'crawl/*.warc.gz' --output corpus/ --config run.yaml
  interloom build --input pages/ --output corpus/ --set images.min_side=200 --set filters.language.languages=[en,de]
  interloom build --crawl seeds.txt --output corpus/ --set images.fetch=true
  interloom build --input 'more/*.warc.gz' --output corpus/ --append     # add WARCs to a finished corpus
  interloom build --input '/shared/cc/*.warc.gz' --output /shared/corpus/ --address ray://head:10001 --workers 64
  interloom build --input 's3://bucket/cc/*.warc.gz' --output s3://bucket/corpus --address auto \\
      --set output.work_dir=/shared/work/corpus
  interloom build --input s3://commoncrawl/crawl-data/CC-MAIN-2024-10/warc.paths.gz \\
      --input-prefix s3://commoncrawl/ --set input.anon=true --sample-files 10 --output cc-try/

config: a YAML file with any of the sections input, crawl, extract, images, filters, dedup, output, ray;
  `interloom build --print-config` shows every key with its default. On a cluster: docs/cluster-build.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build a corpus from WARC files or HTML folders",
        description=HELP,
        epilog=EXAMPLES,
    )
    p.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="GLOB",
        help="WARC or .html(.gz) files, or folders of HTML files; a glob (quote it) or an "
        "s3://... URL (glob too); or a path list (warc.paths.gz, a .txt of paths/URLs); repeatable",
    )
    p.add_argument(
        "--input-prefix",
        metavar="URL",
        help="resolve the relative paths of a path list against "
        "this, e.g. s3://commoncrawl/ or https://data.commoncrawl.org/ (input.prefix)",
    )
    p.add_argument(
        "--sample-files",
        type=float,
        metavar="N",
        help="build a seeded sample of the input files: "
        "N files, or a share below 1 (input.sample_files; seed: input.sample_seed)",
    )
    p.add_argument(
        "--output",
        "-o",
        metavar="DIR",
        help="corpus folder (or s3://... URL, with output.work_dir set) to create or resume",
    )
    p.add_argument(
        "--crawl",
        metavar="SEEDS",
        help="crawl these seed URLs first (a .txt or Parquet file) and "
        "build the crawl's WARCs (kept in DIR/crawl); see `interloom crawl --help`",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="add the inputs to the finished corpus in --output: the new documents are deduplicated against "
        "the whole corpus (existing documents win); old shards are not touched; inputs already in the corpus "
        "are skipped; the config must be the corpus's own",
    )
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a config value, e.g. images.min_side=200 (repeatable)",
    )
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start a local instance)")
    p.add_argument("--workers", type=int, metavar="N", help="unit workers (default: one per CPU)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.build import BuildConfig, build_corpus

    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray.address={args.address}")
    if args.crawl:
        overrides.append(f"input.crawl_seeds={args.crawl}")
    if args.input_prefix:
        overrides.append(f"input.prefix={args.input_prefix}")
    if args.sample_files is not None:
        overrides.append(f"input.sample_files={args.sample_files:g}")
    if args.workers is not None:
        overrides.append(f"ray.workers={args.workers}")
    cfg = load_config(BuildConfig, args.config, overrides)
    if args.print_config:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0
    if not (args.input or args.crawl) or not args.output:
        raise ValueError("--output and --input (or --crawl) are required (see `interloom build --help`)")
    stats = build_corpus(args.input, args.output, cfg, progress=not args.no_progress, append=args.append)
    print_summary(stats, args.output)
    return 0


def print_summary(stats: dict, output: str) -> None:
    print(f"\ncorpus: {output}")
    b = stats.get("build", {})
    print(
        f"  {b.get('documents', 0)} documents in {b.get('shards', 0)} shards from {b.get('units', 0)} "
        f"inputs in {b.get('seconds', 0):.1f}s"
    )
    print(f"  {'stage':<22}{'in':>8}{'out':>8}  top drop reasons")
    for s in stats["stages"]:
        top = sorted(s["drops"].items(), key=lambda kv: -kv[1])[:3]
        reasons = ", ".join(f"{k} {v}" for k, v in top)
        print(f"  {s['name']:<22}{s['in']:>8}{s['out']:>8}  {reasons}")
    for key, s in stats.get("items", {}).items():
        top = sorted(s["drops"].items(), key=lambda kv: -kv[1])[:3]
        reasons = ", ".join(f"{k} {v}" for k, v in top)
        print(f"  {key:<22}{s['in']:>8}{s['out']:>8}  {reasons}")
    for line in b.get("notes", []):
        print(f"  {line}")
    for name, n in b.get("errors", {}).items():
        print(
            f"  ERROR: {n} x {name}: a limit of the machine, not of the input, decided these pages; "
            f"another run may give another corpus"
        )
