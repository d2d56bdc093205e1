"""Two-process torch.distributed runs (gloo, CPU) of the trainer's step for tests/train/test_distributed.py.

`spawn(spec, tmp)` starts `world` processes (torch.multiprocessing, like torchrun on one host); each builds
the tiny model of `tiny_config` with the trainer's own `build_model` / `TrainState` / `train_step` /
`MetricsWindow`, feeds it the synthetic batches `batches_of(spec, rank, step)`, and rank 0 saves what the
spec asks for (weights and gradients at each optimizer step, the logged metrics row, the dtypes the experts saw,
every rank's expert balancing bias after each step) to
`tmp/result.pt`, which `spawn` returns.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from corpus.config import load_config
from train.batch import Batch
from train.config import TrainConfig
from train.synthetic import synthetic_batch

TINY = [
    "model.vocab_size=64",
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.n_kv_heads=1",
    "model.d_ffn=64",
    "model.moe.n_experts=4",
    "model.moe.top_k=2",
    "model.moe.d_expert=32",
    "model.vision.patch_size=4",
    "model.vision.d_vit=16",
    "model.vision.n_layers=2",
    "model.vision.n_heads=2",
    "model.contrastive.weight=0.1",
    "model.contrastive.d_proj=16",
    "optim.grad_clip=0",
    "optim.warmup_steps=1",
    "run.seed=3",
]


def tiny_config(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, None, [*TINY, *overrides])


def batches_of(spec: dict[str, Any], rank: int, step: int) -> list[Batch]:
    """The micro-batches rank `rank` trains on at optimizer step `step` (deterministic)."""
    cfg = tiny_config(*spec["overrides"])
    return [
        synthetic_batch(
            cfg.model,
            torch.Generator().manual_seed(10_000 * rank + 100 * step + micro),
            spec["kinds"][rank],
            batch_size=2,
            seq_len=48,
        )
        for micro in range(cfg.optim.grad_accum)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    import torch.multiprocessing as mp

    world = len(spec["kinds"])
    mp.spawn(_worker, args=(world, _free_port(), spec, str(tmp)), nprocs=world, join=True)
    return torch.load(tmp / "result.pt", weights_only=False)


def _worker(rank: int, world: int, port: int, spec: dict[str, Any], tmp: str) -> None:
    from train.flops import FlopCounter
    from train.metrics import MetricsWindow
    from train.model.moe import MoE
    from train.parallel import TrainState, build_model
    from train.trainer import train_step

    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = tiny_config(*spec["overrides"])
        device = torch.device("cpu")
        model = build_model(cfg, device)
        state = TrainState(model, cfg, 0)
        result: dict[str, Any] = {"grads": [], "weights": [], "dtypes": set(), "expert_bias": []}
        moes = [m for m in model.modules() if isinstance(m, MoE)]

        def full(t: torch.Tensor) -> torch.Tensor:  # on every rank: full_tensor() is a collective
            return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()

        def capture_grads(optimizer, args, kwargs):  # the weights the step ran with and their gradients
            result["weights"].append({n: full(p) for n, p in model.named_parameters()})
            result["grads"].append({n: full(p.grad) for n, p in model.named_parameters() if p.grad is not None})

        state.optimizer.register_step_pre_hook(capture_grads)

        def record_dtypes(module, args):
            result["dtypes"].add((str(args[0].dtype), str(module.w1_EDF.dtype), str(module.w2_EFD.dtype)))

        for m in moes:
            m.register_forward_pre_hook(record_dtypes)
        window = MetricsWindow(device)
        for step in range(spec["steps"]):
            batches = iter(batches_of(spec, rank, step))
            window.add(train_step(state, batches, cfg, spec["lr"], FlopCounter.of(model), device))
            if cfg.model.moe.bias_update_rate > 0:  # every rank's balancing bias after the step: (W, L, E)
                bias_LE = torch.stack([m.expert_bias_E for m in moes])
                assert not hasattr(bias_LE, "full_tensor"), "the balancing bias is a plain (unsharded) buffer"
                gathered = [torch.zeros_like(bias_LE) for _ in range(world)]
                dist.all_gather(gathered, bias_LE)
                result["expert_bias"].append(torch.stack(gathered))
        result["row"] = window.reduce(cfg.model, peak_flops=1e12)
        result["param_dtypes"] = {str(p.dtype) for p in model.parameters()}
        result["grad_dtypes"] = {str(g.dtype) for gs in result["grads"] for g in gs.values()}
        if rank == 0:
            torch.save(result, Path(tmp) / "result.pt")
        dist.barrier()  # no rank tears gloo down while another is still in a collective or saving
    finally:
        dist.destroy_process_group()
