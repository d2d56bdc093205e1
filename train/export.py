"""A training checkpoint -> the decoder as a Hugging Face model folder (`interloom export model`).

A run directory holds `config.json` (the resolved TrainConfig, written by `prepare_run`) and checkpoints
`checkpoint_SSSSSSS/dcp` (torch.distributed.checkpoint, train/checkpoint.py). `load_trained_model` reads
the model part of one into a VLM on the CPU in this single process (DCP reassembles the ranks' shards; no
process group is needed); `export_model` writes its decoder with `train.model.hf.export_decoder`, in the
HF family whose architecture equals the decoder's (qwen3_moe, qwen2_moe, mixtral, qwen3, llama).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from train.config import TrainConfig
from train.model.hf import Family, export_decoder
from train.model.vlm import VLM

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def find_checkpoint(path: str | Path) -> Path:
    """`path` if it is a checkpoint directory (has dcp/), else the latest checkpoint_* inside it."""
    path = Path(path)
    if (path / "dcp").is_dir():
        return path
    found = sorted(p for p in path.glob("checkpoint_*") if (p / "dcp").is_dir())
    if not found:
        raise ValueError(f"{path}: neither a checkpoint (no dcp/) nor a run directory with checkpoint_*/dcp")
    return found[-1]


def load_trained_model(path: str | Path) -> tuple[VLM, TrainConfig, Path]:
    """(model with the checkpoint's weights, the run's config, the checkpoint directory read)."""
    import torch.distributed.checkpoint as dcp

    ckpt = find_checkpoint(path)
    config_path = ckpt.parent / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{ckpt}: no config.json in its run directory {ckpt.parent}")
    cfg = TrainConfig.model_validate(json.loads(config_path.read_text()))
    model = VLM(cfg.model)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(ckpt / "dcp"))
    model.load_state_dict(state["model"])
    log.info("loaded %s (step %s)", ckpt, json.loads((ckpt / "trainer.json").read_text()).get("step")
             if (ckpt / "trainer.json").is_file() else "?")
    return model.eval(), cfg, ckpt


def export_model(path: str | Path, out_dir: str | Path, family: str | None = None,
                 dtype: str = "float32") -> Family:
    """Write the decoder of a checkpoint (or of a run's latest) as an HF folder `out_dir`."""
    if dtype not in DTYPES:
        raise ValueError(f"export: dtype {dtype!r} not in {sorted(DTYPES)}")
    model, _, _ = load_trained_model(path)
    return export_decoder(model.decoder.to(DTYPES[dtype]), out_dir, family=family)
