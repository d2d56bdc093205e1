"""FineWeb quality rules (Penedo et al. 2024), with datatrove's `FineWebQualityFilter` semantics.

`FineWebQualityFilter` (stage "fineweb") records `fineweb_line_punct_ratio`, `fineweb_short_line_ratio`,
`fineweb_char_dup_ratio`, `fineweb_list_ratio` and drops, in this order, documents with too few lines
ending in terminal punctuation (`fineweb_line_punct_ratio`), too many short lines
(`fineweb_short_line_ratio`), too many characters in duplicated lines (`fineweb_char_dup_ratio`) or too many
newlines per token (`fineweb_list_ratio`; tokens include punctuation, as with datatrove's NLTK words).

Lines are the non-empty lines of the text blocks; the newline count is that of the blocks joined by single
newlines (datatrove sees trafilatura text with one newline per paragraph; our blocks are joined by blank
lines, which would double it). For languages written without spaces a "short" line is
`short_line_length_no_space` characters (10 CJK characters carry about as much as 30 Latin ones), and words
are characters.
"""

from __future__ import annotations

from corpus.record import Document
from corpus.steps import Filter, Signal, at_least, at_most
from filters.config import FineWebConfig
from filters.gopher import find_duplicates
from filters.text import TERMINAL_PUNCTUATION, is_no_space, tokens


class FineWebQualityFilter(Filter):
    name = "fineweb"
    signals = (
        Signal("fineweb_line_punct_ratio", at_least("line_punct_thr")),
        Signal("fineweb_short_line_ratio", at_most("short_line_thr")),
        Signal("fineweb_char_dup_ratio", at_most("char_duplicates_ratio")),
        Signal("fineweb_list_ratio", at_most("new_line_ratio")),
    )

    def __init__(self, cfg: FineWebConfig | None = None):
        self.cfg = cfg or FineWebConfig()
        self.stop_chars = tuple(TERMINAL_PUNCTUATION)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        c = self.cfg
        lang = doc.lang or c.default_lang
        text = "\n".join(b for b in doc.text_blocks if b.strip())
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if not lines:
            return False, "fineweb_empty"
        short_len = c.short_line_length_no_space if is_no_space(lang) else c.short_line_length
        s = doc.signals
        s["fineweb_line_punct_ratio"] = sum(ln.endswith(self.stop_chars) for ln in lines) / len(lines)
        s["fineweb_short_line_ratio"] = sum(len(ln) <= short_len for ln in lines) / len(lines)
        s["fineweb_char_dup_ratio"] = find_duplicates(lines)[1] / max(len(text.replace("\n", "")), 1)
        s["fineweb_list_ratio"] = text.count("\n") / max(len(tokens(text)), 1)

        punct = s["fineweb_line_punct_ratio"]
        rules = [  # (reason, failed), checked in datatrove's order
            ("fineweb_line_punct_ratio", punct < c.line_punct_thr and not (punct == 0 and c.line_punct_exclude_zero)),
            ("fineweb_short_line_ratio", s["fineweb_short_line_ratio"] > c.short_line_thr),
            ("fineweb_char_dup_ratio", s["fineweb_char_dup_ratio"] > c.char_duplicates_ratio),
            ("fineweb_list_ratio", s["fineweb_list_ratio"] > c.new_line_ratio),
        ]
        return next(((False, reason) for reason, failed in rules if failed), True)
