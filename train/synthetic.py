"""Synthetic batches: valid `Batch`es (the train/batch.py contract) made without a corpus or tokenizer.

Used by the distributed trainer tests and the GPU check (bench/gpu.py). `synthetic_batch(cfg, gen, kind)`
packs B rows of T tokens with documents laid out as the loader lays them out:

  <bos> [<img_start> <image> x M <img_end>] text ... <eos> <pad> ...

  kind="mixed"   documents with and without an image, text after each image (contrastive pairs)
  kind="text"    no image in the batch at all
  kind="images"  only image documents without text: `<bos> <img_start> <image> x M <img_end> <eos>`

Text is learnable on purpose: each document repeats one of a few fixed motifs (drawn from the generator
seeded by `motif_seed`), so the next-token loss falls within tens of steps. Labels are the next token,
IGNORE_INDEX where the target is an image or start/end-of-image token, `<eos>` is a target (the model has to
learn to stop). Special token ids are the tokenizer's (train/batch.py SPECIAL_TOKENS order).
"""

from __future__ import annotations

from typing import Literal

import torch

from train.batch import IGNORE_INDEX, SPECIAL_TOKENS, Batch
from train.model.config import ModelConfig

PAD, BOS, EOS, IMG_START, IMAGE, IMG_END = range(len(SPECIAL_TOKENS))
GRIDS = ((2, 2), (2, 4), (4, 2), (4, 4))  # image grids (h, w) in patches; each a multiple of merge=2
TEXT_AFTER_IMAGE = 32  # tokens after <img_end> that are the image's text (as DataConfig.text_after_image)

Kind = Literal["mixed", "text", "images"]


def _motifs(vocab: int, motif_seed: int, n: int = 4, length: int = 8) -> list[list[int]]:
    g = torch.Generator().manual_seed(motif_seed)
    first = len(SPECIAL_TOKENS)
    return [torch.randint(first, vocab, (length,), generator=g).tolist() for _ in range(n)]


def synthetic_batch(
    cfg: ModelConfig,
    gen: torch.Generator,
    kind: Kind = "mixed",
    batch_size: int = 2,
    seq_len: int = 64,
    grids: tuple[tuple[int, int], ...] = GRIDS,
    text_tokens: tuple[int, int] = (4, 32),
    motif_seed: int = 0,
) -> Batch:
    """One packed batch of `batch_size` rows x `seq_len` tokens (see module doc); `gen` drives every choice.
    Image grids are drawn from `grids`, text lengths from [text_tokens[0], text_tokens[1])."""
    if cfg.image_token_id != IMAGE:
        raise ValueError(f"model.image_token_id={cfg.image_token_id}: synthetic batches use {IMAGE} (<|image|>)")
    motifs = _motifs(cfg.vocab_size, motif_seed)
    m, P = cfg.vision.merge, 3 * cfg.vision.patch_size**2

    def rand(n: int) -> int:
        return int(torch.randint(n, (1,), generator=gen))

    ids_BT = torch.full((batch_size, seq_len), PAD, dtype=torch.long)
    labels_BT = torch.full((batch_size, seq_len), IGNORE_INDEX, dtype=torch.long)
    pos_BT = torch.zeros((batch_size, seq_len), dtype=torch.long)
    seg_BT = torch.full((batch_size, seq_len), -1, dtype=torch.int32)
    after_BT = torch.full((batch_size, seq_len), -1, dtype=torch.long)
    grids_I: list[tuple[int, int]] = []
    for b in range(batch_size):
        t, seg = 0, 0
        while True:
            with_image = kind == "images" or (kind == "mixed" and rand(2) == 0)
            h, w = grids[rand(len(grids))] if with_image else (0, 0)
            n_img = (h // m) * (w // m)
            n_text = 0 if kind == "images" else text_tokens[0] + rand(text_tokens[1] - text_tokens[0])
            image_part = [IMG_START] + [IMAGE] * n_img + [IMG_END] if with_image else []
            motif = motifs[rand(len(motifs))]
            doc = [BOS] + image_part + [motif[i % len(motif)] for i in range(n_text)] + [EOS]
            if t + len(doc) > seq_len:
                break
            ids_BT[b, t : t + len(doc)] = torch.tensor(doc)
            pos_BT[b, t : t + len(doc)] = torch.arange(len(doc))
            seg_BT[b, t : t + len(doc)] = seg
            for j in range(len(doc) - 1):  # label j predicts token j+1 of the same document
                if doc[j + 1] not in (IMAGE, IMG_START, IMG_END):
                    labels_BT[b, t + j] = doc[j + 1]
            if with_image:
                text_start = t + 1 + len(image_part)
                n_after = min(n_text, TEXT_AFTER_IMAGE)
                after_BT[b, text_start : text_start + n_after] = len(grids_I)
                grids_I.append((h, w))
            t, seg = t + len(doc), seg + 1
    n_patches = sum(h * w for h, w in grids_I)
    pixels_NP = torch.randn(n_patches, P, generator=gen)
    grid_hw_I2 = torch.tensor(grids_I, dtype=torch.long).reshape(-1, 2)
    return Batch(
        input_ids_BT=ids_BT,
        labels_BT=labels_BT,
        position_ids_BT=pos_BT,
        segment_ids_BT=seg_BT,
        pixel_values_NP=pixels_NP,
        grid_hw_I2=grid_hw_I2,
        text_after_image_BT=after_BT,
    )


def concat_batches(batches: list[Batch]) -> Batch:
    """The batches as one (rows stacked, images in order): what one process sees of several ranks' batches."""
    after, offset = [], 0
    for b in batches:
        after.append(torch.where(b.text_after_image_BT >= 0, b.text_after_image_BT + offset, -1))
        offset += b.n_images

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(b, name) for b in batches])

    return Batch(
        input_ids_BT=cat("input_ids_BT"),
        labels_BT=cat("labels_BT"),
        position_ids_BT=cat("position_ids_BT"),
        segment_ids_BT=cat("segment_ids_BT"),
        pixel_values_NP=cat("pixel_values_NP"),
        grid_hw_I2=cat("grid_hw_I2"),
        text_after_image_BT=torch.cat(after),
    )
