"""Loader throughput vs what the trainer consumes, and vs a peer reader (webdataset) on the same shards.

On a corpus of real text and real photos written with the real shard writer, at each recipe's shapes
(debug-cpu, single-gpu):
  - interloom loader in one process (data.num_workers=0): documents/s, images/s, tokens/s (non-pad) of
    packed `Batch`es, with JPEG decode, resize to the patch grid, patchify, tokenize, pack, collate and the
    float32 pixel normalisation; wall-clock rate, and the rate per CPU-second of the process (= per core)
  - single-gpu shapes, the loader as the trainer runs it: N DataLoader worker processes (N = 1, 2 and the
    recipe's data.num_workers) feeding the training process: aggregate wall tokens/s on this machine, and
    tokens per CPU-second of the workers + the training process's share (receiving batches, normalising
    pixels), read from /proc; that per-core rate is what sizes the loader: wall rates of N processes on a
    machine with fewer than N free cores say nothing about N cores
  - peer: webdataset `WebDataset(shards).decode("pil")` over the same tars (read + JSON + PIL decode only,
    no resize, no tokenizer, no packing): documents/s
  - consumption: the model's forward + backward + AdamW step on the loader's batches, tokens/s, on CPU for
    debug-cpu. The single-gpu shapes need a GPU for that; without one the bench prints the tokens/s an
    H100 would need at a given MFU (model FLOPs per token of the recipe's model, vocab included) instead.
Every figure is the median of --repeats runs (the machine may be shared). Headroom = loader tokens/s /
consumed tokens/s; loader cores for 2x headroom = 2 x consumed tokens/s / loader tokens per CPU-second.

Run: .venv/bin/python -m bench.loader [--docs 240] [--seconds 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _train_corpus import build_corpus, require_real

from corpus.config import load_config
from corpus.format import Corpus
from train.config import TrainConfig, resolve_recipe
from train.data import Loader
from train.flops import GPU_PEAK_BF16_FLOPS
from train.tokenizer import train_from_corpus


def children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's live child processes (DataLoader workers), Linux."""
    me, total = os.getpid(), 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me:
                total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def time_loader(cfg: TrainConfig, tok: Path, corpus: Path, seconds: float) -> dict[str, float]:
    """One run of the rank's loader as configured (cfg.data.num_workers worker processes or in-process)."""
    ld = Loader(cfg.data, str(tok), cfg.model.vision.patch_size, corpus=str(corpus))
    it = iter(ld)
    # warm up past the workers' start and their first prefetched batches: the window sees steady state
    for _ in range(1 + 3 * cfg.data.num_workers):
        next(it)
    c0 = ld.counters()
    t0, p0, w0 = time.perf_counter(), time.process_time(), children_cpu_s()
    n = tokens = 0
    while time.perf_counter() - t0 < seconds:
        b = next(it)
        n += 1
        tokens += int((b.segment_ids_BT >= 0).sum())
    dt, main_cpu, workers_cpu = time.perf_counter() - t0, time.process_time() - p0, children_cpu_s() - w0
    del it  # shuts the workers down
    c1 = ld.counters()  # counters of the batches yielded (slot states travel with the batches)
    assert c1["tokens"] - c0["tokens"] == tokens
    cpu = main_cpu + workers_cpu
    return {
        "batches/s": n / dt,
        "docs/s": (c1["documents"] - c0["documents"]) / dt,
        "images/s": (c1.get("images_kept", 0) - c0.get("images_kept", 0)) / dt,
        "tokens/s": tokens / dt,
        "tokens/cpu-s": tokens / cpu,
        "cores busy": cpu / dt,
        "main cpu ms/batch": 1e3 * main_cpu / n,
        "worker cpu ms/batch": 1e3 * workers_cpu / n,
        "tokens/batch": tokens / n,
    }


def time_peer(corpus: Path, seconds: float) -> dict[str, float]:
    import webdataset as wds

    urls = [Corpus(corpus).shard_path(s) for s in Corpus(corpus).shards()]
    t0, n, imgs = time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < seconds:
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"):
            n += 1
            for k, v in sample.items():
                if k.startswith("img"):
                    v.load()
                    imgs += 1
            if time.perf_counter() - t0 >= seconds:
                break
    dt = time.perf_counter() - t0
    return {"docs/s": n / dt, "images/s": imgs / dt}


