"""Rules on the interleaved structure of a document (OBELICS-style).

`TextBlockFilter` (stage "text_blocks", runs with the text filters, before the image stage) removes
boilerplate text blocks from a document without dropping the document. A block is removed, in this order of
reasons, when it is
- `block_too_short`: fewer than `min_words` words, unless an image is its neighbour (then it is probably
  a caption and stays, with `keep_short_next_to_image`);
- `block_special_chars`: more than `max_special_char_ratio` of its non-space characters are punctuation
  or symbols (menus of symbols, separators, emoji rows);
- `block_repeated`: the same text (case and whitespace normalised) as an earlier block of the document;
- `block_boilerplate`: at most `boilerplate_max_words` words and contains a boilerplate phrase (cookie
  banners, newsletter prompts, share buttons, "all rights reserved").
Each removed block is a text item drop with a rejects row; `text_blocks/text` counts blocks in/out. The
document is dropped (`empty_after_block_filter`) only when no text block is left: every later text rule
needs text. Signals: `text_blocks_removed_frac`.

`ImageCountFilter` (stage "image_count", a document rule run after the image stage) keeps documents with
`min_images`..`max_images` images and at least `min_words_per_image` words per image. Signals: `n_images`,
`words_per_image`.
"""

from __future__ import annotations

import unicodedata

from corpus.record import Document
from corpus.stats import Ledger
from corpus.steps import Drop, Filter, Signal, Step, at_least, at_most
from filters.config import ImageCountConfig, TextBlocksConfig
from filters.text import words


def _special_char_ratio(text: str) -> float:
    """Share of the non-space characters that are punctuation or symbols (Unicode categories P*, S*)."""
    chars = [ch for ch in text if not ch.isspace()]
    if not chars:
        return 1.0
    return sum(unicodedata.category(ch)[0] in "PS" for ch in chars) / len(chars)


class TextBlockFilter(Step):
    name = "text_blocks"
    signals = (Signal("text_blocks_removed_frac"),)

    def __init__(self, cfg: TextBlocksConfig | None = None):
        self.cfg = cfg or TextBlocksConfig()
        self.phrases = tuple(p.lower() for p in self.cfg.boilerplate_phrases)

    def block_reason(self, doc: Document, i: int, seen: set[str]) -> str:
        """Why text block i goes ("" when it stays). `seen` collects the normalised blocks kept so far."""
        c = self.cfg
        text = doc.texts[i]
        assert text is not None
        n_words = len(words(text))
        next_to_image = any(0 <= j < len(doc.images) and doc.images[j] is not None for j in (i - 1, i + 1))
        if n_words < c.min_words and not (c.keep_short_next_to_image and next_to_image and n_words > 0):
            return "block_too_short"
        if _special_char_ratio(text) > c.max_special_char_ratio:
            return "block_special_chars"
        norm = " ".join(text.lower().split())
        if c.drop_repeated and norm in seen:
            return "block_repeated"
        if n_words <= c.boilerplate_max_words and any(p in norm for p in self.phrases):
            return "block_boilerplate"
        seen.add(norm)
        return ""

    def process(self, doc: Document, ledger: Ledger) -> Document | Drop:
        count = ledger.item(self.name, "text")
        seen: set[str] = set()
        keep = []
        n_blocks = n_removed = 0
        for i, text in enumerate(doc.texts):
            if text is None:
                keep.append(True)
                continue
            n_blocks += 1
            count.n_in += 1
            reason = self.block_reason(doc, i, seen)
            if reason:
                n_removed += 1
                ledger.drop(self.name, reason, id=doc.id, url=doc.url, item="text", detail=text[:200])
                keep.append(False)
            else:
                count.n_out += 1
                keep.append(True)
        doc.keep_positions(keep)
        doc.signals["text_blocks_removed_frac"] = n_removed / n_blocks if n_blocks else 0.0
        if not doc.text_blocks:
            return Drop("empty_after_block_filter")
        return doc


class ImageCountFilter(Filter):
    name = "image_count"
    signals = (
        Signal("n_images", at_least("min_images"), at_most("max_images")),
        Signal("words_per_image", at_least("min_words_per_image")),
    )

    def __init__(self, cfg: ImageCountConfig | None = None):
        self.cfg = cfg or ImageCountConfig()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        n_images = len(doc.image_list)
        n_words = sum(len(words(t)) for t in doc.text_blocks)
        doc.signals["n_images"] = n_images
        doc.signals["words_per_image"] = n_words / n_images if n_images else float(n_words)
        if n_images < self.cfg.min_images:
            return False, "too_few_images"
        if n_images > self.cfg.max_images:
            return False, "too_many_images"
        if n_images and doc.signals["words_per_image"] < self.cfg.min_words_per_image:
            return False, "too_few_words_per_image"
        return True
