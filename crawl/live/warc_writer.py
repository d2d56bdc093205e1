"""Size-rotated, gzip WARC files written with warcio, with a crawl-state sidecar per file.

A file is written as `NAME.warc.gz.open` and renamed to `NAME.warc.gz` when closed. Right before the rename,
the state entries gathered while the file was open (one JSON line per URL outcome, e.g. the crawler's
done-list) are written atomically to `NAME.state.jsonl`. A file counts as archived only once both exist
(`closed_segments`), so a process killed at any point loses at most the open file, whose URLs are simply
fetched again; nothing archived is fetched twice.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

OPEN_SUFFIX = ".open"
WARC_SUFFIX = ".warc.gz"
STATE_SUFFIX = ".state.jsonl"

# hop-by-hop framing that no longer describes the payload we store (it is stored de-chunked)
_DROP_HEADERS = {"transfer-encoding"}


def closed_segments(directory: Path, prefix: str = "") -> Iterator[tuple[Path, Path]]:
    """(warc, state) pairs of closed files, sorted by name."""
    for warc in sorted(Path(directory).glob(f"{prefix}*{WARC_SUFFIX}")):
        state = warc.with_name(warc.name[: -len(WARC_SUFFIX)] + STATE_SUFFIX)
        if state.exists():
            yield warc, state


def read_state(directory: Path, prefix: str = "") -> Iterator[dict[str, Any]]:
    """The URL outcomes of the closed WARC files of a crawl folder; a damaged state line (not UTF-8 JSON, no
    `url`) is a ValueError naming the file and line."""
    for _, state in closed_segments(directory, prefix):
        with open(state, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    entry = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise ValueError(f"{state} line {n}: damaged crawl state, not JSON ({e})") from None
                if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
                    raise ValueError(f"{state} line {n}: damaged crawl state, not an object with a 'url'")
                yield entry


def clean_unfinished(directory: Path, prefix: str) -> list[str]:
    """Remove open files and state files without their WARC (left by a killed run); return their names."""
    removed = []
    d = Path(directory)
    for p in sorted(d.glob(f"{prefix}*{OPEN_SUFFIX}")):
        p.unlink()
        removed.append(p.name)
    for p in sorted(d.glob(f"{prefix}*{STATE_SUFFIX}")):
        if not p.with_name(p.name[: -len(STATE_SUFFIX)] + WARC_SUFFIX).exists():
            p.unlink()
            removed.append(p.name)
    return removed


# payloads that are compressed already (JPEG, PNG, WebP, ...): deflate gains a few percent on them at the cost of
# most of an image fetch's CPU (~40 MB/s per core at any level), so their records are stored gzip members
# (level 0: still one valid gzip member per record, read by every WARC reader)
STORED = 0
_COMPRESSED_TYPES = (
    "image/jpeg",
    "image/jpg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/avif",
    "image/heic",
    "image/heif",
    "video/",
    "audio/",
    "application/zip",
    "application/gzip",
    "application/x-gzip",
    "application/pdf",
)


def stored_as_is(response_headers: list[tuple[str, str]]) -> bool:
    """Whether a response's payload is a compressed format (by its Content-Type), sent without a
    Content-Encoding, so gzip would not shrink it."""
    headers = {k.lower(): v.strip().lower() for k, v in response_headers}
    if headers.get("content-encoding", "identity") not in ("", "identity"):
        return False
    return headers.get("content-type", "").startswith(_COMPRESSED_TYPES)


class RotatingWarcWriter:
    """Writes request/response exchanges to `DIR/PREFIX-NNNNN.warc.gz`, rotating at `max_bytes`."""

    def __init__(
        self, directory: str | Path, prefix: str, max_bytes: int, software: str = "interloom", gzip_level: int = 6
    ):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.software = software
        self.gzip_level = gzip_level  # warcio's own gzip is level 9, several times slower for little gain
        self._fh = None
        self._writer: WARCWriter | None = None
        self._name = ""
        self._state: list[dict[str, Any]] = []
        self.closed: list[str] = []
        existing = [
            int(p.name[len(prefix) + 1 : len(prefix) + 6])
            for p in self.dir.glob(f"{prefix}-*{WARC_SUFFIX}")
            if p.name[len(prefix) + 1 : len(prefix) + 6].isdigit()
        ]
        self._seq = max(existing, default=-1) + 1

    @property
    def name(self) -> str:
        """Final file name of the open file (opening one if needed)."""
        self._ensure_open()
        return self._name

    def _ensure_open(self) -> None:
        if self._writer is not None:
            return
        self._name = f"{self.prefix}-{self._seq:05d}{WARC_SUFFIX}"
        self._seq += 1
        self._fh = open(self.dir / (self._name + OPEN_SUFFIX), "wb")
        self._writer = WARCWriter(None, gzip=False, warc_version="1.1")  # builds records; _write stores them
        self._write(self._writer.create_warcinfo_record(self._name, {"software": self.software, "format": "WARC/1.1"}))

    def _write(self, record, level: int | None = None) -> None:
        """Serialise one record with warcio and append it as its own gzip member (as warcio does), at
        `level` (default: the writer's gzip level)."""
        assert self._fh is not None
        buf = io.BytesIO()
        WARCWriter(buf, gzip=False, warc_version="1.1").write_record(record)
        z = zlib.compressobj(self.gzip_level if level is None else level, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        self._fh.write(z.compress(buf.getvalue()) + z.flush())

    def write_exchange(
        self,
        url: str,
        *,
        method: str,
        target: str,
        request_headers: list[tuple[str, str]],
        status: int,
        reason: str,
        http_version: str,
        response_headers: list[tuple[str, str]],
        payload: bytes,
        date: str,
        ip: str | None,
    ) -> tuple[str, str]:
        """Write a request and its response; return (file name, response WARC-Record-ID without <>)."""
        self._ensure_open()
        assert self._writer is not None
        resp_headers = [(k, v) for k, v in response_headers if k.lower() not in _DROP_HEADERS]
        http = StatusAndHeaders(f"{status} {reason}".strip(), resp_headers, protocol=http_version)
        extra = {"WARC-Date": date}
        if ip:
            extra["WARC-IP-Address"] = ip
        # length given: warcio then digests the payload once here and the block once on writing; without it, it
        # digests the payload again and copies it through a temporary file twice (same bytes either way)
        resp = self._writer.create_warc_record(
            url,
            "response",
            payload=io.BytesIO(payload),
            length=len(payload),
            http_headers=http,
            warc_headers_dict=extra,
        )
        rid = resp.rec_headers.get_header("WARC-Record-ID")
        req_http = StatusAndHeaders(f"{method} {target} {http_version}", request_headers, is_http_request=True)
        req = self._writer.create_warc_record(
            url,
            "request",
            payload=io.BytesIO(b""),
            length=0,
            http_headers=req_http,
            warc_headers_dict={"WARC-Date": date, "WARC-Concurrent-To": rid},
        )
        self._write(resp, STORED if stored_as_is(response_headers) else None)
        self._write(req)
        return self._name, rid.strip("<>")

    def add_state(self, entry: dict[str, Any]) -> None:
        """State entry that becomes durable together with the currently open file."""
        self._ensure_open()
        self._state.append(entry)

    def maybe_rotate(self) -> None:
        """Close the open file once it has reached the size cap (call between logical groups of records)."""
        if self._fh is not None and self._fh.tell() >= self.max_bytes:
            self.close()

    def close(self) -> None:
        if self._writer is None:
            return
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        state = self.dir / (self._name[: -len(WARC_SUFFIX)] + STATE_SUFFIX)
        tmp = state.with_name(state.name + OPEN_SUFFIX)
        with open(tmp, "w", encoding="utf-8") as f:
            for e in self._state:
                f.write(json.dumps(e, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, state)
        os.replace(self.dir / (self._name + OPEN_SUFFIX), self.dir / self._name)
        self.closed.append(self._name)
        self._fh = self._writer = None
        self._state = []
