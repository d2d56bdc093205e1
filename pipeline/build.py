"""`interloom build`: input files -> corpus, as three phases on Ray.

  phase 1, per unit (one input file, in a pool of Ray actors that load their models once):
      read -> extract -> text filters -> images -> in-document image dedup -> document filters
      -> WORK/units/<unit>/docs.parquet (documents with image bytes) + rejects + DONE marker (the ledger)
  phase 2, global dedup (filters.dedup, separate Ray passes through Parquet):
      signatures -> buckets -> clusters -> removals; clusters also go to CORPUS/dedup/
  phase 3, per unit, in unit order: apply removals -> post-dedup document rules -> shards + index;
      the driver appends manifest lines strictly in unit order, so any parallelism gives the same manifest.

Resume: every unit output is written to a temporary name and renamed, then its marker is written. A re-run
with the same inputs and config skips finished units and finished dedup, and re-writes only the shards whose
manifest lines are missing (shards are byte-deterministic). Killing a build at any point and re-running it
gives the corpus an uninterrupted run gives.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import platform
import shutil
import time
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from pydantic import Field
from tqdm import tqdm

from crawl.extract import ExtractConfig, ExtractStep
from crawl.images import ImageConfig, ImageStep
from crawl.sources import Unit, discover_units, open_source
from filters.config import FiltersConfig
from filters.dedup import ApplyDedup, DedupConfig, DedupResult, InDocumentImageDedup, run_dedup
from filters.registry import document_steps, text_steps
from pipeline.config import Section, dump_config
from pipeline.corpus import ShardInfo, append_manifest, repair_manifest, write_shards
from pipeline.record import STAGED_SCHEMA, documents_to_staged_table, staged_table_to_documents
from pipeline.stats import Ledger, check_funnel
from pipeline.steps import Step, run_steps


class OutputConfig(Section):
    shard_prefix: str = Field("part", pattern=r"^[A-Za-z0-9_.-]+$")
    max_shard_bytes: int = Field(256 << 20, ge=1 << 16, description="a shard is closed past this size")
    max_shard_docs: int = Field(10_000, ge=1)
    staged_batch_docs: int = Field(64, ge=1, description="documents per Parquet row group in WORK")
    keep_work: bool = Field(False, description="keep CORPUS/_work (staged documents) after a finished build")


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster address; None starts a local instance")
    workers: int = Field(0, ge=0, description="unit workers (actors); 0 = one per CPU Ray sees")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local instance (None = all)")


class BuildConfig(Section):
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

    def unit(self, resolver) -> list[Step]:
        """Phase 1, after reading. The image step is per unit: it resolves images from that unit."""
        return [self.extract, *self.text, ImageStep(self.cfg.images, resolver), self.image_dedup,
                *self.document]

    def write(self, dedup_result) -> list[Step]:
        """Phase 3: global dedup removals, then the document rules again (dedup may remove images)."""
        return [ApplyDedup(dedup_result), *self.final]


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


def _write_parquet_atomic(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


# ---- phase 1 and 3 worker -----------------------------------------------------------------------------
class UnitWorker:
    """Runs units of work. As a Ray actor it keeps its steps (and their models) across units."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = BuildConfig.model_validate(cfg)
        self.steps = Steps(self.cfg)

    def run_unit(self, unit: Unit, work: str) -> dict[str, Any]:
        """Phase 1 for one unit: staged docs + rejects + DONE marker. Returns the summary."""
        out = Path(work) / "units" / unit.name
        out.mkdir(parents=True, exist_ok=True)
        ledger = Ledger()
        source = open_source(unit)
        source.index_images()
        self.steps.setup()
        steps = self.steps.unit(source.images.fetch_many)
        tmp = out / "docs.parquet.tmp"
        n_docs = 0
        with pq.ParquetWriter(tmp, STAGED_SCHEMA) as writer:
            batch = []
            for doc in run_steps(source.pages(ledger), steps, ledger):
                batch.append(doc)
                if len(batch) >= self.cfg.output.staged_batch_docs:
                    writer.write_table(documents_to_staged_table(batch))
                    n_docs += len(batch)
                    batch = []
            if batch:
                writer.write_table(documents_to_staged_table(batch))
                n_docs += len(batch)
        os.replace(tmp, out / "docs.parquet")
        _write_parquet_atomic(out / "rejects.parquet", ledger.rejects_table())
        summary = {"unit": asdict(unit), "documents": n_docs, "ledger": ledger.to_dict()}
        _write_json_atomic(out / "DONE.json", summary)
        return summary

    def write_unit(self, index: int, unit: Unit, work: str, corpus: str) -> dict[str, Any]:
        """Phase 3 for one unit: removals applied, shards written. The manifest is the driver's job."""
        unit_dir = Path(work) / "units" / unit.name
        ledger = Ledger()
        result = DedupResult.load(Path(work) / "dedup")
        self.steps.setup()
        steps = self.steps.write(result)
        docs = _iter_staged(unit_dir / "docs.parquet")
        prefix = f"{self.cfg.output.shard_prefix}-{index:05d}"
        shards = write_shards(run_steps(docs, steps, ledger), corpus, prefix, unit=unit.name,
                              max_bytes=self.cfg.output.max_shard_bytes,
                              max_docs=self.cfg.output.max_shard_docs)
        _write_parquet_atomic(unit_dir / "write-rejects.parquet", ledger.rejects_table())
        summary = {"shards": [asdict(s) for s in shards], "ledger": ledger.to_dict()}
        _write_json_atomic(unit_dir / "WRITTEN.json", summary)
        return summary


