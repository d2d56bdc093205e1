"""Which filter steps a build runs, in which order, built from `FiltersConfig`.

`text_steps(cfg)`: the text filters, run after extraction and before the image stage.
`document_steps(cfg)`: document rules that need the images (run after the image stage).
Only active sections are built (`enabled`, and for the quality classifier a `model_path`).
`declared_signals(cfg)`: the signals the active filters write, with their thresholds' config keys and
values (the build writes them to build.json for the report).
"""

from __future__ import annotations

from typing import Any

from corpus.steps import Step, resolve_signals
from filters.c4 import C4Filter
from filters.config import FiltersConfig
from filters.fineweb import FineWebQualityFilter
from filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from filters.language import LanguageFilter
from filters.optout import OptOutFilter
from filters.pii import PIIStep
from filters.quality import QualityFilter
from filters.structure import ImageCountFilter, TextBlockFilter

# (config section of FiltersConfig, step class), in pipeline order
TEXT_STEPS: list[tuple[str, type[Step]]] = [
    ("opt_out", OptOutFilter),
    ("language", LanguageFilter),
    ("pii", PIIStep),
    ("text_blocks", TextBlockFilter),
    ("gopher_quality", GopherQualityFilter),
    ("gopher_repetition", GopherRepetitionFilter),
    ("c4", C4Filter),
    ("fineweb", FineWebQualityFilter),
    ("quality", QualityFilter),
]
DOCUMENT_STEPS: list[tuple[str, type[Step]]] = [
    ("image_count", ImageCountFilter),
]


def _build(cfg: FiltersConfig, table: list[tuple[str, type[Step]]]) -> list[Step]:
    sections = [(getattr(cfg, name), cls) for name, cls in table]
    return [cls(section) for section, cls in sections if section.active]


def text_steps(cfg: FiltersConfig | None = None) -> list[Step]:
    return _build(cfg or FiltersConfig(), TEXT_STEPS)


def document_steps(cfg: FiltersConfig | None = None) -> list[Step]:
    return _build(cfg or FiltersConfig(), DOCUMENT_STEPS)


def declared_signals(cfg: FiltersConfig | None = None) -> dict[str, list[dict[str, Any]]]:
    """{signal: [{"value", "kind", "config"}]} of the active filters, e.g. "gopher_n_words" ->
    [{"value": 50.0, "kind": "min", "config": "filters.gopher_quality.min_doc_words"}, ...]."""
    cfg = cfg or FiltersConfig()
    active = [(f"filters.{name}", getattr(cfg, name), cls) for name, cls in TEXT_STEPS + DOCUMENT_STEPS]
    return resolve_signals((prefix, section, cls) for prefix, section, cls in active if section.active)
