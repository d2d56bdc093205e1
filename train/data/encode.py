"""Encode: Document -> EncodedDoc (token ids, labels, image spans with their uint8 patches).

Token layout of one document (train/batch.py): `<bos> text <img_start> <image> x M <img_end> text ... <eos>`
with M = (h/2)*(w/2) for an image of h x w patches. Text blocks are separated by "\\n\\n". Labels are the
next token, IGNORE_INDEX where that target is a special or image token other than `<eos>`: so `<bos>`,
`<img_start>`, `<image>`, `<img_end>` and padding are never predicted, while `<eos>` is the target of a
document's last token (the model learns to stop).

Images: Pillow decodes (JPEG at a reduced DCT scale via `draft` when the target is at least 2x smaller),
torch resizes on uint8 (bicubic with antialiasing, Pillow's filter), patchify is one reshape/transpose of the
uint8 array; pixels become float32 once per batch, after the process boundary (collate.py). Images are
resized to a patch grid at native aspect ratio within `[min_pixels, max_pixels]`. An image Pillow cannot
decode, one too large or with an extreme aspect ratio, or whose span would not fit a row, is dropped from
its document and counted by reason; the document stays.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from PIL import ImageOps

from corpus.imagefile import open_image
from corpus.record import Document
from train.batch import IGNORE_INDEX
from train.data.config import DataConfig
from train.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def patch_grid(
    height: int, width: int, patch_size: int, min_pixels: int, max_pixels: int, merge: int = 2
) -> tuple[int, int]:
    """(h, w) in patches, both multiples of `merge`, keeping the aspect ratio as closely as the grid allows,
    with h*w*patch_size^2 within [min_pixels, max_pixels] (Qwen2-VL style smart resize)."""
    f = patch_size * merge
    hb, wb = max(f, round(height / f) * f), max(f, round(width / f) * f)
    if hb * wb > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        hb, wb = max(f, math.floor(height / beta / f) * f), max(f, math.floor(width / beta / f) * f)
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        hb, wb = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
    return hb // patch_size, wb // patch_size


@dataclass
class EncodedImage:
    start: int  # position of <img_start> in the document's tokens; <img_end> at start + 1 + M
    end: int  # one past <img_end>
    patches_NP: np.ndarray  # uint8 [N, P]
    grid_hw: tuple[int, int]


@dataclass
class EncodedDoc:
    ids: np.ndarray  # int64 [L]
    labels: np.ndarray  # int64 [L], next-token targets, IGNORE_INDEX on special/image targets
    images: list[EncodedImage]


class SpecialIds:
    """Which token ids are special: a boolean table lookup (np.isin sorts on every call)."""

    def __init__(self, tok: Tokenizer):
        self.table = np.zeros(max(tok.special_ids) + 2, dtype=bool)  # last entry: every id above
        self.table[sorted(tok.special_ids)] = True

    def mask(self, ids: np.ndarray) -> np.ndarray:
        return self.table[np.minimum(ids, len(self.table) - 1)]


class DocumentEncoder:
    """Document -> EncodedDoc. Image problems drop the image (counted by reason), never the document."""

    def __init__(self, tok: Tokenizer, cfg: DataConfig, patch_size: int, merge: int = 2):
        self.tok, self.cfg, self.p, self.merge = tok, cfg, patch_size, merge
        f = patch_size * merge
        if cfg.max_pixels < f * f or cfg.min_pixels > cfg.max_pixels:
            raise ValueError(
                f"data.min_pixels={cfg.min_pixels} / max_pixels={cfg.max_pixels}: need "
                f"min <= max and max >= {f * f} (one {merge}x{merge} group of {patch_size}px patches)"
            )
        self._special = SpecialIds(tok)

    def image(self, data: bytes, counters: Counter) -> tuple[np.ndarray, tuple[int, int]] | None:
        """Decoded, resized and patchified image: uint8 patches [N, P] (raster order of patches, each patch
        channel-major 3 x p x p) and its grid (h, w) in patches; None (counted) when it is dropped.
        They become float32 once per batch, in `normalise_pixels`."""
        cfg, p = self.cfg, self.p
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", PILImage.DecompressionBombWarning)
                im = open_image(data)
                if im.width * im.height > cfg.max_decode_pixels:
                    counters["images_dropped:too_large"] += 1
                    return None
                orientation = im.getexif().get(0x0112, 1)
                turned = orientation in (5, 6, 7, 8)  # EXIF orientation swaps w and h
                w, h = (im.height, im.width) if turned else (im.width, im.height)
                if min(w, h) < 1 or max(w, h) / min(w, h) > cfg.max_aspect_ratio:
                    counters["images_dropped:aspect_ratio"] += 1
                    return None
                gh, gw = patch_grid(h, w, p, cfg.min_pixels, cfg.max_pixels, self.merge)
                # JPEG: decode at a reduced DCT scale when the target is at least 2x smaller (same pixels
                # as a full decode would give after the resize, at a fraction of the cost)
                im.draft("RGB", (gh * p, gw * p) if turned else (gw * p, gh * p))
                if orientation != 1:  # exif_transpose copies the image even when there is nothing to do
                    im = ImageOps.exif_transpose(im)
                im = im if im.mode == "RGB" else im.convert("RGB")
                im.load()
                x_HWC = np.array(im)  # writable: torch.from_numpy below
        except Exception as e:  # noqa: BLE001 - OSError, bombs, and what Pillow's decoders raise untyped
            # (NotImplementedError for a DDS of unknown pixel format, ...): the image is dropped, never the run
            counters["images_dropped:undecodable"] += 1
            log.debug("undecodable image: %s: %s", type(e).__name__, e)
            return None
        if gh * gw * p * p > cfg.max_pixels:
            counters["images_dropped:aspect_ratio"] += 1
            return None
        H, W = gh * p, gw * p
        if x_HWC.shape[:2] != (H, W):
            # bicubic with antialiasing on uint8 (torch's vectorised kernel; the same filter as Pillow's
            # BICUBIC resize, within +-2 of 255, at about a third of its cost)
            x_1CHW = torch.from_numpy(x_HWC).permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
            x_1CHW = F.interpolate(x_1CHW, size=(H, W), mode="bicubic", antialias=True)
            x_HWC = x_1CHW[0].permute(1, 2, 0).numpy()  # channels_last: a contiguous H, W, C view
        patches_NP = x_HWC.reshape(gh, p, gw, p, 3).transpose(0, 2, 4, 1, 3).reshape(gh * gw, 3 * p * p)
        return patches_NP, (gh, gw)

    def encode(self, doc: Document, counters: Counter) -> EncodedDoc:
        tok = self.tok
        ids: list[int] = [tok.bos_id]
        images: list[EncodedImage] = []
        texts = [(i, t) for i, t in enumerate(doc.texts) if t is not None]
        last_text = texts[-1][0] if texts else -1
        encoded = dict(
            zip(
                [i for i, _ in texts],
                tok.encode_batch(
                    [t + ("\n\n" if i != last_text and doc.texts[i + 1] is not None else "") for i, t in texts]
                ),
            )
        )
        for i, im in enumerate(doc.images):
            if im is None:
                ids.extend(encoded[i])
                continue
            counters["images"] += 1
            got = self.image(im.data or b"", counters)
            if got is None:
                continue
            patches, (gh, gw) = got
            m = (gh // self.merge) * (gw // self.merge)
            if m + 2 > self.cfg.seq_len:
                counters["images_dropped:span_exceeds_seq_len"] += 1
                continue
            images.append(EncodedImage(len(ids), len(ids) + m + 2, patches, (gh, gw)))
            ids.extend([tok.img_start_id] + [tok.image_id] * m + [tok.img_end_id])
            counters["images_kept"] += 1
        ids.append(tok.eos_id)
        ids_L = np.asarray(ids, dtype=np.int64)
        labels_L = np.full_like(ids_L, IGNORE_INDEX)
        target_L = ids_L[1:]  # <eos> is a target, the other special tokens are not
        labels_L[:-1] = np.where(self._special.mask(target_L) & (target_L != tok.eos_id), IGNORE_INDEX, target_L)
        counters["documents"] += 1
        return EncodedDoc(ids_L, labels_L, images)
