"""`interloom export hf CORPUS OUT`: the command line of pipeline/export.py."""

from __future__ import annotations

import argparse

from pipeline.export import export_hf

EXPORT_HELP = """\
Export a corpus to another format.

hf: one Parquet file per shard with the OBELICS columns (id, url, texts, images, image_urls, metadata,
general_metadata) and the image bytes inside `images`, typed so that Hugging Face `datasets` decodes them
as images: load_dataset("parquet", data_files="OUT/*.parquet"). (`datasets` can also read a corpus's own
index without export, image URLs and names but no bytes: load_dataset("parquet",
data_files="CORPUS/index/*.parquet").)
"""

EXPORT_EXAMPLES = """\
examples:
  interloom export hf corpus/ corpus-hf/
  interloom export hf s3://bucket/corpus corpus-hf/ --no-progress
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a corpus to other formats (hf: Parquet for Hugging Face datasets)",
        description=EXPORT_HELP,
        epilog=EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("format", choices=["hf"], help="target format: hf (OBELICS Parquet with image bytes)")
    p.add_argument("corpus", help="corpus folder or fsspec URL written by `interloom build`")
    p.add_argument("output", help="folder for the Parquet files (created if missing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = export_hf(args.corpus, args.output, progress=not args.no_progress)
    print(f"wrote {len(paths)} Parquet files to {args.output}")
    return 0
