"""The fastText quality classifier, trained on real pages: main article text (gold) as positives,
boilerplate of the same pages (nav/footer/aside/menus, trafilatura's gold "without" snippets) as negatives;
held-out pages (whole sites) must be separated clearly better than chance. Also the example readers
(.txt, .jsonl, corpus directory), the `interloom quality train` subcommand and the filter step."""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import pickle
import zlib
from pathlib import Path

import pytest

from corpus.format import append_manifest, write_shards
from corpus.record import Document
from corpus.stats import Ledger
from corpus.steps import run_steps
from filters.config import QualityConfig
from filters.quality import QualityFilter, iter_examples, train_quality_model
from pipeline.cli import main as cli_main
from pipeline.cli.quality import register

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
HTML = REAL / "dev" / "html"
BOILERPLATE_XPATH = (
    "//nav | //footer | //aside | //header | //*[@role='navigation' or @role='contentinfo'] | "
    "//*[contains(@class,'menu') or contains(@class,'nav') or contains(@class,'footer') or "
    "contains(@class,'sidebar') or contains(@class,'share') or contains(@class,'social') or "
    "contains(@class,'cookie') or contains(@class,'related') or contains(@class,'breadcrumb') or "
    "contains(@id,'menu') or contains(@id,'nav') or contains(@id,'footer') or contains(@id,'sidebar')]"
)


def _boilerplate_text(raw: bytes) -> str:
    """Text of the navigation / footer / sidebar / sharing elements of a page, one line per element."""
    import lxml.html

    tree = lxml.html.fromstring(raw)
    for bad in tree.xpath("//script | //style | //noscript"):
        bad.drop_tree()
    parts = []
    for el in tree.xpath(BOILERPLATE_XPATH):
        text = " ".join(el.text_content().split())
        if 3 <= len(text.split()) <= 150 and not el.xpath(".//p[string-length(normalize-space()) > 200]"):
            parts.append(text)  # menus, link lists, footers; not a wrapper around the article
    return "\n".join(dict.fromkeys(parts))


def _snippets(value: list[str] | str) -> list[str]:
    return ast.literal_eval(value) if isinstance(value, str) else list(value or [])


def _held_out(site_group: str) -> bool:
    return zlib.crc32(site_group.encode()) % 4 == 0  # a quarter of the sites, never seen in training


