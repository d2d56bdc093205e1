"""`interloom train CONFIG [--corpus PATH] [--output RUN_DIR] [--set key=value ...]`.

CONFIG is a YAML file or a bundled recipe name (debug-cpu, single-gpu, multi-gpu). Running it again on an
existing RUN_DIR continues that run from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train the MoE VLM on a corpus (Ray Train); resumes a run dir",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML file or recipe name: debug-cpu | single-gpu | multi-gpu")
    p.add_argument("--corpus", help="corpus directory or fsspec URL (sets data.corpus)")
    p.add_argument("--output", help="run directory (sets run.output); an existing one is resumed")
    p.add_argument("--follow", action="store_true", help="stream shards of a build that is still running")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local instance)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from train.config import TrainConfig, resolve_recipe

    overrides = list(args.overrides)
    if args.corpus:
        overrides.insert(0, f"data.corpus={args.corpus}")
    if args.output:
        overrides.insert(0, f"run.output={args.output}")
    if args.follow:
        overrides.insert(0, "data.follow=true")
    cfg = load_config(TrainConfig, resolve_recipe(args.config), overrides)

    import ray
    import ray.train

    from train.trainer import run_training

    ray.init(address=args.address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=True)
    try:
        run_training(cfg)
    except ray.train.TrainingFailedError as e:
        print(f"interloom train: training failed (run it again to continue from the last checkpoint): {e}",
              file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    print(f"interloom train: done, run directory {cfg.run.output}")
    return 0
