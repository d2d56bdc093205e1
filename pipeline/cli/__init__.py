"""The `interloom` command line. Each subcommand lives in its own module, pipeline/cli/<command>.py, exposing
`register(subparsers)`, which adds its parser and sets `func` to the function that runs it; this file imports
and lists them.
Library code logs (`logging`); this entry point shows the INFO messages of interloom's own packages."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from corpus.config import validation_problems
from pipeline.cli import build, crawl, demo, evaluate, export, generate, inspect, quality, refilter, tokenizer, train

# subcommand modules (pipeline/cli/<command>.py), in the order `interloom --help` lists them
COMMANDS = [demo, build, refilter, crawl, inspect, export, quality, tokenizer, train, evaluate, generate]
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


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that keeps the line breaks of descriptions and epilogs (the examples in every
    `--help`). `add_subparsers` makes each subcommand's parser of the same class, so the commands' modules
    only say what they add."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="interloom",
        description="Build interleaved image-text corpora on Ray, inspect them, and train a MoE VLM on them.",
        epilog=EPILOG,
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
    except ValidationError as e:  # a config built from a file the command read, not through load_config
        print(f"interloom {args.command}: error: invalid {e.title}: {validation_problems(e)}", file=sys.stderr)
        return 2
    except ValueError as e:  # user errors: bad config, missing input, unreadable corpus
        print(f"interloom {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused: an output folder that cannot be created, a full disk, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"interloom {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
