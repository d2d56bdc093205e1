"""The build and the trainer on a real multi-node Ray cluster (a head and a worker node started with
`ray start` as separate processes on one machine, tests/_raycluster.py), driven through the
`interloom` command line with --address, and the faults a cluster has: a worker node lost in the middle of a
build (replaced by a new node, as KubeRay or the autoscaler does), and a training worker killed mid-run with
the checkpoints on S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _raycluster import LocalCluster
from _s3server import BUCKET, S3Server
from _train_corpus import build_corpus as build_train_corpus
from _train_corpus import require_real
from conftest import REPO, real_path

from corpus.format import Corpus

pytestmark = pytest.mark.slow

SETTINGS = [
    "images.min_side=32",
    "images.max_aspect=8",
    "extract.timeout_s=300",
    "filters.gopher_quality.enabled=false",
    "filters.gopher_repetition.enabled=false",
    "filters.c4.enabled=false",
    "filters.fineweb.enabled=false",
    "filters.image_count.min_images=0",
]
INPUTS = [
    "IAH-urls-wget.warc.gz",
    "example-iana.org-chunked.warc",
    "example.warc.gz",
    "warcfile.warc.gz",
    "whirlwind.warc.gz",
]


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3):
    c = LocalCluster(env=s3.env())
    try:
        c.start_head(num_cpus=1)
        c.add_worker(num_cpus=1)
        yield c
    finally:
        c.shutdown()
    assert c.pids() == [], "every process of the test cluster is gone"


def _interloom(cluster: LocalCluster, *args: str) -> subprocess.Popen:
    # RAY_DEDUP_LOGS=0: Ray folds log lines that differ only in numbers ("step=0/40", "step=20/40") into one
    env = {**cluster.client_env(), "RAY_DEDUP_LOGS": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _build(cluster: LocalCluster, out: Path) -> subprocess.Popen:
    d = real_path("dev", "warc")
    args = ["build", "--no-progress", "--address", cluster.address, "--workers", "2", "--output", str(out)]
    for s in SETTINGS:
        args += ["--set", s]
    for name in INPUTS:
        args += ["--input", str(d / name)]
    return _interloom(cluster, *args)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"timed out:\n{log[-4000:]}")
    assert proc.returncode == 0, log[-30000:]
    return log


@pytest.fixture(scope="module")
def cluster_corpus(cluster, tmp_path_factory):
    """An uninterrupted build on the two-node cluster."""
    out = tmp_path_factory.mktemp("cluster") / "corpus"
    log = _finish(_build(cluster, out))
    assert "documents in" in log
    return out


def test_build_on_a_two_node_cluster(cluster_corpus):
    corpus = Corpus(cluster_corpus)
    stats = json.loads((cluster_corpus / "stats.json").read_text())
    assert stats["build"]["units"] == len(INPUTS)
    assert sum(s.documents for s in corpus.shards()) == stats["stages"][-1]["out"] > 0
    ids = [d.id for d in corpus.iter_documents()]
    assert len(ids) == len(set(ids))


def test_worker_node_lost_mid_build_then_replaced_gives_the_same_corpus(cluster, cluster_corpus, tmp_path):
    out = tmp_path / "corpus"
    proc = _build(cluster, out)
    t0 = time.time()
    # phase 1 is under way on both nodes once the first unit is done: the worker node dies then
    while not list(out.glob("_work/units/*/DONE.json")):
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.time() - t0 < 300, "no unit finished in 300 s"
        time.sleep(0.1)
    lost = cluster.workers[-1]
    assert cluster.kill_node(lost) > 0
    done_at_kill = len(list(out.glob("_work/units/*/DONE.json")))
    assert done_at_kill < len(INPUTS), "the node died while units were still to do"
    # a new node joins (KubeRay/the autoscaler replace a lost pod); the unit actor that lived on the lost node
    # restarts there and its unit is run again
    cluster.add_worker(num_cpus=1)
    log = _finish(proc)
    assert (out / "manifest.jsonl").read_bytes() == (cluster_corpus / "manifest.jsonl").read_bytes()
    stats = json.loads((out / "stats.json").read_text())
    ref = json.loads((cluster_corpus / "stats.json").read_text())
    assert stats["stages"] == ref["stages"] and stats["items"] == ref["items"]
    assert not list(out.rglob("*.tmp")), "no partial file left"
    assert "documents in" in log


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def _train(cluster: LocalCluster, corpus: Path, run: Path, *overrides: str) -> str:
    args = [
        "train",
        "debug-cpu",
        "--address",
        cluster.address,
        "--corpus",
        str(corpus),
        "--output",
        str(run),
        "--set",
        "stages=[{trainable: all, steps: 40}]",
        "--set",
        "run.checkpoint_every=20",
        "--set",
        "run.log_every=1",
        "--set",
        "optim.warmup_steps=5",
    ]
    for o in overrides:
        args += ["--set", o]
    return _finish(_interloom(cluster, *args))


def test_training_on_the_cluster_resumes_from_s3_checkpoints_after_a_worker_dies(cluster, s3, tmp_path):
    require_real()
    corpus = build_train_corpus(tmp_path / "corpus", [6, 4, 5, 3])
    reference = tmp_path / "reference"
    _train(cluster, corpus, reference)
    # the same run with its checkpoints on S3; the last rank dies hard right after the step-20 checkpoint
    run = tmp_path / "s3run"
    log = _train(cluster, corpus, run, f"run.storage=s3://{BUCKET}/runs", "run.fail_at_step=20", "run.max_failures=1")
    assert (run / "injected_failure_20.done").exists(), "the worker was killed"
    starts = re.findall(r"\[train\] world=2 device=cpu step=(\d+)/40", log)
    runs = [s for i, s in enumerate(starts) if i == 0 or starts[i - 1] != s]  # a start may be logged twice
    assert runs == ["0", "20"], f"the restarted workers resume at the step-20 checkpoint: {starts}"
    assert _losses(run) == _losses(reference)  # every step's loss, bit for bit
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="runs/s3run/")["Contents"]}
    for step in (20, 40):
        assert f"runs/s3run/checkpoint_{step:07d}/trainer.json" in keys
        assert f"runs/s3run/checkpoint_{step:07d}/rank_1.json" in keys
    assert not list(run.glob("checkpoint_*")), "checkpoints went to S3, not next to the logs"