def _iter_staged(path: Path):
    pf = pq.ParquetFile(path)
    for i in range(pf.num_row_groups):
        yield from staged_table_to_documents(pf.read_row_group(i))


# ---- driver -------------------------------------------------------------------------------------------
def resolve_inputs(patterns: list[str]) -> list[str]:
    paths: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matched:
            raise ValueError(f"--input {pattern!r} matches no file")
        paths.extend(matched)
    return paths


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


def _run_pool(cfg: BuildConfig, items: list, method: str, desc: str, args_of, on_result,
              progress: bool) -> None:
    """Run `method` of UnitWorker actors over items; results handed to on_result as they finish."""
    if not items:
        return
    n_workers = cfg.ray.workers or max(1, int(ray.available_resources().get("CPU", 1)))
    n_workers = min(n_workers, len(items))
    actor_cls = ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2)(UnitWorker)
    actors = [actor_cls.remote(dump_config(cfg)) for _ in range(n_workers)]
    pending: dict[Any, Any] = {}
    queue = list(items)
    bar = tqdm(total=len(items), desc=desc, unit="unit", disable=not progress)
    try:
        free = list(actors)
        while queue or pending:
            while queue and free:
                actor, item = free.pop(), queue.pop(0)
                pending[getattr(actor, method).remote(*args_of(item))] = (actor, item)
            done, _ = ray.wait(list(pending), num_returns=1)
            actor, item = pending.pop(done[0])
            free.append(actor)
            on_result(item, ray.get(done[0]), bar)
            bar.update(1)
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)


