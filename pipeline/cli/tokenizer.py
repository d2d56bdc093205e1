"""`interloom tokenizer train CORPUS --output tokenizer.json --vocab-size N`: train the byte-level BPE."""

from __future__ import annotations

import argparse
import sys

TRAIN_HELP = """\
Train the byte-level BPE tokenizer of the VLM on the text blocks of a corpus (images are not read) and
write it as a Hugging Face `tokenizers` tokenizer.json. The 256 byte symbols are always in the vocabulary,
so any text encodes. Point a training run at it with `--set data.tokenizer=PATH`.
"""

TRAIN_EXAMPLES = """\
examples:
  interloom tokenizer train corpus/ --output tokenizer.json
  interloom tokenizer train s3://bucket/corpus --output tok.json --vocab-size 8192 --max-documents 100000
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tokenizer",
        help="train a byte-level BPE tokenizer on a corpus's text",
        description="Tokenizer commands. `interloom tokenizer train --help` for its options.",
        epilog="example:\n  interloom tokenizer train corpus/ --output tokenizer.json\n",
    )
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = sub.add_parser(
        "train",
        help="train on CORPUS (local path or fsspec URL) and write tokenizer.json",
        description=TRAIN_HELP,
        epilog=TRAIN_EXAMPLES,
    )
    t.add_argument("corpus", help="corpus folder or fsspec URL written by `interloom build` (has manifest.jsonl)")
    t.add_argument("--output", "-o", required=True, metavar="FILE", help="where to write tokenizer.json")
    t.add_argument(
        "--vocab-size",
        type=int,
        default=2048,
        metavar="N",
        help="vocabulary size incl. the 256 bytes and the special tokens (default: 2048)",
    )
    t.add_argument(
        "--max-documents", type=int, default=None, metavar="N", help="read at most this many documents (default: all)"
    )
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from train.tokenizer import train_from_corpus

    if args.max_documents is not None and args.max_documents < 1:
        raise ValueError(f"--max-documents {args.max_documents}: read at least 1 document (leave it out for all)")
    tok, skipped = train_from_corpus(args.corpus, args.output, args.vocab_size, args.max_documents)
    print(f"tokenizer: {tok.vocab_size} tokens -> {args.output}")
    if skipped:
        print(f"tokenizer: {len(skipped)} damaged shard(s) skipped from where they broke:", file=sys.stderr)
        for line in skipped:
            print(f"  {line}", file=sys.stderr)
    return 0
