"""Language-aware text helpers shared by the text filters: word and sentence splitting, stop words.

Words. One script-based tokenizer serves every language (datatrove uses NLTK/spaCy per language; we keep
the dependency footprint small and the behaviour predictable):
- characters of scripts written without spaces (Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar,
  Tibetan) are one token each, so Chinese/Japanese text gets character tokens;
- any other run of word characters is a token (`e-mail`, `don't` stay one token);
- a run of other non-space characters (punctuation, symbols) is a token, as NLTK's tokenizer emits
  punctuation as tokens. Filters that count "words" use `words()` (tokens with a letter or digit).

Languages written without spaces (`NO_SPACE_LANGS`) get character tokens from the same tokenizer; the
filters use `is_no_space(lang)` to skip rules whose thresholds only mean something for space-separated
words (e.g. Gopher's mean word length) and to scale line-length rules.
"""

from __future__ import annotations

import re

# scripts written without spaces between words: one token per character
_NO_SPACE_CHARS = (
    "\u0e00-\u0e7f"  # Thai
    "\u0e80-\u0eff"  # Lao
    "\u0f00-\u0fff"  # Tibetan
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u309f"  # Hiragana
    "\u30a0-\u30ff"  # Katakana
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0002fa1f"  # CJK extensions B-F, compatibility supplement
)
# combining marks (not matched by \w): vowel signs of Indic scripts, Arabic/Hebrew points, diacritics
_MARKS = (
    "\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed"
    "\u0900-\u0963\u0966-\u0dff"  # Devanagari .. Sinhala blocks, without the danda punctuation
    "\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
)
_NO_SPACE_MARKS = "\u0e31\u0e34-\u0e3a\u0e47-\u0e4e\u0eb1\u0eb4-\u0ebc\u0ec8-\u0ecd\u3099\u309a"
_WORD_CHAR = rf"(?:[^\W{_NO_SPACE_CHARS}]|[{_MARKS}])"
_TOKEN_RE = re.compile(
    rf"[{_NO_SPACE_CHARS}][{_NO_SPACE_MARKS}]*"  # one character of a no-space script (with its marks)
    rf"|{_WORD_CHAR}+(?:[-'’]{_WORD_CHAR}+)*"  # a word (hyphen/apostrophe inside)
    rf"|[^\w\s{_MARKS}]+"  # a run of punctuation / symbols
)

# ISO 639-1 (and fastText lid.176) codes of languages written without spaces between words
NO_SPACE_LANGS = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "wuu"})

# Sentence ends, in the scripts we meet (a compact form of datatrove's TERMINAL_PUNCTUATION)
TERMINAL_PUNCTUATION = frozenset(".!?。！？．｡।॥؟۔‼⁇⁈⁉‽።၊။")

_SENTENCE_END_RE = re.compile(r"(?<=[.!?؟।])\s+|(?<=[。！？｡])")

# Most frequent function words per language. Gopher's stop-word rule ("at least 2 of these") only runs for
# languages listed here; English is Gopher's list as datatrove ships it. Compared in lower case.
STOP_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("the", "be", "to", "of", "and", "that", "have", "with"),
    "de": ("der", "die", "und", "das", "ist", "zu", "den", "mit"),
    "fr": ("le", "la", "les", "de", "et", "des", "est", "que"),
    "es": ("el", "la", "de", "que", "y", "en", "los", "del"),
    "it": ("il", "di", "che", "e", "la", "per", "un", "non"),
    "pt": ("o", "a", "de", "que", "e", "do", "da", "em"),
    "nl": ("de", "het", "een", "en", "van", "is", "dat", "op"),
    "pl": ("i", "w", "na", "z", "się", "nie", "do", "że"),
    "ru": ("и", "в", "не", "на", "что", "с", "по", "это"),
    "zh": ("的", "了", "是", "在", "和", "有", "不", "这"),
    "ja": ("の", "に", "は", "を", "た", "が", "で", "て"),
}


def tokens(text: str) -> list[str]:
    """All tokens of `text`: words, no-space-script characters and punctuation runs."""
    return _TOKEN_RE.findall(text)


def is_word(token: str) -> bool:
    """A token with at least one letter or digit (not a pure punctuation/symbol token)."""
    return any(map(str.isalnum, token))


def words(text: str) -> list[str]:
    """Tokens with at least one letter or digit."""
    return [t for t in _TOKEN_RE.findall(text) if is_word(t)]


def is_no_space(lang: str) -> bool:
    return lang.split("-")[0].split("_")[0].lower() in NO_SPACE_LANGS


def count_words(text: str, lang: str) -> int:
    """Words of one line or block: whitespace-split for space-separated languages (as C4/datatrove count
    them), character-level words for languages written without spaces."""
    if is_no_space(lang):
        return len(words(text))
    return len(text.split())


def sentences(text: str) -> list[str]:
    """Split on sentence-final punctuation (followed by space for Latin-like scripts, anywhere for CJK)."""
    return [s for s in (p.strip() for p in _SENTENCE_END_RE.split(text)) if s]


def stop_words_for(lang: str) -> tuple[str, ...] | None:
    return STOP_WORDS.get(lang.split("-")[0].lower())
