"""`interloom build`: input files -> corpus, as three phases on Ray.

  phase 1, per unit (one input file, in a pool of Ray actors that load their models once):
      read -> extract -> text filters -> images -> in-document image dedup -> document filters
      -> WORK/units/<unit>/docs.parquet (documents with image bytes) + rejects + DONE marker (the ledger)
  phase 2, global dedup (filters.dedup, separate Ray passes through Parquet):
      signatures -> buckets -> clusters -> removals; clusters also go to CORPUS/dedup/
  phase 3, per unit, in unit order: apply removals -> post-dedup document rules -> shards + index;
      the driver appends manifest lines strictly in unit order, so any parallelism gives the same manifest.

Storage: the corpus may be a local folder or any fsspec URL (s3://bucket/corpus, gs://...; see
corpus/storage.py); inputs may be URLs too (each remote unit is downloaded to a worker-local temp file).
The work folder (staged documents, dedup passes, markers) is a POSIX folder every Ray node can reach:
CORPUS/_work for a local corpus, `output.work_dir` (a shared file system on a cluster) for a remote one.
With a remote corpus, workers write each shard locally and upload its index, then the shard; the driver
then rewrites the manifest object with the new lines, so a manifest line never names a missing shard.

Resume: every unit output is written to a temporary name and renamed, then its marker is written. A re-run
with the same inputs and config skips finished units and finished dedup, and re-writes only the shards whose
manifest lines are missing (shards are byte-deterministic). Killing a build at any point and re-running it
gives the corpus an uninterrupted run gives.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from pydantic import Field

from corpus.config import Section, dump_config, flatten_config
from corpus.format import MANIFEST, Corpus, ShardInfo, parse_manifest_line, write_shards
from corpus.record import STAGED_SCHEMA, documents_to_staged_table, staged_table_to_documents
from corpus.runner import Stage, map_actors, map_tasks
from corpus.stats import DeferredLedger, Ledger, check_funnel
from corpus.steps import Resources, Step, run_steps, run_steps_ahead
from corpus.storage import (
    Storage,
    StorageError,
    fetch_input,
    is_remote,
    local_scratch,
    write_parquet_atomic,
)
from crawl.extract import ExtractConfig, ExtractStep, ImageGate
from crawl.images import ImageConfig, ImageStep, Resolver, Submit, certain_drop, chain, chain_submit
from crawl.live.config import CrawlConfig
from crawl.sources import NOT_IN_SOURCE, Unit, discover_units, label_shared_names, open_source
from filters.config import FiltersConfig
from filters.dedup import ApplyDedup, DedupConfig, DedupResult, InDocumentImageDedup, normalize_url, run_dedup
from filters.registry import declared_signals, document_steps, text_steps
from filters.urlrules import UrlRules
from pipeline.inputs import InputConfig, resolve_inputs, storage_options
from pipeline.summary import explain, run_errors

log = logging.getLogger(__name__)


class OutputConfig(Section):
    shard_prefix: str = Field("part", pattern=r"^[A-Za-z0-9_.-]+$")
    max_shard_bytes: int = Field(256 << 20, ge=1 << 16, description="a shard is closed past this size")
    max_shard_docs: int = Field(10_000, ge=1)
    staged_batch_docs: int = Field(64, ge=1, description="documents per Parquet row group in WORK")
    keep_work: bool = Field(False, description="keep CORPUS/_work (staged documents) after a finished build")
    work_dir: str | None = Field(
        None,
        description="work folder (staged documents, markers); None = "
        "CORPUS/_work. Needed for a remote corpus (s3://...): a folder every Ray "
        "node can reach",
    )


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster address; None starts a local instance")
    workers: int = Field(0, ge=0, description="unit workers (actors); 0 = one per CPU Ray sees")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local instance (None = all)")
    image_prefetch_docs: int = Field(
        8,
        ge=0,
        description="with images.fetch: a unit worker extracts and filters up to this many documents ahead "
        "and sends their image requests at once, so fetching overlaps the work on earlier documents (the "
        "outcome is the same, event for event); 0 = one document at a time",
    )
    image_prefetch_images: int = Field(
        256,
        ge=1,
        description="with image_prefetch_docs: stop looking ahead while this many image URLs are requested "
        "and not yet processed (bounds a worker's memory: at most this many answers of up to crawl.max_bytes)",
    )


class BuildConfig(Section):
    input: InputConfig = InputConfig()
    crawl: CrawlConfig = CrawlConfig()
    extract: ExtractConfig = ExtractConfig()
    images: ImageConfig = ImageConfig()
    filters: FiltersConfig = FiltersConfig()
    dedup: DedupConfig = DedupConfig()
    output: OutputConfig = OutputConfig()
    ray: RayConfig = RayConfig()


# ---- the steps of each phase --------------------------------------------------------------------------
class Steps:
    """The steps of a build, made once per worker; heavy ones load their models on first `setup`."""

    def __init__(self, cfg: BuildConfig):
        self.cfg = cfg
        self.extract = ExtractStep(cfg.extract)
        count = cfg.filters.image_count
        # lossless early cut: a page without an image that can be kept would be dropped by image_count
        self.cut_imageless = cfg.extract.early_cuts and count.active and count.min_images >= 1
        optout = cfg.filters.opt_out
        self.cut_optout = cfg.extract.early_cuts and optout.active and "x_robots_tag" in optout.meta_keys
        self.cut_captures = cfg.extract.early_cuts and cfg.dedup.url  # repeated captures within a unit
        self.text = text_steps(cfg.filters)
        self.image_dedup = InDocumentImageDedup(cfg.dedup.image_hamming)
        self.document = document_steps(cfg.filters)
        # the same document rules run again after dedup, counted as their own stages ("image_count@final")
        self.final = [_renamed(s, f"{s.name}@final") for s in self.document]
        self._set_up = False

    def setup(self) -> None:
        if not self._set_up:
            for step in [self.extract, *self.text, self.image_dedup, *self.document, *self.final]:
                step.setup()
            self._set_up = True

    def unit(
        self,
        resolver,
        in_source: Resolver | None = None,
        known_urls: frozenset[str] = frozenset(),
        same_captures: Callable[[Any], list[tuple[str, str]]] | None = None,
        submit: Submit | None = None,
    ) -> list[Step]:
        """Phase 1, after reading. The image step is per unit: it resolves images from that unit. With the
        early cut on, so is extraction: `in_source` (the unit's own image lookup, None when images may be
        fetched) says whether a page's image can be had at all. Cut before parsing (filters.urlrules):
        `known_urls`, the normalised URLs of the corpus being appended to, and the repeated captures
        `same_captures` (the unit's source) finds. `submit`: the resolver's non-waiting form, for the image
        step's look-ahead (`ray.image_prefetch_docs`)."""
        extract = self.extract
        if self.cut_imageless:
            extract = copy.copy(self.extract)
            extract.image_gate = image_gate(in_source, self.cfg.images)
        early: list[Step] = []
        if self.cfg.extract.early_cuts:
            urls = known_urls if self.cfg.dedup.url else frozenset()
            captures = same_captures if self.cut_captures else None
            early = [UrlRules(optout=self.cut_optout, known_urls=urls, same_captures=captures)]
        images = ImageStep(self.cfg.images, resolver, submit, self.cfg.ray.image_prefetch_images)
        return [*early, extract, *self.text, images, self.image_dedup, *self.document]

    def write(self, dedup_result) -> list[Step]:
        """Phase 3: global dedup removals, then the document rules again (dedup may remove images)."""
        return [ApplyDedup(dedup_result), *self.final]


def image_gate(in_source: Resolver | None = None, images: ImageConfig | None = None) -> ImageGate:
    """Whether any of a page's image URLs can become an image of its document: any at all when images may be
    fetched (`in_source` None), else any whose bytes the unit's source holds (a reason string, such as
    image_not_in_source or an over-cap image, is a certain image drop) and, with `images` (the image rules),
    whose header does not already fail them (`crawl.images.certain_drop`: too small, aspect ratio, not an
    image). A page with images in the source that all fail is the reason `no_usable_image`."""
    if in_source is None:
        return bool
    verdicts: dict[str, bool] = {}  # URL -> whether its bytes may pass the image rules, once per unit

    def may_pass(url: str, got: bytes | str) -> bool:
        if url not in verdicts:
            verdicts[url] = isinstance(got, bytes) and (images is None or certain_drop(got, images) is None)
        return verdicts[url]

    def any_in_source(urls: list[str]) -> bool | str:
        if not urls:
            return False
        found = in_source(urls)
        if any(may_pass(url, got) for url, got in found.items()):
            return True
        return "no_usable_image" if any(isinstance(got, bytes) for got in found.values()) else False

    return any_in_source


def _renamed(step: Step, name: str) -> Step:
    twin = copy.copy(step)
    twin.name = name
    return twin


def stage_order(cfg: BuildConfig) -> list[str]:
    steps = Steps(cfg)
    names = ["read"] + [s.name for s in steps.unit(resolver=None)] + [s.name for s in steps.write(None)]
    return list(dict.fromkeys(names))


# ---- atomic file helpers ------------------------------------------------------------------------------
def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


# ---- phase 1 and 3 worker -----------------------------------------------------------------------------
class UnitWorker:
    """Runs units of work. As a Ray actor it keeps its steps (and their models) across units."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = BuildConfig.model_validate(cfg)
        self.steps = Steps(self.cfg)
        self._dedup: dict[str, DedupResult] = {}  # dedup folder -> its decisions, read once per worker
        self._known: tuple[str, frozenset[str]] = ("", frozenset())  # (file, URLs) of the corpus appended to

    def run_unit(self, unit: Unit, work: str, fetcher=None, known_urls: str = "") -> dict[str, Any]:
        """Phase 1 for one unit: staged docs + rejects + DONE marker. Returns the summary. `fetcher`
        (a crawl.live FetchResolver shared by all workers) fetches images the source does not hold;
        `known_urls` (appending) a Parquet file of the corpus's normalised URLs, read once per worker."""
        self.fetcher = fetcher
        if known_urls and self._known[0] != known_urls:
            urls = pq.read_table(known_urls, columns=["url_key"]).column("url_key").drop_null().to_pylist()
            self._known = (known_urls, frozenset(urls))
        out = Path(work) / "units" / unit.name
        out.mkdir(parents=True, exist_ok=True)
        if is_remote(unit.path):  # read a local copy, under the same file name (sources name documents by it)
            scratch = local_scratch("interloom-input-")
            try:
                local = Unit(
                    str(fetch_input(unit.path, scratch, storage_options(unit.path, self.cfg.input))),
                    unit.kind,
                    unit.name,
                    unit.label,
                )
                return self._run_unit(local, unit, out)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return self._run_unit(unit, unit, out)

    def _run_unit(self, unit: Unit, reported: Unit, out: Path) -> dict[str, Any]:
        ledger = Ledger()
        source = open_source(
            unit, max_html_bytes=self.cfg.extract.max_html_bytes, max_image_bytes=self.cfg.images.max_bytes
        )
        source.index_images(captures=self.steps.cut_captures)
        self.steps.setup()
        resolver: Resolver = source.images.fetch_many
        in_source: Resolver | None = resolver
        submit: Submit | None = None
        if getattr(self, "fetcher", None) is not None:
            resolver = chain(resolver, self.fetcher.fetch_many, when=NOT_IN_SOURCE)
            in_source = None
            if self.cfg.ray.image_prefetch_docs:
                submit = chain_submit(source.images.fetch_many, self.fetcher.submit, when=NOT_IN_SOURCE)
        steps = self.steps.unit(resolver, in_source, self._known[1], source.same_captures, submit)
        if submit is not None:  # fetching overlaps the work on earlier documents; the same outcome
            held = DeferredLedger()
            at = next(i for i, s in enumerate(steps) if isinstance(s, ImageStep))
            docs = run_steps_ahead(source.pages(held), held, steps, ledger, at, self.cfg.ray.image_prefetch_docs)
        else:
            docs = run_steps(source.pages(ledger), steps, ledger)
        tmp = out / "docs.parquet.tmp"
        n_docs = 0
        with pq.ParquetWriter(tmp, STAGED_SCHEMA) as writer:
            batch = []
            for doc in docs:
                batch.append(doc)
                if len(batch) >= self.cfg.output.staged_batch_docs:
                    writer.write_table(documents_to_staged_table(batch))
                    n_docs += len(batch)
                    batch = []
            if batch:
                writer.write_table(documents_to_staged_table(batch))
                n_docs += len(batch)
        os.replace(tmp, out / "docs.parquet")
        write_parquet_atomic(ledger.rejects_table(), out / "rejects.parquet")
        summary = {"unit": _unit_dict(reported), "documents": n_docs, "ledger": ledger.to_dict()}
        _write_json_atomic(out / "DONE.json", summary)
        return summary

    def write_unit(self, index: int, unit: Unit, work: str, corpus: str) -> dict[str, Any]:
        """Phase 3 for one unit: removals applied, shards written. The manifest is the driver's job."""
        unit_dir = Path(work) / "units" / unit.name
        ledger = Ledger()
        dedup_dir = str(Path(work) / "dedup")
        if dedup_dir not in self._dedup:
            self._dedup = {dedup_dir: DedupResult.load(dedup_dir)}
        result = self._dedup[dedup_dir]
        self.steps.setup()
        steps = self.steps.write(result)
        docs = _iter_staged(unit_dir / "docs.parquet")
        prefix = f"{self.cfg.output.shard_prefix}-{index:05d}"
        target = corpus
        if is_remote(corpus):  # shards are written locally, then uploaded one by one (index, then shard)
            target = str(local_scratch("interloom-shards-"))
        try:
            shards = write_shards(
                run_steps(docs, steps, ledger),
                target,
                prefix,
                unit=unit.name,
                max_bytes=self.cfg.output.max_shard_bytes,
                max_docs=self.cfg.output.max_shard_docs,
            )
            if target != corpus:
                store = Storage(corpus)
                for s in shards:
                    store.put_file(Path(target) / "index" / f"{s.name}.parquet", f"index/{s.name}.parquet")
                    store.put_file(Path(target) / "shards" / f"{s.name}.tar", f"shards/{s.name}.tar")
        finally:
            if target != corpus:
                shutil.rmtree(target, ignore_errors=True)
        write_parquet_atomic(ledger.rejects_table(), unit_dir / "write-rejects.parquet")
        summary = {"shards": [asdict(s) for s in shards], "ledger": ledger.to_dict()}
        _write_json_atomic(unit_dir / "WRITTEN.json", summary)
        return summary


def _iter_staged(path: Path):
    pf = pq.ParquetFile(path)
    for i in range(pf.num_row_groups):
        yield from staged_table_to_documents(pf.read_row_group(i))


# ---- driver -------------------------------------------------------------------------------------------
def _local_folder(configured: str | None, output: str, key: str, default: str, what: str) -> Path:
    """A folder the build writes with plain file I/O: the configured one, else `default` inside a local
    corpus; a remote corpus (s3://...) needs it configured."""
    if configured:
        return Path(configured).expanduser().resolve()
    if is_remote(output):
        raise ValueError(f"--output {output} is remote: set {key} to {what}, e.g. --set {key}=/mnt/work/run1")
    return Path(output).resolve() / default


def _crawl_dir(cfg: BuildConfig, output: str) -> Path:
    return _local_folder(
        cfg.input.crawl_output,
        output,
        "input.crawl_output",
        "crawl",
        "a local or shared folder for the crawl's WARC files",
    )


def crawl_first(cfg: BuildConfig, output: str, progress: bool) -> list[str]:
    """The `crawl` source: crawl the seeds into WARC files (resumable: URLs already archived are not
    fetched again), then build those WARCs like any others, so a crawl and a later rebuild from its WARCs
    go through the same reading and extraction path."""
    from crawl.live.crawler import Crawler, read_seeds, warc_paths

    seeds_path = Path(cfg.input.crawl_seeds).expanduser()
    if not seeds_path.is_file():
        raise ValueError(f"input.crawl_seeds: seed file not found: {seeds_path}")
    crawl_dir = _crawl_dir(cfg, output)
    init_ray(cfg.ray)
    Crawler(cfg.crawl, crawl_dir, progress=progress).run(read_seeds(seeds_path))
    return warc_paths(crawl_dir)


def make_units(paths: list[str]) -> list[Unit]:
    """Local inputs as crawl.sources finds them; remote inputs (files only) named by their URL."""
    local = discover_units([p for p in paths if not is_remote(p)])
    remote = []
    for url in sorted({p for p in paths if is_remote(p)}):
        name = url.rsplit("/", 1)[-1]
        [probe] = discover_units([name])  # the kind from the file name; a remote folder is not an input
        digest = hashlib.sha1(url.encode()).hexdigest()[:8]
        remote.append(Unit(url, probe.kind, probe.name.rsplit("-", 1)[0] + f"-{digest}"))
    return label_shared_names(local + remote)


def _unit_dict(unit: Unit) -> dict[str, Any]:
    """A unit as build.json and DONE.json record it (the label only where there is one)."""
    return {k: v for k, v in asdict(unit).items() if k != "label" or v}


def init_ray(cfg: RayConfig) -> None:
    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=False)
    else:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=False)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("interloom", "ray", "pyarrow", "trafilatura", "fastwarc", "pillow", "imagehash", "fasttext"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _storage_env() -> dict[str, str]:
    """The driver's object-store settings (AWS_*, GOOGLE_*, FSSPEC_*) for the workers; Ray workers on the
    driver's node would not see variables set after the instance started, nor would other nodes."""
    return {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "GOOGLE_", "FSSPEC_"))}


