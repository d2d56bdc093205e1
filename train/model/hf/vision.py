"""Pretrained vision towers into interloom's ViT (train/model/vision.py): config and state-dict converters.

What it does:
  - `vision_config_from_hf(hf_cfg, base)`: a Qwen2-VL vision config -> our `VisionConfig` (quick_gelu MLP,
    no patch bias, LayerNorm eps 1e-6, the MLP merger to the LLM width as `merger="mlp"`, `d_out`)
  - `vision_state_from_hf(hf_state, cfg)`: its tensors -> our `VisionEncoder` state dict
  - `load_pretrained_vision(dir, base)`: a local folder (a whole Qwen2-VL model, or its vision tower saved
    alone) -> (our VisionConfig, our VisionEncoder state dict); a path only, never a hub download
  - `init_vision_config(cfg, dir)` / `init_vision(encoder, dir)`: `interloom train --init-vision DIR`
    (the run's model.vision from the folder; the weights loaded in `build_model`, before sharding)

Mapping (Qwen2-VL `Qwen2VisionTransformerPretrainedModel`):
  patch_embed.proj (Conv3d over T=2 frames, no bias)  -> patch_embed (Linear over 3*p*p): an image is the
      same frame twice, so the Linear weight is the Conv3d weight summed over its temporal axis; patch
      values in both are laid out (C, p, p)
  blocks.i.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2} -> blocks.i.{norm1,norm2,attn.wqkv,attn.wo,mlp.0,mlp.2}
  merger.ln_q -> norm (the tower's final LayerNorm);  merger.mlp.{0,2} -> merge.{0,2}
The 2D RoPE is the same (Dh/4 frequencies by row, then Dh/4 by column, rotate-half pairs). Qwen2-VL feeds
patches grouped by 2x2 block; ours are in raster order and gathered per block by `merge_index`, which
gives the same tokens in the same order. The merger stays in the tower: its output width is the LLM width
of the Qwen2-VL the tower came from; our adapter (always new) maps that to our decoder's width.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from train.model.config import VisionConfig
from train.model.hf.checkpoint import read_hf_config, read_hf_state
from train.model.vision import VisionEncoder

log = logging.getLogger(__name__)

VISION_TYPES = ("qwen2_vl", "qwen2_vl_vision")  # a whole Qwen2-VL, or its tower saved alone


def _vision_section(hf_cfg: dict, where: str) -> dict:
    """The vision part of a folder's config.json: `vision_config` of a whole VLM, or the config itself."""
    section = hf_cfg.get("vision_config", hf_cfg)
    model_type = hf_cfg.get("model_type", "")
    if model_type not in VISION_TYPES and section.get("model_type") not in VISION_TYPES:
        raise ValueError(
            f"{where}: model_type {model_type!r} is not a supported vision tower (supported: {', '.join(VISION_TYPES)})"
        )
    return section


def vision_config_from_hf(hf_cfg: dict, base: VisionConfig | None = None, where: str = "config.json") -> VisionConfig:
    v = _vision_section(hf_cfg, where)
    if v.get("temporal_patch_size", 2) != 2 or v.get("in_channels", 3) != 3:
        raise ValueError(f"{where}: only in_channels=3, temporal_patch_size=2 towers are supported")
    if v.get("hidden_act", "quick_gelu") not in ("gelu", "quick_gelu"):
        raise ValueError(f"{where}: vision hidden_act {v['hidden_act']!r} is not gelu or quick_gelu")
    fields = dict(
        patch_size=v["patch_size"],
        d_vit=v["embed_dim"],
        n_layers=v["depth"],
        n_heads=v["num_heads"],
        merge=v["spatial_merge_size"],
        rope_theta=10000.0,
        mlp_ratio=v["mlp_ratio"],
        mlp_act=v.get("hidden_act", "quick_gelu"),
        patch_bias=False,
        norm_eps=1e-6,
        merger="mlp",
        d_out=v["hidden_size"],
    )
    return VisionConfig.model_validate({**(base or VisionConfig()).model_dump(), **fields})


def _strip_prefix(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys relative to the tower: drop 'model.visual.' / 'visual.' and everything that is not the tower."""
    for prefix in ("model.visual.", "visual."):
        if any(k.startswith(prefix) for k in hf_state):
            return {k[len(prefix) :]: t for k, t in hf_state.items() if k.startswith(prefix)}
    return hf_state


def vision_state_from_hf(
    hf_state: dict[str, torch.Tensor], cfg: VisionConfig, where: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    hf = _strip_prefix(hf_state)

    def get(key: str) -> torch.Tensor:
        if key not in hf:
            raise ValueError(f"{where}: vision checkpoint lacks {key}")
        return hf[key]

    conv = get("patch_embed.proj.weight")  # V, C, T, p, p
    state = {
        "patch_embed.weight": conv.sum(dim=2).reshape(conv.shape[0], -1),
        "norm.weight": get("merger.ln_q.weight"),
        "norm.bias": get("merger.ln_q.bias"),
    }
    for j in (0, 2):
        for t in ("weight", "bias"):
            state[f"merge.{j}.{t}"] = get(f"merger.mlp.{j}.{t}")
    names = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attn.qkv": "attn.wqkv",
        "attn.proj": "attn.wo",
        "mlp.fc1": "mlp.0",
        "mlp.fc2": "mlp.2",
    }
    for i in range(cfg.n_layers):
        for theirs, ours in names.items():
            for t in ("weight", "bias"):
                state[f"blocks.{i}.{ours}.{t}"] = get(f"blocks.{i}.{theirs}.{t}")
    return state


def load_pretrained_vision(
    model_dir: str | Path, base: VisionConfig | None = None
) -> tuple[VisionConfig, dict[str, torch.Tensor]]:
    """(our VisionConfig, our VisionEncoder state dict) of a local Qwen2-VL (or Qwen2-VL vision) folder."""
    model_dir = Path(model_dir)
    where = str(model_dir / "config.json")
    cfg = vision_config_from_hf(read_hf_config(model_dir), base, where)
    return cfg, vision_state_from_hf(read_hf_state(model_dir), cfg, str(model_dir))


def init_vision_config(cfg, model_dir: str | Path):
    """`cfg` (a TrainConfig) with the vision tower architecture of `model_dir` and model.init_vision set
    (`interloom train --init-vision DIR`); the data's patch grid follows model.vision as always."""
    model_dir = Path(model_dir).resolve()
    vision = vision_config_from_hf(read_hf_config(model_dir), cfg.model.vision, str(model_dir / "config.json"))
    data = cfg.model_dump()
    data["model"] |= {"vision": vision.model_dump(), "init_vision": str(model_dir)}
    log.info(
        "init-vision %s: d_vit %d, %d layers, patch %d, merged width %d",
        model_dir,
        vision.d_vit,
        vision.n_layers,
        vision.patch_size,
        vision.out_dim,
    )
    return type(cfg).model_validate(data)


def init_vision(encoder: VisionEncoder, model_dir: str | Path) -> None:
    """Load a pretrained tower into an encoder built from `init_vision_config`'s config (`build_model`)."""
    cfg, state = load_pretrained_vision(model_dir, encoder.cfg)
    if cfg != encoder.cfg:
        raise ValueError(f"{model_dir}: its vision tower differs from model.vision of the run's config")
    encoder.load_state_dict(state, strict=True)
    log.info("vision tower initialised from %s", model_dir)
