"""Synthetic batches keep the Batch contract the loader keeps (what the distributed tests and the GPU check
rely on): placeholders match the images' merged tokens, labels never target image or image-marker tokens,
`<eos>` is a target, each kind holds what it says, and concatenation offsets the image indices."""

from __future__ import annotations

import torch
from _dist_train import tiny_config

from train.batch import IGNORE_INDEX
from train.synthetic import EOS, IMAGE, IMG_END, IMG_START, concat_batches, synthetic_batch


def make(kind, seed=0):
    return synthetic_batch(tiny_config().model, torch.Generator().manual_seed(seed), kind, batch_size=3, seq_len=64)


def test_kinds_and_the_batch_contract():
    mixed, text, images = make("mixed"), make("text"), make("images")
    assert mixed.n_images > 0 and text.n_images == 0 and images.n_images > 0
    assert int((text.text_after_image_BT >= 0).sum()) == 0 and int((images.text_after_image_BT >= 0).sum()) == 0
    assert int((mixed.text_after_image_BT >= 0).sum()) > 0  # captions: contrastive pairs
    for b in (mixed, text, images):
        h, w = b.grid_hw_I2[:, 0], b.grid_hw_I2[:, 1]
        assert int((b.input_ids_BT == IMAGE).sum()) == int(((h // 2) * (w // 2)).sum())
        assert b.pixel_values_NP.shape[0] == int((h * w).sum())
        targets = b.labels_BT[b.labels_BT != IGNORE_INDEX]
        assert not bool(torch.isin(targets, torch.tensor([IMAGE, IMG_START, IMG_END])).any())
        assert bool((targets == EOS).any())  # the model learns to stop
        assert bool((b.segment_ids_BT[b.input_ids_BT == 0] == -1).all())  # padding is segment -1


def test_concat_offsets_image_indices():
    a, b = make("mixed", 1), make("mixed", 2)
    ab = concat_batches([a, b])
    assert ab.n_images == a.n_images + b.n_images and ab.input_ids_BT.shape[0] == 6
    after_b = ab.text_after_image_BT[3:]
    torch.testing.assert_close(after_b[after_b >= 0], b.text_after_image_BT[b.text_after_image_BT >= 0] + a.n_images)
