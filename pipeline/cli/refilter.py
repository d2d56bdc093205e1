"""`interloom refilter`: apply stricter filter thresholds to a built corpus from its stored signals."""

from __future__ import annotations

import argparse

HELP = """\
Write a new corpus holding the documents of CORPUS that pass stricter filter thresholds, decided from the
signals every document stores (no page is read or extracted again). Only thresholds the filters declare
(`interloom build --print-config`, docs/filters.md) may change, and only to stricter values: a looser one
would need pages the build dropped, and is refused naming the key (run `interloom build` instead).
"""

EXAMPLES = """\
examples:
  interloom refilter corpus/ --set filters.image_count.min_images=2 --output corpus-2img/
  interloom refilter corpus/ --set filters.language.min_score=0.9 --set filters.gopher_quality.min_doc_words=100 \\
      --output corpus-strict/
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "refilter",
        help="stricter thresholds on a built corpus, without re-extracting",
        description=HELP,
        epilog=EXAMPLES,
    )
    p.add_argument("corpus", metavar="CORPUS", help="a finished corpus (folder or fsspec URL)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        required=True,
        help="a stricter threshold, e.g. filters.image_count.min_images=2 (repeatable)",
    )
    p.add_argument("--output", "-o", metavar="DIR", required=True, help="the new corpus folder (new or empty)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.refilter import refilter_corpus

    stats = refilter_corpus(args.corpus, args.output, args.overrides)
    b = stats["build"]
    print(f"\ncorpus: {args.output}\n  {b['documents']} documents in {b['shards']} shards (from {args.corpus})")
    for line in b["notes"]:
        print(f"  {line}")
    return 0
