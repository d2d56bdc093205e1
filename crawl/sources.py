"""Readers that turn input files into `RawPage`s plus an image lookup for the images those pages show.

A unit of work is one input: a WARC/WARC.gz file, or a folder of `.html`/`.html.gz` files.
Every record read is accounted for in the `read` stage of the ledger: it becomes a page (out) or a drop
with a reason (`record_type:request`, `image_resource`, `not_html:text/css`, `http_status:404`,
`revisit_duplicate`, `warc_read_error`, ...).

WARC reading is two passes with fastwarc: pass 1 indexes image responses (by normalised URL and by payload
digest, so revisit records of images resolve too), pass 2 streams HTML pages. Transfer and content encodings
(chunked, gzip) are decoded by fastwarc; a truncated file ends its unit with a counted `warc_read_error`, and
a file with no WARC record in it (empty, or not a WARC) is one counted `warc_read_error`.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fastwarc.warc import ArchiveIterator, WarcRecordType

from crawl.page import RawPage
from crawl.urls import normalize_url
from pipeline.record import make_doc_id
from pipeline.stats import Ledger

READ = "read"
WARC_SUFFIXES = (".warc", ".warc.gz", ".warc.zst", ".wet.gz", ".wat.gz", ".wet", ".wat")
HTML_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz")
HTML_TYPES = ("text/html", "application/xhtml+xml")
NOT_IN_SOURCE = "image_not_in_source"


@dataclass(frozen=True)
class Unit:
    """One unit of work: an input file or folder; `name` is stable and file-system safe."""

    path: str
    kind: str  # "warc" | "html"
    name: str


def discover_units(paths: list[str]) -> list[Unit]:
    """Turn resolved input paths into units, sorted by path (the order defines shard numbering)."""
    units = []
    for p in sorted(set(paths)):
        path = Path(p)
        if path.is_dir():
            kind = "html"
            _check_html_folder(path)
        elif path.name.endswith(WARC_SUFFIXES):
            kind = "warc"
        elif path.name.endswith(HTML_SUFFIXES):
            kind = "html"
        else:
            raise ValueError(f"input {p}: not a WARC file ({', '.join(WARC_SUFFIXES)}), an HTML file "
                             f"or a folder of HTML files")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name)[:60]
        units.append(Unit(str(path), kind, f"{safe}-{digest}"))
    return units


def _check_html_folder(path: Path) -> None:
    """A folder input is a folder of HTML pages: one with none (empty, or holding WARC files) is an error,
    not an empty unit."""
    files = (p for p in path.rglob("*") if p.is_file())
    if any(p.name.lower().endswith(HTML_SUFFIXES) for p in files):
        return
    warcs = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(WARC_SUFFIXES))
    if warcs:
        suffix = next(s for s in WARC_SUFFIXES if warcs[0].name.endswith(s))
        raise ValueError(f"input {path}: a folder input is a folder of HTML pages, and this one holds WARC files; "
                         f"give them as files, e.g. --input '{path}/*{suffix}'")
    raise ValueError(f"input {path}: folder holds no HTML files ({', '.join(HTML_SUFFIXES)})")


class ImageStore:
    """Image payloads found in the same source, looked up by normalised URL."""

    def __init__(self) -> None:
        self.by_url: dict[str, bytes] = {}

    def add(self, url: str, data: bytes) -> None:
        self.by_url.setdefault(normalize_url(url), data)

    def fetch_many(self, urls: list[str]) -> dict[str, bytes | str]:
        """url -> bytes, or the drop reason `image_not_in_source`."""
        return {u: self.by_url.get(normalize_url(u), NOT_IN_SOURCE) for u in urls}

    def __len__(self) -> int:
        return len(self.by_url)


def dechunk(raw: bytes) -> bytes | None:
    """Undo HTTP chunked transfer encoding; None when `raw` is not validly chunked."""
    out, pos = bytearray(), 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out) if out else None  # truncated last chunk: keep what arrived
        size_field = raw[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            return None
        if size == 0:
            return bytes(out)
        out += raw[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


def decode_payload(raw: bytes, headers: dict[str, str]) -> bytes:
    """Lenient HTTP payload decoding, as archives need: many WARCs keep a `Transfer-Encoding: chunked` or
    `Content-Encoding: gzip` header on a payload that was stored already decoded. Decode only when the
    bytes really are encoded."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        dechunked = dechunk(raw)
        if dechunked is not None:
            raw = dechunked
    encoding = headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "x-gzip", "deflate") and raw[:2] in (b"\x1f\x8b", b"\x78\x9c", b"\x78\x01", b"\x78\xda"):
        try:
            raw = zlib.decompress(raw, 47)  # 47: auto-detect gzip/zlib header
        except zlib.error:
            pass  # stored decoded already, or corrupt: extraction decides
    return raw


