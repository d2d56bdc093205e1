"""Replicated dev WARCs for throughput runs at scale: each input WARC copied `n` times, every HTML response of
copy k > 0 moved to a distinct URL, so no two pages share a URL.

Copy k of an HTML response gets the host `rK.<host>` in its WARC-Target-URI (so URL dedup and the
repeated-capture cut see distinct pages) and a `<base href="<original URL>">` right after `<head>` (where the
page has no `<base>` of its own), so its relative image URLs still resolve to the image records of the copy,
which keep their original URLs. The body is stored decoded (no chunked transfer or content encoding) with a
matching Content-Length. Every other record (images, requests, metadata, revisits) is copied byte for byte.
The text of the pages is unchanged: the global exact/MinHash dedup removes the copies after they have been
read, extracted and filtered, which the bench reports (see docs/benchmarks.md, "Build throughput").

    .venv/bin/python -m bench.replicate OUT_DIR --copies 13
"""

from __future__ import annotations

import argparse
import gzip
import io
import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

REAL_WARC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "dev" / "warc"
_HEAD = re.compile(rb"<head(\s[^>]*)?>", re.IGNORECASE)
_BASE = re.compile(rb"<base\s", re.IGNORECASE)
_DROPPED_HTTP = {"transfer-encoding", "content-encoding", "content-length"}
_RECOMPUTED_WARC = {"warc-target-uri", "content-length", "warc-block-digest", "warc-payload-digest", "warc-record-id"}


def dev_warcs(folder: Path = REAL_WARC) -> list[Path]:
    """The WARC files of the dev set that hold pages (WET/WAT files hold none)."""
    if not folder.is_dir():
        raise SystemExit(f"dev WARCs not found at {folder} (../shared/data/real)")
    return sorted(p for p in folder.iterdir() if p.name.endswith((".warc", ".warc.gz")))


def replica_url(url: str, k: int) -> str:
    """`url` with the host `r<k>.<host>`: a distinct page for every k."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"r{k}.{parts.netloc}"))


def with_base(body: bytes, url: str) -> bytes:
    """`body` with `<base href=url>` after its `<head>` (or at the start), unless it has a `<base>` already or
    the URL is not ASCII (inserted as bytes into a page of any ASCII-compatible charset)."""
    if _BASE.search(body) or not url.isascii() or '"' in url:
        return body
    tag = f'<base href="{url}">'.encode()
    m = _HEAD.search(body)
    at = m.end() if m else 0
    return body[:at] + tag + body[at:]


def _is_html(record) -> bool:
    if record.rec_type != "response" or record.http_headers is None:
        return False
    return "html" in (record.http_headers.get_header("Content-Type") or "").lower()


def replicate_file(src: Path, dst: Path, k: int) -> int:
    """Copy k of one WARC file (see the module doc). Returns the number of HTML responses moved."""
    raw = src.read_bytes()
    compressed = src.name.endswith(".gz")
    moved = 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        writer = WARCWriter(out, gzip=compressed)
        it = ArchiveIterator(f)
        for record in it:
            html = _is_html(record)
            if html:
                body = record.content_stream().read()
            it.read_to_end()
            start, length = it.get_record_offset(), it.get_record_length()
            if not html:  # a gzip member, or (uncompressed) the record without its closing blank lines
                out.write(raw[start : start + length] + (b"" if compressed else b"\r\n\r\n"))
                continue
            url = record.rec_headers.get_header("WARC-Target-URI")
            http = StatusAndHeaders(
                record.http_headers.statusline,
                [(n, v) for n, v in record.http_headers.headers if n.lower() not in _DROPPED_HTTP],
                protocol=record.http_headers.protocol,
            )
            body = with_base(body, url)
            http.add_header("Content-Length", str(len(body)))
            headers = {n: v for n, v in record.rec_headers.headers if n.lower() not in _RECOMPUTED_WARC}
            old_id = record.rec_headers.get_header("WARC-Record-ID") or url
            headers["WARC-Record-ID"] = f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{old_id}#{k}')}>"
            new = writer.create_warc_record(
                replica_url(url, k),
                "response",
                payload=io.BytesIO(body),
                http_headers=http,
                warc_headers_dict=headers,
            )
            writer.write_record(new)
            moved += 1
    if compressed:  # every member must still read as gzip
        gzip.decompress(dst.read_bytes())
    return moved


def replicate(sources: list[Path], out: Path, copies: int) -> list[Path]:
    """`copies` copies of every source into `out` (copy 0 is the file itself, linked), named `rK-<name>`."""
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for src in sources:
        for k in range(copies):
            dst = out / f"r{k:02d}-{src.name}"
            if k == 0:
                dst.write_bytes(src.read_bytes())
            else:
                replicate_file(src, dst, k)
            made.append(dst)
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--copies", type=int, default=13)
    args = ap.parse_args()
    made = replicate(dev_warcs(), args.out, args.copies)
    print(f"{len(made)} files in {args.out}")


if __name__ == "__main__":
    main()