def unit_stage(cfg: BuildConfig, name: str, phase: str) -> Stage:
    """The runner stage of phase 1 ("unit") or 3 ("write"): the resources its steps declare, the driver's
    object-store settings for the workers that read and write."""
    steps = Steps(cfg)
    chain = steps.unit(resolver=None) if phase == "unit" else steps.write(None)
    return Stage(name, resources=Resources.covering(chain), env=_storage_env())


def _run_pool(
    cfg: BuildConfig, stage: Stage, items: list, method: str, args_of, on_result, progress: bool, writes_to
) -> None:
    """Run `method` of a pool of UnitWorker actors over items (corpus.runner); results handed to
    on_result as they finish. `writes_to(item)` names where an item's outputs go, for the error when they
    cannot be written."""
    n_workers = cfg.ray.workers or max(1, int(ray.available_resources().get("CPU", 1)))
    map_actors(
        stage,
        UnitWorker,
        (dump_config(cfg),),
        method,
        items,
        args_of,
        workers=n_workers,
        progress=progress,
        writes_to=writes_to,
        on_result=on_result,
    )


def _put_json(store: Storage, rel: str, obj: Any) -> None:
    store.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))


def _read_json_object(store: Storage, rel: str, doing: str = "") -> dict[str, Any]:
    """The JSON object in corpus file `rel`; one that is not UTF-8 JSON or not an object is a ValueError
    naming it (and what was `doing`: '--append: ...')."""
    try:
        data = json.loads(store.read_bytes(rel).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # (nested thousands deep)
        raise ValueError(f"{doing}{store.url_of(rel)} is damaged: not JSON ({e}); nothing was written") from None
    if not isinstance(data, dict):
        raise ValueError(f"{doing}{store.url_of(rel)} is damaged: a JSON {type(data).__name__}, not an object")
    return data


def _listed_shards(store: Storage) -> list[ShardInfo]:
    """The manifest's complete entries; a torn last line (a build killed mid-append) is dropped for good."""
    if not store.exists(MANIFEST):
        return []
    raw = store.read_bytes(MANIFEST).decode("utf-8")
    good_lines = [ln for ln in raw.splitlines(keepends=True) if ln.endswith("\n") and parse_manifest_line(ln)]
    if "".join(good_lines) != raw:
        store.write_bytes(MANIFEST, "".join(good_lines).encode("utf-8"))
    return [s for s in (parse_manifest_line(ln) for ln in good_lines) if s is not None]


def _work_dir(cfg: BuildConfig, output: str) -> Path:
    return _local_folder(
        cfg.output.work_dir,
        output,
        "output.work_dir",
        "_work",
        "a folder every Ray node can reach (a shared file system on a cluster)",
    )


def build_corpus(
    inputs: list[str],
    output: str | Path,
    cfg: BuildConfig | None = None,
    progress: bool = True,
    *,
    append: bool = False,
) -> dict[str, Any]:
    """Build (or resume) a corpus from input globs (local or URLs) into a local folder or an fsspec URL;
    with `append`, add the inputs to the existing corpus there (see `_append`). Returns the stats funnel
    (also in stats.json)."""
    cfg = cfg or BuildConfig()
    paths = resolve_inputs(inputs, cfg.input)
    if cfg.input.crawl_seeds:
        paths += crawl_first(cfg, str(output), progress)
    if not paths:
        raise ValueError("nothing to build: give --input files and/or a crawl (input.crawl_seeds)")
    units = make_units(paths)
    work = _work_dir(cfg, str(output))
    store = Storage(output)
    try:
        store.makedirs()
    except OSError as e:
        raise ValueError(f"cannot create the corpus folder: {e}") from e
    try:
        try:
            if append:
                return _append(cfg, paths, units, store, work, progress)
            return _build(cfg, paths, units, store, work, progress)
        except ray.exceptions.RayTaskError as e:  # a Ray call outside the runner (the crawl) could not write
            if isinstance(e.cause, OSError):
                raise e.cause from e
            raise
    except StorageError as e:
        raise ValueError(f"{e} -- finished units are kept in {work}; run the same command again to resume") from e
    except OSError as e:
        raise ValueError(
            f"cannot write {e.filename or work}: {e.strerror or e} -- finished units are kept in "
            f"{work}; fix the output (space, permissions) and run the same command again "
            f"to resume"
        ) from e


# config sections that say how a build runs, not what it makes: a resume may change them
RUN_ONLY_SECTIONS = ("ray",)


def config_differences(
    previous: dict[str, Any] | None, current: dict[str, Any] | None, skip=RUN_ONLY_SECTIONS
) -> list[str]:
    """One line per config key that differs ("images.min_side: 150 -> 200"), sections in `skip` left out."""

    def corpus_keys(cfg: dict[str, Any] | None) -> dict[str, Any]:
        return {k: v for k, v in flatten_config(cfg or {}).items() if k.split(".", 1)[0] not in skip}

    old, new = corpus_keys(previous), corpus_keys(current)
    return [
        f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k, ...) != new.get(k, ...)
    ]


