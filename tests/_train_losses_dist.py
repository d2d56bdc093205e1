"""The 2-rank loss check's worker and data (tests/train/test_model.py), in a module of its own: spawned
processes import the worker by module name, and this name cannot be shadowed by an installed package
called `tests` (as `tests.train.test_model` can)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from train.losses import contrastive_loss, next_token_loss

# Two real gloo ranks: rank-averaged gradients of our losses equal the gradient of the global objective.
RANK_SIZES = [(3, 5), (2, 9)]  # (contrastive pairs, label tokens) per rank: deliberately unequal


def global_data():
    gen = torch.Generator().manual_seed(7)
    n_pairs, n_tok = sum(a for a, _ in RANK_SIZES), sum(b for _, b in RANK_SIZES)
    return (
        torch.randn(n_pairs, 4, generator=gen, dtype=torch.float64),
        torch.randn(n_pairs, 4, generator=gen, dtype=torch.float64),
        torch.randn(n_tok, 4, generator=gen, dtype=torch.float64),
        torch.randint(0, 6, (n_tok,), generator=gen),
    )


def shared_model():
    torch.manual_seed(3)
    scale = torch.nn.ParameterDict({"log": torch.nn.Parameter(torch.tensor(1.6))})  # learned, as the VLM's
    return torch.nn.ModuleDict(
        {"img": torch.nn.Linear(4, 6), "txt": torch.nn.Linear(4, 6), "head": torch.nn.Linear(4, 6), "scale": scale}
    ).double()


def objective(m, a, b, h, y, group=None):
    lm_sum = F.cross_entropy(m["head"](h), y, reduction="sum")
    return next_token_loss(lm_sum, torch.tensor(len(y)), group) + contrastive_loss(
        m["img"](a), m["txt"](b), group, m["scale"]["log"].exp()
    )


def dist_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        a, b, h, y = global_data()
        p0 = sum(n for n, _ in RANK_SIZES[:rank])
        t0 = sum(n for _, n in RANK_SIZES[:rank])
        pn, tn = RANK_SIZES[rank]
        m = shared_model()
        loss = objective(m, a[p0 : p0 + pn], b[p0 : p0 + pn], h[t0 : t0 + tn], y[t0 : t0 + tn])
        loss.backward()
        for p in m.parameters():  # what DDP / FSDP do: average gradients over ranks
            dist.all_reduce(p.grad)
            p.grad /= world
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        if rank == 0:
            torch.save({"grads": [p.grad for p in m.parameters()], "loss": mean_loss / world}, out_file)
        dist.barrier()  # no rank tears gloo down while another is still saving
    finally:
        dist.destroy_process_group()
