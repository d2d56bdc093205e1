"""`interloom export hf CORPUS OUT`: OBELICS-format Parquet with the image bytes inside.

Hugging Face `datasets` reads a corpus directly through its Parquet index
(`load_dataset("parquet", data_files="CORPUS/index/*.parquet")`: `texts`, image URLs and member names in
order). Its webdataset loader cannot read interleaved shards (samples carry different members), so for users
who want images inside Parquet this command writes one Parquet file per shard with the OBELICS columns and
`images` as a list of `datasets.Image()` values (struct<bytes, path>, None at text positions), with the
`datasets` feature metadata in the schema so `load_dataset` decodes them as images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from pipeline.corpus import Corpus
from pipeline.storage import write_parquet_atomic

HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
OBELICS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("url", pa.string()),
        ("texts", pa.list_(pa.string())),
        ("images", pa.list_(HF_IMAGE)),
        ("image_urls", pa.list_(pa.string())),
        ("metadata", pa.string()),  # JSON list, per position: image record or null (OBELICS `metadata`)
        ("general_metadata", pa.string()),  # JSON object: url, lang, title, source, signals (OBELICS)
    ],
    metadata={
        "huggingface": json.dumps({"info": {"features": {
            "id": {"dtype": "string", "_type": "Value"},
            "url": {"dtype": "string", "_type": "Value"},
            "texts": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
            "images": {"feature": {"_type": "Image"}, "_type": "List"},
            "image_urls": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
            "metadata": {"dtype": "string", "_type": "Value"},
            "general_metadata": {"dtype": "string", "_type": "Value"},
        }}})
    },
)


def export_hf(corpus_path: str, out: str, progress: bool = True) -> list[Path]:
    corpus = Corpus(corpus_path)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for shard in tqdm(corpus.shards(), desc="export hf", unit="shard", disable=not progress):
        rows = []
        for doc in corpus.iter_shard(shard):
            rows.append({
                "id": doc.id,
                "url": doc.url,
                "texts": list(doc.texts),
                "images": [None if im is None else {"bytes": im.data, "path": f"{doc.id}.{im.member}"}
                           for im in doc.images],
                "image_urls": [None if im is None else im.url for im in doc.images],
                "metadata": json.dumps([None if im is None else im.to_dict() for im in doc.images]),
                "general_metadata": json.dumps({"url": doc.url, "lang": doc.lang, "title": doc.title,
                                                "source": doc.source, "fetched_at": doc.fetched_at,
                                                "signals": doc.signals}, sort_keys=True),
            })
        path = out_dir / f"{shard.name}.parquet"
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=OBELICS_SCHEMA), path)
        written.append(path)
    return written


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
    p = sub.add_parser("export", help="export a corpus to other formats (hf: Parquet for Hugging Face datasets)",
                       description=EXPORT_HELP, epilog=EXPORT_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=["hf"], help="target format: hf (OBELICS Parquet with image bytes)")
    p.add_argument("corpus", help="corpus folder or fsspec URL written by `interloom build`")
    p.add_argument("output", help="folder for the Parquet files (created if missing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = export_hf(args.corpus, args.output, progress=not args.no_progress)
    print(f"wrote {len(paths)} Parquet files to {args.output}")
    return 0