def _content_type(rec) -> str:
    return (rec.http_content_type or "").split(";")[0].strip().lower()


def _headers(rec) -> dict[str, str]:
    h = rec.http_headers
    return {} if h is None else {k.lower(): v for k, v in h.items()}


class WarcSource:
    """Pages and images of one WARC file."""

    def __init__(self, unit: Unit, max_image_bytes: int = 20 << 20):
        self.unit = unit
        self.max_image_bytes = max_image_bytes
        self.images = ImageStore()
        self._digests: dict[str, bytes] = {}  # payload digest -> image bytes
        self._all_digests: set[str] = set()  # payload digests of every response in the file
        self._indexed = False

    def _iter(self):
        # quirks_mode: old and odd WARCs (ClueWeb, WARC/0.18); payload decoding is ours, and lenient
        return ArchiveIterator(open(self.unit.path, "rb"), parse_http=True, auto_decode="none",
                               quirks_mode=True)

    def index_images(self) -> None:
        """Pass 1: image responses and image revisits, by URL and payload digest."""
        revisits: list[tuple[str, str]] = []
        try:
            for rec in self._iter():
                rtype = rec.record_type
                if rtype not in (WarcRecordType.response, WarcRecordType.resource, WarcRecordType.revisit):
                    continue
                url = rec.headers.get("WARC-Target-URI", "")
                if rtype != WarcRecordType.revisit and rec.headers.get("WARC-Payload-Digest"):
                    self._all_digests.add(rec.headers.get("WARC-Payload-Digest"))
                if rtype == WarcRecordType.revisit:
                    digest = rec.headers.get("WARC-Payload-Digest", "")
                    if _content_type(rec).startswith("image/") and digest:
                        revisits.append((url, digest))
                    continue
                if not _content_type(rec).startswith("image/"):
                    continue
                if rec.http_headers is not None and rec.http_headers.status_code != 200:
                    continue
                data = decode_payload(rec.reader.read(self.max_image_bytes + 1), _headers(rec))
                if len(data) > self.max_image_bytes:
                    continue  # the image stage would refuse it anyway: counted there as not found
                self.images.add(url, data)
                digest = rec.headers.get("WARC-Payload-Digest", "")
                if digest:
                    self._digests.setdefault(digest, data)
        except OSError:
            pass  # pass 2 meets the same error and counts it
        for url, digest in revisits:
            if digest in self._digests:
                self.images.add(url, self._digests[digest])
        self._indexed = True

    def pages(self, ledger: Ledger) -> Iterator[RawPage]:
        """Pass 2: HTML responses as pages; every other record a counted drop of the read stage."""
        assert self._indexed, "index_images() first"
        count = ledger.stage(READ)
        name = Path(self.unit.path).name
        it = self._iter()
        prev, seen = None, 0
        while True:
            if prev is not None:  # a record the file ends inside: fastwarc stops there without an error
                prev.reader.consume()
                if prev.reader.tell() < prev.content_length:
                    count.n_in += 1
                    ledger.drop(READ, "warc_read_error", item="record",
                                detail=f"{name}: file ends inside a record (truncated)")
                    return
            try:
                rec = next(it)
            except StopIteration:
                if seen == 0:  # random bytes or text: fastwarc finds no record and raises nothing
                    count.n_in += 1
                    ledger.drop(READ, "warc_read_error", item="record",
                                detail=f"{name}: no WARC record found (empty, or not a WARC file)")
                return
            except Exception as e:  # noqa: BLE001 - truncated/corrupt file: counted, unit ends
                count.n_in += 1
                ledger.drop(READ, "warc_read_error", item="record", detail=f"{name}: {e}")
                return
            count.n_in += 1
            seen += 1
            prev = rec
            rtype = str(rec.record_type).rsplit(".", 1)[-1]
            url = rec.headers.get("WARC-Target-URI", "")
            rid = rec.headers.get("WARC-Record-ID", "").strip("<>")
            reason = None
            if rec.record_type == WarcRecordType.revisit:
                digest = rec.headers.get("WARC-Payload-Digest", "")
                # a revisit repeats a payload captured before: a duplicate when that capture is here
                reason = "revisit_duplicate" if digest in self._all_digests else "revisit_unresolved"
                if _content_type(rec).startswith("image/"):
                    reason = "image_resource"
            elif rec.record_type not in (WarcRecordType.response, WarcRecordType.resource):
                reason = f"record_type:{rtype}"
            elif rec.http_headers is None and rec.record_type == WarcRecordType.response:
                reason = "not_http"  # e.g. dns: records
            else:
                ctype = _content_type(rec) or rec.headers.get("Content-Type", "").split(";")[0].lower()
                status = rec.http_headers.status_code if rec.http_headers is not None else 200
                if ctype.startswith("image/"):
                    reason = "image_resource"
                elif status != 200:
                    reason = f"http_status:{status}"
                elif ctype not in HTML_TYPES:
                    reason = f"not_html:{ctype or 'unknown'}"
            if reason is not None:
                ledger.drop(READ, reason, url=url, item="record")
                continue
            try:
                raw = rec.reader.read()
                if rec.reader.tell() < rec.content_length:
                    raise ValueError("file ends inside this record (truncated)")
                body = decode_payload(raw, _headers(rec))
            except Exception as e:  # noqa: BLE001
                ledger.drop(READ, "warc_read_error", url=url, item="record", detail=f"{name}: {e}")
                return
            source = f"warc:{name}#{rid}"
            count.n_out += 1
            date = rec.headers.get("WARC-Date", "")
            yield RawPage(url=url, body=body, source=source, fetched_at=date, headers=_headers(rec),
                          id=make_doc_id(source))


