"""Collate: rows of pieces -> a raw `Batch` (uint8 pixels); `normalise_pixels` -> the contract's float32.

Pixels stay uint8 between processes (a quarter of the bytes); they become float32 once per batch in the
consuming process (loader.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from train.batch import IGNORE_INDEX, Batch
from train.data.encode import SpecialIds
from train.data.pack import Piece
from train.tokenizer import Tokenizer


def collate(rows: list[list[Piece]], seq_len: int, tok: Tokenizer, text_after_image: int, patch_size: int) -> Batch:
    """Rows -> a raw Batch: token arrays filled by slices of preallocated numpy arrays, `pixel_values_NP`
    still uint8 (the images' patches concatenated once); `normalise_pixels` makes it the contract's float32."""
    B, T = len(rows), seq_len
    input_ids = np.full((B, T), tok.pad_id, dtype=np.int64)
    labels = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros((B, T), dtype=np.int64)
    segment_ids = np.full((B, T), -1, dtype=np.int32)
    after = np.full((B, T), -1, dtype=np.int64)
    special = SpecialIds(tok)
    positions = np.arange(T, dtype=np.int64)
    patches: list[np.ndarray] = []
    grids: list[tuple[int, int]] = []
    for b, row in enumerate(rows):
        t = 0
        for s, pc in enumerate(row):
            n = pc.end - pc.start
            input_ids[b, t : t + n] = pc.doc.ids[pc.start : pc.end]
            labels[b, t : t + n] = pc.doc.labels[pc.start : pc.end]
            position_ids[b, t : t + n] = positions[:n]
            segment_ids[b, t : t + n] = s
            for im in pc.doc.images:
                if pc.start <= im.start and im.end <= pc.end:
                    i = len(grids)
                    patches.append(im.patches_NP)
                    grids.append(im.grid_hw)
                    # text right after <img_end>, up to the next special token or the window
                    window = pc.doc.ids[im.end : min(pc.end, im.end + text_after_image)]
                    hit = np.flatnonzero(special.mask(window))
                    k = int(hit[0]) if len(hit) else len(window)
                    a = t + im.end - pc.start
                    after[b, a : a + k] = i
            t += n
    P = 3 * patch_size * patch_size
    pixel_values_NP = torch.from_numpy(np.concatenate(patches) if patches else np.zeros((0, P), np.uint8))
    return Batch(
        input_ids_BT=torch.from_numpy(input_ids),
        labels_BT=torch.from_numpy(labels),
        position_ids_BT=torch.from_numpy(position_ids),
        segment_ids_BT=torch.from_numpy(segment_ids),
        pixel_values_NP=pixel_values_NP,
        grid_hw_I2=torch.tensor(grids, dtype=torch.int64).reshape(-1, 2),
        text_after_image_BT=torch.from_numpy(after),
    )


def normalise(x_NP: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 patches [N, 3*p*p] (each patch channel-major) -> float32 (x/255 - mean_c) / std_c per channel c."""
    x_N3Q = x_NP.astype(np.float32).reshape(x_NP.shape[0], 3, x_NP.shape[1] // 3)
    x_N3Q /= np.float32(255.0)
    x_N3Q -= np.asarray(mean, dtype=np.float32)[:, None]
    x_N3Q /= np.asarray(std, dtype=np.float32)[:, None]
    return x_N3Q.reshape(x_NP.shape)


def normalise_pixels(batch: Batch, mean: Sequence[float], std: Sequence[float]) -> Batch:
    """Raw batch (uint8 pixels) -> the contract's float32 pixels (x/255 - mean_c) / std_c per channel: in
    place on one float32 copy (vectorised numpy, which releases the GIL)."""
    return replace(batch, pixel_values_NP=torch.from_numpy(normalise(batch.pixel_values_NP.numpy(), mean, std)))
