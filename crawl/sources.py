"""Readers that turn input files into `RawPage`s plus an image lookup for the images those pages show.

A unit of work is one input: a WARC/WARC.gz file, or a folder of `.html`/`.html.gz` files.
Every record read is accounted for in the `read` stage of the ledger: it becomes a page (out) or a drop
with a reason (`record_type:request`, `image_resource`, `not_html:text/css`, `http_status:404`,
`revisit_duplicate`, `page_url_not_http`, `bad_http_status`, `warc_read_error`, ...).

WARC reading is two passes with fastwarc: pass 1 indexes image responses (by normalised URL and by payload
digest, so revisit records of images resolve too), pass 2 streams HTML pages. Payloads are decoded here,
leniently (chunked; gzip, deflate and brotli content encodings) and with bounded memory: a page or image is
read and inflated only up to its byte cap (`max_html_bytes`, `max_image_bytes`); past it the record is the
drop `html_too_large` / `image_too_large`, however far its payload would inflate.

Damage is counted, never a quiet end of the unit:
- a record whose HTTP header cannot be parsed (e.g. a header line over fastwarc's limit) is the drop
  `bad_http_header`, and reading goes on with the next record (fastwarc skips it by its Content-Length);
- a record the file ends inside (a truncated file), or whose WARC header is cut short, is the drop
  `warc_read_error`, counted once;
- bytes fastwarc cannot read (a corrupt gzip member, an unparsable WARC header) are skipped to the next record
  start (gzip member or `WARC/` line) as the drop `warc_unreadable_bytes`, naming the byte range; when no
  record start follows, the rest of the file is the drop `unit_unreadable_rest`, naming the byte offset;
- in an uncompressed WARC, bytes between one record's end (by its Content-Length) and the next record that
  fastwarc skipped quietly (the rest of a record a too-large Content-Length ran over, what a too-small one
  left) are the same drops;
- a file with no WARC record in it (empty, or not a WARC) is one counted `warc_read_error`.

A page's `fetched_at` is its WARC-Date, normalised by `warc_date`: kept as written in the standard's form,
rewritten to ISO 8601 from another readable form, else "" (counters `read/warc_date_normalised`,
`read/warc_date_unreadable`); garbage never reaches the corpus.

A folder input is confined to the folder: a page file whose resolved path lies outside it is the drop
`outside_input`; dangling links (`dangling_link`), FIFOs and other non-regular files (`not_a_regular_file`, also
for a WARC input: a name linked to /dev/zero would be read forever),
symbolic links to folders (`symlinked_folder`, not followed) and folders that cannot be listed
(`unreadable_folder`) are counted drops too.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import brotli
from fastwarc.warc import ArchiveIterator, WarcRecord, WarcRecordType

from corpus.record import make_doc_id
from corpus.stats import Ledger, as_text
from crawl.page import RawPage
from crawl.urls import normalize_url

READ = "read"
WARC_SUFFIXES = (".warc", ".warc.gz", ".warc.zst", ".wet.gz", ".wat.gz", ".wet", ".wat")
HTML_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz")
HTML_TYPES = ("text/html", "application/xhtml+xml")
NOT_IN_SOURCE = "image_not_in_source"
IMAGE_TOO_LARGE = "too_large_bytes"  # the image stage's reason for an image over images.max_bytes
# the byte caps of what a source reads; the build passes extract.max_html_bytes and images.max_bytes
MAX_HTML_BYTES = 5_000_000
MAX_IMAGE_BYTES = 20 << 20
GZIP_MAGIC = b"\x1f\x8b\x08"
# headers whose repeats are one list: the codings to undo, and robots directives (an opt-out given in the first
# of two X-Robots-Tag headers must not be lost to the second)
LIST_HEADERS = ("content-encoding", "transfer-encoding", "x-robots-tag")
MAX_CODINGS = 4  # content codings undone for one payload (`Content-Encoding: gzip, gzip`)


@dataclass(frozen=True)
class Unit:
    """One unit of work: an input file or folder; `name` is stable and file-system safe. Documents are named by
    the input's file (or folder) name, or by `label` when another input of the build has that name too
    (`label_shared_names`)."""

    path: str
    kind: str  # "warc" | "html"
    name: str
    label: str = ""

    @property
    def source_name(self) -> str:
        """The name that document sources (and so document ids) of this unit start with."""
        return self.label or Path(self.path).name


def label_shared_names(units: list[Unit], taken: set[str] | frozenset[str] = frozenset()) -> list[Unit]:
    """The units, each whose file or folder name an earlier unit (or `taken`, the names of a corpus's units)
    already has labelled with its unit name: two folders both named `html`, or two WARCs named alike in two
    folders, would give their documents the same ids (`html:html/index.html`), which dedup refuses."""
    seen = set(taken)
    out = []
    for u in units:
        if u.source_name in seen:
            u = replace(u, label=u.name)
        seen.add(u.source_name)
        out.append(u)
    return out


def discover_units(paths: list[str]) -> list[Unit]:
    """Turn resolved input paths into units, sorted by path (the order defines shard numbering)."""
    units: list[Unit] = []
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
            raise ValueError(
                f"input {p}: not a WARC file ({', '.join(WARC_SUFFIXES)}), an HTML file or a folder of HTML files"
            )
        digest = hashlib.sha1(os.fsencode(path.resolve())).hexdigest()[:8]  # (the same bytes for a UTF-8 name)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name)[:60]
        if any(u.name == f"{safe}-{digest}" for u in units):
            continue  # one input given twice (`a/x.warc.gz`, `./a/x.warc.gz`: same name and resolved path)
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
        raise ValueError(
            f"input {path}: a folder input is a folder of HTML pages, and this one holds WARC files; "
            f"give them as files, e.g. --input '{path}/*{suffix}'"
        )
    raise ValueError(f"input {path}: folder holds no HTML files ({', '.join(HTML_SUFFIXES)})")


class ImageStore:
    """Image payloads found in the same source, looked up by normalised URL."""

    def __init__(self) -> None:
        self.by_url: dict[str, bytes | str] = {}  # bytes, or why the source's copy cannot be used

    def add(self, url: str, data: bytes | str) -> None:
        self.by_url.setdefault(normalize_url(url), data)

    def fetch_many(self, urls: list[str]) -> dict[str, bytes | str]:
        """url -> bytes, or a drop reason (`image_not_in_source`, `too_large_bytes`)."""
        return {u: self.by_url.get(normalize_url(u), NOT_IN_SOURCE) for u in urls}

    def __len__(self) -> int:
        return len(self.by_url)


class PayloadTooLarge(ValueError):
    """A payload whose stored or decoded size is over the reader's byte cap."""


def dechunk(raw: bytes) -> bytes | None:
    """Undo HTTP chunked transfer encoding; None when `raw` is not validly chunked. The result is never longer
    than `raw`."""
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


def _inflate_zlib(raw: bytes, limit: int) -> bytes | None:
    """gzip or zlib stream -> at most `limit` bytes (PayloadTooLarge past it); None when `raw` is not one. A
    gzip body of several members (as gunzip and browsers read it) gives them all; a stream cut short, or a
    damaged member after the first, gives what came before."""
    out, view, pos, first = bytearray(), memoryview(raw), 0, True
    while True:
        d = zlib.decompressobj(47)  # 47: auto-detect gzip/zlib header
        while not d.eof and pos < len(raw):
            piece = view[pos : pos + (1 << 16)]  # in pieces: the bytes left after a member are never copied whole
            try:
                out += d.decompress(piece, limit + 1 - len(out))  # no further than limit + 1, whatever the ratio
            except zlib.error:
                return None if first else bytes(out)
            if len(out) > limit:
                raise PayloadTooLarge(f"inflates to more than {limit} bytes ({len(raw)} bytes stored)")
            pos += len(piece) - len(d.unused_data)
        if not d.eof or raw[pos : pos + 2] != b"\x1f\x8b":
            return bytes(out)
        first = False


def _inflate_brotli(raw: bytes, limit: int) -> bytes | None:
    """brotli stream -> at most `limit` bytes (PayloadTooLarge past it); None when `raw` is not a whole one
    (brotli has no magic number: a payload stored decoded fails here)."""
    d = brotli.Decompressor()
    try:
        out = d.process(raw, output_buffer_limit=limit + 1)
    except brotli.error:
        return None
    if len(out) > limit:
        raise PayloadTooLarge(f"inflates to more than {limit} bytes ({len(raw)} bytes stored)")
    return out if d.is_finished() else None


def decode_payload(raw: bytes, headers: dict[str, str], limit: int = MAX_HTML_BYTES) -> bytes:
    """Lenient HTTP payload decoding, as archives need: many WARCs keep a `Transfer-Encoding: chunked` or
    `Content-Encoding: gzip` header on a payload that was stored already decoded. Decode only when the
    bytes really are encoded. Memory is bounded: raises PayloadTooLarge when `raw` or what it inflates to
    is over `limit` bytes (inflation stops there)."""
    if len(raw) > limit:
        raise PayloadTooLarge(f"{len(raw)} bytes stored > {limit}")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        dechunked = dechunk(raw)
        if dechunked is not None:
            raw = dechunked
    # a list of codings (`gzip, gzip`; `identity, br`) was applied in order: undone last first, each one only
    # when the bytes really are so encoded, at most MAX_CODINGS of them (each inflation stops at `limit`)
    codings = [c.strip() for c in headers.get("content-encoding", "").lower().split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if len(codings) > MAX_CODINGS:
        return raw  # not decoded: extraction counts it
    for coding in reversed(codings):
        decoded = None
        if coding in ("gzip", "x-gzip", "deflate") and raw[:2] in (b"\x1f\x8b", b"\x78\x9c", b"\x78\x01", b"\x78\xda"):
            decoded = _inflate_zlib(raw, limit)
        elif coding == "br":
            decoded = _inflate_brotli(raw, limit)
        if decoded is not None:  # else not encoded after all (or corrupt): extraction decides
            raw = decoded
    return raw


def read_payload(rec: WarcRecord, limit: int) -> bytes:
    """The decoded HTTP payload of a record, reading at most `limit` + 1 stored bytes (PayloadTooLarge past
    the cap, stored or inflated)."""
    return decode_payload(rec.reader.read(limit + 1), _headers(rec), limit)


def _content_type(rec) -> str:
    return (rec.http_content_type or "").split(";")[0].strip().lower()


_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}", re.ASCII)


def _payload_type(rec) -> str:
    """The media type of a record's payload: its HTTP Content-Type, else (a resource record, which holds the
    payload with no HTTP header) its WARC Content-Type."""
    if rec.record_type != WarcRecordType.resource:
        return _content_type(rec)
    return _content_type(rec) or _warc_header(rec, "Content-Type").split(";")[0].strip().lower()


def _headers(rec) -> dict[str, str]:
    h = rec.http_headers
    if h is None:
        return {}
    headers = {k.lower(): v for k, v in h.items()}
    for name in LIST_HEADERS:  # a header repeated is one list (RFC 9110 5.3); other headers: the last one
        values = [v for k, v in h.items() if k.lower() == name]
        if len(values) > 1:
            headers[name] = ", ".join(values)
    return headers


def _warc_header(rec: WarcRecord, name: str) -> str:
    """A WARC header's value, "" when the record lacks it."""
    return rec.headers.get(name) or ""


def _target_uri(rec: WarcRecord) -> str:
    """A record's WARC-Target-URI, without the angle brackets the WARC 1.0 grammar put around it (an erratum
    of the standard, which wget since 1.19.4 follows: `<http://example.com/>`)."""
    uri = _warc_header(rec, "WARC-Target-URI").strip()
    return uri[1:-1].strip() if uri[:1] == "<" and uri[-1:] == ">" else uri


# WARC-Date as the WARC standard writes it (W3C-DTF to the second, optional fraction, Z or an offset)
_WARC_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)", re.ASCII)
# ClueWeb09's writer: the day of the year after the month, and an offset without a colon
_ORDINAL_DATE = re.compile(r"(\d{4})-(\d\d)-(\d{3})T(\d\d:\d\d:\d\d)([+-]\d\d)(\d\d)", re.ASCII)
_DIGITS14 = re.compile(r"\d{14}", re.ASCII)  # ARC and CDX timestamps, UTC
MAX_DATE_CHARS = 64


