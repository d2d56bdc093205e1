"""`interloom export hf CORPUS OUT`: OBELICS-format Parquet with the image bytes inside.

Hugging Face `datasets` reads a corpus directly through its Parquet index
(`load_dataset("parquet", data_files="CORPUS/index/*.parquet")`: `texts`, image URLs and member names in
order). Its webdataset loader cannot read interleaved shards (samples carry different members), so for users
who want images inside Parquet this command writes one Parquet file per shard with the OBELICS columns and
`images` as a list of `datasets.Image()` values (struct<bytes, path>, None at text positions), with the
`datasets` feature metadata in the schema so `load_dataset` decodes them as images.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm

from corpus.format import Corpus
from corpus.storage import write_parquet_atomic

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
        "huggingface": json.dumps(
            {
                "info": {
                    "features": {
                        "id": {"dtype": "string", "_type": "Value"},
                        "url": {"dtype": "string", "_type": "Value"},
                        "texts": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
                        "images": {"feature": {"_type": "Image"}, "_type": "List"},
                        "image_urls": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
                        "metadata": {"dtype": "string", "_type": "Value"},
                        "general_metadata": {"dtype": "string", "_type": "Value"},
                    }
                }
            }
        )
    },
)


def export_hf(corpus_path: str, out: str, progress: bool = True) -> list[Path]:
    corpus = Corpus(corpus_path)
    out_dir = Path(out)
    if isinstance(corpus.fs, LocalFileSystem) and out_dir.resolve() == Path(corpus.root).resolve():
        raise ValueError(f"export hf: the output {out} is the corpus folder itself; give another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        return _export_shards(corpus, out_dir, written, progress)
    except ValueError as e:  # a damaged shard (named): no partial export that would load as a smaller dataset
        for path in written:
            path.unlink(missing_ok=True)
        raise ValueError(f"{e}; export stopped, the {len(written)} files it had written were removed") from None


def _export_shards(corpus: Corpus, out_dir: Path, written: list[Path], progress: bool) -> list[Path]:
    for shard in tqdm(corpus.shards(), desc="export hf", unit="shard", disable=not progress):
        rows = []
        for doc in corpus.iter_shard(shard):
            rows.append(
                {
                    "id": doc.id,
                    "url": doc.url,
                    "texts": list(doc.texts),
                    "images": [
                        None if im is None else {"bytes": im.data, "path": f"{doc.id}.{im.member}"} for im in doc.images
                    ],
                    "image_urls": [None if im is None else im.url for im in doc.images],
                    "metadata": json.dumps([None if im is None else im.to_dict() for im in doc.images]),
                    "general_metadata": json.dumps(
                        {
                            "url": doc.url,
                            "lang": doc.lang,
                            "title": doc.title,
                            "source": doc.source,
                            "fetched_at": doc.fetched_at,
                            "signals": doc.signals,
                        },
                        sort_keys=True,
                    ),
                }
            )
        path = out_dir / f"{shard.name}.parquet"
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=OBELICS_SCHEMA), path)
        written.append(path)
    return written
