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
URL dedup between the new pages themselves stays global: the keeper of a URL group is the latest fetch *that
survives the filters*, which is not known before extraction.
"""

from __future__ import annotations

from typing import Any

from corpus.stats import Ledger
from corpus.steps import Drop, Step
from filters.dedup.text import normalize_url
from filters.optout import directives


class UrlRules(Step):
    name = "url_rules"

    def __init__(self, optout: bool, known_urls: frozenset[str] = frozenset()):
        self.optout = optout
        self.known_urls = known_urls  # normalised URLs of the documents already in the corpus

    def process(self, page: Any, ledger: Ledger) -> Any:
        if self.optout and "noai" in directives(page.headers.get("x-robots-tag", "")):
            return Drop("optout_noai", "X-Robots-Tag header")
        if self.known_urls and normalize_url(page.url) in self.known_urls:
            return Drop("duplicate_url", "the corpus holds a document with this URL")
        return page
