"""Pretrained vision towers into interloom's ViT (train/model/vision.py): config and state-dict converters,
Qwen2-VL's and SigLIP2's (NaFlex), picked by the folder's config.json `model_type`.

What it does:
  - `vision_config_from_hf(hf_cfg, base)`: a Qwen2-VL vision config -> our `VisionConfig` (quick_gelu MLP,
    no patch bias, LayerNorm eps 1e-6, the MLP merger to the LLM width as `merger="mlp"`, `d_out`)
  - `_qwen2_vl_plan` / `_siglip2_plan`: where each of the tower's tensors goes (our key, rows, transform);
    only the tower's tensors are read, one safetensors shard open at a time, one tensor at a time
  - `load_pretrained_vision(dir, base)`: a local folder (a whole Qwen2-VL model, or its vision tower saved
    alone) -> (our VisionConfig, our VisionEncoder state dict); a path only, never a hub download
  - `tower_pixel_stats(dir)`: the tower's per-channel pixel mean/std (its preprocessor_config.json; absent:
    the defaults of its image processor, CLIP's for Qwen2-VL, 0.5 for SigLIP2)
  - `init_vision_config(cfg, dir)` / `init_vision(encoder, dir)`: `interloom train --init-vision DIR`
    (the run's model.vision and data.image_mean/std from the folder; the weights loaded in `build_model`,
    before sharding)

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

Mapping (SigLIP2 `Siglip2VisionModel`, or the vision_model of a whole `Siglip2Model`; NaFlex):
  embeddings.patch_embedding (Linear over patches laid out (p, p, C)) -> patch_embed (over (C, p, p)):
      the weight's columns permuted
  embeddings.position_embedding (G*G table) -> pos_embed (`pos_embed="learned"`, `pos_grid=G`): resized
      bilinearly (antialiased) to each image's patch grid, added, no RoPE
  encoder.layers.i.{layer_norm1,layer_norm2,mlp.fc1,mlp.fc2,self_attn.out_proj} ->
      blocks.i.{norm1,norm2,mlp.0,mlp.2,attn.wo};  self_attn.{q,k,v}_proj -> attn.wqkv (concatenated)
  post_layernorm -> norm;  the attention-pooling `head` (a single pooled vector) is not used
Our `VisionEncoder.features` equals SigLIP2's last_hidden_state. SigLIP2 has no merger: our 2x2 `merge`
(a Linear, m*m*V -> V) and the adapter after it are new, absent from the state dict (`init_vision` loads
the tower with them left at their init) and trained from the `align` stage on ("adapter" covers the merge
of a SigLIP2 tower: `merge_with_adapter`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from pathlib import Path

import torch

from train.model.config import VisionConfig
from train.model.hf.checkpoint import (
    build_on_meta,
    check_layer_count,
    check_weight_files,
    header_tensor,
    open_safetensors,
    read_hf_config,
    read_json_object,
    read_tensor,
    weight_files,
)
from train.model.hf.convert import check_whole_numbers, config_errors
from train.model.vision import VisionEncoder

log = logging.getLogger(__name__)

QWEN2_VL_TYPES = ("qwen2_vl", "qwen2_vl_vision")  # a whole Qwen2-VL, or its tower saved alone
SIGLIP2_TYPES = ("siglip2", "siglip2_vision_model")  # a whole SigLIP2, or its vision model saved alone
VISION_TYPES = QWEN2_VL_TYPES + SIGLIP2_TYPES
PREPROCESSOR = "preprocessor_config.json"
# the image processors' defaults when a folder has no preprocessor_config.json (transformers'
# OPENAI_CLIP_MEAN/STD for Qwen2VLImageProcessor, IMAGENET_STANDARD_MEAN/STD = 0.5 for Siglip2ImageProcessor)
PIXEL_STATS = {
    "qwen2_vl": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip2": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def _vision_section(hf_cfg: dict, where: str) -> tuple[str, dict]:
    """("qwen2_vl" | "siglip2", the vision part of a folder's config.json: `vision_config` of a whole
    model, or the config itself)."""
    section = hf_cfg.get("vision_config", hf_cfg)
    if not isinstance(section, dict):
        raise ValueError(f"{where}: vision_config={section!r} is not an object")
    types = {hf_cfg.get("model_type", ""), section.get("model_type", "")}
    if types & set(SIGLIP2_TYPES):
        return "siglip2", section
    if types & set(QWEN2_VL_TYPES):
        return "qwen2_vl", section
    raise ValueError(
        f"{where}: model_type {hf_cfg.get('model_type', '')!r} is not a supported vision tower "
        f"(supported: {', '.join(VISION_TYPES)})"
    )


def tower_kind(model_dir: str | Path) -> str:
    """ "qwen2_vl" or "siglip2": which converter a folder's config.json picks."""
    model_dir = Path(model_dir)
    return _vision_section(read_hf_config(model_dir), str(model_dir / "config.json"))[0]


