"""Phase 3 of dedup: apply the global decisions to each document as it is written."""

from __future__ import annotations

from corpus.record import Document
from corpus.stats import Ledger
from corpus.steps import Drop, Step, drop_images
from filters.dedup.passes import REASON_IMAGE, DedupResult


class ApplyDedup(Step):
    """Drop documents `run_dedup` removed (reason duplicate_url | duplicate_exact | near_duplicate, detail =
    the keeper's id) and remove images whose pHash is too common (item drop `image_too_common`)."""

    name = "dedup"

    def __init__(self, result: DedupResult):
        self.result = result

    def process(self, doc: Document, ledger: Ledger) -> Document | Drop:
        reason = self.result.removed.get(doc.id)
        if reason is not None:
            return Drop(reason, f"keeper={self.result.keepers.get(doc.id, '')}")
        common = self.result.common_image_phashes
        drop_images(doc, ledger, self.name, lambda im: REASON_IMAGE if im.phash and im.phash in common else None)
        return doc