def warc_date(value: str) -> tuple[str, str]:
    """A record's WARC-Date as the document's `fetched_at`, and what was done to it: a date as the standard
    writes it is kept as written ("ok"); a date in another readable form (an ISO 8601 variant, an HTTP date,
    a 14-digit ARC timestamp, ClueWeb09's day of the year) is rewritten to ISO 8601 ("normalised"); a date
    that is missing or names no moment is "" ("unreadable"), never garbage in the corpus."""
    value = value.strip()
    if not value or len(value) > MAX_DATE_CHARS:
        return "", "unreadable"
    if _WARC_DATE.fullmatch(value):
        try:
            datetime.fromisoformat(value)
            return value, "ok"
        except ValueError:
            return "", "unreadable"  # the right shape, no such moment (month 13, 25 o'clock)
    dt: datetime | None = None
    try:
        if m := _ORDINAL_DATE.fullmatch(value):
            year, month, day, clock, hours, minutes = m.groups()
            dt = datetime.fromisoformat(f"{year}-01-01T{clock}{hours}:{minutes}") + timedelta(days=int(day) - 1)
            if dt.year != int(year) or dt.month != int(month):
                dt = None  # a day of the year outside the month it names
        elif _DIGITS14.fullmatch(value):
            dt = datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        elif value[:4].isdigit():
            dt = datetime.fromisoformat(value)
        else:
            dt = parsedate_to_datetime(value)
    except (ValueError, TypeError, OverflowError, IndexError):
        dt = None
    if dt is None:
        return "", "unreadable"
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # as URL dedup reads a date without an offset
    text = dt.isoformat()
    return (text[:-6] + "Z" if text.endswith("+00:00") else text), "normalised"


