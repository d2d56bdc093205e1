"""What `--input` names, at crawl scale: files, globs (local or over any fsspec file system), and path lists.

resolve_inputs(patterns, cfg) -> the input files of a build, in order:
  - a path list (`warc.paths.gz` as Common Crawl publishes it, or any `.paths`/`.txt`[.gz] file of paths or
    URLs, one per line, `#` comments) is read, local or remote; a relative entry is resolved against
    `input.prefix` (`--input-prefix s3://commoncrawl/`), and is an error without one, as is one that climbs
    out of the prefix with `..`, a URL of a scheme no fsspec file system reads, or another path list;
  - WET and WAT files, listed or given directly, are refused: a build needs the WARC files (HTML and images);
  - a glob over a remote file system (s3://bucket/crawl/*.warc.gz), or a local glob;
  - `input.anon=true` reads s3:// inputs anonymously (public buckets such as s3://commoncrawl);
  - `input.sample_files` keeps a seeded sample of the files (N >= 1: that many; 0 < x < 1: that share, at
    least one), so a user can try 10 WARCs of a dump before the whole of it.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import random
import zlib
from typing import Any

import fsspec
from fsspec.registry import known_implementations
from pydantic import Field

from corpus.config import Section
from corpus.storage import expand_input, is_remote

PATH_LIST_SUFFIXES = (".paths", ".paths.gz", ".txt", ".txt.gz")
# Common Crawl's derived formats: text only (WET) or metadata (WAT), no HTML to extract and no images
_DERIVED = {".wet": "WET (extracted text only)", ".wat": "WAT (metadata only)"}


class InputConfig(Section):
    crawl_seeds: str | None = Field(
        None,
        description="seed URLs (a .txt file, one per line, or Parquet): "
        "crawl them first (section `crawl`) and build the crawl's WARCs",
    )
    crawl_output: str | None = Field(None, description="where the crawl's WARCs go; None = CORPUS/crawl")
    prefix: str | None = Field(
        None,
        description="what relative entries of a path list are resolved against, "
        "e.g. s3://commoncrawl/ or https://data.commoncrawl.org/ (--input-prefix)",
    )
    anon: bool = Field(False, description="read s3:// inputs without credentials (public buckets)")
    sample_files: float | None = Field(
        None,
        gt=0,
        description="a seeded sample of the input files: N >= 1 files, or a share 0 < x < 1 of them (--sample-files)",
    )
    sample_seed: int = Field(0, description="seed of the sample")


def storage_options(url: str, cfg: InputConfig) -> dict[str, Any]:
    """fsspec options for reading input `url`: anonymous access for s3:// when `input.anon` is set."""
    return {"anon": True} if cfg.anon and url.startswith(("s3://", "s3a://")) else {}


def is_path_list(path: str) -> bool:
    return path.rsplit("/", 1)[-1].endswith(PATH_LIST_SUFFIXES)


def _derived_kind(entry: str) -> str | None:
    name = entry.rsplit("/", 1)[-1].lower().removesuffix(".gz")
    return next((kind for suffix, kind in _DERIVED.items() if name.endswith(suffix)), None)


def _check_entry(entry: str, where: str, listed: bool = False) -> None:
    """Refuse what no build can read, naming `where` it came from: WET/WAT files, URLs of a scheme no fsspec
    file system reads, control characters, path lists inside a path list."""
    kind = _derived_kind(entry)
    if kind:
        hint = "the dump's warc.paths.gz, not wet.paths.gz or wat.paths.gz" if listed else "the crawl's .warc.gz files"
        raise ValueError(
            f"{where}: {entry} is a {kind} file; a build needs the WARC files (HTML and images): use {hint}"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in entry):
        raise ValueError(f"{where}: {entry!r} holds a control character; not a path or URL")
    if "://" in entry:
        scheme = entry.split("://", 1)[0].lower()
        if scheme != "file" and scheme not in known_implementations:
            raise ValueError(
                f"{where}: {entry} has an unknown URL scheme {scheme!r} (known: file, s3, gs, https, ... "
                f"any fsspec file system)"
            )
        try:
            fsspec.get_filesystem_class(scheme)
        except ImportError as e:  # gs:// without gcsfs, ...: fsspec knows the scheme, its package is missing
            raise ValueError(f"{where}: reading {scheme}:// needs a package that is not installed ({e})") from None


