"""The trainer: Ray Train `TorchTrainer` workers that stream the corpus into the MoE VLM.

`run_training(cfg)` (the driver) prepares the run directory (tokenizer, resolved config), then starts
`cfg.run.num_workers` Ray Train workers running `train_loop_per_worker`, which composes:

  train/parallel.py    the model on the ranks: FSDP2 with a bf16 MixedPrecisionPolicy (GPU default: NCCL,
                       fp32 master weights) or DDP in fp32 (CPU default: gloo); `parallel.*` settings
  train_step           one optimizer step: `optim.grad_accum` micro-batches from the rank's loader (gradient
                       sync only on the last), global grad-norm clipping, AdamW at the learning rate of a
                       per-stage warmup + cosine schedule (a pure function of the step, so the step in the
                       checkpoint is the schedule's whole state); with `moe.bias_update_rate` > 0 then
                       moves the experts' balancing bias by the step's load, all-reduced over the ranks
                       (`VLM.update_expert_bias`: a buffer, not sharded, identical on every rank);
                       returns the step's `StepStats`
  train/metrics.py     the statistics summed over a logging window and reduced over all ranks once per log
                       step: global token-weighted loss, MFU of real tokens and images, per-layer expert load
  train/checkpoint.py  `Checkpointer`: restores the latest Ray Train checkpoint, saves every
                       `run.checkpoint_every` steps and at the end; fault injection for the resume tests is
                       one of its hooks (train/faults.py)

Stages: `cfg.stages` runs e.g. adapter -> adapter+vision -> all; at a stage boundary the model's trainable
set changes (`VLM.set_trainable`) and the wrapper and optimizer are rebuilt for the new parameters; a
stage with its own pixel budget (`stages[i].min_pixels/max_pixels`) gets a new loader at the same position.

Resume: running the same config on the same run directory (RunConfig(storage_path, name)) makes
`ray.train.get_checkpoint()` return the latest checkpoint, and training continues from it: same batches,
same schedule, bit-identical losses on CPU. `FailureConfig(max_failures)` restarts killed workers the same way.

Held-out evaluation: with `run.val_corpus` (`interloom train --val-corpus`), every `run.eval_every` steps and
at the last one all ranks compute the val_* losses (train/evaluate.py: image-conditioned text loss apart from
plain text loss) on the same held-out batches; they join that log step's row.

Logs (rank 0): `metrics.jsonl` (one JSON object per log step) and TensorBoard under `tb/`; both are cut back
to the resumed step on resume. The metrics are listed in train/metrics.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from train.batch import Batch
from train.checkpoint import Checkpointer
from train.config import TrainConfig
from train.data import Loader
from train.faults import fault_hooks
from train.flops import FlopCounter, peak_flops
from train.metrics import MetricsLogger, MetricsWindow, StepStats
from train.parallel import TrainState, build_model
from train.tokenizer import Tokenizer, train_from_corpus

log = logging.getLogger(__name__)


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
    if cfg.run.val_corpus:
        from corpus.format import Corpus

        Corpus(cfg.run.val_corpus)  # ValueError "not a corpus: ..." before the workers start
        if "://" not in cfg.run.val_corpus:
            resolved.run.val_corpus = str(Path(cfg.run.val_corpus).expanduser().resolve())
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
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu, resources_per_worker=resources
        ),
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


def train_step(
    state: TrainState, batches: Iterator[Batch], cfg: TrainConfig, lr: float, flops: FlopCounter, device: torch.device
) -> StepStats:
    """One optimizer step over `optim.grad_accum` micro-batches; the statistics stay on the device."""
    from train.losses import total_loss

    state.set_lr(lr)
    accum = cfg.optim.grad_accum
    zero = torch.zeros((), dtype=torch.float64, device=device)
    lm_sum, n_label, aux_sum, z_sum, con_weighted, pairs = (zero.clone() for _ in range(6))
    load_LE: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None
    real_tokens = images = n_flops = 0
    for micro in range(accum):
        cpu_batch = next(batches)
        decoder_flops, vision_flops = flops.batch(cpu_batch)
        real_tokens += int((cpu_batch.segment_ids_BT >= 0).sum())
        images, n_flops = images + cpu_batch.n_images, n_flops + decoder_flops + vision_flops
        batch = cpu_batch.to(device)
        with state.sync_context(micro == accum - 1):
            out = state.forward_module(batch)
            terms = total_loss(out, cfg.model)
            (terms["loss"] / accum).backward()
        lm_sum += out.lm_loss_sum.detach()
        n_label += out.n_label_tokens
        aux_sum += out.aux_loss.detach()
        z_sum += out.z_loss.detach()
        if "contrastive" in terms:
            n_pairs = out.image_emb_ID.shape[0]  # this rank's pairs; the loss is the global pair mean
            con_weighted += terms["contrastive"].detach() * n_pairs
            pairs += n_pairs
            logit_scale = terms["logit_scale"]
        load_LE = out.expert_load_LE if load_LE is None else load_LE + out.expert_load_LE
    grad_norm = state.clip_and_step()
    if cfg.model.moe.bias_update_rate > 0:  # aux-loss-free balancing: the same global load on every rank
        global_load_LE = load_LE.clone()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(global_load_LE)
        state.model.update_expert_bias(global_load_LE)
    return StepStats(
        lm_loss_sum=lm_sum,
        n_label_tokens=n_label,
        aux_loss_sum=aux_sum,
        z_loss_sum=z_sum,
        contrastive_weighted=con_weighted,
        pairs=pairs,
        expert_load_LE=load_LE,
        grad_norm=grad_norm,
        logit_scale=logit_scale,
        micro_batches=accum,
        real_tokens=real_tokens,
        images=images,
        flops=n_flops,
    )


def held_out_metrics(
    cfg: TrainConfig, model: torch.nn.Module, rank: int, world: int, device: torch.device
) -> dict[str, float]:
    """The val_* losses on the first `run.eval_batches` batches of this rank's share of `run.val_corpus`
    (the same batches at every evaluation), reduced over all ranks. Every rank calls it at the same step and
    runs the same number of forwards (FSDP2 all-gathers in each) and one all-reduce."""
    from train.evaluate import evaluate

    data = cfg.data.model_copy(update={"follow": False, "num_workers": 0})  # a few batches: no worker processes
    val = Loader(
        data, cfg.data.tokenizer, cfg.model.vision.patch_size, rank, world, cfg.run.seed, corpus=cfg.run.val_corpus
    )
    row, _, _ = evaluate(model, iter(val), cfg.run.eval_batches, cfg.model.image_token_id, device)
    return row


def _worker_logging() -> None:
    """Rank 0's log lines on the worker's stdout (Ray forwards it to the driver)."""
    logger = logging.getLogger("train")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[train] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def stage_loader(cfg: TrainConfig, stage: int, rank: int, world: int, position: dict[str, Any] | None = None) -> Loader:
    """The loader of `stage` (its pixel budget, `TrainConfig.stage_data`), continuing at `position`."""
    loader = Loader(cfg.stage_data(stage), cfg.data.tokenizer, cfg.model.vision.patch_size, rank, world, cfg.run.seed)
    if position is not None:
        loader.load_state_dict(position)
    return loader


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if rank == 0:
        _worker_logging()
    device = ray.train.torch.get_device() if cfg.run.use_gpu else torch.device("cpu")
    if not cfg.run.use_gpu:
        torch.set_num_threads(cfg.run.threads_per_worker)
    model = build_model(cfg, device)
    peak, assumed = peak_flops(device, cfg.run.peak_flops, cfg.run.cpu_peak_flops)
    flops, total = FlopCounter.of(model), cfg.last_step  # the stages' end, or run.max_steps

    with Checkpointer(cfg, rank, world, after_save=fault_hooks(cfg)) as ckpt:
        step = ckpt.step
        stage, _ = cfg.stage_at(step)
        state = TrainState(model, cfg, stage)
        loader = stage_loader(cfg, stage, rank, world)
        ckpt.restore(state, loader)
        logger = MetricsLogger(Path(cfg.run.output), step) if rank == 0 else None
        log.info(
            "world=%d device=%s step=%d/%d stage=%s params=%s trainable=%s peak=%.3g FLOP/s%s",
            world,
            device,
            step,
            total,
            cfg.stages[stage].trainable,
            f"{sum(p.numel() for p in model.parameters()):,}",
            f"{sum(p.numel() for p in state.params):,}",
            peak,
            " (assumed)" if assumed else "",
        )
        batches, window, loss = iter(loader), MetricsWindow(device), float("nan")
        while step < total:
            i, _ = cfg.stage_at(step)
            if i != stage:
                if cfg.stage_data(i) != cfg.stage_data(stage):  # the stage's pixel budget: same position
                    batches.close()
                    loader = stage_loader(cfg, i, rank, world, loader.state_dict())
                    batches = iter(loader)
                stage, state = i, TrainState(model, cfg, i)
            lr = lr_at(cfg, step)
            window.add(train_step(state, batches, cfg, lr, flops, device))
            step += 1
            if step % cfg.run.log_every == 0 or step == total:
                row = {"step": step, "stage": cfg.stages[stage].trainable, "lr": lr}
                row |= window.reduce(cfg.model, peak) | {"mfu_peak_assumed": assumed}
                if cfg.run.val_corpus and (step % cfg.run.eval_every == 0 or step == total):
                    row |= held_out_metrics(cfg, model, rank, world, device)
                window.reset()
                loss = row["loss"]
                if logger is not None:
                    logger.write(row, total, assumed)
            ckpt.save_if_due(step, stage, state, loader, {"step": step, "loss": loss})
        if logger is not None:
            logger.close()
