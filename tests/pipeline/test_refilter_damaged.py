"""`interloom refilter` of a corpus whose build.json or stats.json is missing or damaged: one line naming the
file, exit 2, and no output written. Each corpus is written by the test (no Ray)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from corpus.config import dump_config
from corpus.format import append_manifest, write_shards
from pipeline.build import BuildConfig
from pipeline.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_corpus import _docs  # noqa: E402


def _corpus(root: Path) -> None:
    docs = _docs(3)
    for d, score in zip(docs, (0.7, 0.9, 0.95), strict=True):
        d.signals["lang_score"] = score
    append_manifest(root, write_shards(docs, root, "part-00000", unit="u"))
    info = {"config": dump_config(BuildConfig()), "units": [{"name": "u"}], "finished_at": "2026-01-01"}
    (root / "build.json").write_text(json.dumps(info))
    (root / "stats.json").write_text(json.dumps({"stages": [], "items": {}, "build": {"documents": 3}}))


def _edit_build(root: Path, **fields) -> None:
    (root / "build.json").write_text(json.dumps(json.loads((root / "build.json").read_text()) | fields))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _parquet(path: Path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: pa.array(v, pa.int64() if k == "size" else None) for k, v in columns.items()}), path)


DAMAGES = {
    "no build.json": (lambda r: (r / "build.json").unlink(), "build.json is missing: not a corpus finished by"),
    "build.json not JSON": (
        lambda r: (r / "build.json").write_text("{"),
        "the corpus is damaged: " + "{corpus}/build.json: not JSON (Expecting",
    ),
    "build.json a list": (lambda r: (r / "build.json").write_text("[]"), "build.json is damaged: a JSON list"),
    "config of wrong type": (
        lambda r: (r / "build.json").write_text(
            json.dumps({"finished_at": "x", "config": {"images": {"min_side": "a"}}})
        ),
        "build.json is damaged: its invalid config (defaults): images.min_side: Input should be a valid integer",
    ),
    "units not a list": (
        lambda r: (r / "build.json").write_text(json.dumps({"finished_at": "x", "config": {}, "units": 5})),
        "build.json is damaged: 'units' is not a list",
    ),
    "units named twice": (
        lambda r: _edit_build(r, units=[{"name": "u"}, {"name": "u"}]),
        "build.json is damaged: 'units' names a unit twice or not by a string",
    ),
    "unit named by a number": (
        lambda r: _edit_build(r, units=[{"name": 5}]),
        "build.json is damaged: 'units' names a unit twice or not by a string",
    ),
    "shards of a unit build.json lacks": (
        lambda r: _edit_build(r, units=[{"name": "other"}]),
        "manifest.jsonl lists shards of unit 'u', which build.json's 'units' does not name",
    ),
    "clusters.parquet not Parquet": (
        lambda r: _write(r / "dedup" / "clusters.parquet", b"garbage"),
        "dedup/clusters.parquet is damaged: Could not open Parquet input source",
    ),
    "clusters.parquet without its columns": (
        lambda r: _parquet(r / "dedup" / "clusters.parquet", {"x": [1]}),
        "dedup/clusters.parquet is damaged: No match for FieldRef.Name(id)",
    ),
    "clusters.parquet with a null size": (
        lambda r: _parquet(r / "dedup" / "clusters.parquet", {"id": ["a"], "keeper": [True], "size": [None]}),
        "dedup/clusters.parquet is damaged: '>' not supported",
    ),
    "no stats.json": (lambda r: (r / "stats.json").unlink(), "stats.json is missing"),
    "stats.json without stages": (lambda r: (r / "stats.json").write_text("{}"), "stats.json is damaged: no 'stages'"),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_refilter_of_a_damaged_corpus_is_one_line_and_writes_nothing(tmp_path, capsys, name):
    corpus = tmp_path / "corpus"
    _corpus(corpus)
    damage, shown = DAMAGES[name]
    damage(corpus)
    out = tmp_path / "out"
    assert main(["refilter", str(corpus), "--set", "filters.language.min_score=0.8", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    shown = shown.format(corpus=corpus)
    assert "Traceback" not in err and err.count("\n") == 1 and shown in err, err
    assert not out.exists()


def test_the_undamaged_corpus_refilters(tmp_path):
    corpus = tmp_path / "corpus"
    _corpus(corpus)
    assert (
        main(["refilter", str(corpus), "--set", "filters.language.min_score=0.8", "--output", str(tmp_path / "o")]) == 0
    )
    assert json.loads((tmp_path / "o" / "stats.json").read_text())["build"]["documents"] == 2


def test_a_damaged_shard_stops_the_refilter_without_a_half_corpus(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    _corpus(corpus)
    shard = corpus / "shards" / "part-00000-0000.tar"
    shard.write_bytes(shard.read_bytes()[:1500])
    out = tmp_path / "out"
    assert main(["refilter", str(corpus), "--set", "filters.language.min_score=0.8", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "part-00000-0000.tar: not a readable tar stream" in err
    assert "nothing was written" in err and not out.exists()


def test_a_missing_shard_stops_the_refilter_without_a_half_corpus(tmp_path, capsys):
    """A manifest line whose shard file is gone: FileNotFoundError left --output holding index/ and shards/."""
    corpus = tmp_path / "corpus"
    _corpus(corpus)
    (corpus / "shards" / "part-00000-0000.tar").unlink()
    out = tmp_path / "out"
    assert main(["refilter", str(corpus), "--set", "filters.language.min_score=0.8", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "part-00000-0000.tar" in err and "No such file" in err
    assert "nothing was written" in err and not out.exists()
