"""`interloom train CONFIG [--corpus PATH] [--output RUN_DIR] [--set key=value ...]`.

Train the Mixture-of-Experts vision-language model on a corpus with Ray Train, streaming its shards.
CONFIG is a YAML file or a bundled recipe name (debug-cpu, single-gpu, multi-gpu; train/recipes/). Running it
again on an existing RUN_DIR continues that run from its latest checkpoint.

RUN_DIR gets checkpoint_*/ (Ray Train checkpoints), metrics.jsonl (loss, tokens/s, MFU), tb/ (TensorBoard),
tokenizer.json and the resolved config.json.
"""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """\
examples:
  interloom train debug-cpu --corpus corpus/ --output runs/debug        tiny model, CPU, 2 workers
  interloom train single-gpu --corpus s3://bucket/corpus --output runs/a --set optim.lr=1e-3
  interloom train debug-cpu --corpus corpus/ --val-corpus val/ --set run.eval_every=20   held-out losses
  interloom train run.yaml --corpus corpus/ --follow                     while `interloom build` writes it
  interloom train multi-gpu --corpus s3://bucket/corpus --address ray://head:10001 --set run.num_workers=16
  interloom train align --corpus corpus/ --output runs/align --init-llm models/Qwen3-1.7B --init-vision models/Qwen2-VL-2B-Instruct
  interloom train pretrain --corpus corpus/ --output runs/pretrain --init-from runs/align

config sections: data, model, optim, stages, parallel, run (train/config.py); a recipe shows a full YAML file.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the MoE VLM on a corpus (Ray Train); resumes a run dir",
        description=__doc__,
        epilog=EXAMPLES,
    )
    p.add_argument("config", help="YAML file or recipe name: debug-cpu | single-gpu | multi-gpu | align | pretrain")
    p.add_argument("--corpus", metavar="PATH", help="corpus directory or fsspec URL (sets data.corpus)")
    p.add_argument(
        "--output",
        "-o",
        metavar="RUN_DIR",
        help="run directory (sets run.output; default: the recipe's); an existing one is resumed",
    )
    p.add_argument(
        "--follow", action="store_true", help="stream shards of a build that is still running (sets data.follow=true)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)",
    )
    p.add_argument(
        "--init-llm",
        metavar="DIR",
        default=None,
        help="start the decoder from a local Hugging Face model folder (config.json, *.safetensors, "
        "tokenizer.json): its architecture, weights and tokenizer (plus our special tokens)",
    )
    p.add_argument(
        "--upcycle",
        action="store_true",
        help="with --init-llm of a dense model: sparse-upcycle it into the recipe's moe.n_experts "
        "experts (top moe.top_k), each a copy of the dense FFN (sets model.init_upcycle=true)",
    )
    p.add_argument(
        "--val-corpus",
        metavar="PATH",
        default=None,
        help="held-out corpus: val_* losses (image-conditioned vs plain text) every run.eval_every "
        "steps into metrics.jsonl and TensorBoard (sets run.val_corpus)",
    )
    p.add_argument(
        "--init-vision",
        metavar="DIR",
        default=None,
        help="start the vision tower from a local Hugging Face folder (a Qwen2-VL or SigLIP2 model, or its "
        "vision tower saved alone; picked by config.json model_type): its architecture (model.vision) and weights; the adapter stays new",
    )
    p.add_argument(
        "--init-from",
        metavar="CKPT",
        default=None,
        help="start from an interloom run, checkpoint or exported folder (e.g. `pretrain` after `align`): its "
        "model, weights, tokenizer and pixel statistics; the recipe's stages and optimizer (sets model.init_from)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="stop after N optimizer steps (checkpointed); the recipe's stages and schedule are unchanged and "
        "running again with a larger N continues (sets run.max_steps)",
    )
    p.add_argument("--address", default=None, metavar="ADDR", help="Ray cluster address (default: a local instance)")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    """The run's TrainConfig from the command line: the recipe, its overrides, then the model folders
    (--init-llm / --init-vision) or the checkpoint (--init-from) it starts from. Checks the corpus."""
    from corpus.config import load_config
    from train.config import TrainConfig, resolve_recipe

    overrides = list(args.overrides)
    if args.corpus:
        overrides.insert(0, f"data.corpus={args.corpus}")
    if args.output:
        overrides.insert(0, f"run.output={args.output}")
    if args.follow:
        overrides.insert(0, "data.follow=true")
    if args.val_corpus:
        overrides.insert(0, f"run.val_corpus={args.val_corpus}")
    if args.upcycle:
        overrides.insert(0, "model.init_upcycle=true")
    if args.max_steps is not None:
        overrides.insert(0, f"run.max_steps={args.max_steps}")
    cfg = load_config(TrainConfig, resolve_recipe(args.config), overrides)
    if args.init_from:
        if args.init_llm or args.init_vision:
            raise ValueError("--init-from brings the whole model: use it without --init-llm / --init-vision")
        from train.export import init_from_config

        cfg = init_from_config(cfg, args.init_from, cfg.run.output)
    if args.init_llm:
        from pathlib import Path

        from train.model.hf.init import init_llm_config

        Path(cfg.run.output).mkdir(parents=True, exist_ok=True)
        cfg = init_llm_config(cfg, args.init_llm, cfg.run.output)
    if args.init_vision:
        from train.model.hf.vision import init_vision_config

        cfg = init_vision_config(cfg, args.init_vision)
    if not cfg.data.corpus:  # checked before Ray starts, so a typo costs no cluster start-up
        raise ValueError("data.corpus is empty: pass --corpus PATH (a corpus directory or fsspec URL)")
    if not cfg.data.follow:
        from corpus.format import Corpus

        # ValueError "not a corpus: ..." without a manifest, naming the line of a damaged one; before Ray starts
        if not Corpus(cfg.data.corpus).shards():
            raise ValueError(f"--corpus {cfg.data.corpus}: its manifest lists no shard (no document to train on)")
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    import ray
    import ray.train

    from train.trainer import run_training

    ray.init(address=args.address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=True)
    try:
        run_training(cfg)
    except ray.train.TrainingFailedError as e:
        print(
            f"interloom train: training failed (run it again to continue from the last checkpoint): {e}",
            file=sys.stderr,
        )
        return 1
    finally:
        ray.shutdown()
    print(f"interloom train: done, run directory {cfg.run.output}")
    return 0
