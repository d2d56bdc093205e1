"""`interloom build --append` onto a damaged corpus is refused before anything is written, naming the damaged
file: build.json missing, not JSON or of the wrong shape; stats.json damaged; manifest lines damaged; shards
listed but missing. No Ray is started: each corpus is written by the test itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus.config import dump_config, load_config
from pipeline.build import BuildConfig, build_corpus
from pipeline.cli import main

SHARD = {"name": "part-00000-0000", "documents": 1, "images": 0, "bytes": 10, "sha256": "0" * 64, "unit": "a"}


def _corpus(root: Path, cfg: BuildConfig) -> None:
    """A finished corpus's bookkeeping: build.json with `cfg`, stats.json, a manifest of one shard, the shard."""
    (root / "shards").mkdir(parents=True)
    (root / "shards" / "part-00000-0000.tar").write_bytes(b"\0" * 10)
    (root / "manifest.jsonl").write_text(json.dumps(SHARD) + "\n")
    info = {"config": dump_config(cfg), "inputs": ["a.warc"], "units": [{"name": "a"}], "finished_at": "2026-01-01"}
    (root / "build.json").write_text(json.dumps(info))
    stats = {"build": {"documents": 1}, "stages": [{"name": "read", "in": 1, "out": 1, "drops": {}}]}
    (root / "stats.json").write_text(json.dumps(stats))


def _edit(name: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        data = json.loads((root / name).read_text())
        edit(data)
        (root / name).write_text(json.dumps(data))

    return damage


DAMAGES = {
    "build.json missing": (lambda r: (r / "build.json").unlink(), r"holds no corpus \(no build.json\)"),
    "build.json not JSON": (lambda r: (r / "build.json").write_text('{"config": '), r"build.json is damaged: not JSON"),
    "build.json not UTF-8": (lambda r: (r / "build.json").write_bytes(b"\xff{}"), r"build.json is damaged: not JSON"),
    "build.json a list": (lambda r: (r / "build.json").write_text("[]"), r"build.json is damaged: a JSON list"),
    "config a string": (_edit("build.json", lambda b: b.update(config="x")), r"build.json is damaged: 'config' is not"),
    "units not a list": (_edit("build.json", lambda b: b.update(units=3)), r"build.json is damaged: 'units' is not"),
    "unit without a name": (_edit("build.json", lambda b: b.update(units=[{}])), r"'units' is not a list of units"),
    "stats.json missing": (lambda r: (r / "stats.json").unlink(), r"stats.json is missing"),
    "stats.json not JSON": (lambda r: (r / "stats.json").write_text("{"), r"stats.json is damaged: not JSON"),
    "stats.json no funnel": (
        _edit("stats.json", lambda s: s.update(stages=[{"name": "read"}])),
        r"stats.json is damaged: not a build's funnel \(KeyError: 'in'\)",
    ),
    "manifest missing": (lambda r: (r / "manifest.jsonl").unlink(), r"manifest.jsonl is missing"),
    "manifest line damaged": (
        lambda r: (r / "manifest.jsonl").write_text(json.dumps(SHARD) + "\n" + '{"name": "part-0\n'),
        r"manifest.jsonl line 2 is damaged \(not a whole shard entry\)",
    ),
    "manifest line torn": (
        lambda r: (r / "manifest.jsonl").write_text(json.dumps(SHARD) + "\n" + json.dumps(SHARD)),
        r"manifest.jsonl line 2 is damaged",
    ),
    "manifest escapes": (
        lambda r: (r / "manifest.jsonl").write_text(json.dumps(SHARD | {"name": "../../x"}) + "\n"),
        r"manifest.jsonl line 1 is damaged",
    ),
    "dedup clusters not Parquet": (
        lambda r: (r / "dedup").mkdir() or (r / "dedup" / "clusters.parquet").write_bytes(b"PAR1 junk"),
        r"dedup/clusters.parquet is damaged: not a Parquet file",
    ),
    "dedup images without phash": (
        lambda r: (r / "dedup").mkdir() or pq.write_table(pa.table({"x": [1]}), r / "dedup" / "images.parquet"),
        r"dedup/images.parquet is damaged: no column 'phash'",
    ),
    "shard missing": (
        lambda r: (r / "shards" / "part-00000-0000.tar").unlink(),
        r"manifest.jsonl lists part-00000-0000, but .*shards/part-00000-0000.tar is missing",
    ),
}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_append_onto_a_damaged_corpus_is_refused_and_writes_nothing(tmp_path, name):
    cfg = load_config(BuildConfig, None, ["ray.workers=1"])
    corpus = tmp_path / "corpus"
    _corpus(corpus, cfg)
    damage, message = DAMAGES[name]
    damage(corpus)
    before = _files(corpus)
    new = tmp_path / "b.warc"
    new.write_bytes(b"")
    with pytest.raises(ValueError, match=message) as e:
        build_corpus([str(new)], corpus, cfg, progress=False, append=True)
    assert "\n" not in str(e.value)
    assert _files(corpus) == before and not (corpus / "_work").exists()


def test_cli_append_onto_a_damaged_corpus_is_one_line(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    _corpus(corpus, load_config(BuildConfig, None, []))
    (corpus / "build.json").write_text("not json")
    (tmp_path / "b.warc").write_bytes(b"")
    assert main(["build", "--input", str(tmp_path / "b.warc"), "--output", str(corpus), "--append"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and f"{corpus}/build.json is damaged: not JSON" in err


def test_resuming_a_build_with_a_damaged_build_json_names_it(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "build.json").write_text("{")
    (tmp_path / "a.warc").write_bytes(b"")
    with pytest.raises(ValueError, match=r"corpus/build.json is damaged: not JSON"):
        build_corpus([str(tmp_path / "a.warc")], corpus, load_config(BuildConfig, None, []), progress=False)
