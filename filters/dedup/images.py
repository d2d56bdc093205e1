"""Image dedup: pHash helpers, near-duplicates inside one document, and pHash clusters across documents.

- `image_phash(data)`: 16-hex-char imagehash.phash of RGB after EXIF transpose (the `Image.phash` contract).
- `InDocumentImageDedup` (step "image_dedup"): in each document, an image within `image_hamming` bits of an
  earlier kept image is removed (item drop `near_duplicate_in_document`).
- `phash_clusters(values, max_distance)`: groups 64-bit pHashes into clusters of images within
  `max_distance` bits, found by banding: split into max_distance + 1 bit ranges, two hashes within the
  distance share at least one range exactly (pigeonhole), so equal-range groups give every candidate pair;
  candidates are verified by popcount and joined by connected components.
"""

from __future__ import annotations

import numpy as np

from corpus.record import Document
from corpus.stats import Ledger
from corpus.steps import Step, drop_images
from filters.dedup.graph import connected_components, pairs_in_groups


def image_phash(data: bytes) -> str:
    """pHash (64 bit, 16 hex chars) of encoded image bytes, on RGB after EXIF orientation is applied."""
    import imagehash
    from PIL import ImageOps

    from corpus.imagefile import open_image

    with open_image(data) as im:
        rgb = ImageOps.exif_transpose(im).convert("RGB")
    return str(imagehash.phash(rgb))


def parse_phash(text: str | None) -> int | None:
    """A 16-hex-char pHash as int, None when missing or malformed."""
    if not text or len(text) != 16:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class InDocumentImageDedup(Step):
    """Remove images that repeat (within `max_distance` pHash bits) an earlier kept image of the same
    document. Images without a valid pHash are kept (nothing to compare) and counted."""

    name = "image_dedup"

    def __init__(self, max_distance: int = 4):
        self.max_distance = max_distance

    def process(self, doc: Document, ledger: Ledger) -> Document:
        kept_hashes: list[int] = []

        def reason_of(im) -> str | None:
            h = parse_phash(im.phash)
            if h is not None and any(hamming(h, k) <= self.max_distance for k in kept_hashes):
                return "near_duplicate_in_document"
            if h is not None:
                kept_hashes.append(h)
            return None

        drop_images(doc, ledger, self.name, reason_of)
        return doc


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy < 2 has no bitwise_count)."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    return _POPCOUNT8[x.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.int64)


def _bit_ranges(max_distance: int) -> list[tuple[int, int]]:
    """max_distance + 1 contiguous (shift, width) ranges covering the 64 bits."""
    n = max_distance + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def phash_clusters(values: np.ndarray, max_distance: int, window: int = 64) -> np.ndarray:
    """Cluster label (index of the cluster's smallest value) of each of the sorted, unique uint64 pHashes
    `values`, joining values within `max_distance` bits."""
    n = len(values)
    us, vs = [], []
    for shift, width in _bit_ranges(max_distance):
        key = (values >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(key, kind="stable")
        i, j = pairs_in_groups(key[order], window)
        a, b = order[i], order[j]
        close = popcount64(values[a] ^ values[b]) <= max_distance
        us.append(a[close])
        vs.append(b[close])
    return connected_components(n, np.concatenate(us), np.concatenate(vs))