def _is_web_url(url: str) -> bool:
    """Whether a page's target URI is an http(s) URL with a host (urlsplit raises on e.g. `http://[::1`)."""
    try:
        parts = urlsplit(url.strip())
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _finish(rec: WarcRecord) -> bool:
    """Skip the rest of a record; True when it cannot be read to its end (the file ends inside it, or its
    bytes are damaged)."""
    try:
        rec.reader.consume()
    except Exception:  # noqa: BLE001 - e.g. a gzip data error inside the record
        return True
    return rec.reader.tell() < rec.content_length


NOT_REGULAR = "not a regular file (a device, FIFO or socket), not read"
_GAP = "bytes no WARC record covers (a Content-Length that does not match its record?)"


def _record_end(f: BinaryIO, start: int, content_length: int) -> int | None:
    """Where the record of an uncompressed WARC starting at `start` ends: its header, the blank line, then
    `content_length` bytes; None when the header's end is not within its first 64 KiB."""
    for size in (1 << 12, 1 << 16):  # most WARC headers are well under 4 KiB
        f.seek(start)
        head = f.read(size)
        cut = [(i, n) for i, n in ((head.find(b"\r\n\r\n"), 4), (head.find(b"\n\n"), 2)) if i >= 0]
        if cut:
            i, n = min(cut)
            return start + i + n + content_length
    return None


def _holds_data(f: BinaryIO, start: int, end: int) -> bool:
    """Whether bytes `start`..`end` of a file are more than the blank lines that separate records."""
    f.seek(start)
    while start < end:
        chunk = f.read(min(1 << 20, end - start))
        if not chunk:
            return False
        if chunk.strip():
            return True
        start += len(chunk)
    return False


