"""`interloom tokenizer train CORPUS --output tokenizer.json --vocab-size N`: train the byte-level BPE."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tokenizer", help="train a byte-level BPE tokenizer on a corpus's text")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train on CORPUS (local path or fsspec URL) and write tokenizer.json")
    t.add_argument("corpus", help="corpus directory or URL (has manifest.jsonl)")
    t.add_argument("--output", "-o", required=True, help="where to write tokenizer.json")
    t.add_argument("--vocab-size", type=int, default=2048, help="vocabulary size incl. 256 bytes and specials")
    t.add_argument("--max-documents", type=int, default=None, help="read at most this many documents")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from train.tokenizer import train_from_corpus

    tok = train_from_corpus(args.corpus, args.output, args.vocab_size, args.max_documents)
    print(f"tokenizer: {tok.vocab_size} tokens -> {args.output}")
    return 0