VISION_WHOLE_NUMBERS = (
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "spatial_merge_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "num_patches",
)


def vision_config_from_hf(hf_cfg: dict, base: VisionConfig | None = None, where: str = "config.json") -> VisionConfig:
    """Our VisionConfig for a Qwen2-VL or SigLIP2 tower's config.json; a missing or ill-typed field is a
    ValueError naming `where` and the field."""
    with config_errors(where):
        return _vision_config_from_hf(hf_cfg, base, where)


def _vision_config_from_hf(hf_cfg: dict, base: VisionConfig | None, where: str) -> VisionConfig:
    kind, v = _vision_section(hf_cfg, where)
    check_whole_numbers(v, VISION_WHOLE_NUMBERS, where)
    if kind == "siglip2":
        return _siglip2_config(v, base, where)
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


def _siglip2_config(v: dict, base: VisionConfig | None, where: str) -> VisionConfig:
    if v.get("num_channels", 3) != 3:
        raise ValueError(f"{where}: only num_channels=3 towers are supported")
    if v.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ValueError(f"{where}: vision hidden_act {v['hidden_act']!r} is not gelu_pytorch_tanh")
    grid = round(v.get("num_patches", 256) ** 0.5)
    if grid * grid != v.get("num_patches", 256):
        raise ValueError(f"{where}: num_patches={v['num_patches']} is not a square grid")
    d_vit = v.get("hidden_size", 768)
    fields = dict(
        patch_size=v.get("patch_size", 16),
        d_vit=d_vit,
        n_layers=v.get("num_hidden_layers", 12),
        n_heads=v.get("num_attention_heads", 12),
        pos_embed="learned",
        pos_grid=grid,
        mlp_ratio=v.get("intermediate_size", 3072) / d_vit,
        mlp_act="gelu_tanh",
        patch_bias=True,
        norm_eps=v.get("layer_norm_eps", 1e-6),
        merger="linear",
        d_out=None,
        merge_with_adapter=True,
    )
    cfg = VisionConfig.model_validate({**(base or VisionConfig()).model_dump(), **fields})
    if int(cfg.mlp_ratio * d_vit) != v.get("intermediate_size", 3072):
        raise ValueError(f"{where}: intermediate_size {v['intermediate_size']} is not mlp_ratio * hidden_size")
    return cfg


# One HF tensor -> (our key, the rows of it the tensor fills (None: all), how the tensor is transformed).
Target = tuple[str, slice | None, Callable[[torch.Tensor], torch.Tensor]]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _qwen2_vl_plan(cfg: VisionConfig) -> dict[str, Target]:
    """Tower-relative Qwen2-VL key -> where it goes in our VisionEncoder (module docstring's mapping)."""
    plan: dict[str, Target] = {
        # an image is the same frame twice: the Conv3d summed over its temporal axis is our Linear
        "patch_embed.proj.weight": ("patch_embed.weight", None, lambda t: t.sum(dim=2).reshape(t.shape[0], -1)),
    }
    names = {"merger.ln_q": "norm", "merger.mlp.0": "merge.0", "merger.mlp.2": "merge.2"}
    block = {"norm1": "norm1", "norm2": "norm2", "attn.qkv": "attn.wqkv", "attn.proj": "attn.wo"}
    block |= {"mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"}
    for i in range(cfg.n_layers):
        names |= {f"blocks.{i}.{theirs}": f"blocks.{i}.{ours}" for theirs, ours in block.items()}
    for theirs, ours in names.items():
        for t in ("weight", "bias"):
            plan[f"{theirs}.{t}"] = (f"{ours}.{t}", None, _same)
    return plan


