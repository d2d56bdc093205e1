"""The trainer: Ray Train `TorchTrainer` workers that stream the corpus into the MoE VLM.

`run_training(cfg)` (the driver) prepares the run directory (tokenizer, resolved config), then starts
`cfg.run.num_workers` Ray Train workers running `train_loop_per_worker`:

  CPU: gloo process group, the model wrapped in DDP, fp32
  GPU: NCCL, FSDP2 (`fully_shard` per decoder and vision block, then the root), bf16 autocast

Each optimizer step takes `optim.grad_accum` micro-batches from the rank's loader (gradient sync only on the
last), clips the global grad norm, steps AdamW with the learning rate of a per-stage warmup + cosine
schedule (a pure function of the step, so the step in the checkpoint is the schedule's whole state).

Stages: `cfg.stages` runs e.g. adapter -> adapter+vision -> all; at a stage boundary the model's trainable
set changes (`VLM.set_trainable`) and the wrapper and optimizer are rebuilt for the new parameters.

Checkpoints (every `run.checkpoint_every` steps and at the end), one directory `checkpoint_SSSSSSS` reported
with `ray.train.report(..., checkpoint=...)` by every rank:
  dcp/              model + optimizer, torch.distributed.checkpoint (each rank writes its shard)
  trainer.json      step, stage, world size (rank 0)
  rank_R.json       the loader position of rank R (train/data.py state_dict)
  rank_R_rng.pt     torch RNG states of rank R (tensors only; loaded with weights_only=True)
Resume: running the same config on the same run directory (RunConfig(storage_path, name)) makes
`ray.train.get_checkpoint()` return the latest checkpoint, and training continues from it: same batches,
same schedule, bit-identical losses on CPU. `FailureConfig(max_failures)` restarts killed workers the same way.

Logs (rank 0): `metrics.jsonl` (one JSON object per log step) and TensorBoard under `tb/`; both are cut back
to the resumed step on resume. Metrics: loss, lm/aux/z/contrastive losses, expert load, tokens/s,
images/s, MFU (model FLOPs per token x tokens/s over peak; on CPU the peak is an ASSUMED number, marked).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from train.config import TrainConfig
from train.data import Loader
from train.tokenizer import Tokenizer, train_from_corpus

GPU_PEAK_BF16_FLOPS = {  # dense bf16 tensor-core peak per device (vendor datasheets)
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}


# ---- driver ----------------------------------------------------------------------------------------------
def prepare_run(cfg: TrainConfig) -> TrainConfig:
    """Create the run directory, get the tokenizer (train it on the corpus if asked and not there yet),
    size the model's vocabulary from it, and write the resolved config. Returns the resolved config."""
    out = Path(cfg.run.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.data.corpus:
        raise ValueError("data.corpus is empty: pass --corpus PATH (a corpus directory or fsspec URL)")
    if cfg.data.tokenizer == "train":
        tok_path = out / "tokenizer.json"
        if not tok_path.is_file():
            train_from_corpus(cfg.data.corpus, tok_path, cfg.data.vocab_size)
    else:
        tok_path = Path(cfg.data.tokenizer).resolve()
    tok = Tokenizer.load(tok_path)
    resolved = cfg.model_copy(deep=True)
    resolved.run.output = str(out)
    if "://" not in cfg.data.corpus:  # workers run elsewhere (other cwd, other node): an absolute path
        resolved.data.corpus = str(Path(cfg.data.corpus).expanduser().resolve())
    resolved.data.tokenizer = str(tok_path)
    resolved.model.vocab_size = -(-tok.vocab_size // 64) * 64  # padded to a multiple of 64
    resolved.model.image_token_id = tok.image_id
    resolved = TrainConfig.model_validate(resolved.model_dump())
    (out / "config.json").write_text(json.dumps(resolved.model_dump(mode="json"), indent=2) + "\n")
    return resolved


def run_training(cfg: TrainConfig):
    """Run (or resume) training on Ray Train; returns the Ray Train Result. A run that fails (after
    `run.max_failures` restarts) raises ray.train's TrainingFailedError; its checkpoints stay, and running
    the same config on the same run directory continues from the latest one."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = prepare_run(cfg)
    out = Path(cfg.run.output)
    # rank 0 prints its own log line; Ray Train's print patch would echo every line a second time
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    resources = {"CPU": cfg.run.cpus_per_worker} | ({"GPU": 1} if cfg.run.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.model_dump(mode="json"),
        torch_config=TorchConfig(backend="nccl" if cfg.run.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=out.name,
            storage_path=cfg.run.storage or str(out.parent),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
        ),
    )
    return trainer.fit()


# ---- worker ----------------------------------------------------------------------------------------------
def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step `step`: per stage, linear warmup then cosine to min_lr_ratio."""
    i, start = cfg.stage_at(step)
    stage = cfg.stages[i]
    peak = stage.lr if stage.lr is not None else cfg.optim.lr
    s, n = step - start, stage.steps
    warm = min(cfg.optim.warmup_steps, max(1, n - 1))
    if s < warm:
        return peak * (s + 1) / warm
    progress = (s - warm) / max(1, n - warm)
    r = cfg.optim.min_lr_ratio
    return peak * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Wrapped:
    """The model as trained on this worker: the module, its data-parallel wrapper and optimizer for one
    stage."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, stage: int, device: torch.device):
        self.model, self.cfg, self.use_gpu = model, cfg, cfg.run.use_gpu
        model.set_trainable(cfg.stages[stage].trainable)
        if self.use_gpu:
            self.forward_module = model  # fully_shard was applied in place once, at build time
        else:
            from torch.nn.parallel import DistributedDataParallel

            self.forward_module = DistributedDataParallel(model) if dist.get_world_size() > 1 else model
        o = cfg.optim
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(model.param_groups(o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2),
                                           eps=o.eps, foreach=True)

    def sync_context(self, sync: bool):
        """Gradient sync only on the last micro-batch of an optimizer step."""
        if self.use_gpu:
            self.model.set_requires_gradient_sync(sync)
            return contextlib.nullcontext()
        if sync or not hasattr(self.forward_module, "no_sync"):
            return contextlib.nullcontext()
        return self.forward_module.no_sync()

    def autocast(self):
        if self.use_gpu:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def build_model(cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    from train.model import VLM

    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
    model = VLM(cfg.model).to(device)
    if cfg.run.use_gpu:
        from torch.distributed.fsdp import fully_shard

        for block in list(model.vision.blocks) + list(model.decoder.layers):
            fully_shard(block)
        fully_shard(model)
    return model


def save_checkpoint(path: Path, w: Wrapped, step: int, stage: int, loader: Loader, rank: int, world: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(w.model, w.optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / "dcp"))
    if rank == 0:
        (path / "trainer.json").write_text(json.dumps({"step": step, "stage": stage, "world": world}))
    (path / f"rank_{rank}.json").write_text(json.dumps(loader.state_dict()))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, path / f"rank_{rank}_rng.pt")


def load_checkpoint(path: Path, w: Wrapped, loader: Loader, rank: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(w.model, w.optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path / "dcp"))
    set_state_dict(w.model, w.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    loader.load_state_dict(json.loads((path / f"rank_{rank}.json").read_text()))
    rng = torch.load(path / f"rank_{rank}_rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


class MetricsLog:
    """Rank 0's metrics.jsonl + TensorBoard, cut back to `resumed_step` when resuming."""

    def __init__(self, out: Path, resumed_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.path = out / "metrics.jsonl"
        if self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines(keepends=True)
                    if ln.endswith("\n") and json.loads(ln).get("step", 0) <= resumed_step]
            self.path.write_text("".join(keep))
        self.tb = SummaryWriter(str(out / "tb"), purge_step=resumed_step + 1 if resumed_step else None)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "step":
                self.tb.add_scalar(k, v, row["step"])
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def peak_flops(cfg: TrainConfig, device: torch.device) -> tuple[float, bool]:
    """(peak FLOP/s of one device, assumed?)."""
    if cfg.run.peak_flops:
        return cfg.run.peak_flops, False
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16_FLOPS.items():
            if key in name:
                return value, False
        return 989e12, True
    return cfg.run.cpu_peak_flops, True


def _all_reduce(values: list[float], device: torch.device, op=dist.ReduceOp.SUM) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op)
    return t.tolist()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from train.losses import total_loss

    cfg = TrainConfig.model_validate(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.run.use_gpu else torch.device("cpu")
    if not cfg.run.use_gpu:
        torch.set_num_threads(cfg.run.threads_per_worker)
    out = Path(cfg.run.output)
    model = build_model(cfg, device)
    loader = Loader(cfg.data, cfg.data.tokenizer, cfg.model.vision.patch_size, rank, world, cfg.run.seed)

    step = 0
    ckpt = ray.train.get_checkpoint()
    ckpt_dir = None
    if ckpt is not None:
        ckpt_cm = ckpt.as_directory()
        ckpt_dir = Path(ckpt_cm.__enter__())
        meta = json.loads((ckpt_dir / "trainer.json").read_text())
        if meta["world"] != world:
            raise ValueError(f"checkpoint {ckpt_dir} was written by {meta['world']} workers, this run has "
                             f"{world}: set run.num_workers={meta['world']} to resume it")
        step = int(meta["step"])
    stage, _ = cfg.stage_at(step)
    w = Wrapped(model, cfg, stage, device)
    if ckpt_dir is not None:
        load_checkpoint(ckpt_dir, w, loader, rank)
        ckpt_cm.__exit__(None, None, None)

    log = MetricsLog(out, step) if rank == 0 else None
    peak, assumed = peak_flops(cfg, device)
    flops_per_token = model.num_flops_per_token(cfg.data.seq_len)
    total = cfg.total_steps
    if rank == 0:
        print(f"[train] world={world} device={device} step={step}/{total} stage={cfg.stages[stage].trainable} "
              f"params={sum(p.numel() for p in model.parameters()):,} "
              f"trainable={sum(p.numel() for p in w.params):,}", flush=True)
    batches = iter(loader)
    window = {"tokens": 0.0, "rows_tokens": 0.0, "images": 0.0, "t0": time.perf_counter()}
    while step < total:
        i, _ = cfg.stage_at(step)
        if i != stage:
            stage = i
            w = Wrapped(model, cfg, stage, device)
        lr = lr_at(cfg, step)
        for g in w.optimizer.param_groups:
            g["lr"] = lr
        sums = {"loss": 0.0, "lm": 0.0, "aux": 0.0, "z": 0.0, "contrastive": 0.0}
        load_LE = None
        for micro in range(cfg.optim.grad_accum):
            batch = next(batches).to(device)
            with w.sync_context(micro == cfg.optim.grad_accum - 1), w.autocast():
                out_ = w.forward_module(batch)
                terms = total_loss(out_, cfg.model)
                (terms["loss"] / cfg.optim.grad_accum).backward()
            for k in sums:
                if k in terms:
                    sums[k] += float(terms[k].detach()) / cfg.optim.grad_accum
            load_LE = out_.expert_load_LE if load_LE is None else load_LE + out_.expert_load_LE
            window["tokens"] += float((batch.segment_ids_BT >= 0).sum())
            window["rows_tokens"] += batch.input_ids_BT.numel()
            window["images"] += batch.n_images
        grad_norm = (torch.nn.utils.clip_grad_norm_(w.params, cfg.optim.grad_clip) if cfg.optim.grad_clip > 0
                     else torch.zeros(()))
        w.optimizer.step()
        w.optimizer.zero_grad(set_to_none=True)
        step += 1

        if step % cfg.run.log_every == 0 or step == total:
            dt = time.perf_counter() - window["t0"]
            n_steps = cfg.run.log_every if step % cfg.run.log_every == 0 else (step % cfg.run.log_every)
            aux_z = _all_reduce([sums["aux"], sums["z"]], device)
            tok, rows_tok, imgs = _all_reduce([window["tokens"], window["rows_tokens"], window["images"]], device)
            dt = _all_reduce([dt], device, op=dist.ReduceOp.MAX)[0]
            load = load_LE.to(device).float()
            if dist.is_initialized() and world > 1:
                dist.all_reduce(load)
            load_E = (load.sum(0) / load.sum().clamp(min=1)).tolist() if load.numel() else []
            row = {
                "step": step, "stage": cfg.stages[stage].trainable, "lr": lr,
                "loss": sums["loss"], "lm_loss": sums["lm"], "aux_loss": aux_z[0] / world,
                "z_loss": aux_z[1] / world, "grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm),
                "tokens_per_s": tok / dt, "images_per_s": imgs / dt, "steps_per_s": n_steps / dt,
                "mfu": flops_per_token * rows_tok / dt / (peak * world), "mfu_peak_assumed": assumed,
                "expert_load": load_E,
                "expert_load_max_over_mean": max(load_E) * len(load_E) if load_E else 0.0,
            }
            if cfg.model.contrastive.weight > 0:
                row["contrastive_loss"] = sums["contrastive"]
            if log is not None:
                log.write(row)
                print(f"[train] step {step}/{total} | loss {row['loss']:.4f} | lm {row['lm_loss']:.4f} | "
                      f"aux {row['aux_loss']:.3f} | z {row['z_loss']:.3f} | lr {lr:.2e} | "
                      f"tok/s {row['tokens_per_s']:.0f} | img/s {row['images_per_s']:.1f} | "
                      f"mfu {100 * row['mfu']:.2f}%{' (assumed peak)' if assumed else ''}", flush=True)
            window = {"tokens": 0.0, "rows_tokens": 0.0, "images": 0.0, "t0": time.perf_counter()}

        metrics = {"step": step, "loss": sums["loss"]}
        if step % cfg.run.checkpoint_every == 0 or step == total:
            tmp = Path(tempfile.mkdtemp(prefix=f"interloom-ckpt-{rank}-"))
            save_checkpoint(tmp, w, step, stage, loader, rank, world)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                             checkpoint_dir_name=f"checkpoint_{step:07d}")
            shutil.rmtree(tmp, ignore_errors=True)
            _maybe_fail(cfg, step, rank, out)

    if log is not None:
        log.close()


def _maybe_fail(cfg: TrainConfig, step: int, rank: int, out: Path) -> None:
    """Testing the resume path: once per run directory and value of `run.fail_at_step`, the last rank exits
    hard right after the first checkpoint at or after that step (as a killed worker would)."""
    if cfg.run.fail_at_step is None or step < cfg.run.fail_at_step or rank != cfg.run.num_workers - 1:
        return
    marker = out / f"injected_failure_{cfg.run.fail_at_step}.done"
    if marker.exists():
        return
    marker.write_text(f"worker {rank} killed after step {step}\n")
    # A worker killed in the instant after `ray.train.report()` may die before the controller has registered
    # that checkpoint (it polls the workers), and the restart then rightly begins from the previous one. The
    # resume under test is from *this* checkpoint, so the worker dies once the controller has seen it.
    time.sleep(cfg.run.fail_delay_s)
    os._exit(1)