def identity_differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a stored build's config and inputs and this run's, one line per key
    ("images.min_side: 150 -> 200", "inputs: + /new.warc.gz"); run-only sections are not compared."""
    lines = config_differences(previous.get("config"), current.get("config"))
    old_in, new_in = previous.get("inputs") or [], current.get("inputs") or []
    lines += [f"inputs: - {p}" for p in old_in if p not in new_in]
    lines += [f"inputs: + {p}" for p in new_in if p not in old_in]
    if not lines and old_in != new_in:
        lines.append("inputs: same files in another order")
    return lines


def _shown(differences: list[str]) -> str:
    more = f"; ... ({len(differences)} in all)" if len(differences) > 10 else ""
    return "; ".join(differences[:10]) + more


def _input_ids(paths: list[str]) -> list[str]:
    return [p if is_remote(p) else os.path.abspath(p) for p in paths]


def _build(
    cfg: BuildConfig, paths: list[str], units: list[Unit], store: Storage, work: Path, progress: bool
) -> dict[str, Any]:
    identity = {"config": dump_config(cfg), "inputs": _input_ids(paths)}
    if store.exists("build.json"):
        previous = _read_json_object(store, "build.json")
        differences = identity_differences(previous, identity)
        if differences:
            hint = " (to add inputs to a finished corpus, use --append)" if previous.get("finished_at") else ""
            raise ValueError(
                f"{store.url} holds a build with other inputs or config ({_shown(differences)}); use a new "
                f"--output or delete it (see {store.url_of('build.json')}){hint}"
            )
        if previous.get("finished_at"):
            log.info("%s: build already finished at %s; nothing to do", store.url, previous["finished_at"])
            return json.loads(store.read_bytes("stats.json"))
        info = previous
    else:
        info = {
            **identity,
            "versions": _versions(),
            "started_at": _now(),
            "finished_at": None,
            "units": [_unit_dict(u) for u in units],
            "signals": declared_signals(cfg.filters),
        }
        _put_json(store, "build.json", info)
    try:
        (work / "units").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the work folder {work}: {e}") from e

    init_ray(cfg.ray)
    t0 = time.time()
    _extract_phase(cfg, units, store, work, progress)

    # phase 2 -----------------------------------------------------------------------------------------
    dedup_dir = work / "dedup"
    # a remote corpus gets its dedup/ files from a local copy once the passes are done
    published = work / "publish" if not store.local else Path(store.root)
    if not (dedup_dir / "DONE").exists():
        if dedup_dir.exists():
            shutil.rmtree(dedup_dir)
        staged = [str(work / "units" / u.name / "docs.parquet") for u in units]
        run_dedup(staged, str(dedup_dir), cfg.dedup, str(published), progress=progress)
        if not store.local:
            for f in sorted((published / "dedup").glob("*.parquet")):
                store.put_file(f, f"dedup/{f.name}")
        (dedup_dir / "DONE").write_text(_now())

    _write_phase(cfg, units, 0, store, work, progress)
    stats = _finish_stats(cfg, Ledger(), units, store, work, time.time() - t0)
    stats["build"]["units"] = len(units)
    _put_json(store, "stats.json", stats)
    if not cfg.output.keep_work:
        shutil.rmtree(work)
    info["finished_at"] = _now()
    _put_json(store, "build.json", info)
    return stats


def _extract_phase(
    cfg: BuildConfig, units: list[Unit], store: Storage, work: Path, progress: bool, known_urls: str = ""
) -> None:
    """Phase 1 for the units without a DONE marker in WORK/units."""
    todo = [u for u in units if not (work / "units" / u.name / "DONE.json").exists()]
    docs_total = {"n": 0}

    def on_unit(unit, summary):
        docs_total["n"] += summary["documents"]
        return {"documents": docs_total["n"]}

    fetcher = None
    if cfg.images.fetch and todo:  # one fetcher for all workers, so per-host politeness holds build-wide
        from crawl.live.image_fetcher import FetchResolver

        fetcher = FetchResolver(cfg.crawl, warc_dir=_crawl_dir(cfg, store.url) / "images")
    try:
        _run_pool(
            cfg,
            unit_stage(cfg, "extract+filter", "unit"),
            todo,
            "run_unit",
            lambda u: (u, str(work), fetcher, known_urls),
            on_unit,
            progress,
            writes_to=lambda u: str(work / "units" / u.name),
        )
    finally:
        if fetcher is not None:
            fetcher.close()


def _write_phase(cfg: BuildConfig, units: list[Unit], first: int, store: Storage, work: Path, progress: bool) -> None:
    """Phase 3: shards of the units (numbered from `first`) and their manifest lines, strictly in unit order
    whatever order the units finish in."""
    listed = {s.name for s in _listed_shards(store)}
    index_of = {u.name: first + i for i, u in enumerate(units)}
    to_write = [u for u in units if not (work / "units" / u.name / "WRITTEN.json").exists()]
    results: dict[str, list[ShardInfo]] = {}
    next_unit = {"i": 0}

    def flush_in_order():
        lines, start = [], next_unit["i"]
        while next_unit["i"] < len(units):
            u = units[next_unit["i"]]
            marker = work / "units" / u.name / "WRITTEN.json"
            if u.name in results:
                shards = results.pop(u.name)
            elif marker.exists():
                shards = [ShardInfo(**s) for s in json.loads(marker.read_text())["shards"]]
            else:
                break
            missing = [s for s in shards if s.name not in listed]
            lines += [s.line() for s in missing]
            listed.update(s.name for s in missing)
            next_unit["i"] += 1
        if lines:
            store.append_lines(MANIFEST, lines)  # one write (object stores: one rewrite) per flush
        elif next_unit["i"] > start and not store.exists(MANIFEST):
            store.write_bytes(MANIFEST, b"")  # units without documents: still a (empty) corpus

    def on_written(unit, summary):
        results[unit.name] = [ShardInfo(**s) for s in summary["shards"]]
        flush_in_order()

    flush_in_order()
    _run_pool(
        cfg,
        unit_stage(cfg, "write shards", "write"),
        to_write,
        "write_unit",
        lambda u: (index_of[u.name], u, str(work), store.url),
        on_written,
        progress,
        writes_to=lambda u: f"{store.url} (shards, index) and {work / 'units' / u.name}",
    )
    flush_in_order()
    assert next_unit["i"] == len(units), "every unit's shards are in the manifest"


def _finish_stats(
    cfg: BuildConfig, ledger: Ledger, units: list[Unit], store: Storage, work: Path, elapsed: float
) -> dict[str, Any]:
    """The funnel: `ledger` (an appended corpus's earlier counts, else empty) plus the units' ledgers; the
    units' rejects are copied to CORPUS/rejects/."""
    store.makedirs("rejects")
    for u in units:
        unit_dir = work / "units" / u.name
        ledger.merge(Ledger.from_dict(json.loads((unit_dir / "DONE.json").read_text())["ledger"]))
        ledger.merge(Ledger.from_dict(json.loads((unit_dir / "WRITTEN.json").read_text())["ledger"]))
        store.put_file(unit_dir / "rejects.parquet", f"rejects/{u.name}.parquet")
        store.put_file(unit_dir / "write-rejects.parquet", f"rejects/{u.name}.dedup.parquet")
    stats = ledger.to_dict(stage_order(cfg))
    shards = _listed_shards(store)
    stats["build"] = {
        "seconds": round(elapsed, 3),
        "documents": sum(s.documents for s in shards),
        "shards": len(shards),
    }
    problems = check_funnel(stats)
    assert not problems, f"funnel does not add up: {problems}"
    # errors of the run: outcomes the machine decided rather than the input (a safety-net timeout), so
    # another run of the same build may give another corpus
    stats["build"]["errors"] = run_errors(stats)
    for name, n in stats["build"]["errors"].items():
        log.error("%d x %s in this build: the corpus may differ from another run's (see stats.json)", n, name)
    stats["build"]["notes"] = explain(stats, cfg)
    return stats


# ---- appending to a finished corpus -------------------------------------------------------------------
# sections an append may set differently from the corpus's build: which inputs, and how the run is spread
APPEND_FREE_SECTIONS = ("ray", "input")


def _append(
    cfg: BuildConfig, paths: list[str], units: list[Unit], store: Storage, work: Path, progress: bool
) -> dict[str, Any]:
    """`interloom build --input NEW --output CORPUS --append`: add units to a finished corpus.

    The new units go through phases 1-3 of a build; global dedup runs over the new documents together with
    the corpus's documents, whose signatures are computed again from the stored documents (the build's
    work files are gone by default, hold documents dedup removed, and would be stale after one append; a
    stored document's text, URL, fetch time and signals are the staged ones, so its signature is the one
    the build computed). Existing documents win every duplicate choice and are never removed (see
    filters.dedup.passes). Old shards, index files and rejects are not touched: new shards are numbered
    after the corpus's units, their manifest lines appended; stats.json, dedup/ and build.json are rewritten
    to cover both. Units already in the corpus (same unit name: file name and resolved path) are skipped and
    counted. The config must be the corpus's own (inputs and ray aside)."""
    if not store.exists("build.json"):
        raise ValueError(f"--append: {store.url} holds no corpus (no build.json); build it first, without --append")
    info = _read_json_object(store, "build.json", "--append: ")
    if not info.get("finished_at"):
        raise ValueError(
            f"--append: the build of {store.url} has not finished; finish it first (run its own command again, "
            f"without --append)"
        )
    where = f"--append: {store.url_of('build.json')} is damaged"
    if not isinstance(info.get("config"), dict):
        raise ValueError(f"{where}: 'config' is not an object; nothing was written")
    units_ok = isinstance(info.get("units"), list) and all(
        isinstance(u, dict) and isinstance(u.get("name"), str) for u in info["units"]
    )
    if not units_ok or not isinstance(info.get("inputs"), list):
        raise ValueError(
            f"{where}: 'units' is not a list of units with names, or 'inputs' not a list; nothing was written"
        )
    pending = info.get("appending")
    if pending is not None and not (
        isinstance(pending, dict)
        and all(isinstance(pending.get(k), list) for k in ("units", "inputs"))
        and isinstance(pending.get("old_shards"), int)
    ):
        raise ValueError(
            f"{where}: 'appending' is not an append record (units, inputs, old_shards); nothing was written"
        )
    differences = config_differences(info["config"], dump_config(cfg), APPEND_FREE_SECTIONS)
    if differences:
        raise ValueError(
            f"--append: the config differs from the one {store.url} was built with ({_shown(differences)}); "
            f"a corpus is built by one config: append with its settings (see {store.url_of('build.json')})"
        )
    in_corpus = {u["name"] for u in info["units"]}
    # a new input named like one of the corpus (another folder's x.warc.gz) must not give its documents their ids
    corpus_names = {u.get("label") or Path(str(u.get("path", ""))).name for u in info["units"]}
    new_units = label_shared_names([u for u in units if u.name not in in_corpus], corpus_names)
    skipped = [u for u in units if u.name in in_corpus]
    for u in skipped:
        log.info("%s: already in the corpus, skipped", u.path)
    if pending and [u["name"] for u in pending["units"]] != [u.name for u in new_units]:
        raise ValueError(
            f"--append: an append of other inputs to {store.url} was interrupted; run it again to finish it "
            f"(inputs: {', '.join(pending['inputs'][:5])}{' ...' if len(pending['inputs']) > 5 else ''})"
        )
    old_stats = _check_corpus_for_append(store, info)
    if not new_units:
        stats = copy.deepcopy(old_stats)
        note = f"nothing to add: all {len(skipped)} inputs are already in the corpus (units_already_in_corpus)"
        stats["build"].update(appended={"units": 0, "units_already_in_corpus": len(skipped)}, notes=[note])
        log.info("%s: %s", store.url, note)
        return stats
    if not pending:
        pending = {
            "inputs": _input_ids([u.path for u in new_units]),
            "units": [_unit_dict(u) for u in new_units],
            "skipped": len(skipped),
            "started_at": _now(),
            "old_shards": len(_listed_shards(store)),
        }
        info["appending"] = pending
        _put_json(store, "build.json", info)
    awork = work / f"append-{len(info.get('appends', []))}"
    (awork / "units").mkdir(parents=True, exist_ok=True)
    init_ray(cfg.ray)
    t0 = time.time()

    # the corpus's documents, as staged files without image bytes (one per shard), and their URLs
    old_shards = _listed_shards(store)[: pending["old_shards"]]
    existing_dir = awork / "existing"
    existing = [str(existing_dir / f"{s.name}.parquet") for s in old_shards]
    known_urls = existing_dir / "urls.parquet"
    if not (existing_dir / "DONE").exists():
        existing_dir.mkdir(parents=True, exist_ok=True)
        map_tasks(
            Stage("read corpus", resources=Resources(cpus=1), env=_storage_env(), unit_label="shard"),
            stage_existing,
            [(store.url, s.name, out) for s, out in zip(old_shards, existing)],
            progress=progress,
            writes_to=lambda _: str(existing_dir),
        )
        urls = (pq.read_table(p, columns=["url"]).column("url").to_pylist() for p in existing)
        keys = sorted({k for part in urls for u in part if (k := normalize_url(u)) is not None})
        write_parquet_atomic(pa.table({"url_key": pa.array(keys, pa.string())}), known_urls)
        (existing_dir / "DONE").write_text(_now())

    _extract_phase(cfg, new_units, store, awork, progress, known_urls=str(known_urls))

    dedup_dir = awork / "dedup"
    published = awork / "publish"
    if not (dedup_dir / "DONE").exists():
        if dedup_dir.exists():
            shutil.rmtree(dedup_dir)
        staged = [str(awork / "units" / u.name / "docs.parquet") for u in new_units]
        old_images = _read_corpus_parquet(store, "dedup/images.parquet")
        common = tuple(r["phash"] for r in old_images.to_pylist() if r["dropped"]) if old_images else ()
        run_dedup(
            staged,
            str(dedup_dir),
            cfg.dedup,
            str(published),
            existing=existing,
            common_phashes=common,
            progress=progress,
        )
        _merge_dedup_reports(store, published / "dedup")
        (dedup_dir / "DONE").write_text(_now())

    _write_phase(cfg, new_units, len(info["units"]), store, awork, progress)
    stats = _finish_stats(cfg, Ledger.from_dict(old_stats), new_units, store, awork, time.time() - t0)
    stats["build"].update(
        units=len(info["units"]) + len(new_units),
        appended={"units": len(new_units), "units_already_in_corpus": len(skipped)},
    )
    added = stats["build"]["documents"] - old_stats["build"]["documents"]
    stats["build"]["notes"].insert(
        0,
        f"appended {len(new_units)} inputs: {added} documents added"
        + (f"; {len(skipped)} inputs already in the corpus were skipped" if skipped else ""),
    )
    _put_json(store, "stats.json", stats)
    info["units"] += pending["units"]
    info["inputs"] += [p for p in pending["inputs"] if p not in info["inputs"]]
    info.setdefault("appends", []).append(
        {**{k: pending[k] for k in ("inputs", "skipped", "started_at")}, "finished_at": _now()}
    )
    del info["appending"]
    _put_json(store, "build.json", info)
    if not cfg.output.keep_work:
        shutil.rmtree(awork)
        if not any(work.iterdir()):
            work.rmdir()
    return stats


def _check_corpus_for_append(store: Storage, info: dict[str, Any]) -> dict[str, Any]:
    """The corpus's stats.json, after checking that what an append reads and extends is whole: stats.json
    (the funnel it adds to), every manifest line (a torn last line only where an earlier append was
    interrupted) and every listed shard. Damage is refused naming the file, before anything is written."""
    doing = "--append: "
    if not store.exists("stats.json"):
        raise ValueError(f"{doing}{store.url_of('stats.json')} is missing; the corpus is damaged, nothing was written")
    stats = _read_json_object(store, "stats.json", doing)
    try:
        int(stats["build"]["documents"])
        Ledger.from_dict(stats)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(
            f"{doing}{store.url_of('stats.json')} is damaged: not a build's funnel ({type(e).__name__}: {e}); "
            f"nothing was written"
        ) from None
    if not store.exists(MANIFEST):
        raise ValueError(f"{doing}{store.url_of(MANIFEST)} is missing; the corpus is damaged, nothing was written")
    try:
        raw = store.read_bytes(MANIFEST).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{doing}{store.url_of(MANIFEST)} is damaged: not UTF-8 ({e}); nothing was written") from None
    lines = raw.splitlines(keepends=True)
    shards = []
    for n, line in enumerate(lines, 1):
        if not line.endswith("\n") and n == len(lines) and info.get("appending"):
            continue  # torn by the interrupted append: dropped when it resumes
        if not line.strip():
            continue
        shard = parse_manifest_line(line) if line.endswith("\n") else None
        if shard is None:
            raise ValueError(
                f"{doing}{store.url_of(MANIFEST)} line {n} is damaged (not a whole shard entry): "
                f"{line.strip()[:80]!r}; nothing was written"
            )
        shards.append(shard)
    for name, column in (("clusters.parquet", "id"), ("images.parquet", "phash")):  # merged at the end
        rel = f"dedup/{name}"
        if store.exists(rel):
            try:
                with store.fs.open(store.path(rel), "rb") as f:
                    names = pq.ParquetFile(f).schema_arrow.names
            except (OSError, pa.ArrowException) as e:
                raise ValueError(
                    f"{doing}{store.url_of(rel)} is damaged: not a Parquet file ({e}); nothing was written"
                ) from None
            if column not in names:
                raise ValueError(f"{doing}{store.url_of(rel)} is damaged: no column {column!r}; nothing was written")
    for shard in shards[: (info.get("appending") or {}).get("old_shards", len(shards))]:
        if not store.exists(f"shards/{shard.name}.tar"):
            raise ValueError(
                f"{doing}{store.url_of(MANIFEST)} lists {shard.name}, but {store.url_of(f'shards/{shard.name}.tar')} "
                f"is missing; the corpus is damaged, nothing was written"
            )
    return stats


def stage_existing(corpus: str, shard: str, out: str) -> int:
    """The documents of one shard of a corpus as a staged Parquet file without image bytes (what the dedup
    passes read); returns their number."""
    docs = list(Corpus(corpus).iter_shard(shard, with_images=False))
    write_parquet_atomic(documents_to_staged_table(docs), out)
    return len(docs)


def _read_corpus_parquet(store: Storage, rel: str) -> pa.Table | None:
    return pq.read_table(pa.BufferReader(store.read_bytes(rel))) if store.exists(rel) else None


def _merge_dedup_reports(store: Storage, new_dir: Path) -> None:
    """CORPUS/dedup/ after an append: the earlier clusters plus the rows of documents not listed before (the
    new documents, and existing keepers of clusters they joined); the image frequencies of the append's
    count (existing and new documents) for every pHash it saw, the earlier rows for the others."""
    for name, key in (("clusters.parquet", "id"), ("images.parquet", "phash")):
        new = pq.read_table(new_dir / name)
        old = _read_corpus_parquet(store, f"dedup/{name}")
        if old is not None:
            if name == "clusters.parquet":
                new = new.filter(pc.invert(pc.is_in(new[key], value_set=old[key])))
                merged = pa.concat_tables([old, new.cast(old.schema)])
            else:
                old = old.filter(pc.invert(pc.is_in(old[key], value_set=new[key])))
                merged = pa.concat_tables([old.cast(new.schema), new])
            new = merged.sort_by([(c, "ascending") for c in (("cluster_id", "id") if key == "id" else ("phash",))])
        buf = pa.BufferOutputStream()
        pq.write_table(new, buf)
        store.write_bytes(f"dedup/{name}", buf.getvalue().to_pybytes())