@pytest.fixture(scope="module")
def examples() -> dict[str, list[str]]:
    """{"train_pos", "train_neg", "test_pos", "test_neg"} from the real dev pages."""
    manifest = HTML / "manifest.jsonl"
    if not manifest.is_file():
        pytest.skip(f"../shared/data/real not present: {manifest} (tests read the real data in place)")
    import lxml.html

    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    sh_gold = json.loads((HTML / "scrapinghub" / "ground-truth.json").read_text(encoding="utf-8"))
    tf_gold = {}
    for line in (HTML / "trafilatura" / "gold.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        tf_gold[rec["url"]] = rec
    out: dict[str, list[str]] = {"train_pos": [], "train_neg": [], "test_pos": [], "test_neg": []}
    for row in rows:
        split = "test" if _held_out(row["site_group"]) else "train"
        if row["source"] == "trafilatura":
            rec = tf_gold[row["gold_key"]]
            pos = " ".join(_snippets(rec["with"]))
            neg = "\n".join(_snippets(rec["without"]))
        else:
            raw = (REAL / row["html_path"]).read_bytes()
            if row.get("html_gzip"):
                raw = gzip.decompress(raw)
            if row["source"] == "scrapinghub":
                pos = sh_gold[row["gold_key"]]["articleBody"]
            else:  # readability: the expected article HTML
                pos = lxml.html.fromstring((REAL / row["gold_path"]).read_bytes()).text_content()
            neg = _boilerplate_text(raw)
        if len(pos.split()) >= 20:
            out[f"{split}_pos"].append(" ".join(pos.split()))
        if len(neg.split()) >= 10:
            out[f"{split}_neg"].append(neg)
    return out


def _auc(pos: list[float], neg: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_quality_classifier_separates_held_out_pages(examples, tmp_path):
    assert len(examples["train_pos"]) > 150 and len(examples["train_neg"]) > 150
    assert len(examples["test_pos"]) > 40 and len(examples["test_neg"]) > 40
    pos_file = tmp_path / "positives.jsonl"
    with open(pos_file, "w", encoding="utf-8") as f:
        for text in examples["train_pos"]:
            f.write(json.dumps({"text": text}) + "\n")
    neg_file = tmp_path / "negatives.txt"
    neg_file.write_text("\n".join(" ".join(t.split()) for t in examples["train_neg"]) + "\n", encoding="utf-8")
    model = tmp_path / "quality.bin"
    result = train_quality_model([pos_file], [neg_file], model, bucket=50_000, dim=32)
    assert result["positives"] == len(examples["train_pos"]) and result["negatives"] == len(examples["train_neg"])

    step = QualityFilter(QualityConfig(model_path=str(model)))
    pos_scores = step.scores(examples["test_pos"])
    neg_scores = step.scores(examples["test_neg"])
    auc = _auc(pos_scores, neg_scores)
    accuracy = (sum(s >= 0.5 for s in pos_scores) + sum(s < 0.5 for s in neg_scores)) / (
        len(pos_scores) + len(neg_scores)
    )
    assert auc >= 0.85, auc
    assert accuracy >= 0.75, accuracy

    # the step in a chain: scores recorded, low-quality documents dropped with a reason
    docs = []
    for i, text in enumerate(examples["test_pos"][:10] + examples["test_neg"][:10]):
        doc = Document(id=f"q{i}", url="", source="test")
        doc.append_text(text)
        docs.append(doc)
    led = Ledger()
    kept = list(run_steps(docs, [pickle.loads(pickle.dumps(step))], led))
    assert all("quality_score" in d.signals for d in docs)
    stage = led.stages["quality"]
    assert stage.n_in == 20 and stage.n_out == len(kept)
    assert set(stage.drops) <= {"quality_low_score"} and stage.drops["quality_low_score"] >= 5
    assert sum(d.id in {f"q{i}" for i in range(10)} for d in kept) >= 7


def test_example_readers_and_cli(tmp_path):
    # a corpus directory as positives, a .txt file as negatives, through `interloom quality train`
    corpus = tmp_path / "corpus"
    good = []
    for i in range(30):
        doc = Document(id=f"g{i}", url=f"https://example.org/{i}", source="test")
        doc.append_text(
            f"Article {i}: the council met on Tuesday and discussed the new library, the bridge "
            "repairs and the budget for the coming winter season in great detail."
        )
        good.append(doc)
    append_manifest(corpus, write_shards(good, corpus, "part"))
    assert len(list(iter_examples([corpus]))) == 30
    neg = tmp_path / "neg.txt"
    neg.write_text(
        "".join(f"Home | About | Contact | Login {i} | Share | Tweet | Menu\n" for i in range(30)), encoding="utf-8"
    )
    out = tmp_path / "m.bin"
    argv = ["quality", "train", "--positive", str(corpus), "--negative", str(neg), "--output", str(out), "--dim", "16"]
    assert cli_main(argv) == 0 and out.is_file()  # the `interloom` entry point
    step = QualityFilter(QualityConfig(model_path=str(out)))
    hi, lo = step.scores(["The council discussed the library budget.", "Home | Login | Share | Menu"])
    assert hi > 0.5 > lo

    with pytest.raises(ValueError, match="not found"):
        list(iter_examples([tmp_path / "missing.jsonl"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        list(iter_examples([bad]))
    # a user error through the CLI: exit status 2 with a message, no traceback
    assert (
        cli_main(
            [
                "quality",
                "train",
                "--positive",
                str(tmp_path / "nope.txt"),
                "--negative",
                str(neg),
                "--output",
                str(tmp_path / "x.bin"),
            ]
        )
        == 2
    )
    parser = argparse.ArgumentParser(prog="interloom")
    register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):  # `train` needs --positive/--negative/--output
        parser.parse_args(["quality", "train", "--output", "m.bin"])
    with pytest.raises(ValueError, match="model_path is not set"):
        QualityFilter(QualityConfig())
    with pytest.raises(ValueError, match="labels"):
        QualityFilter(QualityConfig(model_path=str(out), label="good")).setup()


def test_damaged_example_files_name_the_file_and_line(tmp_path):
    """A .jsonl with a byte that is not UTF-8, an .html.gz that is not gzip: ValueError naming the file (and
    line), not a UnicodeDecodeError or BadGzipFile without one."""
    jsonl = tmp_path / "ex.jsonl"
    jsonl.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"ex.jsonl:2: not UTF-8"):
        list(iter_examples([jsonl]))
    jsonl.write_text('{"text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")  # json's RecursionError
    with pytest.raises(ValueError, match=r"ex.jsonl:2: expected a JSON object"):
        list(iter_examples([jsonl]))
    page = tmp_path / "page.html.gz"
    page.write_bytes(b"<html>plain, not gzip</html>")
    with pytest.raises(ValueError, match=r"page.html.gz: not a readable gzip file"):
        list(iter_examples([page]))
