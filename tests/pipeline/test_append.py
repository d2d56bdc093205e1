"""`interloom build --append` on the real dev WARCs, on a real local Ray instance: build the first half of
the files, append the second half, and compare with the fresh build of all of them (the session's
`dev_corpus`)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from itertools import islice
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import DEV_SETTINGS, REPO, dev_warcs

from corpus.config import load_config
from corpus.format import Corpus
from corpus.record import documents_to_staged_table
from filters.dedup import run_dedup
from pipeline.build import BuildConfig, build_corpus
from train.data.read import SlotState, slot_documents

pytestmark = pytest.mark.slow


def _hashes(root: Path, *folders: str) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted((root / folder).glob("*"))
    }


def _corpus_bytes(out: Path) -> dict[str, bytes]:
    files = [out / "manifest.jsonl", *sorted((out / "shards").glob("*")), *sorted((out / "index").glob("*"))]
    return {str(f.relative_to(out)): f.read_bytes() for f in files}


def test_append_dedups_against_the_corpus_and_equals_a_fresh_build(dev_corpus, tmp_path, ray_local):
    """build(A) then append(B) (A: the first half of the dev WARCs in path order, B: the rest):
    - every old shard, index and rejects file is byte-untouched, the manifest only gains lines;
    - no pair of documents, old or new, is a duplicate by the build's own rules (its dedup passes over the
      appended corpus remove nothing);
    - the corpus is byte for byte the fresh build over A+B: A's files sort first (same shard numbers) and
      the one duplicate across the halves (http://www.iana.org/, in example-iana.org-chunked.warc of A,
      fetched 2017, and in iana.warc.gz of B, fetched 2014) is kept from A by both; the append decides it
      before parsing (url_rules duplicate_url), the fresh build in global dedup;
    - the funnel covers the whole corpus; a second append of B adds nothing and says so;
    - `interloom inspect` and the train loader read the appended corpus."""
    warcs = dev_warcs()
    a, b = warcs[: len(warcs) // 2], warcs[len(warcs) // 2 :]
    assert any("example-iana.org-chunked" in p for p in a) and any(p.endswith("/iana.warc.gz") for p in b)
    cfg = load_config(BuildConfig, None, ["ray.workers=2", *DEV_SETTINGS])
    out = tmp_path / "corpus"
    first = build_corpus(a, out, cfg, progress=False)
    old = _hashes(out, "shards", "index", "rejects")
    old_manifest = (out / "manifest.jsonl").read_bytes()

    stats = build_corpus(b, out, cfg, progress=False, append=True)
    assert {k: v for k, v in _hashes(out, "shards", "index", "rejects").items() if k in old} == old
    assert (out / "manifest.jsonl").read_bytes().startswith(old_manifest)
    stages = {s["name"]: s for s in stats["stages"]}
    assert stages["url_rules"]["drops"] == {"duplicate_url": 1}
    assert stats["build"]["appended"] == {"units": len(b), "units_already_in_corpus": 0}
    added = stats["build"]["documents"] - first["build"]["documents"]
    assert added > 10 and stats["build"]["notes"][0] == f"appended {len(b)} inputs: {added} documents added"

    fresh, fresh_stats = dev_corpus
    assert _corpus_bytes(out) == _corpus_bytes(fresh)
    # the same funnel, but for the duplicate: url_rules (append) instead of dedup (fresh build)
    assert stages["read"] == next(s for s in fresh_stats["stages"] if s["name"] == "read")
    assert stages["dedup"]["drops"]["duplicate_exact"] == 49 and "duplicate_url" not in stages["dedup"]["drops"]

    docs = list(Corpus(out).iter_documents(with_images=False))
    assert len({d.id for d in docs}) == len(docs) == stats["build"]["documents"]
    pq.write_table(documents_to_staged_table(docs), tmp_path / "all.parquet")
    check = run_dedup([str(tmp_path / "all.parquet")], str(tmp_path / "check"), cfg.dedup, None, progress=False)
    assert check.removed == {} and check.counts["documents"] == len(docs)

    info = json.loads((out / "build.json").read_text())
    assert [u["path"] for u in info["units"]] == warcs and len(info["appends"]) == 1
    assert "appending" not in info and not (out / "_work").exists()

    corpus_before = _corpus_bytes(out)
    again = build_corpus(b, out, cfg, progress=False, append=True)
    assert again["build"]["appended"] == {"units": 0, "units_already_in_corpus": len(b)}
    assert again["build"]["notes"] == [
        f"nothing to add: all {len(b)} inputs are already in the corpus (units_already_in_corpus)"
    ]
    assert _corpus_bytes(out) == corpus_before

    summary = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "inspect", str(out), "--json", "--output", str(tmp_path / "report")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert summary.returncode == 0, summary.stderr
    assert json.loads(summary.stdout)["totals"]["documents"] == len(docs)
    read = slot_documents(
        Corpus(out), 0, 1, 0, 0, False, 0.05, SlotState(n_shards=len(Corpus(out).shards())), Counter()
    )
    assert Counter(doc.id for _, doc in islice(read, len(docs))) == Counter(d.id for d in docs)


def test_append_refuses_another_config_and_an_unfinished_corpus(dev_corpus, tmp_path):
    """An append runs with the corpus's own config (inputs and ray aside): another value is refused naming
    the key; a folder without a finished corpus is refused before anything runs."""
    fresh, _ = dev_corpus
    warc = dev_warcs()[:1]
    cfg = load_config(BuildConfig, None, ["ray.workers=2", *DEV_SETTINGS, "images.min_side=64", "input.anon=true"])
    with pytest.raises(ValueError, match=r"images\.min_side: 32 -> 64") as err:
        build_corpus(warc, fresh, cfg, progress=False, append=True)
    assert "input.anon" not in str(err.value)
    with pytest.raises(ValueError, match="holds no corpus"):
        build_corpus(warc, tmp_path / "empty", cfg, progress=False, append=True)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "build.json").write_text(json.dumps({"config": {}, "finished_at": None}))
    with pytest.raises(ValueError, match="has not finished"):
        build_corpus(warc, tmp_path / "half", cfg, progress=False, append=True)
