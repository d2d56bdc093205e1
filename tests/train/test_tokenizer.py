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
    tok, skipped = train_from_corpus(corpus, tmp_path / "tokenizer.json", vocab_size=600)
    assert skipped == []
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
    # --vocab-size 10**20 was an OverflowError traceback from tokenizers' trainer
    with pytest.raises(ValueError, match=r"vocab_size=100000000000000000000 is over 2,147,483,647"):
        train_tokenizer(["x"], vocab_size=10**20)
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


def _text_corpus(root: Path, names: list[str]) -> Path:
    from corpus.format import append_manifest, write_shards
    from corpus.record import Document, make_doc_id

    for name in names:
        docs = []
        for i in range(20):
            d = Document(id=make_doc_id(f"{name}#{i}"), url=f"https://ex.org/{name}/{i}", source=f"{name}#{i}")
            d.append_text(f"shard {name} says unique{name}token and more words {i} " * 10)
            docs.append(d)
        append_manifest(root, write_shards(docs, root, name))
    return root


def test_a_damaged_shard_is_skipped_and_named_not_the_end_of_training(tmp_path):
    """Like the training loader: one damaged shard of three costs its own documents only, and the CLI
    names it; a corpus with nothing readable is a one-line error."""
    corpus = _text_corpus(tmp_path / "c", ["a", "b", "d"])
    (corpus / "shards" / "b-0000.tar").write_bytes(b"\x01 not a tar " * 100)
    tok, skipped = train_from_corpus(corpus, tmp_path / "t.json", vocab_size=400)
    assert len(skipped) == 1 and "b-0000.tar" in skipped[0] and "not a readable tar" in skipped[0]
    # the shard after the damaged one was read (its word is learned), the damaged one's was not
    assert len(tok.encode(" uniquedtoken")) < len(tok.encode(" uniquebtoken"))
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "tokenizer", "train", str(corpus), "-o", str(tmp_path / "u.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "1 damaged shard(s) skipped" in r.stderr and "b-0000.tar: not a readable tar" in r.stderr

    for name in ("a", "d"):
        (corpus / "shards" / f"{name}-0000.tar").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no text to train a tokenizer on \(3 damaged shard\(s\) skipped"):
        train_from_corpus(corpus, tmp_path / "v.json", vocab_size=300)
