"""`--val-corpus`, `interloom eval` and `interloom generate` on a real (tiny) trained run: a few steps of
debug-cpu on 2 Ray workers over a corpus of real articles and photos (tests/_train_corpus.py), with a
held-out corpus of other documents; then the run directory and its export are evaluated and decoded from."""

from __future__ import annotations

import json
import math

import pytest

from corpus.config import load_config
from pipeline.cli import main
from tests._train_corpus import PHOTOS, build_corpus, require_real
from train.config import TrainConfig, resolve_recipe
from train.trainer import run_training


@pytest.fixture(scope="module")
def trained(ray_local, tmp_path_factory):
    """(run dir, held-out corpus): 4 steps of debug-cpu (shaped as qwen3_moe), val losses at steps 2 and 4;
    FSDP2 (gloo): the evaluation's forwards all-gather on every rank, so a rank that skipped one would hang."""
    require_real()
    root = tmp_path_factory.mktemp("evalrun")
    train = build_corpus(root / "train", [6, 6])
    val = build_corpus(root / "val", [4], start=40)
    cfg = load_config(
        TrainConfig,
        resolve_recipe("debug-cpu"),
        [
            f"data.corpus={train}",
            f"run.output={root / 'run'}",
            "run.log_every=1",
            "stages=[{trainable: all, steps: 4}]",
            "run.checkpoint_every=4",
            "optim.warmup_steps=1",
            f"run.val_corpus={val}",
            "run.eval_every=2",
            "run.eval_batches=2",
            "parallel.data_parallel=fsdp",
            "model.qk_norm=true",
            "model.moe.n_shared_experts=0",
        ],
    )  # = qwen3_moe: exportable
    run_training(cfg)
    return root / "run", val


def test_val_losses_in_metrics_and_tensorboard(trained):
    run, _ = trained
    rows = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert sorted(rows) == [1, 2, 3, 4]
    assert "val_lm_loss" not in rows[1] and "val_lm_loss" not in rows[3]
    for s in (2, 4):
        r = rows[s]
        assert r["val_image_text_tokens"] > 0 and r["val_tokens"] > r["val_image_text_tokens"]
        assert all(math.isfinite(r[k]) for k in ("val_lm_loss", "val_image_text_loss", "val_text_loss"))
        n_txt = r["val_tokens"] - r["val_image_text_tokens"]
        mixed = (r["val_image_text_loss"] * r["val_image_text_tokens"] + r["val_text_loss"] * n_txt) / r["val_tokens"]
        assert r["val_lm_loss"] == pytest.approx(mixed)
    assert rows[2]["val_tokens"] == rows[4]["val_tokens"]  # the same held-out batches each time
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val_image_text_loss")] == [2, 4]


def test_eval_prints_losses_and_recall(trained, capsys):
    run, val = trained
    assert main(["eval", str(run), "--corpus", str(val), "--batches", "2"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["val_image_text_tokens"] > 0 and math.isfinite(row["val_image_text_loss"])
    assert row["val_image_text_loss_noise_images"] != row["val_image_text_loss"]
    assert row["retrieval_pairs"] > 0
    for k in ("recall@1_image_to_text", "recall@5_image_to_text", "recall@1_text_to_image"):
        assert 0.0 <= row[k] <= 1.0
    assert row["recall@5_image_to_text"] >= row["recall@1_image_to_text"]


def test_generate_from_run_and_export(trained, capsys, tmp_path):
    run, val = trained
    photo = str(sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[0])
    args = [
        "generate",
        str(run),
        "--image",
        photo,
        "--prompt",
        "A photo: <image> It shows",
        "--json",
        "--max-new-tokens",
        "8",
    ]
    assert main(args) == 0
    a = json.loads(capsys.readouterr().out)
    assert 1 <= len(a["token_ids"]) <= 8 and isinstance(a["text"], str)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == a  # greedy: deterministic
    assert main(args + ["--temperature", "1.0", "--top-p", "0.9", "--seed", "3"]) == 0
    capsys.readouterr()

    out = tmp_path / "exported"
    assert main(["export", "model", str(run), str(out)]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), *args[2:]]) == 0
    assert json.loads(capsys.readouterr().out) == a  # the exported model decodes the same
    assert main(["eval", str(out), "--corpus", str(val), "--batches", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["val_tokens"] > 0


def test_eval_every_must_be_a_multiple_of_log_every(tmp_path):
    with pytest.raises(ValueError, match="eval_every=3 must be a multiple of run.log_every=2"):
        load_config(
            TrainConfig,
            resolve_recipe("debug-cpu"),
            [f"run.val_corpus={tmp_path}", "run.log_every=2", "run.eval_every=3"],
        )


def test_generate_errors_are_clear(trained, capsys):
    run, _ = trained
    assert main(["generate", str(run), "--prompt", "two <image> <image>", "--image", str(next(PHOTOS.iterdir()))]) == 2
    assert "2 <image> mark(s) but 1 image(s)" in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt", "x", "--image", "/nonexistent.jpg"]) == 2
    assert "no such file" in capsys.readouterr().err
