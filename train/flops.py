"""Model FLOPs of a batch and the peak of the device they run on: the two halves of MFU.

MFU = (model FLOPs of the real work done) / (seconds x peak FLOP/s of the devices). Following the
PaLM / nanochat / torchtitan convention, training FLOPs are 6 per parameter per token (forward 2, backward
4) plus attention 12 * layers * width * context per token, but counted on what the batch really holds:
  decoder   6 * active params (routed experts at top_k / n_experts, embedding excluded) per REAL token
            (segment id >= 0; padding is not work), attention 12 * L * D * n^2 per packed document of n tokens
  captions  with the contrastive loss on, each image's caption (`text_after_image_BT`) runs through the
            decoder a second time as a document of its own (train/model/vlm.py): 6 * (active params less
            the LM head, which the copy skips) per caption token, attention 12 * L * D * n^2 per caption
  vision    6 * (patch embedding + ViT blocks) params per patch, attention 12 * L_v * V * n^2 per image of
            n patches, 6 * (merge + adapter) params per merged image token
Peak: the dense bf16 tensor-core peak of the device, looked up by its name (vendor datasheets, no
sparsity), overridable with `run.peak_flops`; on CPU an assumed figure (`run.cpu_peak_flops`), marked so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.batch import Batch
from train.model.vlm import VLM

# (name fragment, dense bf16 FLOP/s) -- most specific fragment first: "H100 PCIe" before "H100"
GPU_PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("MI300X", 1307e12),
)


def peak_flops(device: torch.device, override: float | None, cpu_assumed: float) -> tuple[float, bool]:
    """(peak FLOP/s of one device, assumed?): the override if set, else the GPU's table entry; on CPU, or on
    a GPU the table does not know, the assumed CPU figure or the H100's, flagged as assumed."""
    if override:
        return override, False
    if device.type != "cuda":
        return cpu_assumed, True
    name = torch.cuda.get_device_name(device)
    for fragment, value in GPU_PEAK_BF16_FLOPS:
        if fragment in name:
            return value, False
    return dict(GPU_PEAK_BF16_FLOPS)["H100"], True


def _numel(*modules: torch.nn.Module | None) -> int:
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


@dataclass
class FlopCounter:
    """Training FLOPs of a batch for one VLM (see module doc)."""

    decoder_active: int  # decoder params one token uses (VLM.num_active_params)
    decoder_attn: int  # 12 * n_layers * d_model
    caption_active: int  # decoder params a caption copy's token uses (no LM head); 0: contrastive off
    vit_per_patch: int  # patch embedding + blocks + final norm
    vit_attn: int  # 12 * vision layers * d_vit
    per_image_token: int  # merge + adapter
    merge: int  # patches per merged token (merge^2)

    @classmethod
    def of(cls, model: VLM) -> FlopCounter:
        cfg, vision = model.cfg, model.vision
        active = model.num_active_params()
        caption_active = active - _numel(model.decoder.output) if model.image_proj is not None else 0
        return cls(
            decoder_active=active,
            decoder_attn=12 * cfg.n_layers * cfg.d_model,
            caption_active=caption_active,
            vit_per_patch=_numel(vision.patch_embed, vision.blocks, vision.norm),
            vit_attn=12 * cfg.vision.n_layers * cfg.vision.d_vit,
            per_image_token=_numel(vision.merge, model.adapter),
            merge=cfg.vision.merge**2,
        )

    def batch(self, batch: Batch) -> tuple[int, int]:
        """(decoder FLOPs including the captions' second pass, vision FLOPs) of one batch (CPU tensors: no
        device sync)."""
        seg_BT = batch.segment_ids_BT.cpu().long()
        real = seg_BT >= 0
        n_real = int(real.sum())
        # document lengths: (row, segment) pairs counted; rows have segments 0, 1, ... so row * T + seg is unique
        T = seg_BT.shape[1]
        key = (torch.arange(seg_BT.shape[0])[:, None] * (T + 1) + seg_BT)[real]
        doc_len = torch.unique(key, return_counts=True)[1]
        decoder = 6 * self.decoder_active * n_real + self.decoder_attn * int((doc_len**2).sum())
        if self.caption_active and batch.n_images > 0:  # the captions' second pass (contrastive text side)
            after = batch.text_after_image_BT.cpu().long()
            caption_len = torch.bincount(after[after >= 0], minlength=batch.n_images)
            decoder += 6 * self.caption_active * int(caption_len.sum()) + self.decoder_attn * int(
                (caption_len**2).sum()
            )
        n_img = (batch.grid_hw_I2[:, 0] * batch.grid_hw_I2[:, 1]).cpu().long()
        n_patches = int(n_img.sum())
        vision = (
            6 * self.vit_per_patch * n_patches
            + self.vit_attn * int((n_img**2).sum())
            + 6 * self.per_image_token * (n_patches // self.merge)
        )
        return decoder, vision
