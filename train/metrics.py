"""Training metrics that mean what they say: one optimizer step's statistics, their window over the
ranks, and rank 0's log.

  StepStats      what one rank saw in one optimizer step: sums over its micro-batches, kept on the device
                 (no host sync per step) -- loss sums and counts, MoE statistics, pairs, per-layer load
  MetricsWindow  adds StepStats up over a logging window; `reduce()` all-reduces them ONCE (every rank
                 calls it) and returns the row that is logged
  MetricsLogger  rank 0's metrics.jsonl + TensorBoard (cut back to the resumed step on resume) + log line

The logged values are global over all ranks and window means, not rank 0's last step:
  lm_loss           sum of token cross-entropy / number of label tokens, over every rank, micro-batch and
                    step of the window (token-weighted)
  aux_loss, z_loss  mean over ranks, micro-batches and steps (each rank's term is its own tokens' mean;
                    the gradient average over ranks makes the objective their mean)
  contrastive_loss  pair-weighted mean of the per-micro-batch global InfoNCE (0 with no pair in the window)
  loss              lm + aux_w * aux + z_w * z + contrastive_w * contrastive: the objective's window mean
  contrastive_pairs image-text pairs per optimizer step, all ranks together (total_loss's `n_pairs`)
  logit_scale       the learned contrastive logit scale (1/temperature) after the window's last step
                    (a parameter: the same on every rank)
  tokens_per_s      real (non-padding) tokens per second, all ranks; images_per_s likewise
  mfu               model FLOPs of the real tokens and images (train/flops.py) / (time x peak x world)
  expert_load       per MoE layer, the fraction of token-slots each expert got (each row sums to 1)
  expert_load_max_over_mean   per MoE layer, the busiest expert's load over the mean (1.0 = balanced)
  expert_dead_frac  the fraction of (layer, expert) that got no token at all in the window (the window's
                    version of ModelOutput.dead_expert_fraction, which is one forward's)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from train.model.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class StepStats:
    """One rank's optimizer step. Tensors stay on the device; the counts from the CPU batch are ints."""

    lm_loss_sum: torch.Tensor  # sum of token CE over this rank's label tokens (all micro-batches)
    n_label_tokens: torch.Tensor  # this rank's label tokens
    aux_loss_sum: torch.Tensor  # sum over micro-batches of this rank's aux loss
    z_loss_sum: torch.Tensor
    contrastive_weighted: torch.Tensor  # sum over micro-batches of (global contrastive loss x local pairs)
    pairs: torch.Tensor  # this rank's image-text pairs
    expert_load_LE: torch.Tensor  # token-slots per (MoE layer, expert), summed over micro-batches
    grad_norm: torch.Tensor  # global (same on every rank)
    logit_scale: torch.Tensor | None  # contrastive scale the step's last micro-batch used; None: loss off
    micro_batches: int
    real_tokens: int  # non-padding tokens
    images: int
    flops: int  # model FLOPs (decoder + vision) of this rank's micro-batches


