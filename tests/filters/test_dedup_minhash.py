"""MinHash internals: vectorised path == plain-Python reference; estimates track true Jaccard; keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from filters.dedup.minhash import (
    MinHasher,
    estimate_jaccard,
    shingle_hash_reference,
    shingles_reference,
)
from filters.dedup.text import is_cjk, normalize_codepoints, normalize_text, normalize_url, text_hash

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
GROUND_TRUTH = REAL / "dev" / "html" / "scrapinghub" / "ground-truth.json"


def _articles() -> list[str]:
    if not GROUND_TRUTH.is_file():
        pytest.skip("../shared/data/real not present: scrapinghub ground-truth.json is needed")
    gt = json.loads(GROUND_TRUTH.read_text(encoding="utf-8"))
    return [v["articleBody"] for _, v in sorted(gt.items()) if len(v["articleBody"].split()) >= 150]


def test_normalisation():
    assert normalize_text("  Hello,  WORLD!\n\n«Ça» — va?  ") == "hello world ça va"
    assert normalize_text("!!! ... ") == ""
    assert text_hash("") is None
    assert text_hash(normalize_text("The cat; sat.")) == text_hash(normalize_text("the   CAT sat"))
    assert text_hash(normalize_text("the cat sat")) != text_hash(normalize_text("the cat sat down"))


def test_url_normalisation():
    same = [
        "https://www.Example.com/a/b/?utm_source=x&b=2&a=1#top",
        "http://example.com/a/b?a=1&b=2",
        "https://example.com:443/a//b?a=1&b=2&fbclid=zz",
    ]
    assert len({normalize_url(u) for u in same}) == 1
    assert normalize_url("https://example.com/a/b?a=2&b=2") != normalize_url(same[0])
    assert normalize_url("https://example.com:8080/a") != normalize_url("https://example.com/a")
    assert normalize_url("") is None


def test_cjk_detection():
    assert is_cjk("这是一个关于机器学习的中文句子。")
    assert is_cjk("anything", "ja")
    assert not is_cjk("An English sentence with one 字.")


def test_vectorised_equals_reference_on_real_text():
    mh = MinHasher(bands=14, rows=8, ngram=5, seed=7)
    texts = _articles()[:6] + ["这是一个关于机器学习的中文句子，我们在这里测试字符级别的切分。", "two words", ""]
    for text in texts:
        cjk = is_cjk(text)
        norm = normalize_text(text)
        ref_shingles = shingles_reference(norm, 5, cjk)
        got = mh.shingle_hashes(normalize_codepoints(text), cjk)
        assert got.tolist() == sorted({shingle_hash_reference(s, mh.salt) for s in ref_shingles})
        assert np.array_equal(mh.signature(got), mh.signature_reference(ref_shingles))
    # batch of many documents == one by one
    sets = [mh.shingle_hashes_of_text(t) for t in texts]
    batch = mh.signatures(sets)
    for i, s in enumerate(sets):
        assert np.array_equal(batch[i], mh.signature(s))


def test_same_seed_same_signature_other_seed_differs():
    text = _articles()[0]
    a = MinHasher(seed=1).signatures_of_texts([text])
    assert np.array_equal(a, MinHasher(seed=1).signatures_of_texts([text]))
    assert not np.array_equal(a, MinHasher(seed=2).signatures_of_texts([text]))


def test_estimated_jaccard_tracks_true_jaccard():
    arts = _articles()
    mh = MinHasher(bands=16, rows=16, ngram=5, seed=3)  # 256 permutations: std <= 0.031
    errors = []
    for k, frac in enumerate(np.linspace(0.0, 1.0, 11)):
        a_words = normalize_text(arts[k]).split()
        b_words = normalize_text(arts[k + 20]).split()
        cut = int(len(a_words) * frac)
        mixed = " ".join(a_words[:cut] + b_words[: len(a_words) - cut])
        sa = set(shingles_reference(" ".join(a_words), 5, False))
        sb = set(shingles_reference(mixed, 5, False))
        true = len(sa & sb) / len(sa | sb)
        sig = mh.signatures_of_texts([" ".join(a_words), mixed])
        est = float(estimate_jaccard(sig[0], sig[1]))
        errors.append(abs(est - true))
        assert abs(est - true) < 0.12, (frac, true, est)
    assert np.mean(errors) < 0.04


def test_band_hashes_agree_exactly_when_rows_agree():
    mh = MinHasher(bands=4, rows=2, seed=1)
    sig = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 9, 4, 5, 6, 0, 8]], dtype=np.uint32)
    bands = mh.band_hashes(sig)
    assert (bands[0] == bands[1]).tolist() == [True, False, True, False]
    assert len(set(mh.band_hashes(np.zeros((1, 8), np.uint32))[0].tolist())) == 4  # band index is salted


def test_short_documents_densified_estimates_track_jaccard():
    # 40 words = 36 shingles for 112 bins: most bins are empty and borrow a value (densification)
    arts = _articles()
    mh = MinHasher(bands=14, rows=8, ngram=5, seed=5)
    signed = []
    for k, frac in enumerate(np.linspace(0.0, 1.0, 41)):
        a_words = normalize_text(arts[k % len(arts)]).split()[:40]
        b_words = normalize_text(arts[(k + 7) % len(arts)]).split()
        cut = int(len(a_words) * frac)
        mixed = a_words[:cut] + b_words[: len(a_words) - cut]
        sa = set(shingles_reference(" ".join(a_words), 5, False))
        sb = set(shingles_reference(" ".join(mixed), 5, False))
        true = len(sa & sb) / len(sa | sb)
        sig = mh.signatures_of_texts([" ".join(a_words), " ".join(mixed)])
        assert len(set(sig[0].tolist())) <= len(sa)  # every value is the hash of one of its shingles
        signed.append(float(estimate_jaccard(sig[0], sig[1])) - true)
    signed = np.array(signed)
    assert abs(signed.mean()) < 0.03, signed.mean()  # unbiased
    assert np.sqrt((signed**2).mean()) < 0.07  # ~ sqrt(J(1-J)/112) <= 0.047 expected


def test_signatures_refuse_unsorted_shingle_hashes():
    mh = MinHasher(bands=2, rows=2)
    with pytest.raises(ValueError, match="sorted and unique"):
        mh.signatures([np.array([5, 3], dtype=np.uint64)])
    assert mh.signatures([np.empty(0, np.uint64)]).tolist() == [[0xFFFFFFFF] * 4]
