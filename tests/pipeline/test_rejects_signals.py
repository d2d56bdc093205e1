"""Document drops record the signals that decided them (with the threshold) and a bounded, seeded sample of
their text per reason."""

from __future__ import annotations

import json

from corpus.record import Document, make_doc_id
from corpus.stats import TEXT_CHARS, TEXT_PER_REASON, Ledger, sample_key
from corpus.steps import run_steps
from filters.config import GopherQualityConfig
from filters.gopher import GopherQualityFilter


def _doc(i: int, text: str) -> Document:
    doc = Document(id=make_doc_id(f"t:{i}"), url=f"https://e.example/{i}", source=f"t:{i}", lang="en")
    doc.append_text(text)
    return doc


def test_gopher_drop_records_its_signal_threshold_and_text():
    ledger = Ledger()
    short = [_doc(i, "too short to keep " * (1 + i % 3) + "x" * 3000) for i in range(50)]
    kept = list(run_steps(short, [GopherQualityFilter(GopherQualityConfig())], ledger))
    assert kept == []
    rows = [r for r in ledger.rejects if r["reason"] == "gopher_too_few_words"]
    assert len(rows) == 50
    first = rows[0]
    assert json.loads(first["signals"])["gopher_n_words"] == 5  # "too short to keep" + the long x word
    # the detail names every signal past a threshold, with the threshold and its config key
    assert first["detail"].startswith("gopher_n_words=5 (min 50: min_doc_words; max 100000: max_doc_words), ")
    assert "gopher_stop_words=1 (min 2: min_stop_words)" in first["detail"]
    assert "gopher_alpha_words_ratio" not in first["detail"]  # within its threshold
    with_text = [r for r in rows if r["text"]]
    assert len(with_text) == TEXT_PER_REASON
    assert all(len(r["text"]) <= TEXT_CHARS for r in with_text) and with_text[0]["text"].startswith("too short")
    # the kept texts are the rows with the smallest keys of the seeded hash of their id
    smallest = sorted(rows, key=lambda r: r["key"])[:TEXT_PER_REASON]
    assert {r["id"] for r in with_text} == {r["id"] for r in smallest}
    assert all(r["key"] == sample_key(r["id"]) for r in rows)
    table = ledger.rejects_table()
    assert {"signals", "text", "key"} <= set(table.column_names)
