"""`interloom quality train`: train the fastText quality classifier from positive and negative examples.

    interloom quality train --positive good.jsonl refs/ --negative web.txt --output quality.bin

Examples are .txt (one document per line), .jsonl ("text" field), .html/.html.gz files, corpus
directories or directories of such files (see `filters.quality`). Use the model in a build with
`--set filters.quality.model_path=quality.bin`.
"""

from __future__ import annotations

import argparse
import json

TRAIN_HELP = """\
Train the fastText quality classifier: documents like the --positive examples score high, documents
like the --negative ones low. Prints the number of examples used and where the model went.

Examples are .txt (one document per line), .jsonl ("text" field), .html/.html.gz files, corpus
directories or directories of such files.
"""

TRAIN_EXAMPLES = """\
examples:
  interloom quality train --positive good.jsonl refs/ --negative web.txt --output quality.bin
  interloom quality train --positive wiki.txt --negative corpus/ --output q.bin --epoch 50 --lr 0.2

use the model in a build:
  interloom build --input 'data/*.warc.gz' --output corpus/ --set filters.quality.model_path=quality.bin
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quality",
        help="train the fastText quality classifier",
        description=__doc__,
    )
    sub = parser.add_subparsers(dest="quality_command", metavar="SUBCOMMAND", required=True)
    train = sub.add_parser(
        "train",
        help="train a classifier from positive and negative example documents",
        description=TRAIN_HELP,
        epilog=TRAIN_EXAMPLES,
    )
    train.add_argument(
        "--positive",
        nargs="+",
        required=True,
        metavar="PATH",
        help="high-quality examples: .txt, .jsonl, .html(.gz) files, corpus or example folders",
    )
    train.add_argument(
        "--negative",
        nargs="+",
        required=True,
        metavar="PATH",
        help="low-quality examples (same kinds of path as --positive)",
    )
    train.add_argument("--output", required=True, metavar="MODEL", help="where to write the model (.bin)")
    train.add_argument(
        "--label",
        default="hq",
        help="label of the positives; a build's filters.quality.label must match it (default: hq)",
    )
    train.add_argument("--epoch", type=int, default=25, metavar="N", help="fastText training epochs (default: 25)")
    train.add_argument("--lr", type=float, default=0.5, help="fastText learning rate (default: 0.5)")
    train.add_argument("--dim", type=int, default=64, metavar="N", help="word vector size (default: 64)")
    train.add_argument(
        "--word-ngrams", type=int, default=2, metavar="N", help="longest word n-gram used as a feature (default: 2)"
    )
    train.add_argument("--seed", type=int, default=0, help="seed of the example shuffle and of fastText (default: 0)")
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from filters.quality import train_quality_model

    result = train_quality_model(
        args.positive,
        args.negative,
        args.output,
        label=args.label,
        epoch=args.epoch,
        lr=args.lr,
        dim=args.dim,
        word_ngrams=args.word_ngrams,
        seed=args.seed,
    )
    print(json.dumps(result))
    return 0
