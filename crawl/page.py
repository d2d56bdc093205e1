"""`RawPage`: one fetched HTML page before extraction, whatever its source (WARC record, file, live fetch)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RawPage:
    url: str  # the page URL (WARC-Target-URI or fetched URL after redirects)
    body: bytes  # the raw HTTP payload (transfer/content encoding already removed)
    source: str  # locator, e.g. "warc:<file name>#<WARC-Record-ID>", "html:<relative path>", "http"
    fetched_at: str = ""  # ISO 8601 (WARC-Date or fetch time)
    headers: dict[str, str] = field(default_factory=dict)  # HTTP response headers, lower-case names
    id: str = ""  # document id the page will get (corpus.record.make_doc_id(source))

    @property
    def charset(self) -> str | None:
        """Charset named by the Content-Type header, if any."""
        ctype = self.headers.get("content-type", "")
        for part in ctype.split(";")[1:]:
            k, _, v = part.strip().partition("=")
            if k.lower() == "charset" and v:
                return v.strip("\"' ").lower()
        return None
