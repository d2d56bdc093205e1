"""A corpus on disk: WebDataset shards, Parquet index, manifest; the writer and the reader.

```
CORPUS/
  shards/NAME.tar          sample key = document id; members KEY.json and KEY.<member> per image
  index/NAME.parquet       one row per document (record.INDEX_SCHEMA), OBELICS columns
  manifest.jsonl           one line per finished shard: name, documents, images, bytes, sha256, unit
  stats.json, rejects/, build.json, dedup/   written by the build
```
`parse_manifest_line` reads one manifest line (None for anything that is not a shard entry).
Write protocol (what makes a corpus safe to follow while it is being built): the index is written and
renamed into place, then the shard is written to `NAME.tar.tmp` and renamed to `NAME.tar`, and only then is
its manifest line appended. A reader trusts only complete manifest lines.

Tars are written byte-deterministically (fixed mtime/uid/gid/mode, members in document order), so the same
documents give the same shard bytes and the same sha256 in the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from corpus.record import INDEX_SCHEMA, Document, index_row
from corpus.storage import write_parquet_atomic

MANIFEST = "manifest.jsonl"
# the most bytes a reader takes from one shard member (a sample's JSON or an image): no sample the build writes
# comes near it (pages are capped at extract.max_html_bytes, images re-encoded at images.max_side); a larger
# member is damage, refused before it is read into memory
MAX_MEMBER_BYTES = 256 << 20


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name without extension, e.g. "part-00003-0000"
    documents: int
    images: int
    bytes: int
    sha256: str
    unit: str = ""

    def line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# ---- writing -------------------------------------------------------------------------------------------
def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _image_suffix(fmt: str) -> str:
    return {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif"}.get(fmt.lower(), fmt.lower() or "bin")


def assign_members(doc: Document) -> None:
    """Name each image's tar member by its position: KEY.img0003.jpg holds images[3]."""
    for i, im in enumerate(doc.images):
        if im is not None:
            im.member = f"img{i:04d}.{_image_suffix(im.format)}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_shards(
    docs: Iterable[Document],
    corpus: str | Path,
    prefix: str,
    *,
    unit: str = "",
    max_bytes: int = 256 << 20,
    max_docs: int = 10_000,
) -> list[ShardInfo]:
    """Write documents (with `image.data` bytes) into size-capped shards `PREFIX-0000.tar`, ... under
    CORPUS/shards, each with its index Parquet. Returns the finished shards; does NOT touch the manifest
    (the caller appends lines in a deterministic order with `append_manifest`)."""
    root = Path(corpus)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    (root / "index").mkdir(parents=True, exist_ok=True)
    done: list[ShardInfo] = []
    state: dict[str, Any] = {}

    def open_shard() -> None:
        name = f"{prefix}-{len(done):04d}"
        tmp = root / "shards" / f"{name}.tar.tmp"
        state.update(
            name=name, tmp=tmp, tar=tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT), rows=[], images=0, bytes=0
        )

    def close_shard() -> None:
        tar: tarfile.TarFile = state["tar"]
        tar.close()
        name, tmp = state["name"], state["tmp"]
        write_parquet_atomic(
            pa.Table.from_pylist(state["rows"], schema=INDEX_SCHEMA), root / "index" / f"{name}.parquet"
        )
        final = root / "shards" / f"{name}.tar"
        os.replace(tmp, final)
        done.append(ShardInfo(name, len(state["rows"]), state["images"], final.stat().st_size, _sha256(final), unit))
        state.clear()

    for doc in docs:
        if not state:
            open_shard()
        assign_members(doc)
        tar = state["tar"]
        offset = tar.offset
        _add_member(tar, f"{doc.id}.json", doc.to_json())
        for im in doc.image_list:
            assert im.data is not None, f"{doc.id}: image {im.url} has no bytes to write"
            _add_member(tar, f"{doc.id}.{im.member}", im.data)
            state["images"] += 1
        state["rows"].append(index_row(doc, f"{state['name']}.tar", offset))
        if tar.offset >= max_bytes or len(state["rows"]) >= max_docs:
            close_shard()
    if state:
        close_shard()
    return done


def append_manifest(corpus: str | Path, shards: Iterable[ShardInfo]) -> None:
    """Append one line per shard and fsync. Call only after the shards are renamed into place."""
    path = Path(corpus) / MANIFEST
    with open(path, "a", encoding="utf-8") as f:
        for s in shards:
            f.write(s.line() + "\n")
        f.flush()
        os.fsync(f.fileno())


