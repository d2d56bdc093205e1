"""Tokenizer: trained on a real corpus, special tokens first, round trip, no placeholder injection, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _train_corpus import articles, build_corpus, require_real

from train.batch import SPECIAL_TOKENS
from train.tokenizer import Tokenizer, train_from_corpus, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    require_real()
    return build_corpus(tmp_path_factory.mktemp("tok") / "corpus", [4, 3], images_per_doc=1)


def test_train_save_load_round_trip(corpus, tmp_path):
    tok = train_from_corpus(corpus, tmp_path / "tokenizer.json", vocab_size=600)
    assert 256 + len(SPECIAL_TOKENS) < tok.vocab_size <= 600
    again = Tokenizer.load(tmp_path / "tokenizer.json")
    assert [again.hf.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    text = articles()[0][:400]
    ids = again.encode(text)
    assert again.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8"))  # merges learned from the corpus compress its text
    assert not set(ids) & again.special_ids


def test_special_token_text_is_not_a_placeholder():
    tok = train_tokenizer(["plain words " * 50], vocab_size=300)
    ids = tok.encode("before <|image|> after <|eos|>")
    assert tok.image_id not in ids and tok.eos_id not in ids
    assert tok.decode(ids) == "before <|image|> after <|eos|>"


def test_unknown_bytes_encode(tmp_path):
    tok = train_tokenizer(["abc abc abc"], vocab_size=300)
    text = "emoji \U0001f600 and Ünïcödé"
    assert tok.decode(tok.encode(text)) == text


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="must exceed"):
        train_tokenizer(["x"], vocab_size=100)
    with pytest.raises(ValueError, match="not found"):
        Tokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        Tokenizer.load(tmp_path / "bad.json")


def test_cli(corpus, tmp_path):
    out = tmp_path / "t.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "tokenizer",
            "train",
            str(corpus),
            "--output",
            str(out),
            "--vocab-size",
            "500",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert Tokenizer.load(out).vocab_size <= 500
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "tokenizer", "train", str(tmp_path / "nope"), "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "not a corpus" in r.stderr
