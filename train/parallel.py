"""Data parallelism and mixed precision: how the model is spread over the ranks (FSDP2 or DDP).

  build_model(cfg, device)  the VLM with the same initial weights on every rank; with FSDP2 each vision
                            block and decoder layer is its own `fully_shard` unit, then the root (what is
                            left: embeddings, patch embedding, merge, adapter, heads), under a
                            `MixedPrecisionPolicy(param_dtype, reduce_dtype)` -- fp32 sharded master weights,
                            bf16 gathered weights for compute, fp32 gradient reduce-scatter (torchtitan's
                            recipe; no autocast)
  TrainState                the model as trained in one stage: trainable set, DDP wrapper (if DDP),
                            AdamW over the trainable parameters, gradient-sync switch for accumulation

Collectives: FSDP2 all-gathers a unit's weights when its forward runs and reduce-scatters the gradients
its parameters received, so every rank must run every unit and give gradients to the same parameters on
every step, whatever its batch holds; the VLM guarantees that (an image-less batch runs the vision tower
on a dummy image with zero weight, train/model/vlm.py).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist

from train.config import TrainConfig

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule

    from train.model import VLM

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def build_model(cfg: TrainConfig, device: torch.device) -> VLM:
    """The VLM on `device`, seeded by run.seed (identical on every rank), its decoder loaded from
    model.init_llm and its vision tower from model.init_vision if set (or the whole VLM from model.init_from),
    sharded with FSDP2 if configured."""
    from train.model import VLM

    torch.manual_seed(cfg.run.seed)
    model = VLM(cfg.model)
    if cfg.model.init_llm:  # pretrained decoder weights (interloom train --init-llm), before sharding
        from train.model.hf.init import init_decoder

        init_decoder(model.decoder, cfg.model.init_llm)
    if cfg.model.init_vision:  # pretrained vision tower (interloom train --init-vision), before sharding
        from train.model.hf.vision import init_vision

        init_vision(model.vision, cfg.model.init_vision)
    if cfg.model.init_from:  # a whole interloom VLM (interloom train --init-from), before sharding
        from train.export import load_start_vlm

        model.load_state_dict(load_start_vlm(cfg.model.init_from).state_dict(), strict=True)
    model = model.to(device)
    dp, param_dtype = cfg.parallel.resolved(cfg.run.use_gpu)
    if dp == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # the mesh on the model's device: FSDP2's default is CUDA whenever a GPU exists, even for a CPU run
        if device.type == "cuda":
            torch.cuda.set_device(device)
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        mp = MixedPrecisionPolicy(param_dtype=DTYPES[param_dtype], reduce_dtype=DTYPES[cfg.parallel.reduce_dtype])
        reshard = cfg.parallel.reshard_after_forward
        blocks = list(model.vision.blocks) + list(model.decoder.layers)
        for i, block in enumerate(blocks):
            # the last block's backward runs right after its forward: keeping it gathered saves an all-gather
            fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard and i < len(blocks) - 1)
        fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    log.info(
        "model: %s, compute dtype %s, %s params", dp, param_dtype, f"{sum(p.numel() for p in model.parameters()):,}"
    )
    return model


class TrainState:
    """The model as trained in one stage: its trainable set, data-parallel wrapper and optimizer."""

    def __init__(self, model: VLM, cfg: TrainConfig, stage: int):
        self.model, self.cfg = model, cfg
        self.fsdp = cfg.parallel.resolved(cfg.run.use_gpu)[0] == "fsdp"
        model.set_trainable(cfg.stages[stage].trainable)
        if self.fsdp or not (dist.is_initialized() and dist.get_world_size() > 1):
            self.forward_module: torch.nn.Module = model  # fully_shard was applied in place once, at build time
        else:
            from torch.nn.parallel import DistributedDataParallel

            self.forward_module = DistributedDataParallel(model)
        o = cfg.optim
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            model.param_groups(o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, foreach=True
        )

    def sync_context(self, sync: bool):
        """Gradient sync only on the last micro-batch of an optimizer step."""
        if self.fsdp:
            cast("FSDPModule", self.model).set_requires_gradient_sync(sync)  # fully_shard made it one
            return contextlib.nullcontext()
        no_sync = getattr(self.forward_module, "no_sync", None)  # DistributedDataParallel's
        if sync or no_sync is None:
            return contextlib.nullcontext()
        return no_sync()

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def clip_and_step(self) -> torch.Tensor:
        """Clip the global grad norm (if configured), step, zero the grads; returns the norm before clipping
        (a plain tensor, gathered from DTensor shards under FSDP2)."""
        clip = self.cfg.optim.grad_clip
        norm = (
            torch.nn.utils.clip_grad_norm_(self.params, clip)
            if clip > 0
            else torch.zeros((), device=self.params[0].device)
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