def repair_manifest(corpus: str | Path) -> list[ShardInfo]:
    """Drop a torn last line (a build killed mid-append) and return the complete entries."""
    path = Path(corpus) / MANIFEST
    if not path.exists():
        return []
    raw = path.read_text(encoding="utf-8")
    good_lines = [ln for ln in raw.splitlines(keepends=True) if ln.endswith("\n") and parse_manifest_line(ln)]
    if "".join(good_lines) != raw:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(good_lines), encoding="utf-8")
        os.replace(tmp, path)
    return [s for s in (parse_manifest_line(ln) for ln in good_lines) if s is not None]


_SHARD_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # a plain file name: a manifest cannot point outside the corpus


def parse_manifest_line(line: str) -> ShardInfo | None:
    """One manifest line -> its `ShardInfo`; None when the line is no shard entry (not JSON, a field missing
    or of the wrong type, a name that is not a plain file name, so a manifest cannot point outside its
    corpus). Callers decide what a bad line means: a torn last line is dropped (`repair_manifest`), a bad
    complete line is damage (`Corpus.shards` raises)."""
    try:
        d = json.loads(line)
        shard = ShardInfo(
            **{k: d[k] for k in ("name", "documents", "images", "bytes", "sha256")}, unit=d.get("unit", "")
        )
    except (ValueError, KeyError, TypeError, RecursionError):  # (RecursionError: JSON nested thousands deep)
        return None
    if not isinstance(shard.name, str) or not _SHARD_NAME.match(shard.name) or shard.name in (".", ".."):
        return None
    return shard


# ---- reading -------------------------------------------------------------------------------------------
def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


class Corpus:
    """Read a corpus (local path or fsspec URL such as s3://bucket/corpus). Trusts only manifest lines."""

    def __init__(self, path: str | Path, storage_options: dict[str, Any] | None = None):
        self.path = str(path)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.path, **(storage_options or {}))
            found = self.fs.exists(_join(self.root, MANIFEST))
        except ImportError as e:  # gs:// without gcsfs, ...
            raise ValueError(f"corpus {self.path}: reading it needs a package that is not installed ({e})") from None
        except (OSError, ValueError):
            raise
        except Exception as e:  # noqa: BLE001 -- each fsspec backend has its own errors (s3: NoCredentialsError)
            raise ValueError(f"corpus {self.path}: cannot be read: {type(e).__name__}: {e}") from None
        if not found:
            raise ValueError(f"not a corpus: {self.path} has no {MANIFEST} (run `interloom build` first)")

    def shards(self) -> list[ShardInfo]:
        with self.fs.open(_join(self.root, MANIFEST), "rb") as f:
            raw = f.read().decode("utf-8", errors="replace")
        # only complete lines count: a line still being appended has no newline yet
        out, seen = [], set()
        for i, ln in enumerate(raw.splitlines(keepends=True), 1):
            if not ln.endswith("\n") or not ln.strip():
                continue
            shard = parse_manifest_line(ln)
            if shard is None:  # a complete line that is no shard entry: the manifest was damaged
                raise ValueError(
                    f"{self.path}/{MANIFEST} line {i}: not a shard entry (JSON with name, "
                    f"documents, images, bytes, sha256; the name a plain file name): {ln.strip()[:80]!r}"
                )
            if shard.name in seen:  # every reader would take its documents twice (training, refilter, export)
                raise ValueError(f"{self.path}/{MANIFEST} line {i}: lists shard {shard.name} a second time")
            seen.add(shard.name)
            out.append(shard)
        return out

    def read_json(self, name: str) -> Any:
        """A JSON file of the corpus (build.json, stats.json); FileNotFoundError when it is missing, a
        ValueError naming it when it is not UTF-8 JSON."""
        with self.fs.open(_join(self.root, name), "rb") as f:
            raw = f.read()
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # (nested thousands deep)
            raise ValueError(f"{self.path.rstrip('/')}/{name}: not JSON ({e})") from None

    def _name(self, shard: ShardInfo | str) -> str:
        """A shard's file name; a ValueError when it is no plain file name (a shard column of a damaged index
        naming ../../x must not make a reader open a file outside the corpus)."""
        name = shard.name if isinstance(shard, ShardInfo) else str(shard).removesuffix(".tar")
        if not _SHARD_NAME.match(name) or name in (".", ".."):
            raise ValueError(f"{self.path}: shard name {name[:80]!r} is not a plain file name of the corpus")
        return name

    def shard_path(self, shard: ShardInfo | str) -> str:
        return _join(self.root, "shards", f"{self._name(shard)}.tar")

    def index_path(self, shard: ShardInfo | str) -> str:
        return _join(self.root, "index", f"{self._name(shard)}.parquet")

    def read_index(self, shard: ShardInfo | str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self.index_path(shard), "rb") as f:
            return pq.read_table(f, columns=columns)

    def iter_shard(self, shard: ShardInfo | str, with_images: bool = True) -> Iterator[Document]:
        with self.fs.open(self.shard_path(shard), "rb") as f:
            yield from iter_tar_documents(f, with_images=with_images, where=self.shard_path(shard))

    def iter_documents(self, with_images: bool = True) -> Iterator[Document]:
        for shard in self.shards():
            yield from self.iter_shard(shard, with_images=with_images)

    def read_document(self, shard: str, offset: int) -> Document:
        """Random access: the sample whose first member header starts at byte `offset` of `shard`."""
        with self.fs.open(self.shard_path(shard), "rb") as f:
            f.seek(offset)
            return next(iter_tar_documents(f, with_images=True, where=self.shard_path(shard)))

    def follow(self, poll_s: float = 2.0, until_complete: bool = True) -> Iterator[ShardInfo]:
        """Yield manifest entries as they appear, while a build is still writing; stop once build.json
        says the build finished (or never, with until_complete=False)."""
        seen = 0
        while True:
            shards = self.shards()
            yield from shards[seen:]
            seen = len(shards)
            if until_complete and self.is_finished() and len(self.shards()) == seen:
                return
            time.sleep(poll_s)

    def is_finished(self) -> bool:
        """Whether the build writing this corpus has finished (build.json has `finished_at`): no manifest
        line will be added any more."""
        p = _join(self.root, "build.json")
        if not self.fs.exists(p):
            return False
        info = self.read_json("build.json")
        if not isinstance(info, dict):  # (a list or a string: AttributeError from .get before)
            raise ValueError(f"{self.path.rstrip('/')}/build.json: holds a JSON {type(info).__name__}, not an object")
        return bool(info.get("finished_at"))


