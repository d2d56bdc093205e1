"""Documents for the report's browser: read the sampled documents from their shards (random access by
index offset) and turn them into plain JSON blocks, with each image written as a small JPEG under
`assets/img/` (file names are ours, never taken from the crawl).

Images are decoded with Pillow under a pixel cap; one that cannot be decoded becomes a block with an
`error` (shown as such in the report), never a crash.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from tqdm import tqdm

from corpus.format import Corpus
from corpus.imagefile import open_image
from corpus.record import Document

THUMB_SIDE = 640
MAX_PIXELS = 64_000_000


def write_thumbnail(data: bytes | None, path: Path) -> tuple[int, int] | str:
    """Write a JPEG of at most THUMB_SIDE px per side; returns its (width, height) or an error reason."""
    if not data:
        return "no_bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            im = open_image(data)
            if im.size[0] * im.size[1] > MAX_PIXELS:
                return "too_many_pixels"
            im.load()
            if im.mode not in ("RGB", "L"):
                rgba = im.convert("RGBA")
                im = PILImage.new("RGB", rgba.size, (255, 255, 255))
                im.paste(rgba, mask=rgba.split()[-1])
            im.thumbnail((THUMB_SIDE, THUMB_SIDE))
    except (UnidentifiedImageError, PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        return "not_decodable"
    except Exception:  # noqa: BLE001 - OSError and what Pillow's decoders raise untyped (NotImplementedError, ...)
        return "corrupt"
    im.save(path, format="JPEG", quality=82)
    return im.size


def document_json(doc: Document, n: int, role: str, shard: str, offset: int, assets: Path) -> dict[str, Any]:
    """The JSON the browser renders: metadata plus blocks in reading order."""
    blocks: list[dict[str, Any]] = []
    for pos, (text, image) in enumerate(zip(doc.texts, doc.images)):
        if text is not None:
            blocks.append({"type": "text", "text": text})
            continue
        name = f"d{n:05d}-{pos:04d}.jpg"
        result = write_thumbnail(image.data, assets / name)
        block = {
            "type": "image",
            "url": image.url,
            "alt": image.alt,
            "width": image.width,
            "height": image.height,
            "format": image.format,
            "phash": image.phash,
        }
        if isinstance(result, str):
            block["error"] = result
        else:
            block["src"] = f"assets/img/{name}"
        blocks.append(block)
    return {
        "n": n,
        "role": role,
        "id": doc.id,
        "url": doc.url,
        "title": doc.title,
        "source": doc.source,
        "fetched_at": doc.fetched_at,
        "lang": doc.lang or "(none)",
        "lang_score": round(float(doc.lang_score), 4),
        "n_words": doc.n_words,
        "n_images": len(doc.image_list),
        "shard": shard,
        "offset": offset,
        "signals": {k: round(float(v), 6) for k, v in sorted(doc.signals.items())},
        "blocks": blocks,
    }


def load_documents(
    corpus: Corpus, wanted: list[tuple[str, int, str, str]], out_dir: Path, progress: bool = True
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read (shard, offset, role, id) documents; returns their JSON and the errors of unreadable ones (a
    document whose id is not the one the index gives at that offset is an error, not shown in its place)."""
    assets = out_dir / "assets" / "img"
    assets.mkdir(parents=True, exist_ok=True)
    docs: list[dict[str, Any]] = []
    errors: list[str] = []
    for shard, offset, role, doc_id in tqdm(
        wanted, desc="reading sampled documents", unit="doc", disable=not progress or not wanted
    ):
        try:
            doc = corpus.read_document(shard, offset)
        except (OSError, ValueError, StopIteration) as e:
            errors.append(f"{shard}@{offset}: {type(e).__name__}: {e}")
            continue
        if doc.id != doc_id:  # the index's offsets do not match its shard
            errors.append(f"{shard}@{offset}: the index names document {doc_id}, the shard holds {doc.id} there")
            continue
        docs.append(document_json(doc, len(docs), role, shard, offset, assets))
    return docs, errors


def repeated_image(corpus: Corpus, shard: str, offset: int, member: str, path: Path) -> str | None:
    """Write the image `member` of the document at (shard, offset) as a thumbnail; None or the error."""
    try:
        doc = corpus.read_document(shard, offset)
    except (OSError, ValueError, StopIteration) as e:
        return f"{type(e).__name__}: {e}"
    for im in doc.image_list:
        if im.member == member:
            result = write_thumbnail(im.data, path)
            return result if isinstance(result, str) else None
    return "member_not_found"