def build_corpus(inputs: list[str], output: str | Path, cfg: BuildConfig | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Build (or resume) a corpus from input globs. Returns the stats funnel (also in stats.json)."""
    cfg = cfg or BuildConfig()
    paths = resolve_inputs(inputs)
    units = discover_units(paths)
    corpus = Path(output)
    work = corpus / "_work"
    corpus.mkdir(parents=True, exist_ok=True)
    (work / "units").mkdir(parents=True, exist_ok=True)
    build_json = corpus / "build.json"
    identity = {"config": dump_config(cfg), "inputs": [os.path.abspath(p) for p in paths]}
    if build_json.exists():
        previous = json.loads(build_json.read_text())
        if {"config": previous.get("config"), "inputs": previous.get("inputs")} != identity:
            raise ValueError(f"{corpus} holds a build with other inputs or config; use a new --output "
                             f"or delete it (see {build_json})")
        if previous.get("finished_at"):
            print(f"{corpus}: build already finished at {previous['finished_at']}; nothing to do")
            return json.loads((corpus / "stats.json").read_text())
        info = previous
    else:
        info = {**identity, "versions": _versions(), "started_at": _now(), "finished_at": None,
                "units": [asdict(u) for u in units]}
        _write_json_atomic(build_json, info)

    init_ray(cfg.ray)
    t0 = time.time()

    # phase 1 -----------------------------------------------------------------------------------------
    todo = [u for u in units if not (work / "units" / u.name / "DONE.json").exists()]
    docs_total = {"n": 0}

    def on_unit(unit, summary, bar):
        docs_total["n"] += summary["documents"]
        bar.set_postfix(documents=docs_total["n"])

    _run_pool(cfg, todo, "run_unit", "extract+filter", lambda u: (u, str(work)), on_unit, progress)

    # phase 2 -----------------------------------------------------------------------------------------
    dedup_dir = work / "dedup"
    if not (dedup_dir / "DONE").exists():
        if dedup_dir.exists():
            shutil.rmtree(dedup_dir)
        staged = [str(work / "units" / u.name / "docs.parquet") for u in units]
        run_dedup(staged, str(dedup_dir), cfg.dedup, str(corpus))
        (dedup_dir / "DONE").write_text(_now())

    # phase 3 -----------------------------------------------------------------------------------------
    listed = {s.name for s in repair_manifest(corpus)}
    index_of = {u.name: i for i, u in enumerate(units)}
    to_write = [u for u in units if not (work / "units" / u.name / "WRITTEN.json").exists()]
    results: dict[str, list[ShardInfo]] = {}
    next_unit = {"i": 0}

    def flush_in_order():
        # append manifest lines strictly in unit order, whatever order units finished in
        while next_unit["i"] < len(units):
            u = units[next_unit["i"]]
            marker = work / "units" / u.name / "WRITTEN.json"
            if u.name in results:
                shards = results.pop(u.name)
            elif marker.exists():
                shards = [ShardInfo(**s) for s in json.loads(marker.read_text())["shards"]]
            else:
                return
            missing = [s for s in shards if s.name not in listed]
            append_manifest(corpus, missing)
            listed.update(s.name for s in missing)
            next_unit["i"] += 1

    def on_written(unit, summary, bar):
        results[unit.name] = [ShardInfo(**s) for s in summary["shards"]]
        flush_in_order()

    flush_in_order()
    _run_pool(cfg, to_write, "write_unit", "write shards",
              lambda u: (index_of[u.name], u, str(work), str(corpus)), on_written, progress)
    flush_in_order()
    assert next_unit["i"] == len(units), "every unit's shards are in the manifest"

    # stats, rejects, build.json ---------------------------------------------------------------------
    ledger = Ledger()
    (corpus / "rejects").mkdir(exist_ok=True)
    for u in units:
        unit_dir = work / "units" / u.name
        ledger.merge(Ledger.from_dict(json.loads((unit_dir / "DONE.json").read_text())["ledger"]))
        ledger.merge(Ledger.from_dict(json.loads((unit_dir / "WRITTEN.json").read_text())["ledger"]))
        shutil.copyfile(unit_dir / "rejects.parquet", corpus / "rejects" / f"{u.name}.parquet")
        shutil.copyfile(unit_dir / "write-rejects.parquet", corpus / "rejects" / f"{u.name}.dedup.parquet")
    stats = ledger.to_dict(stage_order(cfg))
    elapsed = time.time() - t0
    stats["build"] = {"units": len(units), "seconds": round(elapsed, 3),
                      "documents": sum(s.documents for s in repair_manifest(corpus)),
                      "shards": len(listed)}
    problems = check_funnel(stats)
    assert not problems, f"funnel does not add up: {problems}"
    _write_json_atomic(corpus / "stats.json", stats)
    if not cfg.output.keep_work:
        shutil.rmtree(work)
    info["finished_at"] = _now()
    _write_json_atomic(build_json, info)
    return stats
