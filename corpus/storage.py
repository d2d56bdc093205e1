"""Where a corpus (and a build's inputs) live: a local folder or any fsspec URL (s3://, gs://, ...).

`Storage(url)` is a folder on one file system with the few operations a build needs, each atomic and, on
object stores, retried with exponential backoff on transient errors (connection refused/reset, timeouts,
5xx): a reader never sees half an object.

  put_file(local, rel)      local: copy to REL.tmp then rename; object store: one PUT (or a multipart upload,
                            which S3 makes visible only when complete), so no temp key is needed
  write_bytes(rel, data)    same, from memory
  read_bytes(rel), exists(rel), remove(rel)
  append_lines(rel, lines)  local: append + fsync; object store: read-modify-write of the whole object by the
                            single driver (objects cannot be appended to). The caller appends a manifest line
                            only after the shard it names has been put, so a reader never sees a line
                            before its shard.

Credentials and endpoints come from the environment like any AWS/GCP tool (AWS_ACCESS_KEY_ID,
AWS_ENDPOINT_URL for S3-compatible stores such as MinIO, ...), or from fsspec `storage_options`.

Errors that retrying cannot fix (no such bucket, permission denied, disk full, read-only file system) are
raised at once as `StorageError`, naming the URL.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

T = TypeVar("T")

# errors no retry can fix
_PERMANENT_ERRNOS = {
    errno.ENOSPC,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENOENT,
    errno.EDQUOT,
    errno.EEXIST,
}


class StorageError(OSError):
    """An operation on a corpus location failed (for good, or after every retry); the message names the URL."""


def is_remote(path: str | Path) -> bool:
    """True for a URL with a protocol other than file:// (s3://, gs://, memory://, ...)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def is_transient(e: BaseException) -> bool:
    """Connection and server-side errors of an object store are transient; missing objects, permissions and
    local file-system errors (disk full, read-only) are not."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError)):
        return False
    if isinstance(e, OSError) and e.errno in _PERMANENT_ERRNOS:
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    if type(e).__name__.endswith(("CredentialsError", "NoRegionError")):  # botocore: no waiting brings credentials
        return False
    module = type(e).__module__.split(".")[0]
    if module in ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google"):
        return True
    # s3fs and gcsfs wrap server errors into plain OSError (e.g. "SlowDown", "InternalError", 5xx)
    return type(e) is OSError and e.errno in (None, errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ECONNRESET)


class Storage:
    """A folder on a local or remote file system (see the module docstring)."""

    def __init__(
        self,
        url: str | Path,
        storage_options: dict[str, Any] | None = None,
        retries: int = 8,
        backoff_s: float = 0.5,
        max_backoff_s: float = 15.0,
    ):
        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.local = isinstance(self.fs, LocalFileSystem)
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def url_of(self, rel: str) -> str:
        return "/".join([self.url.rstrip("/"), rel])

    # ---- retries ---------------------------------------------------------------------------------------
    def _retry(self, what: str, rel: str, fn: Callable[[], T]) -> T:
        delay = self.backoff_s
        for attempt in range(1, self.retries + 2):
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - classified just below
                if self.local or not is_transient(e):
                    code = (
                        errno.ENOENT
                        if isinstance(e, FileNotFoundError)
                        else (e.errno if isinstance(e, OSError) and e.errno else errno.EIO)
                    )
                    raise StorageError(code, f"{what} {self.url_of(rel)}: {type(e).__name__}: {e}") from e
                if attempt > self.retries:
                    raise StorageError(
                        errno.EIO,
                        f"{what} {self.url_of(rel)}: still failing after {attempt} attempts: {type(e).__name__}: {e}",
                    ) from e
                self._invalidate()
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    def _invalidate(self) -> None:
        self.fs.invalidate_cache()

    # ---- operations ------------------------------------------------------------------------------------
    def makedirs(self, rel: str = "") -> None:
        if self.local:
            self._retry("create folder", rel, lambda: os.makedirs(self.path(rel) if rel else self.root, exist_ok=True))
        # object stores have no folders

    def exists(self, rel: str) -> bool:
        return self._retry("look up", rel, lambda: self.fs.exists(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        return self._retry("read", rel, lambda: self.fs.cat_file(self.path(rel)))

    def put_file(self, local: str | Path, rel: str) -> None:
        """Copy a local file to REL atomically."""
        target = self.path(rel)
        if self.local:

            def copy():
                os.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = target + ".tmp"
                shutil.copyfile(local, tmp)
                os.replace(tmp, target)

            self._retry("write", rel, copy)
        else:
            self._retry("upload to", rel, lambda: self.fs.put_file(str(local), target))

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.local:

            def write():
                os.makedirs(os.path.dirname(self.path(rel)), exist_ok=True)
                tmp = self.path(rel) + ".tmp"
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path(rel))

            self._retry("write", rel, write)
        else:
            self._retry("upload to", rel, lambda: self.fs.pipe_file(self.path(rel), data))

    def append_lines(self, rel: str, lines: Iterable[str]) -> None:
        """Append newline-terminated lines. Local: append + fsync. Object store: rewrite the object."""
        text = "".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines)
        if not text:
            return
        if self.local:

            def append():
                with open(self.path(rel), "a", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())

            self._retry("append to", rel, append)
            return
        old = self.read_bytes(rel) if self.exists(rel) else b""
        self.write_bytes(rel, old + text.encode("utf-8"))

    def remove(self, rel: str) -> None:
        if self.exists(rel):
            self._retry("remove", rel, lambda: self.fs.rm_file(self.path(rel)))

    def glob(self, pattern: str) -> list[str]:
        """URLs (local: paths) of the files matching a pattern relative to the root, sorted."""
        found = self._retry("list", pattern, lambda: self.fs.glob(self.path(pattern)))
        return sorted(self.fs.unstrip_protocol(p) if not self.local else p for p in found)

    def download(self, rel: str, local: str | Path) -> None:
        """Fetch REL into a local file (written to a temp name and renamed)."""
        tmp = str(local) + ".part"
        self._retry("download", rel, lambda: self.fs.get_file(self.path(rel), tmp))
        os.replace(tmp, local)


def expand_input(pattern: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """A remote input glob (s3://bucket/crawl/*.warc.gz) -> the sorted URLs it matches."""
    fs, root = fsspec.core.url_to_fs(pattern, **(storage_options or {}))
    try:
        found = fs.glob(root) if fsspec.core.has_magic(root) else ([root] if fs.exists(root) else [])
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"--input {pattern!r}: cannot list it: {type(e).__name__}: {e}") from e
    files = [p for p in found if not fs.isdir(p)]
    return sorted(fs.unstrip_protocol(p) for p in files)


def fetch_input(url: str, into: str | Path, storage_options: dict[str, Any] | None = None) -> Path:
    """Download a remote input file into the folder `into`, keeping its file name (documents name their
    source by it, so ids do not depend on where a file was read from). Returns the local path."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    store = Storage(url.rsplit("/", 1)[0], storage_options)
    local = Path(into) / root.rsplit("/", 1)[-1]
    store.download(root.rsplit("/", 1)[-1], local)
    return local


def write_parquet_atomic(table, path: str | Path) -> None:
    """Write a local Parquet file atomically (temp name, then rename) so a reader never sees half a file."""
    import pyarrow.parquet as pq

    path = str(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def local_scratch(prefix: str) -> Path:
    """A fresh local temp folder (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=prefix))
