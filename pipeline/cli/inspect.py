"""`interloom inspect CORPUS`: write the HTML report and print a short summary (or the JSON summary)."""

from __future__ import annotations

import argparse
import json
import sys

HELP = """\
Inspect a corpus: write a self-contained HTML report (funnel, distributions, quality signals with their
thresholds, dedup clusters, a browser of sampled documents with their images) and summary.json, then
print a short summary. The report opens from disk (no server, no network).

The corpus is read by streaming its Parquet index shard by shard; only the sampled documents are read
from the shards, so it works on corpora of millions of documents.
"""

EXAMPLES = """\
examples:
  interloom inspect corpus/                      report in corpus/report/index.html
  interloom inspect corpus/ --output /tmp/rep --sample 500
  interloom inspect corpus/ --json | jq .totals
  interloom inspect corpus-b/ --against corpus-a/   differences, in corpus-b/compare/index.html
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="HTML report and summary of a corpus",
        description=HELP,
        epilog=EXAMPLES,
    )
    p.add_argument("corpus", metavar="CORPUS", help="corpus folder (or fsspec URL) written by `interloom build`")
    p.add_argument("--output", "-o", metavar="DIR", help="report folder (default: CORPUS/report)")
    p.add_argument(
        "--sample", type=int, default=200, metavar="N", help="documents to sample for the browser (default: 200)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the document sample (default: 0)")
    p.add_argument(
        "--against",
        metavar="B",
        help="compare with another build B instead: funnels side by side, documents only in one of "
        "them (and why the other dropped them), signals overlaid (default output: CORPUS/compare)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.report import default_output, make_report

    if args.against:
        return run_against(args)
    out = args.output or default_output(args.corpus)
    summary = make_report(args.corpus, out, sample=args.sample, seed=args.seed, progress=not args.no_progress)
    if args.json:
        json.dump(summary, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print_table(summary, str(out))
    return 0


def run_against(args: argparse.Namespace) -> int:
    from pipeline.report import default_output
    from pipeline.report.compare import make_comparison

    out = args.output or default_output(args.corpus).with_name("compare")
    c = make_comparison(args.corpus, args.against, out, progress=not args.no_progress)
    if args.json:
        json.dump(c, sys.stdout, indent=2, ensure_ascii=False, default=str)
        sys.stdout.write("\n")
        return 0
    print(f"A: {c['a']}\nB: {c['b']}")
    for k, (a, b) in c["totals"].items():
        print(f"  {k:<10} {a:>12,} {b:>12,}  ({b - a:+,})")
    for k, (a, b) in c["settings"].items():
        print(f"  setting {k}: {a!r} -> {b!r}")
    approx = "" if c["only"]["exact"] else " (estimated)"
    print(f"  only in A: {c['only']['a']['count']:,}{approx}   only in B: {c['only']['b']['count']:,}{approx}")
    print(f"report: {out}/index.html")
    return 0


def print_table(summary: dict, out: str) -> None:
    t = summary["totals"]
    rows = [
        ("documents", f"{t['documents']:,}"),
        ("images", f"{t['images']:,}"),
        ("words", f"{t['words']:,}"),
        ("tokens (estimate)", f"{t['tokens_estimate']:,}  ({t['tokens_estimate_method']})"),
        ("shards", f"{t['shards']:,}"),
    ]
    total_docs = max(t["documents"], 1)
    langs = ", ".join(f"{k} {100 * v / total_docs:.0f}%" for k, v in list(summary["languages"].items())[:6])
    rows.append(("languages", f"{t['languages']}: {langs}" if langs else "0"))
    print(f"corpus: {summary['corpus']}")
    for e in summary["index_errors"]:
        print(f"  left out: {e}")
    for k, v in rows:
        print(f"  {k:<18} {v}")
    if summary["funnel"] is None:
        print(f"  funnel: {summary['funnel_error']}")
    else:
        whole = [d for d in summary["drops"] if d["item"] in ("document", "record")]
        parts = [d for d in summary["drops"] if d["item"] not in ("document", "record")]
        for title, drops in (("top drop reasons (documents)", whole), ("top drop reasons (parts of documents)", parts)):
            print(f"  {title}:")
            for d in drops[:8]:
                where = d["stage"] if d["item"] in ("document", "record") else f"{d['stage']}/{d['item']}"
                print(f"    {d['count']:>8,}  {where}: {d['reason']}")
            if not drops:
                print("    (none)")
    if not summary["dedup"]["available"]:
        print("  dedup: no dedup data")
    errors = summary.get("sample", {}).get("load_errors") or []
    if errors:  # a shard that cannot be read (truncated, deleted): the index still counts its documents
        print(
            f"  unreadable: {len(errors)} documents picked for the report could not be read, e.g. {errors[0]} "
            f"(all in summary.json, sample.load_errors)"
        )
    print(f"report: {out}/index.html")