def time_consumption(cfg: TrainConfig, tok: Path, corpus: Path, steps: int) -> dict[str, float]:
    from train.losses import total_loss
    from train.model import VLM
    from train.tokenizer import Tokenizer

    t = Tokenizer.load(tok)
    cfg.model.vocab_size = -(-t.vocab_size // 64) * 64
    cfg.model.image_token_id = t.image_id
    torch.manual_seed(0)
    model = VLM(cfg.model)
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-4)
    it = iter(Loader(cfg.data, str(tok), cfg.model.vision.patch_size, corpus=str(corpus)))
    batches = [next(it) for _ in range(steps + 2)]

    def step(b):
        loss = total_loss(model(b), cfg.model)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for b in batches[:2]:
        step(b)
    t0 = time.perf_counter()
    tokens = 0
    for b in batches[2:]:
        step(b)
        tokens += int((b.segment_ids_BT >= 0).sum())
    dt = time.perf_counter() - t0
    return {"steps/s": steps / dt, "tokens/s": tokens / dt}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=240)
    ap.add_argument("--seconds", type=float, default=8.0, help="length of one timed run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for the GPU consumption estimate")
    args = ap.parse_args()
    require_real()
    torch.set_num_threads(1)
    # N worker processes on a machine with fewer cores is the point of the per-CPU-second measurement
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    work = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    # photos at up to 512 px (their native size), so single-gpu shapes really resize down or up
    corpus = build_corpus(work / "corpus", [args.docs // 4] * 4, images_per_doc=2, max_side=512)
    tok = work / "tokenizer.json"
    train_from_corpus(corpus, tok, vocab_size=2048)
    print(
        f"corpus: {args.docs} documents, {sum(s.images for s in Corpus(corpus).shards())} images, "
        f"{sum(s.bytes for s in Corpus(corpus).shards()) / 1e6:.1f} MB; torch threads 1; {os.cpu_count()} "
        f"cores, load average {os.getloadavg()[0]:.1f}; medians of {args.repeats} runs of {args.seconds:.0f} s",
        flush=True,
    )

    def recipe_cfg(recipe: str, *overrides: str) -> TrainConfig:
        return load_config(TrainConfig, resolve_recipe(recipe), [f"data.corpus={corpus}", *overrides])

    peer = median_of([time_peer(corpus, args.seconds) for _ in range(args.repeats)])
    rows, worker_rows = [], []
    for recipe in ("debug-cpu", "single-gpu"):
        cfg = recipe_cfg(recipe, "data.num_workers=0")
        load = median_of([time_loader(cfg, tok, corpus, args.seconds) for _ in range(args.repeats)])
        if recipe == "debug-cpu":
            cons = median_of(
                [
                    time_consumption(recipe_cfg(recipe, "data.num_workers=0"), tok, corpus, args.steps)
                    for _ in range(args.repeats)
                ]
            )
            need, how = cons["tokens/s"], f"measured on CPU, {cons['steps/s']:.1f} steps/s"
        else:
            from train.model import VLM

            cfg.model.vocab_size = -(-cfg.data.vocab_size // 64) * 64  # the recipe's model, not the bench's
            with torch.device("meta"):
                fpt = VLM(cfg.model).num_flops_per_token(cfg.data.seq_len)
            need = dict(GPU_PEAK_BF16_FLOPS)["H100"] * args.mfu / fpt
            how = f"NOT measured (no GPU): H100 at {args.mfu:.0%} MFU, {fpt / 1e9:.2f} GFLOP/token"
            for n in sorted({1, 2, recipe_cfg(recipe).data.num_workers}):
                wcfg = recipe_cfg(recipe, f"data.num_workers={n}")
                w = median_of([time_loader(wcfg, tok, corpus, args.seconds) for _ in range(args.repeats)])
                worker_rows.append((n, w, cfg))
                print(
                    f"{recipe}, {n} worker processes: {w['tokens/s']:.0f} tokens/s wall ({w['cores busy']:.2f}"
                    f" cores busy), {w['tokens/cpu-s']:.0f} tokens per CPU-second, training process "
                    f"{w['main cpu ms/batch']:.0f} ms CPU per batch",
                    flush=True,
                )
        rows.append((recipe, cfg, load, need, how))
        print(
            f"{recipe}: loader {load['docs/s']:.1f} docs/s, {load['images/s']:.1f} images/s, "
            f"{load['tokens/s']:.0f} tokens/s ({load['tokens/cpu-s']:.0f} per CPU-second), "
            f"{load['batches/s']:.2f} batches/s | consumption {need:.0f} tokens/s ({how}) | headroom "
            f"{load['tokens/s'] / need:.2f}x per loader process",
            flush=True,
        )
    print(f"peer webdataset .decode('pil'): {peer['docs/s']:.1f} docs/s, {peer['images/s']:.1f} images/s")

    print(
        "\n| shapes | loader docs/s | loader images/s | loader tokens/s | tokens per CPU-s | trainer tokens/s "
        "| headroom per loader process |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for recipe, cfg, load, need, how in rows:
        d = cfg.data
        print(
            f"| {recipe} (T={d.seq_len}, B={d.batch_size}, <= {d.max_pixels} px, p={cfg.model.vision.patch_size})"
            f" | {load['docs/s']:.1f} | {load['images/s']:.1f} | {load['tokens/s']:,.0f} | "
            f"{load['tokens/cpu-s']:,.0f} | {need:,.0f} ({how}) | {load['tokens/s'] / need:.2f}x |"
        )
    print(
        f'| peer: webdataset `.decode("pil")` (read + decode only) | {peer["docs/s"]:.1f} | '
        f"{peer['images/s']:.1f} | - | - | - | - |"
    )
    need = rows[-1][3]
    print(
        "\n| single-gpu loader | wall tokens/s (this machine) | cores busy | tokens per CPU-s (workers + "
        "training process) | worker CPU per batch | training-process CPU per batch | for 2x headroom: "
        "batches/s, worker processes + training-process cores = cores |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for n, w, _ in worker_rows:
        rate = 2 * need / w["tokens/batch"]
        workers, main = rate * w["worker cpu ms/batch"] / 1e3, rate * w["main cpu ms/batch"] / 1e3
        print(
            f"| {n} worker process{'es' if n > 1 else ''} | {w['tokens/s']:,.0f} | {w['cores busy']:.2f} | "
            f"{w['tokens/cpu-s']:,.0f} | {w['worker cpu ms/batch']:.0f} ms | {w['main cpu ms/batch']:.0f} ms | "
            f"{rate:.0f}/s: {math.ceil(workers)} + {main:.1f} = {math.ceil(workers + main)} |"
        )


if __name__ == "__main__":
    main()
