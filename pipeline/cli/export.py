"""`interloom export hf CORPUS OUT` (pipeline/export.py) and `interloom export model CKPT OUT` (train/export.py)."""

from __future__ import annotations

import argparse

from pipeline.export import export_hf
from train.export import DTYPES, export_model

EXPORT_HELP = """\
Export a corpus to another format.

hf: one Parquet file per shard with the OBELICS columns (id, url, texts, images, image_urls, metadata,
general_metadata) and the image bytes inside `images`, typed so that Hugging Face `datasets` decodes them
as images: load_dataset("parquet", data_files="OUT/*.parquet"). (`datasets` can also read a corpus's own
index without export, image URLs and names but no bytes: load_dataset("parquet",
data_files="CORPUS/index/*.parquet").)

model: the decoder of a training checkpoint (a checkpoint_* directory, or a run directory: its latest) as a
Hugging Face model folder (config.json + safetensors) of the family whose architecture equals it
(qwen3_moe, qwen2_moe, mixtral, qwen3, llama), which transformers.AutoModelForCausalLM.from_pretrained
loads; next to it the run's tokenizer.json and the rest of the VLM (interloom_model.json,
interloom_vlm.safetensors: vision tower, adapter), which train.export.load_exported_vlm(OUT) reloads.
"""

EXPORT_EXAMPLES = """\
examples:
  interloom export hf corpus/ corpus-hf/
  interloom export hf s3://bucket/corpus corpus-hf/ --no-progress
  interloom export model runs/debug/ exported/ --dtype bfloat16
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a corpus (hf: Parquet for Hugging Face datasets) or a model (model: transformers folder)",
        description=EXPORT_HELP,
        epilog=EXPORT_EXAMPLES,
    )
    p.add_argument(
        "format",
        choices=["hf", "model"],
        help="hf: a corpus as OBELICS Parquet with image bytes; model: a checkpoint's decoder",
    )
    p.add_argument(
        "source",
        metavar="CORPUS|CKPT",
        help="hf: corpus folder or fsspec URL written by `interloom build`; model: checkpoint or run dir",
    )
    p.add_argument("output", help="folder to write (created if missing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (hf)")
    p.add_argument("--family", default=None, help="model: HF family to write (default: the one that fits)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model: weight dtype written")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.format == "model":
        family = export_model(args.source, args.output, family=args.family, dtype=args.dtype)
        print(f"wrote a {family.model_type} model ({family.architecture}) to {args.output}")
        return 0
    paths = export_hf(args.source, args.output, progress=not args.no_progress)
    print(f"wrote {len(paths)} Parquet files to {args.output}")
    return 0
