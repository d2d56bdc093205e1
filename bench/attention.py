"""Attention backends benchmark: forward+backward time and peak memory of one attention call over packed
segments, per backend of `train/model/attention.py`, in one run.

  decoder: rows of packed documents of random lengths, causal within each document, grouped-query heads
  vit:     images of mixed patch-grid sizes, bidirectional within each image

Backends: `dense` (the N x N-mask reference), `varlen` (per-length batched SDPA), and on CUDA `flex`
(compiled flex_attention with a block mask; the first call compiles and is not timed). Each is checked to
agree with `dense` before timing. Prints a markdown table with ratios to `dense`. `bench/gpu.py` runs the
same cases as its `attention_backends` section.
Run: .venv/bin/python -m bench.attention [--scale 0.25]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from train.model.attention import Segments, attend


def packed_documents(rows: int, T: int, seed: int = 0) -> torch.Tensor:
    """Segment ids (rows, T): documents of 32..T/2 tokens, the last one cut at the row end."""
    rng = random.Random(seed)
    ids, sid = [], 0
    for _ in range(rows):
        t = 0
        while t < T:
            n = min(rng.randint(32, T // 2), T - t)
            ids += [sid] * n
            sid, t = sid + 1, t + n
    return torch.tensor(ids).view(rows, T)


def mixed_images(grids: list[tuple[int, int]]) -> torch.Tensor:
    """Image ids (1, N) of images with these patch grids, image after image."""
    return torch.repeat_interleave(torch.arange(len(grids)), torch.tensor([h * w for h, w in grids]))[None]


def fwd_bwd(backend: str, ids_BT: torch.Tensor, causal: bool, qkv: list[torch.Tensor], sync) -> float:
    for x in qkv:
        x.grad = None
    sync()
    t0 = time.perf_counter()
    o = attend(*qkv, Segments.build(ids_BT, causal=causal, backend=backend))
    o.float().square().mean().backward()
    sync()
    return time.perf_counter() - t0


def run_case(
    name: str, ids_BT: torch.Tensor, causal: bool, H: int, K: int, d: int, device: str, dtype: torch.dtype, iters: int
) -> dict:
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ids_BT = ids_BT.to(device)
    B, T = ids_BT.shape
    qkv = [torch.randn(B, h, T, d, device=device, dtype=dtype, requires_grad=True) for h in (H, K, K)]
    backends = ["dense", "varlen"] + (["flex"] if device == "cuda" else [])
    with torch.no_grad():  # the same function before we time it (and flex compiles here)
        ref = attend(*qkv, Segments.build(ids_BT, causal, "dense"))
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
        for be in backends[1:]:
            torch.testing.assert_close(attend(*qkv, Segments.build(ids_BT, causal, be)), ref, rtol=tol, atol=tol)
    res = {"case": f"{name} B={B} T={T} H={H}/{K} d={d}", "device": f"{device} {str(dtype).split('.')[-1]}"}
    for be in backends:
        fwd_bwd(be, ids_BT, causal, qkv, sync)  # warm-up
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        res[be] = statistics.median(fwd_bwd(be, ids_BT, causal, qkv, sync) for _ in range(iters))
        res[be + "_mem"] = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return res


def cases(scale: float, tiny: bool = False) -> list[tuple[str, torch.Tensor, bool, int, int, int]]:
    """(name, segment ids, causal, query heads, kv heads, head dim) of the two cases; `tiny`: a few hundred
    tokens and small heads, for a CPU dry run (bench/gpu.py --dry-run)."""
    if tiny:
        return [
            ("decoder", packed_documents(2, 128), True, 2, 1, 16),
            ("vit", mixed_images([(8, 8), (4, 8), (8, 4), (4, 4)]), False, 2, 2, 16),
        ]
    T = max(128, int(2048 * scale))
    n_img = max(2, int(16 * scale))
    grids = [(32, 32), (16, 32), (32, 16), (16, 16)] * (n_img // 4 or 1)
    return [("decoder", packed_documents(4, T), True, 12, 4, 64), ("vit", mixed_images(grids[:n_img]), False, 8, 8, 64)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the token counts (CPU: try 0.25)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    print(f"torch {torch.__version__}, {device}; forward+backward of one attention call, median of {args.iters}")
    print()
    print("| case | device | dense (N x N mask) | varlen | flex |")
    print("|---|---|---|---|---|")
    for name, ids, causal, H, K, d in cases(args.scale):
        r = run_case(name, ids, causal, H, K, d, device, dtype, args.iters)

        def cell(be: str, r=r) -> str:
            if be not in r:
                return "n/a (CUDA only)"
            mem = f", {r[be + '_mem']:.0f} MiB peak" if r[be + "_mem"] is not None else ""
            return f"{r[be] * 1e3:.1f} ms ({r[be] / r['dense']:.2f}x{mem})"

        print(f"| {r['case']} | {r['device']} | {cell('dense')} | {cell('varlen')} | {cell('flex')} |", flush=True)


if __name__ == "__main__":
    main()
