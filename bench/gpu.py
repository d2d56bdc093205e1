"""The GPU check: one prepared sequence that says whether the trainer runs well on this GPU, in minutes.

Sections (each guarded: one that fails is recorded in the JSON with its error, the others still run):
  environment  torch / CUDA / NCCL versions, device name, the dense bf16 peak used for MFU (train/flops.py),
               which attention kernels exist (flash / memory-efficient SDPA, flex_attention, flash-attn)
  recipe       the single-gpu recipe's model and batch shapes (train/recipes/single-gpu.yaml, one stage
               `all`, short warmup) for --steps optimizer steps on synthetic packed batches with images
               (train/synthetic.py; learnable text, so the loss must fall), through the trainer's own
               build_model (FSDP2 on a 1-rank group, bf16 MixedPrecisionPolicy) / train_step / MetricsWindow:
               real tokens/s, images/s, MFU, peak memory, first vs last loss, the MoE backend, and the
               attention kernels one profiled step really ran
  moe          the MoE layer in bf16 at the recipe's expert shapes and at many small experts: ours (grouped
               backend), ours (loop backend), the Hugging Face per-expert mask loop, a dense SwiGLU with the
               same active parameters (bench/moe.py; outputs checked to agree before timing)
  attention    forward+backward of one attention call at the recipe's shapes, packed documents: SDPA with
               a dense document mask (the reference path) vs flex_attention with a document block mask vs
               causal SDPA without documents (the flash-kernel bound)
  attention_backends  the model's own attention backends (train/model/attention.py) on packed documents
               and mixed-size images: dense (N x N mask) vs varlen vs flex (CUDA), each checked against
               dense first (bench/attention.py)
  fsdp2        2 processes, FSDP2, 3 optimizer steps, one rank's batches without any image: NCCL with both
               processes on this one GPU if NCCL allows it, else gloo on CPU (the JSON says which)

Writes one JSON file (--out) and prints a short table. `--dry-run` runs every section on tiny shapes on
CPU (the test suite runs it, tests/train/test_gpu_check.py), so the script is known to run before a GPU
is at hand.

Run: make gpu-check   or   .venv/bin/python -m bench.gpu [--steps 30] [--out artifacts/gpu-check.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


# ---- helpers ---------------------------------------------------------------------------------------------
def _device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one section; an exception becomes {"ok": false, "error": ...} instead of ending the check."""
    t0 = time.perf_counter()
    try:
        result = {"ok": True, **fn()}
    except Exception as e:  # noqa: BLE001 -- every failure of a section is reported, none ends the check
        result = {
            "ok": False,
            "error": f"{type(e).__name__}: {str(e)[:2000]}",
            "traceback": traceback.format_exc()[-4000:],
        }
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    result["seconds"] = round(time.perf_counter() - t0, 2)
    print(
        f"[gpu-check] {name}: {'ok' if result['ok'] else 'FAILED ' + result['error']} ({result['seconds']} s)",
        flush=True,
    )
    return result


def _fwd_bwd_ms(fn: Callable[[], torch.Tensor], device: torch.device, iters: int) -> float:
    """Median milliseconds of forward + backward of fn() (2 warm-up calls not counted)."""
    times = []
    for i in range(iters + 2):
        _sync(device)
        t0 = time.perf_counter()
        fn().float().square().mean().backward()
        _sync(device)
        if i >= 2:
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


