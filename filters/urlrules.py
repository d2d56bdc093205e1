"""Rules decided from a page's URL and HTTP headers alone, before its HTML is decoded or parsed.

`UrlRules` (stage "url_rules") runs first in phase 1, on the raw page, and only where a later rule makes the
outcome certain, so the corpus is byte-identical with and without it (`extract.early_cuts=false` turns it
off; only the stage that counts these pages moves):
- `optout_noai`: the X-Robots-Tag header says `noai` (with `filters.opt_out` on). The opt-out filter would
  drop the document after extraction for the same header (it reads the header `extract` copies into
  `doc.meta`), and no other rule could keep it.
- `duplicate_url`: appending to a corpus (`interloom build --append`), the page's normalised URL is the URL of
  a document already in the corpus (with `dedup.url` on). Global dedup keeps the existing document of a URL
  group whatever the fetch times, so the page would be removed there; a removed page takes part in no
  other dedup decision, so deciding it here changes nothing else.
- `duplicate_url`: the unit holds the same capture again: the same URL, the same payload and the same
  headers that shape the page (`crawl.sources.capture_key`), only the fetch time and id differ. Such captures
  become the same document, so the filters keep all or none of them, and global URL dedup would keep the
  latest of them (then the smallest id); the others are cut here, that one goes on.
Other URL duplicates stay with global dedup: the keeper of a URL group is the latest fetch *that survives
the filters*, which is not known before extraction when the captures differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corpus.stats import Ledger
from corpus.steps import Drop, Step
from filters.dedup.passes import fetch_ts
from filters.dedup.text import normalize_url
from filters.optout import directives


class UrlRules(Step):
    name = "url_rules"

    def __init__(
        self,
        optout: bool,
        known_urls: frozenset[str] = frozenset(),
        same_captures: Callable[[Any], list[tuple[str, str]]] | None = None,
    ):
        self.optout = optout
        self.known_urls = known_urls  # normalised URLs of the documents already in the corpus
        self.same_captures = same_captures  # page -> [(fetched_at, id)] of its identical captures in the unit

    def process(self, page: Any, ledger: Ledger) -> Any:
        if self.optout and "noai" in directives(page.headers.get("x-robots-tag", "")):
            return Drop("optout_noai", "X-Robots-Tag header")
        if self.known_urls and normalize_url(page.url) in self.known_urls:
            return Drop("duplicate_url", "the corpus holds a document with this URL")
        captures = self.same_captures(page) if self.same_captures is not None else []
        if len(captures) > 1:
            _, keeper = min(captures, key=lambda c: (-fetch_ts(c[0]), c[1]))  # global URL dedup's choice
            if keeper != page.id:
                return Drop("duplicate_url", f"the same capture as {keeper} (URL, payload, headers)")
        return page
