"""Trainer on a real local Ray (2 workers, gloo): resume reproduces the uninterrupted run bit for bit (both
re-running the command on the run dir and a killed worker restarted by Ray), the debug-cpu recipe drives the
loss down on a corpus built from the real dev WARCs, stages freeze what they should, config errors are clear."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import ray.train

from corpus.config import load_config
from train.config import TrainConfig, resolve_recipe
from train.trainer import lr_at, run_training


@pytest.fixture(scope="module")
def corpus(dev_corpus):
    """The corpus the real build makes from the dev WARCs (shards of uneven sizes, real pages and images)."""
    return dev_corpus[0]


def config(corpus, out, *extra):
    return load_config(
        TrainConfig,
        resolve_recipe("debug-cpu"),
        [f"data.corpus={corpus}", f"run.output={out}", "run.log_every=1", *extra],
    )


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def debug_run(ray_local, corpus, tmp_path_factory):
    """The debug-cpu recipe, uninterrupted: 120 steps, 2 Ray workers (gloo), checkpoints every 40."""
    out = tmp_path_factory.mktemp("debug") / "run"
    run_training(config(corpus, out))
    return out


@pytest.mark.slow
def test_debug_cpu_drives_the_loss_down(debug_run):
    loss = [v for _, v in sorted(losses(debug_run).items())]
    assert len(loss) == 120
    first, last = sum(loss[:50]) / 50, sum(loss[-50:]) / 50
    assert last < first - 0.8, (first, last)
    rows = [json.loads(ln) for ln in (debug_run / "metrics.jsonl").read_text().splitlines()]
    r = rows[-1]
    assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and r["mfu_peak_assumed"]
    assert any(row["images_per_s"] > 0 for row in rows)  # images flow (not every log step holds one)
    assert len(r["expert_load"]) == 2 and all(
        len(layer) == 4 and math.isclose(sum(layer), 1.0, rel_tol=1e-6) for layer in r["expert_load"]
    )  # per MoE layer, over 4 experts
    assert len(r["expert_load_max_over_mean"]) == 2 and 0.0 <= r["expert_dead_frac"] <= 1.0
    assert "contrastive_loss" in r and "lm_loss" in r and "aux_loss" in r and "z_loss" in r
    assert any(row["contrastive_pairs"] > 0 for row in rows)
    assert list((debug_run / "tb").glob("events.out.tfevents.*"))
    assert json.loads((debug_run / "config.json").read_text())["model"]["image_token_id"] == 4


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_losses(debug_run, corpus, tmp_path):
    reference = losses(debug_run)
    # 1) the run dies after the step-40 checkpoint; running the command again on the run dir continues there
    run = tmp_path / "resumed"
    with pytest.raises(ray.train.TrainingFailedError):
        run_training(config(corpus, run, "run.fail_at_step=40", "run.max_failures=0"))
    assert (run / "injected_failure_40.done").exists()
    assert max(losses(run)) == 40
    # 2) ... and in the continued run a worker is killed after step 80; Ray restarts it from that checkpoint
    run_training(config(corpus, run, "run.fail_at_step=80", "run.max_failures=1"))
    assert (run / "injected_failure_80.done").exists()
    assert losses(run) == reference  # all 120 steps' losses, bit for bit (floats compared exactly)
    ckpts = sorted(p.name for p in run.glob("checkpoint_0*"))
    assert ckpts[-1] == "checkpoint_0000120"
    assert {"trainer.json", "rank_0.json", "rank_1.json", "rank_1_rng.pt"} <= {
        p.name for p in (run / ckpts[-1]).iterdir()
    }


def test_stages_and_schedule():
    cfg = load_config(TrainConfig, resolve_recipe("single-gpu"))
    assert [s.trainable for s in cfg.stages] == ["adapter", "adapter+vision", "all"]
    assert cfg.stage_at(0) == (0, 0) and cfg.stage_at(999) == (0, 0) and cfg.stage_at(1000) == (1, 1000)
    assert cfg.stage_at(cfg.total_steps - 1)[0] == 2
    # warmup restarts per stage, cosine ends at min_lr_ratio * lr
    assert lr_at(cfg, 0) < lr_at(cfg, 499) and lr_at(cfg, 1000) < lr_at(cfg, 1499)
    assert math.isclose(lr_at(cfg, 499), 1e-3)
    assert math.isclose(lr_at(cfg, cfg.total_steps - 1), 0.1 * cfg.optim.lr, rel_tol=1e-3)
    # progressive resolution: each stage's pixel budget, data.* where a stage sets none
    pre = load_config(TrainConfig, resolve_recipe("pretrain"))  # after `align` (224x224, adapter only)
    assert [s.trainable for s in pre.stages] == ["adapter+vision", "all"]
    assert [(pre.stage_data(i).min_pixels, pre.stage_data(i).max_pixels) for i in range(2)] == [
        (112 * 112, 448 * 448),
        (224 * 224, 896 * 896),
    ]
    assert cfg.stage_data(0) is cfg.data
    align = load_config(TrainConfig, resolve_recipe("align"))
    assert [s.trainable for s in align.stages] == ["adapter"]
    assert (align.stage_data(0).min_pixels, align.stage_data(0).max_pixels) == (112 * 112, 224 * 224)
    # run.max_steps stops an invocation early without touching the stages or their schedule
    early = load_config(TrainConfig, resolve_recipe("align"), ["run.max_steps=20"])
    assert (early.last_step, early.total_steps, align.last_step) == (20, 2000, 2000)
    assert early.stages == align.stages and lr_at(early, 19) == lr_at(align, 19)

    from train.model import VLM

    small = load_config(TrainConfig, resolve_recipe("debug-cpu"))
    model = VLM(small.model)
    n_adapter = model.set_trainable("adapter")
    n_vision = model.set_trainable("adapter+vision")
    n_all = model.set_trainable("all")
    assert 0 < n_adapter < n_vision < n_all == sum(p.numel() for p in model.parameters())


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no recipe of that name"):
        resolve_recipe("nope")
    with pytest.raises(ValueError, match="optim.lrr: unknown key"):
        load_config(TrainConfig, resolve_recipe("debug-cpu"), ["optim.lrr=1"])
    with pytest.raises(ValueError, match=r"stages\[0\]: min_pixels=8192 > max_pixels=4096"):
        load_config(TrainConfig, resolve_recipe("debug-cpu"), ['stages=[{"steps": 2, "min_pixels": 8192}]'])
    with pytest.raises(ValueError, match="data.corpus is empty"):
        run_training(load_config(TrainConfig, resolve_recipe("debug-cpu"), [f"run.output={tmp_path}"]))
    from pipeline.cli import build_parser
    from pipeline.cli.train import resolve_config

    def resolve(*argv: str) -> TrainConfig:
        return resolve_config(build_parser().parse_args(["train", "pretrain", "--output", str(tmp_path), *argv]))

    with pytest.raises(ValueError, match="--init-from brings the whole model"):
        resolve("--init-from", str(tmp_path), "--init-llm", str(tmp_path))
    with pytest.raises(ValueError, match="neither a checkpoint"):
        resolve("--init-from", str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="run.max_steps"):
        resolve("--max-steps", "0")
    with pytest.raises(ValueError, match=r"image_std=\[0.5, 0.0, 0.5\]"):
        resolve("--set", "data.image_std=[0.5, 0, 0.5]")


@pytest.mark.slow
def test_fsdp2_run_resumes_bit_identically_on_ray(ray_local, corpus, tmp_path):
    """The FSDP2 path end to end on Ray Train (gloo, CPU): sharded DCP checkpoints save and load, and a worker
    killed after the step-2 checkpoint is restarted by Ray and reproduces the uninterrupted losses."""
    short = ["parallel.data_parallel=fsdp", "stages=[{trainable: all, steps: 4}]", "run.checkpoint_every=2"]
    reference = tmp_path / "reference"
    run_training(config(corpus, reference, *short))
    run = tmp_path / "killed"
    run_training(config(corpus, run, *short, "run.fail_at_step=2", "run.max_failures=1"))
    assert (run / "injected_failure_2.done").exists()
    assert sorted(losses(run)) == [1, 2, 3, 4] and losses(run) == losses(reference)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) and r["label_tokens"] > 0 for r in rows)


@pytest.mark.parametrize(
    "setting,shown",
    [
        ("data.batch_size=0", "data.batch_size: Input should be greater than or equal to 1"),
        ("data.seq_len=1", "data.seq_len: Input should be greater than or equal to 2"),
        ("data.poll_s=0", "data.poll_s: Input should be greater than 0"),
        ("optim.beta2=1.5", "optim.beta2: Input should be less than 1"),
        ("optim.lr=-1", "optim.lr: Input should be greater than or equal to 0"),
        ("model.moe.n_experts=0", "model.moe.n_experts: Input should be greater than or equal to 1"),
        ("model.vision.patch_size=0", "model.vision.patch_size: Input should be greater than or equal to 1"),
        ("model.norm_eps=0", "model.norm_eps: Input should be greater than 0"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(setting, shown):
    """Values no run can use are config errors before Ray starts (data.batch_size=0 failed inside the Ray
    workers; data.seq_len=1 ran to the end on rows of one token, which have nothing to predict)."""
    with pytest.raises(ValueError, match=shown) as e:
        load_config(TrainConfig, resolve_recipe("debug-cpu"), [setting])
    assert "\n" not in str(e.value)
