"""The `interloom` command line. Each subcommand lives in its own module exposing `register(subparsers)`,
which adds its parser and sets `func` to the function that runs it; this file imports and lists them.
Library code logs (`logging`); this entry point shows the INFO messages of interloom's own packages."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.cli import crawl as crawl_cli
from pipeline.cli import quality as quality_cli
from pipeline.cli import build as build_cli
from pipeline.cli import demo
from pipeline.cli import export as export_cli
from pipeline.cli import refilter as refilter_cli
from pipeline.cli import inspect as inspect_cli
from pipeline.cli import train as train_cli
from pipeline.cli import evaluate as eval_cli
from pipeline.cli import generate as generate_cli
from pipeline.cli import tokenizer as tokenizer_cli

# subcommand modules, in the order `interloom --help` lists them
COMMANDS = [
    demo,  # interloom demo
    build_cli,  # interloom build
    refilter_cli,  # interloom refilter
    crawl_cli,  # interloom crawl
    inspect_cli,  # interloom inspect
    export_cli,  # interloom export hf | model
    quality_cli,  # interloom quality train
    tokenizer_cli,  # interloom tokenizer train
    train_cli,  # interloom train
    eval_cli,  # interloom eval
    generate_cli,  # interloom generate
]
PACKAGES = ["corpus", "crawl", "filters", "pipeline", "train"]  # whose INFO log lines the command shows

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
    for command in COMMANDS:
        command.register(sub)
    return parser


def show_logs(level: int = logging.INFO) -> None:
    """interloom's log lines on stderr (other libraries keep their own levels)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    show_logs()
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
