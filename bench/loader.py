"""Loader throughput vs what the trainer consumes, and vs a peer reader (webdataset) on the same shards.

For each recipe shape (debug-cpu, single-gpu) on a corpus of real text and real photos written with the
real shard writer:
  - interloom loader: documents/s, images/s, tokens/s (non-pad) of packed `Batch`es, with JPEG decode,
    resize to the patch grid, patchify, tokenize, pack, collate; one process (data.num_workers=0)
  - peer: webdataset `WebDataset(shards).decode("pil")` over the same tars (read + JSON + PIL decode only,
    no resize, no tokenizer, no packing): documents/s
  - consumption: the model's forward + backward + AdamW step on the loader's batches, tokens/s; on CPU for
    debug-cpu. The single-gpu shapes need a GPU for that; without one the bench prints the tokens/s an
    H100 would need at a given MFU (model FLOPs per token from the model) instead of a measurement.
Headroom = loader tokens/s / consumed tokens/s (per rank; the loader runs once per rank).

Run: .venv/bin/python -m bench.loader [--docs 240] [--seconds 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _train_corpus import build_corpus, require_real  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.corpus import Corpus  # noqa: E402
from train.config import TrainConfig, resolve_recipe  # noqa: E402
from train.data import Loader  # noqa: E402
from train.tokenizer import train_from_corpus  # noqa: E402
from train.trainer import GPU_PEAK_BF16_FLOPS  # noqa: E402


def time_loader(cfg: TrainConfig, tok: Path, corpus: Path, seconds: float) -> dict[str, float]:
    ld = Loader(cfg.data, str(tok), cfg.model.vision.patch_size, corpus=str(corpus))
    it = iter(ld)
    next(it)  # open shards, warm caches
    c0 = ld.counters()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += 1
    dt = time.perf_counter() - t0
    c1 = ld.counters()
    return {"batches/s": n / dt, "docs/s": (c1["documents"] - c0["documents"]) / dt,
            "images/s": (c1.get("images_kept", 0) - c0.get("images_kept", 0)) / dt,
            "tokens/s": (c1["tokens"] - c0["tokens"]) / dt}


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
    return {"steps/s": steps / dt, "tokens/s": tokens / dt,
            "flops/token": model.num_flops_per_token(cfg.data.seq_len)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=240)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for the GPU consumption estimate")
    args = ap.parse_args()
    require_real()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    # photos at up to 512 px (their native size), so single-gpu shapes really resize down or up
    corpus = build_corpus(work / "corpus", [args.docs // 4] * 4, images_per_doc=2, max_side=512)
    tok = work / "tokenizer.json"
    train_from_corpus(corpus, tok, vocab_size=2048)
    print(f"corpus: {args.docs} documents, {sum(s.images for s in Corpus(corpus).shards())} images, "
          f"{sum(s.bytes for s in Corpus(corpus).shards()) / 1e6:.1f} MB; torch threads 1; loader in-process")

    rows = []
    peer = time_peer(corpus, args.seconds)
    for recipe in ("debug-cpu", "single-gpu"):
        cfg = load_config(TrainConfig, resolve_recipe(recipe), [f"data.corpus={corpus}", "data.num_workers=0"])
        load = time_loader(cfg, tok, corpus, args.seconds)
        if recipe == "debug-cpu":
            cons = time_consumption(cfg, tok, corpus, args.steps)
            need, how = cons["tokens/s"], f"measured on CPU, {cons['steps/s']:.2f} steps/s"
        else:
            from train.model import VLM

            cfg.model.vocab_size = 2048
            with torch.device("meta"):
                fpt = VLM(cfg.model).num_flops_per_token(cfg.data.seq_len)
            need = GPU_PEAK_BF16_FLOPS["H100"] * args.mfu / fpt
            how = f"NOT measured (no GPU): H100 at {args.mfu:.0%} MFU, {fpt / 1e9:.2f} GFLOP/token"
        rows.append((recipe, cfg, load, need, how))
        print(f"{recipe}: loader {load['docs/s']:.1f} docs/s, {load['images/s']:.1f} images/s, "
              f"{load['tokens/s']:.0f} tokens/s, {load['batches/s']:.2f} batches/s | consumption "
              f"{need:.0f} tokens/s ({how}) | headroom {load['tokens/s'] / need:.2f}x", flush=True)
    print(f"peer webdataset .decode('pil'): {peer['docs/s']:.1f} docs/s, {peer['images/s']:.1f} images/s")

    print("\n| shapes | loader docs/s | loader images/s | loader tokens/s | trainer tokens/s | headroom |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for recipe, cfg, load, need, how in rows:
        d = cfg.data
        print(f"| {recipe} (T={d.seq_len}, B={d.batch_size}, <= {d.max_pixels} px, p={cfg.model.vision.patch_size})"
              f" | {load['docs/s']:.1f} | {load['images/s']:.1f} | {load['tokens/s']:,.0f} | {need:,.0f} ({how}) "
              f"| {load['tokens/s'] / need:.1f}x |")
    print(f"| peer: webdataset `.decode(\"pil\")` (read + decode only) | {peer['docs/s']:.1f} | "
          f"{peer['images/s']:.1f} | - | - | - |")


if __name__ == "__main__":
    main()