def _member_end(m: mmap.mmap, start: int, stop: int) -> int | None:
    """Where the gzip member at `start` ends (None: it is damaged or does not end before `stop`); inflated in
    bounded pieces, the output thrown away."""
    d = zlib.decompressobj(31)
    pos = start
    try:
        while pos < stop and not d.eof:
            fed = min(stop, pos + (1 << 16))
            d.decompress(m[pos:fed], 1 << 20)
            while d.unconsumed_tail and not d.eof:
                d.decompress(d.unconsumed_tail, 1 << 20)
            pos = fed
    except zlib.error:
        return None
    return pos - len(d.unused_data) if d.eof else None


def _gzip_holds_data(m: mmap.mmap, start: int, end: int) -> bool:
    """Whether bytes `start`..`end` of a gzip WARC are more than empty gzip members and blank bytes: e.g. a
    member fastwarc skipped quietly because it holds no WARC record (an unknown version line, other text)."""
    while start < end:
        if not m[start:end].strip():
            return False
        d = zlib.decompressobj(31)
        try:
            if d.decompress(m[start : min(end, start + (1 << 16))], 4096).strip():
                return True
        except zlib.error:
            return True  # not gzip at all
        nxt = _member_end(m, start, end)
        if nxt is None:
            return True
        start = nxt
    return False


_SKIPPED_MEMBER = "gzip member(s) holding no WARC record fastwarc reads (no or an unknown WARC/ version line?)"


# HTTP headers that shape what a page becomes (decoding, charset, robots): two captures of a URL are the same
# page only when these are equal too
CAPTURE_HEADERS = ("content-type", "content-encoding", "transfer-encoding", "x-robots-tag")


def capture_key(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, ...]:
    """What makes two captures the same page: the URL, the decoded payload and the shaping headers."""
    return (url, hashlib.sha1(body).hexdigest(), *(headers.get(h, "") for h in CAPTURE_HEADERS))


@dataclass(frozen=True)
class _Unreadable:
    """Bytes of a WARC file fastwarc could not read: `start` to `end` (None: the rest of the file)."""

    start: int
    end: int | None
    size: int
    error: str

    def describe(self, name: str) -> str:
        if self.end is None:
            return f"{name}: unreadable from byte {self.start} of {self.size} to the end ({self.error})"
        return f"{name}: bytes {self.start}-{self.end} of {self.size} unreadable, skipped ({self.error})"


