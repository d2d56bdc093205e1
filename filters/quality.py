"""A fastText quality classifier in the DCLM style: train it from two example sets, filter with it.

`train_quality_model(positive_paths, negative_paths, out_path)` reads example documents from
- `.txt` files (one document per line), `.jsonl` files (one object per line with a "text" field),
- `.html` / `.htm` / `.html.gz` files (main text extracted with trafilatura),
- interloom corpus directories (with a `manifest.jsonl`, read through `corpus.format.Corpus`),
- other directories (every file above inside them, recursively, in sorted order),
labels them `__label__<label>` / `__label__<negative_label>`, trains a supervised fastText model and saves
it to `out_path`. No weights ship with interloom: users train on their own reference sets (DCLM used
OpenHermes / ELI5 answers as positives and random web text as negatives).

`QualityFilter` (stage "quality") loads a model lazily (once per worker, picklable before and after),
records the probability of `label` as `quality_score` and drops documents below `threshold`
(`quality_low_score`). Training and prediction normalise text the same way (`quality_text`).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from corpus.record import Document
from corpus.steps import Filter, Signal, at_least
from filters.config import QualityConfig
from filters.language import LABEL_PREFIX, load_fasttext

_WS_RE = re.compile(r"\s+")
# fastText 0.9.3 initialises its input matrix in `thread` blocks of one tenth each (DenseMatrix::uniform):
# with fewer than 11 threads the rest stays uninitialised memory and training fails at random with
# "Encountered NaN" (measured here: 50% of small runs). 12 threads initialise every row; on small training
# sets the extra threads cost nothing.
FASTTEXT_THREADS = 12
EXAMPLE_SUFFIXES = (".txt", ".jsonl", ".html", ".htm", ".html.gz")


def quality_text(text: str) -> str:
    """One line, lower case, single spaces: what the classifier sees in training and prediction."""
    return _WS_RE.sub(" ", text).strip().lower()


def _html_text(path: Path) -> str:
    import trafilatura

    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: not a readable gzip file ({e})") from None
    return trafilatura.extract(raw) or ""


def _iter_file(path: Path) -> Iterator[str]:
    name = path.name.lower()
    if name.endswith(".txt"):
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from (line for line in f if line.strip())
    elif name.endswith(".jsonl"):
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path}:{n}: not UTF-8 ({e})") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    yield str(row["text"])
                except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as e:  # (nested too deep)
                    raise ValueError(f"{path}:{n}: expected a JSON object with a 'text' field ({e})") from None
    elif name.endswith((".html", ".htm", ".html.gz")):
        yield _html_text(path)
    else:
        raise ValueError(f"{path}: unsupported example file (use {', '.join(EXAMPLE_SUFFIXES)} or a corpus)")


def iter_examples(paths: Iterable[str | Path]) -> Iterator[str]:
    """Texts of the example documents at `paths` (files, corpus directories, directories of files)."""
    from corpus.format import MANIFEST, Corpus

    for p in map(Path, paths):
        if p.is_dir() and (p / MANIFEST).is_file():
            yield from (doc.text for doc in Corpus(p).iter_documents(with_images=False))
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(EXAMPLE_SUFFIXES))
            if not files:
                raise ValueError(f"{p}: directory holds no example files ({', '.join(EXAMPLE_SUFFIXES)})")
            for f in files:
                yield from _iter_file(f)
        elif p.is_file():
            yield from _iter_file(p)
        else:
            raise ValueError(f"example path not found: {p}")


def train_from_texts(
    positives: Iterable[str],
    negatives: Iterable[str],
    out_path: str | Path,
    *,
    label: str = "hq",
    negative_label: str = "lq",
    epoch: int = 25,
    lr: float = 0.5,
    dim: int = 64,
    word_ngrams: int = 2,
    bucket: int = 200_000,
    min_count: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Train and save a fastText classifier; returns counts of the examples used.

    Defaults suit reference sets of hundreds to thousands of whole documents: few, long examples need a
    high learning rate and many epochs (epoch 10 / lr 0.1 left a model scoring ~0.5 for everything on
    the dev pages; 25 / 0.5 reached held-out AUC 0.95)."""
    import fasttext

    rows = [(label, t) for t in map(quality_text, positives) if t]
    n_pos = len(rows)
    rows += [(negative_label, t) for t in map(quality_text, negatives) if t]
    n_neg = len(rows) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"quality training needs positive and negative examples (got {n_pos} and {n_neg})")
    random.Random(seed).shuffle(rows)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        with open(train_file, "w", encoding="utf-8") as f:
            for lab, text in rows:
                f.write(f"{LABEL_PREFIX}{lab} {text}\n")
        model = fasttext.train_supervised(
            input=str(train_file),
            epoch=epoch,
            lr=lr,
            dim=dim,
            wordNgrams=word_ngrams,
            bucket=bucket,
            minCount=min_count,
            thread=FASTTEXT_THREADS,
            seed=seed,
            verbose=0,
        )
    model.save_model(str(out_path))
    return {"positives": n_pos, "negatives": n_neg, "output": str(out_path)}


def train_quality_model(
    positive_paths: Iterable[str | Path], negative_paths: Iterable[str | Path], out_path: str | Path, **kwargs: Any
) -> dict[str, Any]:
    """Read both example sets (see module docstring) and train a classifier (see `train_from_texts`)."""
    positives = list(tqdm(iter_examples(positive_paths), desc="positives", unit="doc", leave=False))
    negatives = list(tqdm(iter_examples(negative_paths), desc="negatives", unit="doc", leave=False))
    return train_from_texts(positives, negatives, out_path, **kwargs)


class QualityFilter(Filter):
    name = "quality"
    signals = (Signal("quality_score", at_least("threshold")),)

    def __init__(self, cfg: QualityConfig | None = None):
        self.cfg = cfg or QualityConfig()
        if not self.cfg.model_path:
            raise ValueError("quality filter: quality.model_path is not set (train one: interloom quality train)")
        self._model = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None  # each worker loads its own copy
        return state

    def setup(self) -> None:
        if self._model is None:
            self._model = load_fasttext(self.cfg.model_path)
            labels = [lab.removeprefix(LABEL_PREFIX) for lab in self._model.get_labels()]
            if self.cfg.label not in labels:
                raise ValueError(
                    f"quality model {self.cfg.model_path} has labels {labels}, not quality.label={self.cfg.label!r}"
                )

    def scores(self, texts: list[str]) -> list[float]:
        """Probability of `label` for each text."""
        self.setup()
        want = LABEL_PREFIX + self.cfg.label
        labels, probs = self._model.predict([quality_text(t) for t in texts], k=-1)
        return [min(float(dict(zip(labs, ps)).get(want, 0.0)), 1.0) for labs, ps in zip(labels, probs)]

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        score = self.scores([doc.text])[0]
        doc.signals["quality_score"] = score
        if score < self.cfg.threshold:
            return False, "quality_low_score"
        return True