def iter_tar_documents(fileobj, with_images: bool = True, where: str = "") -> Iterator[Document]:
    """Decode samples from a shard stream. Only JSON and raw image bytes are read: nothing is unpickled.

    A damaged shard (not a tar, truncated, a sample JSON of the wrong shape, a member over MAX_MEMBER_BYTES,
    a member that is no file: a symlink, hard link, folder or device) raises ValueError naming `where`."""
    try:
        yield from _iter_tar_documents(fileobj, with_images, where)
    except tarfile.TarError as e:
        raise ValueError(f"{where}: not a readable tar stream: {e}") from None


def _iter_tar_documents(fileobj, with_images: bool, where: str) -> Iterator[Document]:
    current: Document | None = None
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for info in tar:
            if not info.isfile():  # the writer writes only files: a link, folder or device is damage, not skipped
                kind = "link" if info.issym() or info.islnk() else "folder" if info.isdir() else "special file"
                raise ValueError(f"{where}: member {info.name[:200]} is a {kind}, not a file")
            key, _, suffix = info.name.partition(".")
            if current is not None and key != current.id:
                yield _attach(current, members, with_images, where)
                current, members = None, {}
            if (suffix == "json" or with_images) and info.size > MAX_MEMBER_BYTES:
                raise ValueError(f"{where}: member {info.name} holds {info.size} bytes, over {MAX_MEMBER_BYTES}")
            data = tar.extractfile(info).read() if (suffix == "json" or with_images) else b""
            if suffix == "json":
                if current is not None:  # (a sample of another key was handed on above)
                    raise ValueError(f"{where}: member {info.name}: a second sample with the key {key}")
                try:
                    current = Document.from_json(data)
                except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as e:  # wrong shape, too deep
                    raise ValueError(f"{where}: member {info.name}: {e}") from None
            elif current is None:
                raise ValueError(f"{where}: member {info.name} comes before its {key}.json")
            elif with_images:
                members[suffix] = data
        if current is not None:
            yield _attach(current, members, with_images, where)


def _attach(doc: Document, members: dict[str, bytes], with_images: bool, where: str) -> Document:
    if with_images:
        for im in doc.image_list:
            if im.member not in members:
                raise ValueError(f"{where}: sample {doc.id} lacks member {doc.id}.{im.member}")
            im.data = members[im.member]
    return doc
