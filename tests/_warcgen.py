"""Hostile and ordinary WARC inputs, generated inside the tests (no committed binary blobs)."""

from __future__ import annotations

import gzip
import struct
import uuid
import zlib
from pathlib import Path

ARTICLE = (
    "<p>The harbour town kept its old market hall, and every Saturday the fishermen sold their catch "
    "under its arches while the bakers set out bread on long wooden tables beside them.</p>"
    "<p>Visitors who came by the morning ferry walked up the hill to the church, then down again to the "
    "quay, where the cafes opened their shutters and the first coffee of the day was poured.</p>"
)


def page_html(title: str, extra: str = "") -> bytes:
    return (
        f"<html><head><title>{title}</title></head><body><article><h1>{title}</h1>{ARTICLE}{extra}"
        f"</article></body></html>"
    ).encode()


def http_response(
    body: bytes, content_type: str = "text/html", headers: dict[str, str] | None = None, status: str = "200 OK"
) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def warc_record(
    url: str, block: bytes, rtype: str = "response", date: str = "2024-05-01T12:00:00Z", capture: int = 0
) -> bytes:
    """One WARC record; `capture` numbers repeated captures of a URL (it changes the record id)."""
    rid = uuid.uuid5(uuid.NAMESPACE_URL, url + rtype + (f"#{capture}" if capture else ""))
    head = (
        f"WARC/1.0\r\nWARC-Type: {rtype}\r\nWARC-Target-URI: {url}\r\nWARC-Date: {date}\r\n"
        f"WARC-Record-ID: <urn:uuid:{rid}>\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(block)}\r\n\r\n"
    )
    return head.encode() + block + b"\r\n\r\n"


def page_record(url: str, title: str | None = None, extra: str = "") -> bytes:
    return warc_record(url, http_response(page_html(title or url.rsplit("/", 1)[-1], extra)))


def write_warc(path: Path, records: list[bytes]) -> Path:
    """Records as a WARC file; one gzip member per record when the name ends in .gz."""
    gz = path.name.endswith(".gz")
    path.write_bytes(b"".join(gzip.compress(r, 6) if gz else r for r in records))
    return path


def deflate_bomb(size: int, container: str = "gzip") -> bytes:
    """A gzip (or zlib) stream of `size` spaces (rounded down to 16 MiB) made in about a second: one
    full-flushed deflate segment of 16 MiB of spaces (about 16 KB), repeated."""
    chunk = 16 << 20
    n = max(1, size // chunk)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = c.compress(b" " * chunk) + c.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, dictionary reset
    deflate = segment * n + b"\x03\x00"  # an empty final block
    spaces = b" " * chunk
    if container == "zlib":
        adler = 1
        for _ in range(n):
            adler = zlib.adler32(spaces, adler)
        return b"\x78\xda" + deflate + struct.pack(">I", adler)
    crc = 0
    for _ in range(n):
        crc = zlib.crc32(spaces, crc)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + deflate + struct.pack("<II", crc, (n * chunk) & 0xFFFFFFFF)