# ---- sections ----------------------------------------------------------------------------------------------
def environment(dry_run: bool) -> dict[str, Any]:
    from train.flops import peak_flops

    device = _device()
    peak, assumed = peak_flops(device, None, cpu_assumed=1e11)
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "peak_flops": peak,
        "peak_assumed": assumed,
        "dry_run": dry_run,
        "nccl": str(torch.cuda.nccl.version()) if device.type == "cuda" else None,
    }
    if device.type == "cuda":
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        env["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        env["sdpa_flash_enabled"] = torch.backends.cuda.flash_sdp_enabled()
        env["sdpa_mem_efficient_enabled"] = torch.backends.cuda.mem_efficient_sdp_enabled()
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        env["flex_attention"] = True
    except ImportError:
        env["flex_attention"] = False
    try:
        import flash_attn

        env["flash_attn"] = flash_attn.__version__
    except ImportError:
        env["flash_attn"] = None
    return env


def recipe_config(dry_run: bool, steps: int):
    """The single-gpu recipe as one `all` stage of `steps` steps (debug-cpu shapes on a dry run)."""
    from corpus.config import load_config
    from train.config import TrainConfig, resolve_recipe

    name = "debug-cpu" if dry_run else "single-gpu"
    tiny = ["data.seq_len=128", "model.vision.patch_size=4"] if dry_run else []
    overrides = [
        *tiny,
        "optim.grad_accum=1",
        f"optim.warmup_steps={max(1, steps // 5)}",
        "parallel.data_parallel=fsdp",
        "parallel.param_dtype=bfloat16",
        f"run.use_gpu={not dry_run}",
        "model.image_token_id=4",
    ]
    cfg = load_config(TrainConfig, resolve_recipe(name), overrides)
    return name, TrainConfig.model_validate(cfg.model_dump() | {"stages": [{"trainable": "all", "steps": steps}]})


def recipe(dry_run: bool, steps: int) -> dict[str, Any]:
    import torch.distributed as dist

    from train.flops import FlopCounter, peak_flops
    from train.metrics import MetricsWindow
    from train.model.moe import MoE
    from train.parallel import TrainState, build_model
    from train.synthetic import synthetic_batch
    from train.trainer import lr_at, train_step

    device = _device()
    name, cfg = recipe_config(dry_run, steps)
    B, T = cfg.data.batch_size, cfg.data.seq_len
    # images as the recipe's pixel budget makes them: 224x224 .. 448x448 at patch 14 (16..32 patches a side)
    grids = ((2, 2), (2, 4), (4, 4)) if dry_run else ((16, 16), (16, 24), (24, 16), (32, 32))
    text = (8, 48) if dry_run else (64, 1024)
    gen = torch.Generator().manual_seed(0)
    pool = [synthetic_batch(cfg.model, gen, "mixed", B, T, grids=grids, text_tokens=text) for _ in range(4)]

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        model = build_model(cfg, device)
        state = TrainState(model, cfg, 0)
        flops, (peak, assumed) = FlopCounter.of(model), peak_flops(device, None, cfg.run.cpu_peak_flops)
        batches = (pool[i % len(pool)] for i in range(10**9))
        losses, step_ms = [], []
        warmup = min(3, steps - 1)
        window = MetricsWindow(device)
        for step in range(steps):
            if step == warmup:
                window.reset()  # the steady state: compilation, probes and allocator warm-up left out
            _sync(device)
            t0 = time.perf_counter()
            stats = train_step(state, batches, cfg, lr_at(cfg, step), flops, device)
            losses.append(float(stats.lm_loss_sum / stats.n_label_tokens.clamp(min=1)))  # waits for the step
            step_ms.append((time.perf_counter() - t0) * 1e3)
            window.add(stats)
        row = window.reduce(cfg.model, peak)
        try:  # the profiler (CUPTI) is a diagnostic: its failure must not cost the section its figures
            kernels = _profiled_attention_kernels(state, batches, cfg, flops, device)
        except Exception as e:  # noqa: BLE001
            kernels = [f"profiler failed: {type(e).__name__}: {str(e)[:300]}"]
        moe_backends = sorted({m.grouped_mm_backend for m in model.modules() if isinstance(m, MoE)} - {None})
    finally:
        dist.destroy_process_group()
    head, tail = losses[: max(1, steps // 5)], losses[-max(1, steps // 5) :]
    res = {
        "recipe": name,
        "steps": steps,
        "batch": f"{B} x {T}",
        "dtype": cfg.parallel.param_dtype,
        "params": sum(p.numel() for p in model.parameters()),
        "active_params": model.num_active_params(),
        "tokens_per_s": row["tokens_per_s"],
        "images_per_s": row["images_per_s"],
        "mfu": row["mfu"],
        "peak_flops_assumed": assumed,
        "step_ms_median": sorted(step_ms[warmup:])[len(step_ms[warmup:]) // 2],
        "first_step_ms": step_ms[0],
        "loss_first": sum(head) / len(head),
        "loss_last": sum(tail) / len(tail),
        "losses": losses,
        "expert_load_max_over_mean": row["expert_load_max_over_mean"],
        "expert_dead_frac": row["expert_dead_frac"],
        "moe_backend": moe_backends,
        "attention_kernels": kernels,
    }
    res["loss_falling"] = res["loss_last"] < res["loss_first"] and all(map(math.isfinite, losses))
    if device.type == "cuda":
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        res["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    return res


def _profiled_attention_kernels(state, batches, cfg, flops, device) -> list[str]:
    """Names of the attention ops/kernels one more training step ran (flash / efficient / math / flex)."""
    from torch.profiler import ProfilerActivity, profile

    from train.trainer import train_step

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_step(state, batches, cfg, 0.0, flops, device)
        _sync(device)
    keys = ("scaled_dot_product", "flash", "flex", "fmha", "efficient_attention", "cudnn", "attention")
    names = {
        e.key
        for e in prof.key_averages()
        if any(k in e.key.lower() for k in keys)
        and not e.key.startswith("autograd::")
        and not e.key.endswith("Backward0")
    }
    return sorted(names)[:20]


def moe(dry_run: bool, iters: int) -> dict[str, Any]:
    from bench.moe import run_shape

    device = _device()
    # (S, D, F, E, K): the single-gpu recipe's MoE layer at one batch of tokens, and many small experts
    shapes = (
        [(256, 64, 64, 4, 2), (256, 64, 32, 16, 4)]
        if dry_run
        else [(16384, 768, 1024, 8, 2), (16384, 1024, 512, 64, 8)]
    )
    rows = []
    for S, D, Fh, E, K in shapes:
        r = run_shape(S, D, Fh, E, K, device.type, torch.bfloat16, iters)
        rows.append(
            {
                "shape": r["shape"],
                "backend": r["backend"],
                "ours_ms": r["ours"] * 1e3,
                "ours_loop_ms": r["ours_loop"] * 1e3,
                "hf_mask_loop_ms": r["hf"] * 1e3,
                "dense_same_active_ms": r["dense"] * 1e3,
            }
        )
    return {"dtype": "bfloat16", "shapes": rows}


def attention(dry_run: bool, iters: int) -> dict[str, Any]:
    import torch.nn.functional as F

    device = _device()
    B, H, T, Dh = (2, 2, 128, 16) if dry_run else (8, 12, 2048, 64)
    gen = torch.Generator().manual_seed(0)
    # packed rows: documents of 64..T/2 tokens, as the loader packs them
    seg_BT = torch.empty(B, T, dtype=torch.long)
    for b in range(B):
        t, s = 0, 0
        while t < T:
            n = min(T - t, 64 + int(torch.randint(T // 2, (1,), generator=gen)))
            seg_BT[b, t : t + n], t, s = s, t + n, s + 1
    seg_BT = seg_BT.to(device)
    dtype = torch.bfloat16
    q, k, v = (torch.randn(B, H, T, Dh, generator=gen).to(device, dtype).requires_grad_() for _ in range(3))
    causal_TT = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    mask_B1TT = ((seg_BT[:, :, None] == seg_BT[:, None, :]) & causal_TT)[:, None]
    res: dict[str, Any] = {"shape": f"B={B} H={H} T={T} Dh={Dh} bf16", "documents_per_row": int(seg_BT[0].max()) + 1}
    res["sdpa_dense_mask_ms"] = _fwd_bwd_ms(
        lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask_B1TT), device, iters
    )
    res["sdpa_causal_no_documents_ms"] = _fwd_bwd_ms(
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), device, iters
    )
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def doc_causal(b, h, q_idx, kv_idx):
            return (seg_BT[b, q_idx] == seg_BT[b, kv_idx]) & (q_idx >= kv_idx)

        block_mask = create_block_mask(doc_causal, B, None, T, T, device=str(device))
        res["flex_sparsity"] = float(block_mask.sparsity())
        flex = torch.compile(flex_attention) if device.type == "cuda" else flex_attention
        with torch.no_grad():  # the block mask computes what the dense mask computes
            q0, k0, v0 = (t.detach().float() for t in (q, k, v))  # fp32: a mask error is not rounding
            out_flex = flex(q0, k0, v0, block_mask=block_mask)
            out_ref = F.scaled_dot_product_attention(q0, k0, v0, attn_mask=mask_B1TT)
        res["flex_max_abs_diff_vs_dense"] = float((out_flex.float() - out_ref.float()).abs().max())
        res["flex_block_mask_ms"] = _fwd_bwd_ms(lambda: flex(q, k, v, block_mask=block_mask), device, iters)
    except Exception as e:  # noqa: BLE001 -- flex missing or failing is a finding, reported in the JSON
        res["flex_error"] = f"{type(e).__name__}: {str(e)[:500]}"
    if device.type == "cuda":  # which SDPA kernels accept which call
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            for label, kwargs in (("causal", {"is_causal": True}), ("dense_mask", {"attn_mask": mask_B1TT})):
                try:
                    with sdpa_kernel(backend), torch.no_grad():
                        F.scaled_dot_product_attention(q, k, v, **kwargs)
                    res[f"{backend.name.lower()}_{label}"] = True
                except (RuntimeError, ValueError, NotImplementedError):
                    res[f"{backend.name.lower()}_{label}"] = False
    return res


def attention_backends(dry_run: bool, iters: int) -> dict[str, Any]:
    """The model's own attention backends (train/model/attention.py `attend`) on packed decoder documents and
    mixed-size ViT images: dense (N x N mask reference) vs varlen vs flex (CUDA), each checked against
    dense first (bench/attention.py's cases and timing; ms and, on CUDA, peak MiB per backend)."""
    from bench.attention import cases, run_case

    device = _device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for name, ids, causal, H, K, d in cases(1.0, tiny=dry_run):
        r = run_case(name, ids, causal, H, K, d, device.type, dtype, iters)
        row = {"case": r["case"], "device": r["device"]}
        for backend in ("dense", "varlen", "flex"):
            if backend in r:
                row[f"{backend}_ms"] = r[backend] * 1e3
                row[f"{backend}_peak_mib"] = r[backend + "_mem"]
        rows.append(row)
    return {"cases": rows}


def _fsdp_worker(rank: int, world: int, port: int, backend: str, result_dir: str, dry_run: bool) -> None:
    """One rank of the 2-process FSDP2 check: 3 steps, rank 1 never sees an image."""
    import torch.distributed as dist

    from train.flops import FlopCounter
    from train.parallel import TrainState, build_model
    from train.synthetic import synthetic_batch
    from train.trainer import train_step

    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        _, cfg = recipe_config(True, 3)  # the debug model: this section checks collectives, not speed
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"use_gpu": device.type == "cuda"})})
        model = build_model(cfg, device)
        state = TrainState(model, cfg, 0)
        gen = torch.Generator().manual_seed(rank)
        kind = "mixed" if rank == 0 else "text"
        batches = (synthetic_batch(cfg.model, gen, kind, 2, 128, grids=((2, 2), (4, 4))) for _ in range(10**9))
        losses, t0 = [], time.perf_counter()
        for _ in range(3):
            stats = train_step(state, batches, cfg, 1e-3, FlopCounter.of(model), device)
            losses.append(float(stats.lm_loss_sum / stats.n_label_tokens.clamp(min=1)))
        _sync(device)
        Path(result_dir, f"rank{rank}.json").write_text(
            json.dumps({"losses": losses, "seconds": time.perf_counter() - t0, "device": str(device)})
        )
    finally:
        dist.destroy_process_group()


def _run_two_ranks(backend: str, dry_run: bool, timeout_s: float) -> dict[str, Any]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="gpu-check-fsdp-") as tmp:
        port = _free_port()
        procs = [ctx.Process(target=_fsdp_worker, args=(r, 2, port, backend, tmp, dry_run)) for r in range(2)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [p for p in procs if p.is_alive()]
        for p in hung:
            p.kill()
            p.join()
        if hung:
            raise TimeoutError(f"{backend}: {len(hung)} rank(s) still running after {timeout_s:.0f} s (a hang)")
        codes = [p.exitcode for p in procs]
        if any(codes):
            raise RuntimeError(f"{backend}: ranks exited with {codes}")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(2)]
    return {"backend": backend, "ranks": ranks}


def fsdp2(dry_run: bool) -> dict[str, Any]:
    attempts: list[str] = []
    if torch.cuda.is_available():  # both ranks on the one GPU: NCCL may refuse (duplicate GPU)
        try:
            return {**_run_two_ranks("nccl", dry_run, timeout_s=120), "attempts": attempts}
        except Exception as e:  # noqa: BLE001 -- NCCL refusing two ranks on one GPU is an expected outcome
            attempts.append(f"nccl: {type(e).__name__}: {str(e)[:300]}")
    return {**_run_two_ranks("gloo", dry_run, timeout_s=300), "attempts": attempts}


# ---- driver ----------------------------------------------------------------------------------------------
def table(report: dict[str, Any]) -> str:
    """A short markdown table of the headline figures."""
    s = report["sections"]
    lines = ["| check | result |", "|---|---|"]
    env = s["environment"]
    if env.get("ok"):
        lines.append(
            f"| device | {env['device']} (torch {env['torch']}, peak {env['peak_flops'] / 1e12:.3g} "
            f"TFLOP/s{' assumed' if env['peak_assumed'] else ''}) |"
        )
    r = s["recipe"]
    if r.get("ok"):
        mem = f", peak memory {r['peak_memory_gib']} GiB" if "peak_memory_gib" in r else ""
        lines.append(
            f"| {r['recipe']} recipe, {r['steps']} steps | {r['tokens_per_s']:,.0f} tokens/s, "
            f"MFU {100 * r['mfu']:.1f}%, {r['step_ms_median']:.0f} ms/step{mem}; loss "
            f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} "
            f"({'falling' if r['loss_falling'] else 'NOT falling'})"
            f"; MoE {'/'.join(r['moe_backend'])} |"
        )
        lines.append(f"| attention kernels in the step | {', '.join(r['attention_kernels']) or '-'} |")
    m = s["moe"]
    if m.get("ok"):
        for row in m["shapes"]:
            a = row["ours_ms"]
            lines.append(
                f"| MoE bf16 {row['shape']} | ours {a:.2f} ms ({row['backend']}), loop "
                f"{row['ours_loop_ms'] / a:.2f}x, HF mask loop {row['hf_mask_loop_ms'] / a:.2f}x, "
                f"dense same active {row['dense_same_active_ms'] / a:.2f}x |"
            )
    a = s["attention"]
    if a.get("ok"):
        flex = f"{a['flex_block_mask_ms']:.2f} ms" if "flex_block_mask_ms" in a else a.get("flex_error", "-")
        lines.append(
            f"| attention {a['shape']} | dense mask {a['sdpa_dense_mask_ms']:.2f} ms, flex {flex}, "
            f"causal no docs {a['sdpa_causal_no_documents_ms']:.2f} ms |"
        )
    b = s["attention_backends"]
    if b.get("ok"):
        for row in b["cases"]:
            flex = f", flex {row['flex_ms'] / row['dense_ms']:.2f}x" if "flex_ms" in row else ""
            lines.append(
                f"| model attention {row['case']} | dense {row['dense_ms']:.2f} ms, varlen "
                f"{row['varlen_ms'] / row['dense_ms']:.2f}x{flex} |"
            )
    f = s["fsdp2"]
    if f.get("ok"):
        lines.append(
            f"| FSDP2 2 processes ({f['backend']}) | losses rank 0 "
            f"{', '.join(f'{x:.3f}' for x in f['ranks'][0]['losses'])} |"
        )
    for name, sec in s.items():
        if not sec.get("ok"):
            lines.append(f"| {name} | FAILED: {sec['error'][:200]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (what the test suite runs)")
    ap.add_argument("--steps", type=int, default=None, help="recipe steps (default 30; 4 on a dry run)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per kernel (default 9; 2 dry)")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "gpu-check.json")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench.gpu: no CUDA device; run with --dry-run for the CPU dry run", file=sys.stderr)
        return 2
    steps = args.steps or (4 if args.dry_run else 30)
    iters = args.iters or (2 if args.dry_run else 9)
    if args.dry_run:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    sections = {
        "environment": _guarded("environment", lambda: environment(args.dry_run)),
        "recipe": _guarded("recipe", lambda: recipe(args.dry_run, steps)),
        "moe": _guarded("moe", lambda: moe(args.dry_run, iters)),
        "attention": _guarded("attention", lambda: attention(args.dry_run, iters)),
        "attention_backends": _guarded("attention_backends", lambda: attention_backends(args.dry_run, iters)),
        "fsdp2": _guarded("fsdp2", lambda: fsdp2(args.dry_run)),
    }
    report = {
        "ok": all(s["ok"] for s in sections.values()),
        "seconds": round(time.perf_counter() - t0, 1),
        "sections": sections,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table(report))
    print(
        f"[gpu-check] {'all sections ok' if report['ok'] else 'SOME SECTIONS FAILED'} in {report['seconds']} s; "
        f"JSON: {args.out}"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
