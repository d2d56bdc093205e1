"""Reading and writing Hugging Face model folders (config.json + safetensors), and token-id logits.

A folder holds `config.json` and either `model.safetensors` or shards listed by
`model.safetensors.index.json` ({"weight_map": {key: file}}). Tensors are read lazily, one at a time, from
memory-mapped safetensors files. Nothing is downloaded: a path that is not such a folder is a ValueError.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from train.model.config import ModelConfig
from train.model.decoder import Decoder
from train.model.hf.convert import (
    FAMILIES,
    Family,
    config_from_hf,
    config_to_hf,
    infer_family,
    mismatch,
    state_from_hf,
    state_to_hf,
)

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_hf_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{model_dir}: no config.json (expected a local Hugging Face model folder)")
    return json.loads(path.read_text())


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """HF key -> safetensors file that holds it."""
    if (model_dir / INDEX).is_file():
        weight_map = json.loads((model_dir / INDEX).read_text())["weight_map"]
        return {k: model_dir / f for k, f in weight_map.items()}
    if (model_dir / SINGLE).is_file():
        with safe_open(model_dir / SINGLE, "pt") as f:
            return dict.fromkeys(f.keys(), model_dir / SINGLE)
    raise ValueError(f"{model_dir}: neither {SINGLE} nor {INDEX} (only safetensors checkpoints are read)")


def read_hf_state(model_dir: str | Path, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """HF tensors of a folder (all, or `keys`), read from its safetensors file(s)."""
    files = _weight_files(Path(model_dir))
    with ExitStack() as stack:
        handles = {p: stack.enter_context(safe_open(p, "pt")) for p in set(files.values())}
        return {k: handles[files[k]].get_tensor(k) for k in (keys or files)}


def load_pretrained_decoder(
    model_dir: str | Path, base: ModelConfig | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor], Family]:
    """(our config, our decoder state dict, the family) of a local HF model folder. `base` supplies what
    the folder does not say (vision tower, contrastive head, attention backend, MoE loss weights)."""
    model_dir = Path(model_dir)
    hf_cfg = read_hf_config(model_dir)
    cfg = config_from_hf(hf_cfg, base, where=str(model_dir / "config.json"))
    fam = FAMILIES[hf_cfg["model_type"]]
    files = _weight_files(model_dir)
    with ExitStack() as stack:
        handles = {p: stack.enter_context(safe_open(p, "pt")) for p in set(files.values())}

        def get(key: str) -> torch.Tensor:
            if key not in files:
                raise ValueError(f"{model_dir}: checkpoint lacks {key} (needed by {fam.model_type})")
            return handles[files[key]].get_tensor(key)

        state = state_from_hf(get, cfg, fam)
    log.info(
        "loaded %s decoder from %s: %d layers, d_model %d, vocab %d",
        fam.model_type,
        model_dir,
        cfg.n_layers,
        cfg.d_model,
        cfg.vocab_size,
    )
    return cfg, state, fam


def export_decoder(
    decoder: Decoder,
    out_dir: str | Path,
    family: str | None = None,
    max_shard_bytes: int = 5 * 2**30,
    max_position_embeddings: int = 32768,
) -> Family:
    """Write our decoder as an HF folder (config.json + safetensors, sharded with an index above
    `max_shard_bytes`) of `family` (default: the one whose architecture equals ours)."""
    cfg = decoder.cfg
    fam = infer_family(cfg) if family is None else FAMILIES.get(family)
    if fam is None:
        raise ValueError(f"export: unknown family {family!r}; supported: {sorted(FAMILIES)}")
    if why := mismatch(cfg, fam):
        raise ValueError(f"export: the decoder cannot be written as {fam.model_type}: {why}")
    tensors = state_to_hf(decoder.state_dict(), cfg, fam)
    dtype = next(iter(tensors.values())).dtype
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], out / SINGLE, metadata={"format": "pt"})
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, shard in zip(names, shards, strict=True):
            save_file(shard, out / name, metadata={"format": "pt"})
        weight_map = {k: name for name, shard in zip(names, shards, strict=True) for k in shard}
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    hf_cfg = config_to_hf(cfg, fam, max_position_embeddings, dtype)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    log.info("exported %s decoder (%d tensors, %d shard(s)) to %s", fam.model_type, len(tensors), len(shards), out)
    return fam


def decoder_logits(
    decoder: Decoder, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits (B, T, V) of token ids, one document per row; padding (attention_mask 0, left or right) is its
    own segment and its logits are meaningless. Positions count the row's real tokens from 0."""
    valid_BT = (
        torch.ones_like(input_ids_BT, dtype=torch.bool) if attention_mask_BT is None else attention_mask_BT.bool()
    )
    position_ids_BT = (valid_BT.long().cumsum(dim=1) - 1).clamp(min=0)
    segment_ids_BT = torch.where(valid_BT, 0, -1)
    h_BTD, _ = decoder(decoder.tok_embeddings(input_ids_BT), position_ids_BT, segment_ids_BT)
    return decoder.output(h_BTD).float()