class MetricsWindow:
    """The steps since the last log line, reduced over all ranks by `reduce` (a collective)."""

    SUMMED = (
        "lm_loss_sum",
        "n_label_tokens",
        "aux_loss_sum",
        "z_loss_sum",
        "contrastive_weighted",
        "pairs",
        "micro_batches",
        "real_tokens",
        "images",
        "flops",
    )

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.steps, self.t0 = 0, time.perf_counter()
        self.sums = torch.zeros(len(self.SUMMED), dtype=torch.float64, device=self.device)
        self.load_LE: torch.Tensor | None = None
        self.grad_norm = torch.zeros((), device=self.device)
        self.logit_scale: torch.Tensor | None = None

    def add(self, s: StepStats) -> None:
        values = [getattr(s, k) for k in self.SUMMED]
        self.sums += torch.stack([torch.as_tensor(v, device=self.device).to(torch.float64).reshape(()) for v in values])
        load = s.expert_load_LE.to(self.device, torch.float64)
        self.load_LE = load if self.load_LE is None else self.load_LE + load
        self.grad_norm, self.steps = s.grad_norm.detach().float(), self.steps + 1
        self.logit_scale = s.logit_scale

    def reduce(self, cfg: ModelConfig, peak_flops: float) -> dict[str, Any]:
        """The window's global metrics (module doc). A collective: every rank calls it at the same step."""
        assert self.steps > 0, "reduce() on an empty window"
        world = dist.get_world_size() if dist.is_initialized() else 1
        dt = torch.tensor([time.perf_counter() - self.t0], dtype=torch.float64, device=self.device)
        load_LE = self.load_LE if self.load_LE is not None else torch.zeros(0, 0, device=self.device)
        if world > 1:
            dist.all_reduce(self.sums)
            dist.all_reduce(load_LE)
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        s = dict(zip(self.SUMMED, self.sums.tolist(), strict=True))
        seconds = float(dt)
        lm = s["lm_loss_sum"] / max(s["n_label_tokens"], 1.0)
        aux, z = s["aux_loss_sum"] / s["micro_batches"], s["z_loss_sum"] / s["micro_batches"]
        row: dict[str, Any] = {
            "loss": lm + cfg.moe.aux_loss_weight * aux + cfg.moe.z_loss_weight * z,
            "lm_loss": lm,
            "aux_loss": aux,
            "z_loss": z,
        }
        if cfg.contrastive.weight > 0:
            con = s["contrastive_weighted"] / s["pairs"] if s["pairs"] > 0 else 0.0
            row["loss"] += cfg.contrastive.weight * con
            row["contrastive_loss"] = con
            row["contrastive_pairs"] = s["pairs"] / self.steps
            assert self.logit_scale is not None, "contrastive loss on but no step recorded its logit scale"
            row["logit_scale"] = float(self.logit_scale)
        load_frac_LE = load_LE / load_LE.sum(dim=1, keepdim=True).clamp(min=1)
        E = load_LE.shape[1]
        row |= {
            "grad_norm": float(self.grad_norm),
            "label_tokens": s["n_label_tokens"],
            "tokens_per_s": s["real_tokens"] / seconds,
            "images_per_s": s["images"] / seconds,
            "steps_per_s": self.steps / seconds,
            "mfu": s["flops"] / seconds / (peak_flops * world),
            "expert_load": load_frac_LE.tolist(),
            "expert_load_max_over_mean": (load_frac_LE.max(dim=1).values * E).tolist() if E else [],
            "expert_dead_frac": float((load_LE == 0).double().mean()) if load_LE.numel() else 0.0,
        }
        return row


class MetricsLogger:
    """Rank 0's metrics.jsonl + TensorBoard, cut back to `resumed_step` when resuming, and its log line."""

    def __init__(self, out: Path, resumed_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.path = out / "metrics.jsonl"
        if self.path.exists():
            keep = [
                ln
                for ln in self.path.read_text().splitlines(keepends=True)
                if ln.endswith("\n") and json.loads(ln).get("step", 0) <= resumed_step
            ]
            self.path.write_text("".join(keep))
        self.tb = SummaryWriter(str(out / "tb"), purge_step=resumed_step + 1 if resumed_step else None)

    def write(self, row: dict[str, Any], total_steps: int, peak_assumed: bool) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        step = row["step"]
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                self.tb.add_scalar(k, v, step)
        for i, v in enumerate(row.get("expert_load_max_over_mean", [])):
            self.tb.add_scalar(f"expert_load_max_over_mean/layer_{i}", v, step)
        self.tb.flush()
        con = (
            f" | con {row['contrastive_loss']:.3f} ({row['contrastive_pairs']:.1f} pairs, "
            f"scale {row['logit_scale']:.1f})"
            if "contrastive_loss" in row
            else ""
        )
        worst = max(row["expert_load_max_over_mean"], default=0.0)
        log.info(
            "step %d/%d | loss %.4f | lm %.4f | aux %.3f | z %.3f%s | load max/mean %.2f dead %.2f | "
            "lr %.2e | tok/s %.0f | img/s %.1f | mfu %.2f%%%s",
            step,
            total_steps,
            row["loss"],
            row["lm_loss"],
            row["aux_loss"],
            row["z_loss"],
            con,
            worst,
            row["expert_dead_frac"],
            row["lr"],
            row["tokens_per_s"],
            row["images_per_s"],
            100 * row["mfu"],
            " (assumed peak)" if peak_assumed else "",
        )

    def close(self) -> None:
        self.tb.close()
