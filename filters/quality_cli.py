"""`interloom quality train`: train the fastText quality classifier from positive and negative examples.

    interloom quality train --positive good.jsonl refs/ --negative web.txt --output quality.bin

Examples are .txt (one document per line), .jsonl ("text" field), .html/.html.gz files, corpus
directories or directories of such files (see `filters.quality`). Use the model in a build with
`--set filters.quality.model_path=quality.bin`.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("quality", help="train the fastText quality classifier",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="quality_command", metavar="SUBCOMMAND", required=True)
    train = sub.add_parser("train", help="train a classifier from positive and negative example documents")
    train.add_argument("--positive", nargs="+", required=True, metavar="PATH", help="high-quality examples")
    train.add_argument("--negative", nargs="+", required=True, metavar="PATH", help="low-quality examples")
    train.add_argument("--output", required=True, metavar="MODEL", help="where to write the model (.bin)")
    train.add_argument("--label", default="hq", help="label of the positives (default: hq)")
    train.add_argument("--epoch", type=int, default=25)
    train.add_argument("--lr", type=float, default=0.5)
    train.add_argument("--dim", type=int, default=64)
    train.add_argument("--word-ngrams", type=int, default=2)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from filters.quality import train_quality_model

    result = train_quality_model(
        args.positive, args.negative, args.output, label=args.label, epoch=args.epoch, lr=args.lr,
        dim=args.dim, word_ngrams=args.word_ngrams, seed=args.seed,
    )
    print(json.dumps(result))
    return 0
