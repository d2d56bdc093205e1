"""Gopher quality and repetition rules (Rae et al. 2021, Table A1), with datatrove's semantics.

`GopherQualityFilter` (stage "gopher_quality") and `GopherRepetitionFilter` (stage "gopher_repetition")
compute every ratio first and record it in `doc.signals` (prefix `gopher_`), then apply the thresholds in
datatrove's order; the first rule that fails is the drop reason.

Differences from datatrove, on purpose:
- words come from `filters.text.tokens` (script-based) instead of NLTK/spaCy; for languages written without
  spaces (zh, ja, th, ...) they are characters, so the word count rule counts characters and the
  mean-word-length rule is skipped (a character is not a word);
- the per-word ratios (alphabetic words, '#' and ellipsis per word) divide by whitespace-separated words,
  as the Gopher paper defines them, not by NLTK tokens: datatrove counts every punctuation token as a
  non-alphabetic word, which dropped 37 of 290 real dev pages (Wikipedia, news) on the 0.8 alphabetic-word
  rule; with whitespace words those pass. For no-space scripts the denominator is the character words;
- the stop-word rule runs only for languages with a list in `filters.text.STOP_WORDS` (English is Gopher's
  list; zh/ja lists are single-character function words) and compares lower-cased tokens;
- bullet / ellipsis line ratios count non-empty lines: our document text joins blocks with blank lines.
"""

from __future__ import annotations

import re
from collections import Counter

from corpus.record import Document
from corpus.steps import Filter, Signal, at_least, at_most
from filters.config import GopherQualityConfig, GopherRepetitionConfig
from filters.text import is_no_space, is_word, stop_words_for, tokens


class GopherQualityFilter(Filter):
    name = "gopher_quality"
    signals = (
        Signal("gopher_n_words", at_least("min_doc_words"), at_most("max_doc_words")),
        Signal("gopher_mean_word_length", at_least("min_avg_word_length"), at_most("max_avg_word_length")),
        Signal("gopher_hash_ratio", at_most("max_symbol_word_ratio")),
        Signal("gopher_ellipsis_ratio", at_most("max_symbol_word_ratio")),
        Signal("gopher_bullet_lines_ratio", at_most("max_bullet_lines_ratio")),
        Signal("gopher_ellipsis_lines_ratio", at_most("max_ellipsis_lines_ratio")),
        Signal("gopher_alpha_words_ratio", at_least("min_alpha_words_ratio")),
        Signal("gopher_stop_words", at_least("min_stop_words")),
    )

    def __init__(self, cfg: GopherQualityConfig | None = None):
        self.cfg = cfg or GopherQualityConfig()
        self.bullets = tuple(self.cfg.bullet_chars)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        c = self.cfg
        lang = doc.lang or c.default_lang
        text = doc.text
        words = [t for t in tokens(text) if is_word(t)]
        n_words = len(words)
        # ratio denominators: whitespace-separated words (Gopher's words), characters for no-space scripts
        ws_words = words if is_no_space(lang) else text.split()
        n_ws = max(len(ws_words), 1)
        lines = [ln for ln in text.splitlines() if ln.strip()] or [""]
        s = doc.signals
        s["gopher_n_words"] = n_words
        s["gopher_mean_word_length"] = sum(len(w) for w in words) / n_words if n_words else 0.0
        s["gopher_hash_ratio"] = text.count("#") / n_ws
        s["gopher_ellipsis_ratio"] = (text.count("...") + text.count("…")) / n_ws
        s["gopher_bullet_lines_ratio"] = sum(ln.lstrip().startswith(self.bullets) for ln in lines) / len(lines)
        s["gopher_ellipsis_lines_ratio"] = sum(ln.rstrip().endswith(("...", "…")) for ln in lines) / len(lines)
        s["gopher_alpha_words_ratio"] = sum(any(map(str.isalpha, w)) for w in ws_words) / n_ws
        stop_words = stop_words_for(lang)
        if stop_words is not None:
            present = {t.lower() for t in words}
            s["gopher_stop_words"] = sum(w in present for w in stop_words)

        spaced = not is_no_space(lang)  # a character is not a word: no mean-word-length rule for zh/ja/th
        rules = [  # (reason, failed), checked in datatrove's order
            ("gopher_too_few_words", n_words < c.min_doc_words),
            ("gopher_too_many_words", n_words > c.max_doc_words),
            ("gopher_mean_word_length_low", spaced and s["gopher_mean_word_length"] < c.min_avg_word_length),
            ("gopher_mean_word_length_high", spaced and s["gopher_mean_word_length"] > c.max_avg_word_length),
            ("gopher_too_many_hashes", s["gopher_hash_ratio"] > c.max_symbol_word_ratio),
            ("gopher_too_many_ellipsis", s["gopher_ellipsis_ratio"] > c.max_symbol_word_ratio),
            ("gopher_too_many_bullet_lines", s["gopher_bullet_lines_ratio"] > c.max_bullet_lines_ratio),
            ("gopher_too_many_ellipsis_lines", s["gopher_ellipsis_lines_ratio"] > c.max_ellipsis_lines_ratio),
            ("gopher_too_few_alpha_words", s["gopher_alpha_words_ratio"] < c.min_alpha_words_ratio),
            ("gopher_too_few_stop_words", stop_words is not None and s["gopher_stop_words"] < c.min_stop_words),
        ]
        return next(((False, reason) for reason, failed in rules if failed), True)