def read_path_list(path: str, cfg: InputConfig) -> list[str]:
    """The entries of a path list, relative ones joined to `cfg.prefix`; WET/WAT entries, `..` in a relative
    entry (it would leave the prefix), unknown URL schemes and path lists inside the list are refused."""
    try:
        if is_remote(path):
            try:
                with fsspec.open(path, "rb", **storage_options(path, cfg)) as f:
                    raw = f.read()
            except (OSError, EOFError):
                raise
            except Exception as e:  # noqa: BLE001 -- each fsspec backend has its own errors (no credentials, ...)
                hint = " (a public bucket: --set input.anon=true)" if "Credentials" in type(e).__name__ else ""
                raise ValueError(f"--input {path}: cannot read the path list: {type(e).__name__}: {e}{hint}") from e
        else:
            with open(os.path.expanduser(path), "rb") as f:
                raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.GzipFile(fileobj=io.BytesIO(raw)).read()
        text = raw.decode("utf-8-sig")  # a list saved by an editor that writes a byte order mark
    except zlib.error as e:
        raise ValueError(f"--input {path}: cannot read the path list: damaged gzip data ({e})") from e
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"--input {path}: cannot read the path list: {type(e).__name__}: {e}") from e
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        where = f"--input {path} line {n}"
        _check_entry(entry, where, listed=True)
        if is_path_list(entry):
            raise ValueError(f"{where}: {entry} is a path list; a list names input files, not other lists")
        if "://" not in entry and not os.path.isabs(entry):
            if ".." in entry.replace("\\", "/").split("/"):
                raise ValueError(f"{where}: {entry} climbs out of the prefix with '..'; list paths inside it")
            if not cfg.prefix:
                raise ValueError(
                    f"--input {path} line {n}: {entry} is a relative path; give --input-prefix "
                    f"(e.g. s3://commoncrawl/ or https://data.commoncrawl.org/) to resolve it"
                )
            entry = cfg.prefix.rstrip("/") + "/" + entry.lstrip("/")
        entries.append(entry)
    if not entries:
        raise ValueError(f"--input {path}: the path list names no file")
    return entries


def _expand(pattern: str, cfg: InputConfig) -> list[str]:  # (a remote pattern's errors: expand_input)
    if is_remote(pattern):
        return expand_input(pattern, storage_options(pattern, cfg))
    return sorted(glob.glob(os.path.expanduser(pattern), recursive=True))


def sample(paths: list[str], share: float, seed: int) -> list[str]:
    """A seeded sample of `paths`, in their order: `share` >= 1 files, or that share of them (at least one)."""
    k = int(share) if share >= 1 else max(1, round(share * len(paths)))
    if share >= 1 and share != k:
        raise ValueError(f"input.sample_files: {share} is neither a whole number of files nor a share below 1")
    if k >= len(paths):
        return list(paths)
    chosen = set(random.Random(seed).sample(range(len(paths)), k))
    return [p for i, p in enumerate(paths) if i in chosen]


def resolve_inputs(patterns: list[str], cfg: InputConfig | None = None) -> list[str]:
    """The input files (or folders) named by `--input` patterns and path lists, sampled when asked."""
    cfg = cfg or InputConfig()
    paths: list[str] = []
    for pattern in patterns:
        if is_path_list(pattern) and not any(c in pattern for c in "*?["):
            # entries are taken as listed: checking 90,000 objects one by one would take longer than a
            # sample's build; a listed file that is missing fails its unit, naming it
            for entry in read_path_list(pattern, cfg):
                if not is_remote(entry) and not os.path.exists(entry):
                    raise ValueError(f"--input {pattern}: {entry} does not exist")
                paths.append(entry)
            continue
        _check_entry(pattern, f"--input {pattern}")
        matched = _expand(pattern, cfg)
        for m in matched:
            _check_entry(m, f"--input {pattern}")
        if not matched:
            raise ValueError(f"--input {pattern!r} matches no file")
        lists = [m for m in matched if is_path_list(m)]
        if lists:
            raise ValueError(
                f"--input {pattern!r} matches path lists ({lists[0]}, ...); give each list as its own --input"
            )
        paths.extend(matched)
    paths = list(dict.fromkeys(paths))
    if cfg.sample_files is not None and paths:
        paths = sample(paths, cfg.sample_files, cfg.sample_seed)
    return paths
