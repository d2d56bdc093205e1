"""Publisher opt-outs from AI training, read from robots directives the source recorded on the document.

`OptOutFilter` (stage "opt_out") reads `doc.meta["x_robots_tag"]` (the X-Robots-Tag HTTP header) and
`doc.meta["meta_robots"]` (`<meta name="robots">` content); directives are split on commas, semicolons,
colons and whitespace and compared case-insensitively (so "googlebot: noai" counts too).
- `noai`: the document is dropped (`optout_noai`);
- `noimageai`: the text stays, every image is removed from the document, each counted as an image item
  drop (`optout_noimageai`, `opt_out/image` in/out) with a rejects row naming the image URL.
"""

from __future__ import annotations

import re

from corpus.record import Document
from corpus.stats import Ledger
from corpus.steps import Drop, Signal, Step, drop_images
from filters.config import OptOutConfig

_SPLIT_RE = re.compile(r"[\s,;:]+")


def directives(value: str) -> set[str]:
    """The robots directives of one header or meta value, lower-cased."""
    return {d for d in _SPLIT_RE.split(value.lower()) if d}


class OptOutFilter(Step):
    name = "opt_out"
    signals = (Signal("optout_noimageai"),)

    def __init__(self, cfg: OptOutConfig | None = None):
        self.cfg = cfg or OptOutConfig()

    def directives(self, doc: Document) -> set[str]:
        found: set[str] = set()
        for key in self.cfg.meta_keys:
            found |= directives(doc.meta.get(key, ""))
        return found

    def process(self, doc: Document, ledger: Ledger) -> Document | Drop:
        directives = self.directives(doc)
        if "noai" in directives:
            return Drop("optout_noai")
        if "noimageai" in directives:
            drop_images(doc, ledger, self.name, lambda im: "optout_noimageai")
            doc.signals["optout_noimageai"] = 1.0
        return doc
