"""The `interloom` command line. Each subcommand lives in its own module exposing `register(subparsers)`,
which adds its parser and sets `func` to the function that runs it; this file only lists them."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand modules, in the order `interloom --help` lists them
COMMANDS = [
    "pipeline.demo",  # interloom demo
    "pipeline.build_cli",  # interloom build
    "crawl.crawl_cli",  # interloom crawl
    "pipeline.report.cli",  # interloom inspect
    "pipeline.export",  # interloom export hf
    "filters.quality_cli",  # interloom quality train
    "train.tokenizer_cli",  # interloom tokenizer train
    "train.cli",  # interloom train
]

EPILOG = """\
quick start:
  interloom demo                         sample -> corpus -> training -> report on this machine
  interloom build --input 'data/*.warc.gz' --output corpus/
  interloom build --input 'data/*.warc.gz' --output corpus/ --config run.yaml --set images.min_side=200
  interloom inspect corpus/              HTML report in corpus/report/index.html
  interloom train debug-cpu --corpus corpus/ --output runs/debug

Run `interloom COMMAND --help` for the options of each command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interloom",
        description="Build interleaved image-text corpora on Ray, inspect them, and train a MoE VLM on them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # user errors: bad config, missing input, unreadable corpus
        print(f"interloom {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused: an output folder that cannot be created, a full disk, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"interloom {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
