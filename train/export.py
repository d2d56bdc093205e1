"""A training checkpoint -> a Hugging Face model folder plus the rest of the VLM (`interloom export model`).

A run directory holds `config.json` (the resolved TrainConfig, written by `prepare_run`) and checkpoints
`checkpoint_SSSSSSS/dcp` (torch.distributed.checkpoint, train/checkpoint.py). `load_trained_model` reads
the model part of one into a VLM on the CPU in this single process (DCP reassembles the ranks' shards; no
process group is needed); `export_model` writes its decoder with `train.model.hf.export_decoder`, in the
HF family whose architecture equals the decoder's (qwen3_moe, qwen2_moe, mixtral, qwen3, llama), and next
to it what interloom needs to rebuild the whole VLM:
  interloom_model.json        our ModelConfig
  interloom_vlm.safetensors   every tensor outside the decoder (vision tower, adapter, contrastive heads)
  tokenizer.json              the run's tokenizer (when the run has one on disk)
  interloom_data.json         the run's data settings (pixel budget, normalisation, layout) for `interloom
                              eval` / `generate` on the folder
`load_exported_vlm(dir)` rebuilds the VLM from these and the HF decoder files, tensor for tensor equal to
the checkpoint (in the dtype exported).

`init_from_config(cfg, path, run_dir)` / `load_start_vlm(path)`: `interloom train --init-from CKPT` starts a
run from such a checkpoint or exported folder (e.g. `pretrain` after `align`): its model config, weights,
tokenizer and pixel normalisation, with the new recipe's stages, optimizer, batch and pixel budgets.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from corpus.config import load_json_model
from train.checkpoint import safe_reader
from train.config import TrainConfig
from train.data import DataConfig
from train.model.config import ModelConfig
from train.model.hf import Family, export_decoder, load_decoder_into
from train.model.hf.checkpoint import (
    build_on_meta,
    check_decoder_fits,
    check_weight_files,
    header_tensor,
    open_safetensors,
    read_hf_config,
    read_tensor,
)
from train.model.vlm import VLM
from train.tokenizer import Tokenizer

log = logging.getLogger(__name__)

VLM_CONFIG, VLM_REST, DATA_CONFIG = "interloom_model.json", "interloom_vlm.safetensors", "interloom_data.json"
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
    cfg = load_json_model(TrainConfig, config_path, "the run's config")
    from torch.distributed.checkpoint.api import CheckpointException

    _check_checkpoint_fits(cfg.model, ckpt)
    model = VLM(cfg.model)
    state = {"model": model.state_dict()}
    dcp_log = logging.getLogger()  # DCP logs to the root logger, with tracebacks of a damaged file: ours is one line
    level = dcp_log.level
    dcp_log.setLevel(logging.CRITICAL)
    try:
        # this process reads every shard; the .metadata pickle through safe_reader (never a bare pickle.load)
        dcp.load(state, storage_reader=safe_reader(ckpt / "dcp"), no_dist=True)
    except (CheckpointException, Exception) as e:  # noqa: BLE001 -- CheckpointException is a BaseException
        failures = list(getattr(e, "failures", {}).values())
        cause = failures[0] if failures else e
        cause = cause[0] if isinstance(cause, tuple) else getattr(cause, "exc", cause)  # (exception, frames)
        why = " ".join(str(cause).split())[:300]
        raise ValueError(f"{ckpt / 'dcp'}: cannot read the checkpoint ({type(cause).__name__}: {why})") from None
    finally:
        dcp_log.setLevel(level)
    model.load_state_dict(state["model"])
    log.info("loaded %s (step %s)", ckpt, _step(ckpt))
    return model.eval(), cfg, ckpt


def _check_checkpoint_fits(cfg: ModelConfig, ckpt: Path) -> None:
    """Every model tensor the run's config.json implies has that shape in the checkpoint's metadata, compared
    on a VLM built on the meta device: a config.json claiming sizes the checkpoint lacks is one line naming
    the tensor before a VLM of that size is allocated. A missing .metadata, or one that is no DCP metadata
    (read by `safe_reader`), is one line naming it."""
    if not (ckpt / "dcp" / ".metadata").is_file():
        raise ValueError(f"{ckpt / 'dcp'}: no .metadata (an incomplete or damaged checkpoint)")
    metadata = safe_reader(ckpt / "dcp").read_metadata()
    vlm = build_on_meta(lambda: VLM(cfg), ckpt.parent / "config.json", "model")
    want = {f"model.{k}": tuple(v.shape) for k, v in vlm.state_dict().items()}
    held = metadata.state_dict_metadata
    for key, shape in want.items():
        got = tuple(getattr(held.get(key), "size", None) or ()) if key in held else None
        if got != shape:
            raise ValueError(
                f"{ckpt / 'dcp'}: {key} is {got or 'missing'} in the checkpoint, the run's config.json needs {shape}"
            )


def _step(ckpt: Path) -> object:
    """The step of a checkpoint, for the log ('?' when trainer.json is missing or damaged)."""
    try:
        return json.loads((ckpt / "trainer.json").read_text()).get("step", "?")
    except (OSError, ValueError, AttributeError):
        return "?"


def export_model(path: str | Path, out_dir: str | Path, family: str | None = None, dtype: str = "float32") -> Family:
    """Write the checkpoint's (or the run's latest) decoder as an HF folder `out_dir`, plus the rest of
    the VLM, its config and tokenizer (module docstring)."""
    if dtype not in DTYPES:
        raise ValueError(f"export: dtype {dtype!r} not in {sorted(DTYPES)}")
    model, cfg, _ = load_trained_model(path)
    model = model.to(DTYPES[dtype])
    fam = export_decoder(model.decoder, out_dir, family=family)
    out = Path(out_dir)
    rest = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("decoder.")}
    save_file(rest, out / VLM_REST, metadata={"format": "pt"})
    (out / VLM_CONFIG).write_text(cfg.model.model_dump_json(indent=2) + "\n")
    (out / DATA_CONFIG).write_text(
        cfg.data.model_copy(update={"corpus": "", "tokenizer": "tokenizer.json"}).model_dump_json(indent=2) + "\n"
    )
    if Path(cfg.data.tokenizer).is_file():
        shutil.copyfile(cfg.data.tokenizer, out / "tokenizer.json")
    return fam


def check_exported_fits(cfg: ModelConfig, out: Path) -> None:
    """Every tensor of an exported folder has the shape `cfg` (interloom_model.json) gives it, read from the
    safetensors headers against a VLM built on the meta device: a config claiming sizes the weights lack is
    refused naming the tensor before a VLM of that size is allocated."""
    vlm = build_on_meta(lambda: VLM(cfg), out / VLM_CONFIG, "model")
    want = {k: tuple(v.shape) for k, v in vlm.state_dict().items() if not k.startswith("decoder.")}
    with open_safetensors(out / VLM_REST) as f:
        got = {k: tuple(header_tensor(f, out / VLM_REST, k).shape) for k in f.keys()}  # noqa: SIM118
    for k in sorted(want.keys() | got.keys()):
        if want.get(k) != got.get(k):
            raise ValueError(
                f"{out / VLM_REST}: {k} is {got.get(k, 'missing')}, {VLM_CONFIG} needs {want.get(k, 'none')}"
            )
    check_decoder_fits(cfg, out, exact_vocab=True)


def load_exported_vlm(out_dir: str | Path) -> VLM:
    """The VLM of an `export_model` folder: decoder from the HF files, the rest from interloom_vlm.safetensors."""
    out = Path(out_dir)
    if not (out / VLM_CONFIG).is_file():
        raise ValueError(f"{out}: no {VLM_CONFIG} (not written by `interloom export model`)")
    cfg = load_json_model(ModelConfig, out / VLM_CONFIG)
    check_exported_fits(cfg, out)
    with open_safetensors(out / VLM_REST) as f:
        rest = {k: read_tensor(f, out / VLM_REST, k) for k in f.keys()}  # noqa: SIM118 -- a safetensors handle
    if not rest:
        raise ValueError(f"{out / VLM_REST}: holds no tensor (the vision tower and adapter are missing)")
    model = VLM(cfg).to(next(iter(rest.values())).dtype)
    missing, unexpected = model.load_state_dict(rest, strict=False)
    if unexpected or any(not k.startswith("decoder.") for k in missing):
        raise ValueError(f"{out / VLM_REST}: does not fit {VLM_CONFIG} (unexpected {unexpected[:3]})")
    load_decoder_into(model.decoder, out)  # the HF decoder files, shard by shard; every tensor or a ValueError
    return model.eval()


def load_start_vlm(path: str | Path) -> VLM:
    """The VLM of an exported folder (has interloom_model.json) or of a checkpoint / run directory."""
    return load_exported_vlm(path) if (Path(path) / VLM_CONFIG).is_file() else load_trained_model(path)[0]


def init_from_config(cfg: TrainConfig, path: str | Path, run_dir: str | Path) -> TrainConfig:
    """`cfg` whose model is that of `path` (an exported folder, a checkpoint or a run directory: its latest
    checkpoint), to start from its weights (model.init_from, loaded by `build_model`): its architecture and
    loss weights, its tokenizer (copied to RUN_DIR/tokenizer.json) and pixel mean/std. The recipe keeps its
    stages, optimizer, batch, pixel budgets and how attention runs (model.attention, activation
    checkpointing, compile). The optimizer and the step start afresh."""
    src = Path(path).resolve()
    if (src / VLM_CONFIG).is_file():
        model = load_json_model(ModelConfig, src / VLM_CONFIG)
        if not (src / DATA_CONFIG).is_file():
            raise ValueError(f"--init-from {src}: no {DATA_CONFIG} (export it again with `interloom export model`)")
        data = load_json_model(DataConfig, src / DATA_CONFIG)
        tok, start = src / "tokenizer.json", src
        # the weights' files are read by the workers: a damaged folder is refused here, before Ray starts
        read_hf_config(src)
        check_weight_files(src)
        with open_safetensors(src / VLM_REST):
            pass
        check_exported_fits(model, src)
    else:
        start = find_checkpoint(src)
        run_cfg = load_json_model(TrainConfig, start.parent / "config.json", "the run's config")
        # the workers build this model and read the checkpoint: a damaged or oversized claim is refused here
        _check_checkpoint_fits(run_cfg.model, start)
        model, data, tok = run_cfg.model, run_cfg.data, Path(run_cfg.data.tokenizer)
    if not tok.is_file():
        raise ValueError(f"--init-from {src}: its tokenizer {tok} is missing")
    Tokenizer.load(tok)  # a damaged tokenizer.json: one line naming it
    out = Path(run_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if tok.resolve() != (out / "tokenizer.json").resolve():
        shutil.copyfile(tok, out / "tokenizer.json")
    runtime = {k: getattr(cfg.model, k) for k in ("attention", "activation_checkpointing", "compile")}
    fresh = {"init_llm": "", "init_vision": "", "init_upcycle": False, "init_from": str(start)}
    merged = cfg.model_dump()
    merged["model"] = model.model_dump() | runtime | fresh
    merged["data"] |= {
        "tokenizer": str(out / "tokenizer.json"),
        "image_mean": list(data.image_mean),
        "image_std": list(data.image_std),
    }
    log.info("init-from %s: the run starts from its model, tokenizer and pixel statistics", start)
    return TrainConfig.model_validate(merged)