class HtmlFolderSource:
    """Pages from `.html`/`.html.gz` files (a folder, recursively, or a single file). The page URL is the
    page's canonical link when it names one, else the file's `file://` URL. Images referenced by relative
    URLs are taken from files beside the page (never outside the unit's folder)."""

    def __init__(self, unit: Unit):
        self.unit = unit
        root = Path(unit.path)
        self.root = (root if root.is_dir() else root.parent).resolve()
        self.images = _LocalImages(self.root)

    def index_images(self) -> None:
        """Nothing to index: local images are read on demand."""

    def files(self) -> list[Path]:
        root = Path(self.unit.path)
        if root.is_file():
            return [root]
        return sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(HTML_SUFFIXES))

    def pages(self, ledger: Ledger) -> Iterator[RawPage]:
        count = ledger.stage(READ)
        for path in self.files():
            count.n_in += 1
            # the name under the input folder as listed (a symlinked page may point outside the folder)
            rel = path.name if Path(self.unit.path).is_file() else path.relative_to(self.unit.path).as_posix()
            try:
                raw = path.read_bytes()
                body = gzip.decompress(raw) if path.name.endswith(".gz") else raw
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                ledger.drop(READ, "unreadable_file", url=str(path), item="record", detail=str(e))
                continue
            source = f"html:{Path(self.unit.path).name}/{rel}"
            count.n_out += 1
            yield RawPage(url=path.resolve().as_uri(), body=body, source=source, id=make_doc_id(source))


class _LocalImages:
    def __init__(self, root: Path):
        self.root = root

    def fetch_many(self, urls: list[str]) -> dict[str, bytes | str]:
        out: dict[str, bytes | str] = {}
        for u in urls:
            out[u] = NOT_IN_SOURCE
            if not u.startswith("file://"):
                continue
            from urllib.parse import unquote, urlsplit

            p = Path(unquote(urlsplit(u).path)).resolve()
            if p.is_file() and p.is_relative_to(self.root):
                out[u] = p.read_bytes()
        return out


def open_source(unit: Unit) -> WarcSource | HtmlFolderSource:
    return WarcSource(unit) if unit.kind == "warc" else HtmlFolderSource(unit)
