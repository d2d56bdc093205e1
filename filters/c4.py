"""C4 rules (Raffel et al. 2020), with datatrove's `C4QualityFilter` semantics, on interleaved documents.

`C4Filter` (stage "c4") is a text-modifying step. Inside every text block, line by line, in datatrove's
order:
  drop lines with a word longer than `max_word_length`; strip citations ("[1]", "[edit]");
  drop lines not ending in terminal punctuation (or ending in "..."); drop lines with fewer than
  `min_words_per_line` words; drop the DOCUMENT if a kept line says "lorem ipsum" (`c4_lorem_ipsum`);
  drop lines mentioning javascript; drop the DOCUMENT if a kept line has a curly bracket
  (`c4_curly_bracket`); drop lines with a policy / cookie phrase.
Then the document is dropped if its kept lines hold fewer than `min_num_sentences` sentences
(`c4_too_few_sentences`).

Counting: lines are counted as items `c4/line` (in, out, drops by reason, no per-line rejects rows); a text
block left with no line is removed from the document and counted as a text item drop
(`c4_block_emptied`, with a rejects row). Signals: `c4_lines_kept_frac`, `c4_n_sentences`.

Language awareness: words per line are whitespace-split, or characters for languages written without
spaces; the terminal punctuation list also holds CJK full stops and closing quotes.
"""

from __future__ import annotations

import re

from corpus.record import Document
from corpus.stats import Ledger
from corpus.steps import Drop, Signal, Step, at_least
from filters.config import C4Config
from filters.text import count_words, sentences

CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
ELLIPSIS = "..."


class C4Filter(Step):
    name = "c4"
    signals = (
        Signal("c4_lines_kept_frac"),
        Signal("c4_n_sentences", at_least("min_num_sentences", off_below=0)),
    )  # -1 turns it off

    def __init__(self, cfg: C4Config | None = None):
        self.cfg = cfg or C4Config()
        self.end_punct = tuple(self.cfg.end_punctuation)
        self.policy = tuple(p.lower() for p in self.cfg.policy_phrases)

    def _line_verdict(self, line: str, lang: str) -> tuple[str, str]:
        """(kept line or "", reason): reason is "" for a kept line, "doc:<reason>" to drop the document."""
        c = self.cfg
        line = line.strip()
        if c.max_word_length != -1 and any(len(w) > c.max_word_length for w in line.split()):
            return "", "too_long_word"
        if c.remove_citations:
            line = CITATION_RE.sub("", line)
        if c.filter_no_terminal_punct and (not line.endswith(self.end_punct) or line.endswith(ELLIPSIS)):
            return "", "no_terminal_punct"
        if c.min_words_per_line != -1 and count_words(line, lang) < c.min_words_per_line:
            return "", "too_few_words"
        low = line.lower()
        if c.filter_lorem_ipsum and "lorem ipsum" in low:
            return "", "doc:c4_lorem_ipsum"
        if c.filter_javascript and "javascript" in low:
            return "", "javascript"
        if c.filter_curly_bracket and "{" in line:
            return "", "doc:c4_curly_bracket"
        if c.filter_policy and any(p in low for p in self.policy):
            return "", "policy"
        return line, ""

    def process(self, doc: Document, ledger: Ledger) -> Document | Drop:
        lang = doc.lang or self.cfg.default_lang
        lines_count = ledger.item(self.name, "line")
        blocks_count = ledger.item(self.name, "text")
        new_texts: list[str | None] = []
        keep: list[bool] = []
        n_lines = n_kept = n_sentences = 0
        for text in doc.texts:
            if text is None:
                new_texts.append(None)
                keep.append(True)
                continue
            kept_lines = []
            for raw in text.splitlines():
                if not raw.strip():
                    continue
                n_lines += 1
                lines_count.n_in += 1
                line, reason = self._line_verdict(raw, lang)
                if reason.startswith("doc:"):
                    lines_count.n_out += 1  # the line itself is not removed; the whole document goes
                    return Drop(reason[4:])
                if reason:
                    lines_count.drops[reason] += 1
                    continue
                lines_count.n_out += 1
                kept_lines.append(line)
                n_sentences += len(sentences(line))
            n_kept += len(kept_lines)
            new_texts.append("\n".join(kept_lines))
            keep.append(bool(kept_lines))
        doc.signals["c4_lines_kept_frac"] = n_kept / n_lines if n_lines else 0.0
        doc.signals["c4_n_sentences"] = n_sentences
        if self.cfg.min_num_sentences != -1 and n_sentences < self.cfg.min_num_sentences:
            return Drop("c4_too_few_sentences")
        for text, k in zip(new_texts, keep):
            if text is not None:
                blocks_count.n_in += 1
                if k:
                    blocks_count.n_out += 1
                else:
                    ledger.drop(self.name, "c4_block_emptied", id=doc.id, url=doc.url, item="text")
        doc.texts = new_texts
        doc.keep_positions(keep)
        return doc