def _siglip2_plan(cfg: VisionConfig) -> dict[str, Target]:
    """Tower-relative SigLIP2 key -> where it goes in our VisionEncoder (all but the new `merge`)."""
    p, V = cfg.patch_size, cfg.d_vit
    plan: dict[str, Target] = {
        # patches laid out (p, p, C) in SigLIP2, (C, p, p) in ours: the weight's columns permuted
        "embeddings.patch_embedding.weight": (
            "patch_embed.weight",
            None,
            lambda t: t.view(V, p, p, 3).permute(0, 3, 1, 2).reshape(V, -1),
        ),
        "embeddings.patch_embedding.bias": ("patch_embed.bias", None, _same),
        "embeddings.position_embedding.weight": ("pos_embed.weight", None, _same),
        "post_layernorm.weight": ("norm.weight", None, _same),
        "post_layernorm.bias": ("norm.bias", None, _same),
    }
    names = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.wo"}
    names |= {"mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"}
    for i in range(cfg.n_layers):
        for t in ("weight", "bias"):
            for theirs, ours in names.items():
                plan[f"encoder.layers.{i}.{theirs}.{t}"] = (f"blocks.{i}.{ours}.{t}", None, _same)
            for j, x in enumerate("qkv"):  # q, k, v -> the row blocks of our wqkv
                plan[f"encoder.layers.{i}.self_attn.{x}_proj.{t}"] = (
                    f"blocks.{i}.attn.wqkv.{t}",
                    slice(j * V, (j + 1) * V),
                    _same,
                )
    return plan


TOWER_PREFIXES = {"qwen2_vl": ("model.visual.", "visual."), "siglip2": ("model.vision_model.", "vision_model.")}


def _tower_plan(model_dir: Path, cfg: VisionConfig) -> tuple[dict[str, Target], dict[str, Path]]:
    """(full HF key -> Target for every tower tensor, full HF key -> the safetensors file holding it); a
    whole model's other tensors (its LLM) are never read."""
    kind = tower_kind(model_dir)
    plan = _siglip2_plan(cfg) if kind == "siglip2" else _qwen2_vl_plan(cfg)
    files = weight_files(model_dir)
    prefix = next((p for p in TOWER_PREFIXES[kind] if any(k.startswith(p) for k in files)), "")
    if missing := [k for k in plan if prefix + k not in files]:
        raise ValueError(f"{model_dir}: vision checkpoint lacks {missing[0]}")
    return {prefix + k: t for k, t in plan.items()}, {prefix + k: files[prefix + k] for k in plan}


def _read_tower(
    model_dir: Path, cfg: VisionConfig, write: Callable[[Target, torch.Tensor], None], shapes_only: bool = False
) -> None:
    """Every tower tensor of the folder, transformed, to `write`: one safetensors file open at a time, one
    tensor read at a time (`shapes_only`: meta tensors of the headers' shapes, nothing read)."""
    plan, files = _tower_plan(model_dir, cfg)
    by_file: dict[Path, list[str]] = {}
    for key, path in files.items():
        by_file.setdefault(path, []).append(key)
    for path in sorted(by_file):
        with open_safetensors(path) as f:
            for key in by_file[path]:
                t = header_tensor(f, path, key) if shapes_only else read_tensor(f, path, key)
                target = plan[key]
                try:
                    write(target, target[2](t))
                except (ValueError, RuntimeError) as e:  # RuntimeError: a transform's view of a wrong shape
                    raise ValueError(f"{path}: {key} of shape {tuple(t.shape)} does not fit: {e}") from None


def load_pretrained_vision(
    model_dir: str | Path, base: VisionConfig | None = None
) -> tuple[VisionConfig, dict[str, torch.Tensor]]:
    """(our VisionConfig, our VisionEncoder state dict) of a local Qwen2-VL or SigLIP2 folder (a whole model
    or its vision tower saved alone); a SigLIP2 state dict has no `merge.*` (new, see `new_vision_keys`).
    For tests and small towers: `init_vision` writes straight into a built encoder instead."""
    model_dir = Path(model_dir)
    cfg = vision_config_from_hf(read_hf_config(model_dir), base, str(model_dir / "config.json"))
    pieces: dict[str, list[tuple[int, torch.Tensor]]] = {}

    def collect(target: Target, t: torch.Tensor) -> None:
        ours, rows, _ = target
        pieces.setdefault(ours, []).append((0 if rows is None else rows.start, t))

    _read_tower(model_dir, cfg, collect)
    state = {k: torch.cat([t for _, t in sorted(v, key=lambda x: x[0])]) for k, v in pieces.items()}
    return cfg, state


def new_vision_keys(cfg: VisionConfig) -> tuple[str, ...]:
    """Parameter-name prefixes of a VisionEncoder that a pretrained tower of this config does not bring."""
    return ("merge.",) if cfg.merge_with_adapter else ()


