"""The GPU check (bench/gpu.py) runs as it is: its --dry-run on tiny shapes on CPU goes through every
section -- the recipe through the trainer's FSDP2 bf16 path, the MoE and attention comparisons (raw kernels
and the model's own backends), the 2-process FSDP2 step (gloo here) -- and writes the JSON and the table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_section(tmp_path):
    out = tmp_path / "gpu-check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--dry-run", "--steps", "4", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(out.read_text())
    failed = {k: v.get("error") for k, v in report["sections"].items() if not v["ok"]}
    assert proc.returncode == 0 and report["ok"], (failed, proc.stderr[-3000:])
    s = report["sections"]
    assert s["environment"]["dry_run"] and s["environment"]["peak_assumed"]
    r = s["recipe"]
    assert r["dtype"] == "bfloat16" and len(r["losses"]) == 4 and all(map(math.isfinite, r["losses"]))
    assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and r["loss_falling"]
    assert any("scaled_dot_product" in k or "flex" in k for k in r["attention_kernels"])
    assert len(s["moe"]["shapes"]) == 2 and all(row["ours_ms"] > 0 for row in s["moe"]["shapes"])
    assert s["attention"]["flex_max_abs_diff_vs_dense"] < 1e-4  # the block mask masks what the dense mask does
    backends = s["attention_backends"]["cases"]  # the model's backends, checked against dense before timing
    assert [c["case"].split()[0] for c in backends] == ["decoder", "vit"]
    assert all(c["dense_ms"] > 0 and c["varlen_ms"] > 0 for c in backends)
    f = s["fsdp2"]
    assert f["backend"] == "gloo" and len(f["ranks"]) == 2
    assert all(len(rank["losses"]) == 3 and all(map(math.isfinite, rank["losses"])) for rank in f["ranks"])
    assert "| check | result |" in proc.stdout and "FSDP2 2 processes (gloo)" in proc.stdout
