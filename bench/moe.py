"""MoE layer benchmark: forward+backward time of our dropless grouped dispatch vs its peers, in one run.

  (a) ours, `MoE` with the backend `auto` picks (torch grouped_mm where it runs), and forced `loop`
  (b) the per-expert loop over ALL experts with index masks, as in common Hugging Face implementations
      (Mixtral: `expert_mask = one_hot(selected).permute(2, 1, 0)`, then for every expert
      `idx, top_x = torch.where(expert_mask[e])`, gather, run the expert, `index_add_`), same weights
  (c) a dense SwiGLU FFN with the same active parameters (hidden = (top_k + n_shared) * d_expert)

All three are checked to agree ((a) vs (b)) before timing. Prints a markdown table with ratios to (a).
Run: .venv/bin/python -m bench.moe
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from train.model.config import MoEConfig
from train.model.moe import MoE, SwiGLU


def hf_style_moe(moe: MoE, x_SD: torch.Tensor) -> torch.Tensor:
    """Mixtral-style sparse MoE block on the same weights: loop over all experts with index masks."""
    logits_SE = F.linear(x_SD.float(), moe.router.weight.float())
    routing_SE = logits_SE.softmax(dim=-1)
    routing_SK, selected_SK = routing_SE.topk(moe.top_k, dim=-1)
    routing_SK = (routing_SK / routing_SK.sum(dim=-1, keepdim=True)).to(x_SD.dtype)
    final_SD = torch.zeros_like(x_SD)
    expert_mask_EKS = F.one_hot(selected_SK, num_classes=moe.n_experts).permute(2, 1, 0)
    for e in range(moe.n_experts):
        idx, top_x = torch.where(expert_mask_EKS[e])
        current = x_SD[top_x]
        h = F.silu(current @ moe.w1_EDF[e]) * (current @ moe.w3_EDF[e])
        final_SD.index_add_(0, top_x, (h @ moe.w2_EFD[e]) * routing_SK[top_x, idx, None])
    if moe.shared is not None:
        final_SD = final_SD + moe.shared(x_SD)
    return final_SD


def fwd_bwd_seconds(fn, x_SD: torch.Tensor, params: list[torch.nn.Parameter], sync) -> float:
    x = x_SD.detach().requires_grad_()
    for p in params:
        p.grad = None
    sync()
    t0 = time.perf_counter()
    y = fn(x)
    y = y[0] if isinstance(y, tuple) else y
    y.float().square().mean().backward()
    sync()
    return time.perf_counter() - t0


def time_round_robin(variants: dict, x_SD: torch.Tensor, iters: int, sync) -> dict[str, float]:
    """Median seconds of forward + backward per variant. Variants take turns within each iteration, so
    drifting machine load (a shared 2-core box) hits all of them alike; 2 warm-up rounds not counted."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(iters + 2):
        for name, (fn, params) in variants.items():
            t = fwd_bwd_seconds(fn, x_SD, params, sync)
            if i >= 2:
                times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run_shape(S: int, D: int, Fh: int, E: int, K: int, device: str, dtype: torch.dtype, iters: int) -> dict:
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    cfg = MoEConfig(n_experts=E, top_k=K, d_expert=Fh, n_shared_experts=1)
    ours = MoE(D, cfg.model_copy(update={"grouped_mm": "auto"})).to(device, dtype)
    loop = MoE(D, cfg.model_copy(update={"grouped_mm": "loop"})).to(device, dtype)
    loop.load_state_dict(ours.state_dict())
    dense = SwiGLU(D, (K + 1) * Fh).to(device, dtype)
    x_SD = torch.randn(S, D, device=device, dtype=dtype)

    with torch.no_grad():  # same function before we time it
        ref = hf_style_moe(ours, x_SD)
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(ours(x_SD)[0], ref, rtol=tol, atol=tol)
        torch.testing.assert_close(loop(x_SD)[0], ref, rtol=tol, atol=tol)

    res = {
        "shape": f"S={S} D={D} F={Fh} E={E} K={K}",
        "device": f"{device} {str(dtype).split('.')[-1]}",
        "backend": ours.grouped_mm_backend,
    }
    res.update(
        time_round_robin(
            {
                "ours": (ours, list(ours.parameters())),
                "ours_loop": (loop, list(loop.parameters())),
                "hf": (lambda x: hf_style_moe(ours, x), list(ours.parameters())),
                "dense": (dense, list(dense.parameters())),
            },
            x_SD,
            iters,
            sync,
        )
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=9)
    args = ap.parse_args()
    shapes = [("cpu", torch.float32, (1024, 256, 512, 8, 2)), ("cpu", torch.float32, (2048, 256, 256, 32, 4))]
    if torch.cuda.is_available():
        shapes += [
            ("cuda", torch.bfloat16, (16384, 1024, 2048, 8, 2)),
            ("cuda", torch.bfloat16, (16384, 1024, 512, 64, 8)),
        ]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward+backward, median of "
        f"{args.iters}; ratios are time / (a)"
    )
    print()
    print(
        "| shape | device | (a) ours (backend) | (a') ours, loop backend | (b) HF per-expert mask loop "
        "| (c) dense SwiGLU, same active params |"
    )
    print("|---|---|---|---|---|---|")
    for device, dtype, (S, D, Fh, E, K) in shapes:
        r = run_shape(S, D, Fh, E, K, device, dtype, args.iters)
        a = r["ours"]
        print(
            f"| {r['shape']} | {r['device']} | {a * 1e3:.1f} ms ({r['backend']}) "
            f"| {r['ours_loop'] * 1e3:.1f} ms ({r['ours_loop'] / a:.2f}x) "
            f"| {r['hf'] * 1e3:.1f} ms ({r['hf'] / a:.2f}x) | {r['dense'] * 1e3:.1f} ms ({r['dense'] / a:.2f}x) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
