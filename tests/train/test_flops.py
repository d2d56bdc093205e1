"""MFU's two halves: FLOPs of what a batch really holds (padding is no work, the vision tower is) and the
peak of the device (by name, overridable, assumed on CPU)."""

from __future__ import annotations

import torch
from _dist_train import tiny_config

from train.flops import FlopCounter, peak_flops
from train.model import VLM
from train.synthetic import synthetic_batch


def test_flops_count_real_tokens_documents_and_images():
    cfg = tiny_config("model.contrastive.weight=0")  # no captions' second pass: test below
    model = VLM(cfg.model)
    counter = FlopCounter.of(model)
    batch = synthetic_batch(cfg.model, torch.Generator().manual_seed(0), "mixed", batch_size=2, seq_len=48)
    decoder, vision = counter.batch(batch)

    seg = batch.segment_ids_BT
    docs = [int((seg[b] == s).sum()) for b in range(seg.shape[0]) for s in range(int(seg[b].max()) + 1)]
    assert sum(docs) == int((seg >= 0).sum()) < seg.numel()  # the batch has padding, left out below
    D, L = cfg.model.d_model, cfg.model.n_layers
    assert decoder == 6 * model.num_active_params() * sum(docs) + 12 * L * D * sum(n * n for n in docs)

    n_img = [int(h * w) for h, w in batch.grid_hw_I2.tolist()]
    vit = sum(
        p.numel() for m in (model.vision.patch_embed, model.vision.blocks, model.vision.norm) for p in m.parameters()
    )
    per_token = sum(p.numel() for m in (model.vision.merge, model.adapter) for p in m.parameters())
    V, Lv = cfg.model.vision.d_vit, cfg.model.vision.n_layers
    assert vision == 6 * vit * sum(n_img) + 12 * Lv * V * sum(n * n for n in n_img) + 6 * per_token * sum(n_img) // 4
    assert vision > 0

    text_only = synthetic_batch(cfg.model, torch.Generator().manual_seed(0), "text", batch_size=2, seq_len=48)
    assert counter.batch(text_only)[1] == 0


def test_flops_count_the_captions_second_pass_with_the_contrastive_loss():
    cfg = tiny_config()  # contrastive.weight 0.1: each caption runs through the decoder again
    assert cfg.model.contrastive.weight > 0
    model = VLM(cfg.model)
    batch = synthetic_batch(cfg.model, torch.Generator().manual_seed(0), "mixed", batch_size=2, seq_len=48)
    without = FlopCounter.of(
        VLM(cfg.model.model_copy(update={"contrastive": cfg.model.contrastive.model_copy(update={"weight": 0.0})}))
    )
    decoder, vision = FlopCounter.of(model).batch(batch)
    decoder_without, vision_without = without.batch(batch)

    # the captions as the model runs them: the decoder's extra stream beyond the B*T rows
    B, T = batch.input_ids_BT.shape
    x_BTD = model.embed(batch, model.encode_images(batch))
    _, _, segment_ids_N = model.decoder_stream(batch, x_BTD)
    caption_len = torch.unique(segment_ids_N[B * T :], return_counts=True)[1]
    assert caption_len.numel() > 0 and int(caption_len.sum()) == int((batch.text_after_image_BT >= 0).sum())
    head = model.decoder.output.weight.numel()  # the copies skip the LM head
    D, L = cfg.model.d_model, cfg.model.n_layers
    extra = 6 * (model.num_active_params() - head) * int(caption_len.sum()) + 12 * L * D * int((caption_len**2).sum())
    assert decoder == decoder_without + extra and vision == vision_without

    # no image, no caption pass
    text_only = synthetic_batch(cfg.model, torch.Generator().manual_seed(0), "text", batch_size=2, seq_len=48)
    assert FlopCounter.of(model).batch(text_only) == without.batch(text_only)


def test_peak_flops_override_and_assumed_cpu_peak():
    assert peak_flops(torch.device("cpu"), None, cpu_assumed=1e11) == (1e11, True)
    assert peak_flops(torch.device("cpu"), 5e14, cpu_assumed=1e11) == (5e14, False)
