"""Which filter steps a build runs, in which order, built from `FiltersConfig`.

`text_steps(cfg)`: the text filters, run after extraction and before the image stage.
`document_steps(cfg)`: document rules that need the images (run after the image stage).
Only active sections are built (`enabled`, and for the quality classifier a `model_path`).
"""

from __future__ import annotations

from filters.c4 import C4Filter
from filters.config import FiltersConfig
from filters.fineweb import FineWebQualityFilter
from filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from filters.language import LanguageFilter
from filters.optout import OptOutFilter
from filters.pii import PIIStep
from filters.quality import QualityFilter
from filters.structure import ImageCountFilter, TextBlockFilter
from pipeline.steps import Step

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