class WarcSource:
    """Pages and images of one WARC file."""

    def __init__(self, unit: Unit, max_html_bytes: int = MAX_HTML_BYTES, max_image_bytes: int = MAX_IMAGE_BYTES):
        self.unit = unit
        self.max_html_bytes = max_html_bytes
        self.max_image_bytes = max_image_bytes
        self.images = ImageStore()
        self._digests: dict[str, bytes] = {}  # payload digest -> image bytes
        self._all_digests: set[str] = set()  # payload digests of every response in the file
        self._too_large: set[int] = set()  # file offsets of image records over max_image_bytes
        self._captures: dict[tuple[str, ...], list[tuple[str, str]]] = {}  # capture_key -> [(fetched_at, id)]
        self._indexed = False
        self._file: BinaryIO | None = None  # for `_find`
        self._first_with_id: dict[str, int] = {}  # WARC-Record-ID -> offset of the first record with it

    def _records(self) -> Iterator[tuple[int, WarcRecord] | _Unreadable]:
        try:
            yield from self._read_records()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _read_records(self) -> Iterator[tuple[int, WarcRecord] | _Unreadable]:
        """(file offset, record) for every record fastwarc can read, and an `_Unreadable` for each stretch it
        cannot: after a read error, or a record that runs past the end of the file, reading starts again at
        the next record start (a gzip member, a `WARC/` line). The consumer reads each record before the next
        is asked for; HTTP headers are parsed by the consumer (`rec.parse_http()`), so one bad header costs one
        record."""
        path = self.unit.path
        if not stat.S_ISREG(os.stat(path).st_mode):  # /dev/zero, a FIFO: reading would never end
            yield _Unreadable(0, None, 0, NOT_REGULAR)
            return
        size = os.path.getsize(path)
        plain = not path.endswith((".gz", ".zst"))  # records are byte ranges of the file itself
        offset = 0
        while True:
            low = offset  # where unread bytes begin if this pass fails
            error = None  # why this pass ended early
            counted = False  # whether the bytes from `low` on belong to a record the consumer has counted
            end = None  # plain files: where the last record read ends, by its Content-Length
            last = None  # gzip files: where the last record read starts
            restart = None  # gzip files: where to read on after members fastwarc skipped with records in them
            with open(path, "rb") as f, open(path, "rb") as g:  # g: our own reads of record bounds
                f.seek(offset)
                # quirks_mode: old and odd WARCs (ClueWeb, WARC/0.18); payload decoding is ours, and lenient
                it = ArchiveIterator(f, parse_http=False, auto_decode="none", quirks_mode=True)
                try:
                    for rec in it:
                        start = rec.stream_pos  # fastwarc counts from the start of the file, not of the pass
                        if end is not None and start > end and _holds_data(g, end, start):
                            # fastwarc skipped to the next `WARC/` line quietly: bytes no record covers, e.g.
                            # the rest of a record whose start a Content-Length too large ran over
                            yield _Unreadable(end, start, size, _GAP)
                        skipped = self._skipped_members(offset, start, False) if last is None else None
                        skipped = self._skipped_members(last, start) if last is not None else skipped
                        if skipped is not None:
                            # fastwarc may have skipped good records with the bad member: read on from the
                            # first member it reads a record at
                            resume = self._record_member(skipped, start)
                            if resume != skipped:
                                yield _Unreadable(skipped, resume or start, size, _SKIPPED_MEMBER)
                            if resume is not None and resume > offset:  # (always forward)
                                restart = resume
                                break
                        last = start
                        length = rec.content_length  # the consumer's parse_http() makes it the payload's
                        yield start, rec
                        low = start + 1
                        if _finish(rec):  # damaged, or it runs past the end of the file (perhaps over records)
                            error, counted = "record not readable to its end", True
                            break
                        end = _record_end(g, start, length) if plain else None
                except Exception as e:  # noqa: BLE001 - fastwarc raises OSError and others for damaged bytes
                    error = str(e) or type(e).__name__
                tail = error is None and end is not None and end < size and _holds_data(g, end, size)
            if restart is not None:
                offset = restart
                continue
            if tail and end is not None:
                yield _Unreadable(end, None, size, _GAP)
                return
            if error is None:
                rest = self._unread_member(low, size)
                if rest is not None and rest > offset:
                    # fastwarc stopped quietly before a member that may hold a record (after an empty member):
                    # read on from there
                    skipped = self._skipped_members(offset, rest, False) if last is None else None
                    skipped = self._skipped_members(last, rest) if last is not None else skipped
                    if skipped is not None:
                        yield _Unreadable(skipped, rest, size, _SKIPPED_MEMBER)
                    offset = rest
                    continue
                if rest is not None:  # fastwarc stops quietly at a gzip member cut inside its header
                    yield _Unreadable(rest, None, size, "a gzip member that ends before its WARC record does")
                    return
                skipped = self._skipped_members(offset, size, False) if last is None else None
                skipped = self._skipped_members(last, size) if last is not None else skipped
                if skipped is not None:
                    yield _Unreadable(skipped, None, size, _SKIPPED_MEMBER)
                return
            nxt = self._next_record_start(max(low, offset + 1), size)  # always forward
            if not counted and low < size:
                yield _Unreadable(low, nxt, size, error)
            if nxt is None:
                return
            offset = nxt

    def _next_record_start(self, after: int, size: int) -> int | None:
        """Offset of the first record start at or after `after` that fastwarc can read a record from."""
        if after >= size:
            return None
        gz = self.unit.path.endswith(".gz")
        marker = GZIP_MAGIC if gz else b"WARC/"
        with open(self.unit.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            pos = after
            while (pos := m.find(marker, pos)) >= 0:
                if gz or pos == 0 or m[pos - 1 : pos] == b"\n":
                    f.seek(pos)
                    try:
                        next(iter(ArchiveIterator(f, parse_http=False, auto_decode="none", quirks_mode=True)))
                        return pos
                    except Exception:  # noqa: BLE001, S110 - not a readable record here: try the next start
                        pass
                pos += 1
        return None

    def _skipped_members(self, after: int, before: int, record: bool = True) -> int | None:
        """In a gzip WARC, where bytes begin that fastwarc skipped quietly between `after` and `before` (the
        next record's start, or the file's end): whole gzip members whose text is no WARC record. With
        `record`, `after` is where a record read starts and the skipped bytes can begin only after its member
        (the usual case, none, is decided by one search for a member start). None when there are none."""
        if not self.unit.path.endswith(".gz") or before <= after:
            return None
        if record and self._find(GZIP_MAGIC, after + 1, before) < 0:
            return None
        with open(self.unit.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            end = _member_end(m, after, before) if record else after
            if end is None or end >= before:
                return None
            return end if _gzip_holds_data(m, end, before) else None

    def _find(self, marker: bytes, start: int, end: int) -> int:
        """The first offset of `marker` in bytes `start`..`end` of the file, or -1 (read in pieces; the file
        stays open for the next search)."""
        if self._file is None or self._file.closed:
            self._file = open(self.unit.path, "rb")  # noqa: SIM115 - closed when `_records` ends
        f = self._file
        pos = start
        while pos < end:
            f.seek(pos)
            piece = f.read(min(1 << 20, end - pos))
            if not piece:
                return -1
            at = piece.find(marker)
            if at >= 0 and pos + at + len(marker) <= end:
                return pos + at
            pos += max(1, len(piece) - len(marker) + 1)
        return -1

    def _record_member(self, start: int, before: int) -> int | None:
        """The first gzip member from `start` (a member start) up to `before` at which fastwarc reads a record
        that starts there, or None."""
        with open(self.unit.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            pos: int | None = start
            while pos is not None and pos < before:
                f.seek(pos)
                try:
                    rec = next(iter(ArchiveIterator(f, parse_http=False, auto_decode="none", quirks_mode=True)))
                    if rec.stream_pos == pos:
                        return pos
                except Exception:  # noqa: BLE001, S110 - no record here: try the next member
                    pass
                pos = _member_end(m, pos, before)
        return None

    def _unread_member(self, after: int, size: int) -> int | None:
        """Offset of a gzip member at or after `after` that fastwarc ended on without reading it: one whose
        first bytes inflate to the start of a WARC record (or to nothing yet, cut that short)."""
        if not self.unit.path.endswith(".gz") or after >= size:
            return None
        with open(self.unit.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            pos = after
            while (pos := m.find(GZIP_MAGIC, pos)) >= 0:
                d = zlib.decompressobj(31)
                try:
                    head = d.decompress(m[pos : pos + 4096], 5)
                except zlib.error:
                    head = b"-"
                if b"WARC/".startswith(head) and not (d.eof and not head):  # (an empty member holds nothing)
                    return pos
                pos += 1
        return None

    def index_images(self, captures: bool = False) -> None:
        """Pass 1: image responses and image revisits, by URL and payload digest; with `captures`, also the
        HTML pages by `capture_key` (see `same_captures`)."""
        revisits: list[tuple[str, str]] = []
        for item in self._records():
            if isinstance(item, _Unreadable):
                continue  # pass 2 meets the same bytes and counts them
            offset, rec = item
            self._first_with_id.setdefault(_warc_header(rec, "WARC-Record-ID"), offset)
            rtype = rec.record_type
            if rtype not in (WarcRecordType.response, WarcRecordType.resource, WarcRecordType.revisit):
                continue
            if "Content-Length" not in rec.headers:
                continue  # pass 2 counts it
            try:
                rec.parse_http(auto_decode="none", quirks_mode=True)
            except Exception:  # noqa: BLE001, S112 - pass 2 counts the record as bad_http_header
                continue
            url = _target_uri(rec)
            digest = _warc_header(rec, "WARC-Payload-Digest")
            if rtype != WarcRecordType.revisit and digest:
                self._all_digests.add(digest)
            if captures and self._reason(offset, rec) is None:
                self._add_capture(offset, rec, url)
                continue
            if not _payload_type(rec).startswith("image/"):
                continue  # (an image resource record has its type in the WARC header only)
            if rtype == WarcRecordType.revisit:
                if digest:
                    revisits.append((url, digest))
                continue
            if rec.http_headers is not None and rec.http_headers.status_code != 200:
                continue
            try:
                data: bytes | str = read_payload(rec, self.max_image_bytes)
            except PayloadTooLarge:
                self._too_large.add(offset)
                data = IMAGE_TOO_LARGE  # pages showing it: the image stage's drop for an image over the cap
            except Exception:  # noqa: BLE001, S112 - damaged bytes: pass 2 counts the record
                continue
            if _finish(rec):
                continue  # truncated: pass 2 counts the record, no page gets its partial bytes
            self.images.add(url, data)
            if digest and isinstance(data, bytes):
                self._digests.setdefault(digest, data)
        for url, digest in revisits:
            if digest in self._digests:
                self.images.add(url, self._digests[digest])
        self._indexed = True

    def _add_capture(self, offset: int, rec: WarcRecord, url: str) -> None:
        """Record an HTML page of pass 1 under its capture key, when pass 2 will read it whole."""
        try:
            body = read_payload(rec, self.max_html_bytes)
        except Exception:  # noqa: BLE001 - too large or damaged: pass 2 counts the record, no page
            return
        if _finish(rec):
            return
        entry = (warc_date(_warc_header(rec, "WARC-Date"))[0], make_doc_id(self._source(offset, rec)))
        self._captures.setdefault(capture_key(url, body, _headers(rec)), []).append(entry)

    def _source(self, offset: int, rec: WarcRecord) -> str:
        """Where a page comes from, `warc:FILE#RECORD-ID`, which makes its document id. A record whose id an
        earlier record of the file already has (a writer that repeats ids, or none) gets its byte offset too,
        so that two pages never share a document id."""
        rid = _warc_header(rec, "WARC-Record-ID")
        source = as_text(f"warc:{self.unit.source_name}#{rid.strip('<>')}")  # (a file name that is not UTF-8)
        return source if self._first_with_id.get(rid, offset) == offset else f"{source}@{offset}"

    def same_captures(self, page: RawPage) -> list[tuple[str, str]]:
        """(fetched_at, document id) of every page of this file with the page's URL, payload and shaping
        headers, the page itself included: captures that become the same document but for their fetch time
        and id. Empty unless pass 1 ran with `captures`."""
        return self._captures.get(capture_key(page.url, page.body, page.headers), [])

    def _reason(self, offset: int, rec: WarcRecord) -> str | None:
        """Why a record is not a page (None: it is an HTML page)."""
        if "Content-Length" not in rec.headers:
            return "warc_read_error"  # a WARC header cut short (or malformed): its record cannot be delimited
        if rec.record_type == WarcRecordType.revisit:
            if _content_type(rec).startswith("image/"):
                return "image_resource"
            # a revisit repeats a payload captured before: a duplicate when that capture is here
            digest = _warc_header(rec, "WARC-Payload-Digest")
            return "revisit_duplicate" if digest in self._all_digests else "revisit_unresolved"
        if rec.record_type not in (WarcRecordType.response, WarcRecordType.resource):
            return f"record_type:{str(rec.record_type).rsplit('.', 1)[-1]}"
        if rec.http_headers is None and rec.record_type == WarcRecordType.response:
            return "not_http"  # e.g. dns: records
        ctype = _payload_type(rec)
        status = rec.http_headers.status_code if rec.http_headers is not None else 200
        if ctype.startswith("image/"):
            return "image_too_large" if offset in self._too_large else "image_resource"
        if status is None or not 100 <= status <= 999:
            return "bad_http_status"  # an empty or garbled response block: no (three-digit) status to read
        if status != 200:
            return f"http_status:{status}"
        if ctype not in HTML_TYPES:
            # a reason names the type only when it is one (RFC 6838 names): a garbled header would put control
            # characters (terminal escapes) into stats.json and the summary, and a new reason per record
            return f"not_html:{ctype or 'unknown'}" if not ctype or _MEDIA_TYPE.fullmatch(ctype) else "not_html:invalid"
        if not _is_web_url(_target_uri(rec)):
            return "page_url_not_http"  # javascript:, data:, urn:, empty, unparsable: no page to resolve images on
        return None

    def pages(self, ledger: Ledger) -> Iterator[RawPage]:
        """Pass 2: HTML responses as pages; every other record, and every stretch of unreadable bytes, a
        counted drop of the read stage."""
        assert self._indexed, "index_images() first"
        count = ledger.stage(READ)
        name = Path(self.unit.path).name
        seen, n_before = 0, count.n_in
        for item in self._records():
            count.n_in += 1
            if isinstance(item, _Unreadable):
                if item.error == NOT_REGULAR:
                    ledger.drop(READ, "not_a_regular_file", item="record", detail=f"{self.unit.path}: {NOT_REGULAR}")
                elif seen == 0 and item.end is None:  # random bytes or text: no record at all
                    ledger.drop(
                        READ,
                        "warc_read_error",
                        item="record",
                        detail=f"{name}: no WARC record found (empty, or not a WARC file): {item.error}",
                    )
                else:
                    why = "unit_unreadable_rest" if item.end is None else "warc_unreadable_bytes"
                    ledger.drop(READ, why, item="record", detail=item.describe(name))
                continue
            seen += 1
            offset, rec = item
            url = _target_uri(rec)
            try:
                rec.parse_http(auto_decode="none", quirks_mode=True)
            except Exception as e:  # noqa: BLE001 - e.g. "Maximum header length exceeded": this record only
                truncated = _finish(rec)
                why = "warc_read_error" if truncated else "bad_http_header"
                ledger.drop(READ, why, url=url, item="record", detail=f"{name}: record at byte {offset}: {e}")
                continue
            reason, detail, body = self._reason(offset, rec), "", b""
            if reason == "warc_read_error":
                detail = f"{name}: record at byte {offset}: WARC header without Content-Length (cut short?)"
            elif reason == "bad_http_status":
                detail = f"{name}: record at byte {offset}: no HTTP status line (an empty or garbled response block)"
            elif reason == "not_html:invalid":
                detail = (
                    f"{name}: record at byte {offset}: Content-Type {_payload_type(rec)[:200]!r} names no media type"
                )
            elif reason == "page_url_not_http":
                detail = f"{name}: record at byte {offset}: WARC-Target-URI {url[:200]!r} is not an http(s) URL"
            if reason is None:
                try:
                    body = read_payload(rec, self.max_html_bytes)
                except PayloadTooLarge as e:
                    reason, detail = "html_too_large", f"{name}: record at byte {offset}: {e}"
                except Exception as e:  # noqa: BLE001 - damaged bytes inside the record
                    reason, detail = "warc_read_error", f"{name}: record at byte {offset}: {e}"
            if _finish(rec) and reason != "warc_read_error":  # its fate is known once it is read to its end
                reason, detail = (
                    "warc_read_error",
                    f"{name}: file ends inside a record (truncated), record at byte {offset}",
                )
            if reason is not None:
                ledger.drop(READ, reason, url=url, item="record", detail=detail)
                continue
            source = self._source(offset, rec)
            fetched_at, how = warc_date(_warc_header(rec, "WARC-Date"))
            if how != "ok":  # the page goes on, its date rewritten or left empty
                ledger.counters[f"{READ}/warc_date_{how}"] += 1
            count.n_out += 1
            yield RawPage(
                url=url,
                body=body,
                source=source,
                fetched_at=fetched_at,
                headers=_headers(rec),
                id=make_doc_id(source),
            )
        if count.n_in == n_before:  # empty, or random bytes or text: fastwarc finds no record and raises nothing
            count.n_in += 1
            ledger.drop(
                READ,
                "warc_read_error",
                item="record",
                detail=f"{name}: no WARC record found (empty, or not a WARC file)",
            )


class HtmlFolderSource:
    """Pages from `.html`/`.html.gz` files (a folder, recursively, or a single file). The page URL is the
    file's `file://` URL. Pages and the images referenced
    by relative URLs are read only from inside the unit's folder: a link out of it is a counted drop."""

    def __init__(self, unit: Unit, max_html_bytes: int = MAX_HTML_BYTES, max_image_bytes: int = MAX_IMAGE_BYTES):
        self.unit = unit
        self.max_html_bytes = max_html_bytes
        root = Path(unit.path)
        self.root = (root if root.is_dir() else root.parent).resolve()
        self.images = _LocalImages(self.root, max_image_bytes)

    def index_images(self, captures: bool = False) -> None:
        """Nothing to index: local images are read on demand."""

    def same_captures(self, page: RawPage) -> list[tuple[str, str]]:
        """A folder holds each page once."""
        return []

    def entries(self) -> list[tuple[Path, str | None]]:
        """(path, None) for each page file of the unit, (path, drop reason) for each entry that looks like one
        but is not read: a link whose target lies outside the folder, a dangling link, a FIFO or other non-regular
        file, a symbolic link to a folder (not followed), a folder that cannot be listed. Sorted by path."""
        top = Path(self.unit.path)
        if not top.is_dir():  # a page file given as an input of its own (a FIFO would block the read)
            return [(top, None if top.is_file() else "not_a_regular_file")]
        found: list[tuple[Path, str | None]] = []
        errors: list[OSError] = []
        for dirpath, dirnames, filenames in os.walk(top, onerror=errors.append):  # never descends into links
            here = Path(dirpath)
            found += [(here / d, "symlinked_folder") for d in dirnames if (here / d).is_symlink()]
            found += [(here / f, self._refusal(here / f)) for f in filenames if f.lower().endswith(HTML_SUFFIXES)]
        found += [(Path(e.filename or top), "unreadable_folder") for e in errors]
        return sorted(found)

    def _refusal(self, path: Path) -> str | None:
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling link, or a loop of links
            return "dangling_link"
        if not resolved.is_relative_to(self.root):
            return "outside_input"
        return None if stat.S_ISREG(resolved.stat().st_mode) else "not_a_regular_file"

    def pages(self, ledger: Ledger) -> Iterator[RawPage]:
        count = ledger.stage(READ)
        top = Path(self.unit.path)
        for path, refusal in self.entries():
            count.n_in += 1
            if refusal is not None:
                ledger.drop(
                    READ,
                    refusal,
                    url=str(path),
                    item="record",
                    detail=f"{path} -> {os.path.realpath(path)}" if path.is_symlink() else str(path),
                )
                continue
            try:
                body = _read_page_file(path, self.max_html_bytes)
            except PayloadTooLarge as e:
                ledger.drop(READ, "html_too_large", url=str(path), item="record", detail=f"{path}: {e}")
                continue
            except OSError as e:
                ledger.drop(READ, "unreadable_file", url=str(path), item="record", detail=str(e))
                continue
            rel = path.name if not top.is_dir() else path.relative_to(top).as_posix()
            source = as_text(f"html:{self.unit.source_name}/{rel}")  # (a file name that is not UTF-8)
            count.n_out += 1
            yield RawPage(url=path.resolve().as_uri(), body=body, source=source, id=make_doc_id(source))


def _read_page_file(path: Path, limit: int) -> bytes:
    """A page file's bytes, `.gz` inflated; PayloadTooLarge past `limit` (stored or inflated), OSError when it
    cannot be read or is not gzip."""
    with open(path, "rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"over {limit} bytes stored")
    if not path.name.lower().endswith(".gz"):
        return raw
    out, view, pos = bytearray(), memoryview(raw), 0
    while True:  # every gzip member, as gunzip reads them (cat a.gz b.gz, bgzip's blocks: one page)
        d = zlib.decompressobj(31)
        while not d.eof:
            if pos >= len(raw):
                raise OSError(f"{path}: gzip data cut short")
            piece = view[pos : pos + (1 << 16)]  # in pieces: the bytes left after a member are never copied whole
            try:
                out += d.decompress(piece, limit + 1 - len(out))
            except zlib.error as e:
                raise OSError(f"{path}: not gzip data, or corrupt ({e})") from e
            if len(out) > limit:
                raise PayloadTooLarge(f"inflates to more than {limit} bytes ({len(raw)} bytes stored)")
            pos += len(piece) - len(d.unused_data)
        if raw[pos : pos + 2] != b"\x1f\x8b":  # bytes after the last member, as gunzip, are left
            return bytes(out)


class _LocalImages:
    """Images of a folder input: regular files inside it, up to the image byte cap."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes

    def fetch_many(self, urls: list[str]) -> dict[str, bytes | str]:
        out: dict[str, bytes | str] = {}
        for u in urls:
            out[u] = NOT_IN_SOURCE
            if not u.startswith("file://"):
                continue
            p = Path(unquote(urlsplit(u).path)).resolve()
            if not (p.is_relative_to(self.root) and p.is_file()):
                continue
            try:
                with open(p, "rb") as f:
                    data = f.read(self.max_bytes + 1)
            except OSError:
                continue  # unreadable: as good as absent
            out[u] = IMAGE_TOO_LARGE if len(data) > self.max_bytes else data
        return out


def open_source(
    unit: Unit, max_html_bytes: int = MAX_HTML_BYTES, max_image_bytes: int = MAX_IMAGE_BYTES
) -> WarcSource | HtmlFolderSource:
    """The reader of a unit, reading pages up to `max_html_bytes` and images up to `max_image_bytes` (the
    build passes extract.max_html_bytes and images.max_bytes)."""
    kind = WarcSource if unit.kind == "warc" else HtmlFolderSource
    return kind(unit, max_html_bytes=max_html_bytes, max_image_bytes=max_image_bytes)