def tower_pixel_stats(model_dir: str | Path) -> tuple[list[float], list[float]]:
    """(mean, std) per RGB channel of the pixels the tower was trained on, after x/255: the folder's
    preprocessor_config.json `image_mean` / `image_std`, or its image processor's defaults (`PIXEL_STATS`)."""
    model_dir = Path(model_dir)
    path = model_dir / PREPROCESSOR
    if not path.is_file():
        mean, std = PIXEL_STATS[tower_kind(model_dir)]
        log.info("%s: no %s, using the %s image processor's mean/std", model_dir, PREPROCESSOR, tower_kind(model_dir))
        return list(mean), list(std)
    pre = read_json_object(path)
    if not pre.get("do_normalize", True) or not math.isclose(pre.get("rescale_factor", 1 / 255), 1 / 255):
        raise ValueError(f"{path}: only do_normalize=true with rescale_factor=1/255 is supported")
    stats = []
    for key in ("image_mean", "image_std"):
        v = pre.get(key)
        v = [v] * 3 if isinstance(v, int | float) else v
        if not isinstance(v, list) or len(v) != 3 or not all(isinstance(x, int | float) for x in v):
            raise ValueError(f"{path}: {key}={pre.get(key)!r} is not one number or three (R, G, B)")
        stats.append([float(x) for x in v])
    return stats[0], stats[1]


def init_vision_config(cfg, model_dir: str | Path):
    """`cfg` (a TrainConfig) with the vision tower architecture of `model_dir`, model.init_vision set and
    data.image_mean/std the tower's (`interloom train --init-vision DIR`); the data's patch grid follows
    model.vision as always."""
    model_dir = Path(model_dir).resolve()
    vision = vision_config_from_hf(read_hf_config(model_dir), cfg.model.vision, str(model_dir / "config.json"))
    mean, std = tower_pixel_stats(model_dir)
    check_weight_files(model_dir)  # a damaged folder is refused here, before Ray starts, not in the workers
    check_tower_fits(vision, model_dir)
    data = cfg.model_dump()
    data["model"] |= {"vision": vision.model_dump(), "init_vision": str(model_dir)}
    data["data"] |= {"image_mean": mean, "image_std": std}
    log.info(
        "init-vision %s: d_vit %d, %d layers, patch %d, merged width %d, pixel mean %s std %s",
        model_dir,
        vision.d_vit,
        vision.n_layers,
        vision.patch_size,
        vision.out_dim,
        mean,
        std,
    )
    return type(cfg).model_validate(data)


_TOWER_LAYER = re.compile(r"(?:^|\.)(?:blocks|encoder\.layers)\.(\d+)\.")


def check_tower_fits(cfg: VisionConfig, model_dir: str | Path) -> None:
    """The folder's tower has the layer count and every tensor the shape `cfg` gives it, checked from the
    safetensors headers against an encoder on the meta device: a config.json claiming sizes its weights
    lack (depth 10**9, a width of 2**30) is refused naming them before a worker allocates such a tower."""
    model_dir = Path(model_dir)
    files = weight_files(model_dir)
    prefixes = TOWER_PREFIXES[tower_kind(model_dir)]
    tower = [k for k in files if k.startswith(prefixes)] or list(files)  # a whole model, or its tower alone
    check_layer_count(cfg.n_layers, tower, _TOWER_LAYER, model_dir, "vision")
    init_vision(
        build_on_meta(lambda: VisionEncoder(cfg), model_dir / "config.json", "tower"), model_dir, shapes_only=True
    )


def init_vision(encoder: VisionEncoder, model_dir: str | Path, shapes_only: bool = False) -> None:
    """Load a pretrained tower into an encoder built from `init_vision_config`'s config (`build_model`),
    tensor by tensor, one shard open at a time (no second copy of the tower's weights); every tensor of the
    encoder but the new ones (`new_vision_keys`) must come from the folder."""
    model_dir = Path(model_dir)
    cfg = vision_config_from_hf(read_hf_config(model_dir), encoder.cfg, str(model_dir / "config.json"))
    if cfg != encoder.cfg:
        raise ValueError(f"{model_dir}: its vision tower differs from model.vision of the run's config")
    targets = dict(encoder.named_parameters()) | dict(encoder.named_buffers())
    filled: dict[str, int] = {}  # our key -> elements written

    def write(target: Target, t: torch.Tensor) -> None:
        ours, rows, _ = target
        dest = targets[ours] if rows is None else targets[ours][rows]
        if dest.shape != t.shape:
            raise ValueError(f"{ours} has shape {tuple(t.shape)} in the folder, {tuple(dest.shape)} here")
        dest.copy_(t)
        filled[ours] = filled.get(ours, 0) + t.numel()

    with torch.no_grad():
        _read_tower(model_dir, cfg, write, shapes_only)
    new = new_vision_keys(cfg)
    left = [k for k, t in targets.items() if filled.get(k, 0) != t.numel() and not k.startswith(new)]
    if left:
        raise ValueError(f"{model_dir}: vision tower state does not fit: missing {left}")
    if not shapes_only:
        log.info("vision tower initialised from %s", model_dir)
