"""Tiny corpora for the training tests, built with the real shard writer from real text (scrapinghub
ground-truth article bodies) and real photos (Pillow/scikit-image test images), re-encoded small."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image as PILImage

from corpus.format import append_manifest, write_shards
from corpus.record import Document, Image, make_doc_id

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "dev"
PHOTOS = REAL / "images" / "photos"
ARTICLES = REAL / "html" / "scrapinghub" / "ground-truth.json"


def require_real() -> None:
    if not (PHOTOS.is_dir() and ARTICLES.is_file()):
        pytest.skip(f"../shared/data/real not present: need {PHOTOS} and {ARTICLES}")


def photos(max_side: int = 96) -> list[tuple[str, bytes, int, int]]:
    """(name, jpeg bytes, width, height) of the real photos, downscaled to max_side, aspect kept."""
    out = []
    for p in sorted(PHOTOS.iterdir()):
        try:
            with PILImage.open(p) as im:
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=85)
                out.append((p.name, buf.getvalue(), im.width, im.height))
        except OSError:
            continue
    return out


def articles() -> list[str]:
    data = json.loads(ARTICLES.read_text(encoding="utf-8"))
    return [v["articleBody"] for _, v in sorted(data.items()) if v.get("articleBody")]


def make_documents(
    n: int, start: int = 0, images_per_doc: int = 2, max_chars: int = 1500, max_side: int = 96
) -> list[Document]:
    """n interleaved documents: paragraphs of a real article with real photos between them."""
    arts, pics = articles(), photos(max_side)
    docs = []
    for k in range(start, start + n):
        paras = [p.strip() for p in arts[k % len(arts)][:max_chars].split("\n") if p.strip()] or ["(empty)"]
        doc = Document(id=make_doc_id(f"test#{k}"), url=f"https://example.org/{k}", source=f"test#{k}")
        for i, para in enumerate(paras):
            doc.append_text(para)
            if i < images_per_doc:
                name, data, w, h = pics[(k * 3 + i) % len(pics)]
                doc.append_image(
                    Image(url=f"https://example.org/{k}/{name}", width=w, height=h, format="jpeg", data=data)
                )
        docs.append(doc)
    return docs


def build_corpus(
    root: Path, shard_sizes: list[int], prefix: str = "part", start: int = 0, finished: bool = True, **doc_kw
) -> Path:
    """Write one shard per entry of shard_sizes (that many documents each) and list them in the manifest."""
    k = start
    for i, n in enumerate(shard_sizes):
        infos = write_shards(make_documents(n, k, **doc_kw), root, f"{prefix}-{i:03d}", max_docs=n)
        append_manifest(root, infos)
        k += n
    if finished:
        (root / "build.json").write_text(json.dumps({"finished_at": "2026-01-01T00:00:00Z"}))
    return root