# ---- repetition -------------------------------------------------------------------------------------
_PARA_RE = re.compile(r"\n{2,}")
_LINE_RE = re.compile(r"\n+")


def find_duplicates(items: list[str]) -> tuple[int, int]:
    """(number of elements seen before, their total characters)."""
    seen: set[str] = set()
    dup_elements = dup_chars = 0
    for x in items:
        if x in seen:
            dup_elements += 1
            dup_chars += len(x)
        else:
            seen.add(x)
    return dup_elements, dup_chars


def top_ngram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most frequent n-gram (its length times its count), 0 without n-grams."""
    grams = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count


def duplicate_ngram_chars(words: list[str], n: int) -> int:
    """Characters in n-grams that repeat an earlier n-gram, non-overlapping (datatrove's
    `find_all_duplicate`: on a repeat, skip ahead n words)."""
    seen: set[str] = set()
    repeated = idx = 0
    while idx < len(words) - n + 1:
        gram = "".join(words[idx : idx + n])
        if gram in seen:
            repeated += len(gram)
            idx += n
        else:
            seen.add(gram)
            idx += 1
    return repeated


class GopherRepetitionFilter(Filter):
    name = "gopher_repetition"
    signals = (
        Signal("gopher_dup_para_frac", at_most("dup_para_frac")),
        Signal("gopher_dup_para_char_frac", at_most("dup_para_char_frac")),
        Signal("gopher_dup_line_frac", at_most("dup_line_frac")),
        Signal("gopher_dup_line_char_frac", at_most("dup_line_char_frac")),
        Signal("gopher_top_{n}_gram_char_frac", at_most("top_n_grams")),
        Signal("gopher_dup_{n}_gram_char_frac", at_most("dup_n_grams")),
    )

    def __init__(self, cfg: GopherRepetitionConfig | None = None):
        self.cfg = cfg or GopherRepetitionConfig()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        c = self.cfg
        text = doc.text
        if not text.strip():
            return False, "gopher_empty"
        n_chars = len(text)
        s = doc.signals
        paragraphs = _PARA_RE.split(text.strip())
        para_dups, para_dup_chars = find_duplicates(paragraphs)
        lines = _LINE_RE.split(text)
        line_dups, line_dup_chars = find_duplicates(lines)
        s["gopher_dup_para_frac"] = para_dups / len(paragraphs)
        s["gopher_dup_para_char_frac"] = para_dup_chars / n_chars
        s["gopher_dup_line_frac"] = line_dups / len(lines)
        s["gopher_dup_line_char_frac"] = line_dup_chars / n_chars
        words = tokens(text)
        # n-grams of words; for no-space scripts of `no_space_ngram_scale` times as many characters
        scale = c.no_space_ngram_scale if is_no_space(doc.lang or c.default_lang) else 1
        for n in c.top_n_grams:
            s[f"gopher_top_{n}_gram_char_frac"] = top_ngram_chars(words, n * scale) / n_chars
        for n in c.dup_n_grams:
            s[f"gopher_dup_{n}_gram_char_frac"] = duplicate_ngram_chars(words, n * scale) / n_chars

        rules = [
            ("gopher_dup_para_frac", c.dup_para_frac),
            ("gopher_dup_para_char_frac", c.dup_para_char_frac),
            ("gopher_dup_line_frac", c.dup_line_frac),
            ("gopher_dup_line_char_frac", c.dup_line_char_frac),
        ]
        rules += [(f"gopher_top_{n}_gram_char_frac", frac) for n, frac in sorted(c.top_n_grams.items())]
        rules += [(f"gopher_dup_{n}_gram_char_frac", frac) for n, frac in sorted(c.dup_n_grams.items())]
        for signal, max_frac in rules:
            if s[signal] > max_frac:
                return False, signal.removesuffix("_char_frac") if "gram" in signal else signal
        return True
