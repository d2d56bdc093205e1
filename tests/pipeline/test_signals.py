"""Filters declare the signals they write and their thresholds; the build resolves them into build.json and
the report draws what build.json says, so a renamed config key reaches the report with no other edit."""

from __future__ import annotations

import json

from pydantic import create_model

from corpus.format import Corpus, append_manifest, write_shards
from corpus.record import Document, make_doc_id
from corpus.steps import Filter, Signal, at_least, at_most, resolve_signals
from filters.config import FiltersConfig, FilterSection
from filters.registry import DOCUMENT_STEPS, TEXT_STEPS, declared_signals
from pipeline.report.summary import summarize


def _fixture_filter(key: str):
    """A filter whose score threshold lives under config key `key` (the test renames it)."""
    config = create_model("FixtureConfig", __base__=FilterSection, **{key: (float, 0.4), "max_len": (int, 9)})

    class FixtureFilter(Filter):
        name = "fixture"
        signals = (Signal("fixture_score", at_least(key)), Signal("fixture_len", at_most("max_len")))

        def filter(self, doc):
            return True

    return config(), FixtureFilter


def _corpus_with_signals(root, build: dict) -> Corpus:
    docs = []
    for i in range(3):
        doc = Document(id=make_doc_id(f"test:{i}"), url=f"https://a.example/{i}", source=f"test:{i}", lang="en")
        doc.append_text(f"document {i} has a few words")
        doc.signals = {"fixture_score": 0.2 * i, "fixture_len": float(i)}
        docs.append(doc)
    append_manifest(root, write_shards(docs, root, "part"))
    (root / "build.json").write_text(json.dumps(build))
    return Corpus(root)


def test_renaming_a_threshold_key_in_a_filter_moves_the_report_line(tmp_path):
    for key in ("floor", "min_fixture_score"):
        section, step = _fixture_filter(key)
        build = {"signals": resolve_signals([("filters.fixture", section, step)])}
        summary, _, _ = summarize(_corpus_with_signals(tmp_path / key, build), sample=3, progress=False)
        assert summary["signals"]["fixture_score"]["thresholds"] == [
            {"value": 0.4, "kind": "min", "config": f"filters.fixture.{key}", "kept": 1, "cut": 2}
        ]
        assert summary["signals"]["fixture_len"]["thresholds"] == [
            {"value": 9.0, "kind": "max", "config": "filters.fixture.max_len", "kept": 3, "cut": 0}
        ]


def test_every_filter_threshold_names_a_real_config_key():
    """Each declared threshold resolves against the config (a typo in a key fails here)."""
    cfg = FiltersConfig.model_validate({"quality": {"model_path": "model.bin"}})
    signals = declared_signals(cfg)
    for name, thresholds in signals.items():
        for t in thresholds:
            section, key = t["config"].split(".")[1:3]
            assert key in type(getattr(cfg, section)).model_fields, (name, t)
    assert signals["gopher_n_words"] == [
        {"value": 50.0, "kind": "min", "config": "filters.gopher_quality.min_doc_words"},
        {"value": 100000.0, "kind": "max", "config": "filters.gopher_quality.max_doc_words"},
    ]
    assert signals["gopher_top_2_gram_char_frac"] == [
        {"value": 0.2, "kind": "max", "config": "filters.gopher_repetition.top_n_grams.2"}
    ]
    assert signals["quality_score"][0]["config"] == "filters.quality.threshold"
    assert all(cls.signals for _, cls in TEXT_STEPS + DOCUMENT_STEPS), "every filter writes signals"


def test_switched_off_rules_and_sections_draw_no_line():
    off = FiltersConfig.model_validate({"c4": {"min_num_sentences": -1}, "fineweb": {"enabled": False}})
    signals = declared_signals(off)
    assert signals["c4_n_sentences"] == [] and "c4_lines_kept_frac" in signals
    assert not any(s.startswith("fineweb_") for s in signals)
    assert "quality_score" not in declared_signals(FiltersConfig()), "no model: the quality filter is not built"
