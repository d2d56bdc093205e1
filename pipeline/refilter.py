"""`interloom refilter CORPUS --set filters.x.y=V --output NEW`: stricter thresholds, without re-extracting.

Every kept document carries the signals its filters computed (`doc.signals`), and build.json records which
config key thresholds which signal (`filters.registry.declared_signals`). A refilter:
  1. reads CORPUS/build.json and applies the `--set` overrides to its config;
  2. accepts only changes of declared thresholds that are stricter (a "min" threshold raised, a "max" one
     lowered): a looser one would keep pages the build dropped, which are not in the corpus, so it is refused
     naming the key (run `interloom build` with the new setting); any other key (images.min_side, a list of
     languages, ...) decides something that is not a stored signal and is refused too;
  3. streams the corpus unit by unit, in the build's unit order, drops each document whose stored signal fails
     a changed threshold (counted as the stage `refilter`, reason `KEY`, listed in NEW/rejects/), and writes
     the rest with the build's shard naming and sizes, so NEW is byte for byte the corpus a fresh build with
     the stricter settings writes.
One thing a refilter cannot redo: global dedup. A dropped document that was the kept copy of a duplicate
cluster (CORPUS/dedup/clusters.parquet) would, in a fresh build, leave another member of its cluster in the
corpus; the refilter counts these (`build.dedup_keepers_dropped`) and says so. Image dedup is not redone
either (an image removed for being in more than dedup.image_max_docs documents could stay in a fresh build
with fewer documents); that case is not detected, as the removed images are not in the corpus.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from corpus.config import flatten_config, load_config
from corpus.format import MANIFEST, Corpus, ShardInfo, write_shards
from corpus.stats import Ledger, check_funnel
from corpus.storage import write_parquet_atomic
from filters.registry import declared_signals

STAGE = "refilter"


def stricter_thresholds(old_cfg: Any, new_cfg: Any) -> list[tuple[str, str, str, float]]:
    """[(config key, signal, "min"|"max", new value)] of the changed thresholds; ValueError naming each change
    that is looser or not a threshold on a stored signal."""
    old, new = flatten_config(old_cfg.model_dump(mode="json")), flatten_config(new_cfg.model_dump(mode="json"))
    by_key: dict[str, list[tuple[str, str]]] = {}
    for signal, thresholds in declared_signals(new_cfg.filters).items():
        for t in thresholds:
            by_key.setdefault(t["config"], []).append((signal, t["kind"]))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and not k.startswith("ray."))
    if not changed:
        raise ValueError("refilter: the --set values change no setting of the corpus's build")
    problems, out = [], []
    for key in changed:
        before, after = old.get(key), new.get(key)
        if key not in by_key or not isinstance(before, int | float) or not isinstance(after, int | float):
            problems.append(f"{key}: {before!r} -> {after!r} is not a threshold on a signal the corpus stores")
            continue
        for signal, kind in by_key[key]:
            if (after < before) if kind == "min" else (after > before):
                problems.append(
                    f"{key}: {before!r} -> {after!r} is looser than the build's: it would keep pages "
                    f"the build dropped, which are not in the corpus"
                )
                break
            out.append((key, signal, kind, float(after)))
    if problems:
        raise ValueError(
            "refilter cannot apply: " + "; ".join(problems) + " -- run `interloom build` with the new settings instead"
        )
    return out


def _fails(doc: Any, checks: list[tuple[str, str, str, float]]) -> str | None:
    for key, signal, kind, value in checks:
        if signal not in doc.signals:
            raise ValueError(
                f"document {doc.id} has no stored signal {signal!r} (needed for {key}); "
                f"run `interloom build` with the new settings instead"
            )
        got = doc.signals[signal]
        if (got < value) if kind == "min" else (got > value):
            return key
    return None


def _dedup_keepers(corpus: Corpus) -> set[str]:
    """Ids of documents kept as the one copy of a duplicate cluster with removed members."""
    path = f"{corpus.root}/dedup/clusters.parquet"
    if not corpus.fs.exists(path):
        return set()
    try:
        with corpus.fs.open(path, "rb") as f:
            rows = pq.read_table(f, columns=["id", "keeper", "size"]).to_pylist()
        return {r["id"] for r in rows if r["keeper"] and r["size"] > 1}
    except (ValueError, OSError, TypeError) as e:  # not Parquet (ArrowInvalid), a column missing or null
        why = " ".join(str(e).split())[:200]
        raise ValueError(f"{corpus.path.rstrip('/')}/dedup/clusters.parquet is damaged: {why}") from None


def _corpus_json(src: Corpus, name: str) -> dict[str, Any]:
    """A corpus's build.json / stats.json; missing or damaged is a ValueError naming it."""
    where = f"{src.path.rstrip('/')}/{name}"
    try:
        data = src.read_json(name)
    except FileNotFoundError:
        raise ValueError(f"{where} is missing: not a corpus finished by `interloom build`") from None
    except ValueError as e:  # Corpus.read_json names the file
        raise ValueError(f"the corpus is damaged: {e}") from None
    except OSError as e:
        raise ValueError(f"{where} is damaged: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where} is damaged: a JSON {type(data).__name__}, not an object")
    return data


def refilter_corpus(corpus: str | Path, output: str | Path, overrides: list[str]) -> dict[str, Any]:
    """Write NEW = CORPUS with stricter thresholds applied to the stored signals. Returns NEW's stats."""
    from pipeline.build import BuildConfig

    src = Corpus(corpus)
    info = _corpus_json(src, "build.json")
    if not info.get("finished_at"):
        raise ValueError(f"{corpus}: the build has not finished; finish it before refiltering")
    if not isinstance(info.get("config"), dict):
        raise ValueError(f"{src.path.rstrip('/')}/build.json is damaged: its 'config' is not an object")
    try:
        built = load_config(BuildConfig, None, None, base=copy.deepcopy(info["config"]))
    except ValueError as e:
        raise ValueError(f"{src.path.rstrip('/')}/build.json is damaged: its {e}") from None
    cfg = load_config(BuildConfig, None, overrides, base=copy.deepcopy(info["config"]))
    checks = stricter_thresholds(built, cfg)
    old_stats = _corpus_json(src, "stats.json")  # read before anything is written
    if not isinstance(old_stats.get("stages"), list) or not isinstance(old_stats.get("items", {}), dict):
        raise ValueError(f"{src.path.rstrip('/')}/stats.json is damaged: no 'stages' list (the build's funnel)")
    if not isinstance(info.get("units"), list) or not all(isinstance(u, dict) and "name" in u for u in info["units"]):
        raise ValueError(f"{src.path.rstrip('/')}/build.json is damaged: 'units' is not a list of named units")
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--output {out}: exists and is not empty; a refilter writes a new corpus")
    keepers = _dedup_keepers(src)
    ledger = Ledger()
    stage = ledger.stage(STAGE)
    dropped_keepers = 0
    shards_of: dict[str, list[ShardInfo]] = {}
    for s in src.shards():
        shards_of.setdefault(s.unit, []).append(s)
    names = [u["name"] for u in info["units"]]
    # every shard is written under its unit, once: a unit named twice (its shards written twice) or a shard
    # of a unit build.json does not name (its documents left out without a word) is damage
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{src.path.rstrip('/')}/build.json is damaged: 'units' names a unit twice or not by a string")
    unnamed = sorted(set(shards_of) - set(names))
    if unnamed:
        raise ValueError(
            f"{src.path.rstrip('/')}/{MANIFEST} lists shards of unit {unnamed[0]!r}, which build.json's 'units' "
            f"does not name: the corpus is damaged"
        )

    def kept(shards: list[ShardInfo]):
        nonlocal dropped_keepers
        for shard in shards:
            for doc in src.iter_shard(shard):
                stage.n_in += 1
                key = _fails(doc, checks)
                if key is None:
                    stage.n_out += 1
                    yield doc
                    continue
                ledger.drop(STAGE, key, id=doc.id, url=doc.url, detail=f"{doc.signals} vs {key}")
                dropped_keepers += doc.id in keepers

    lines = []
    fresh = not out.exists()
    try:
        for index, unit in enumerate(info["units"]):
            prefix = f"{cfg.output.shard_prefix}-{index:05d}"
            written = write_shards(
                kept(shards_of.get(unit["name"], [])),
                out,
                prefix,
                unit=unit["name"],
                max_bytes=cfg.output.max_shard_bytes,
                max_docs=cfg.output.max_shard_docs,
            )
            lines += [s.line() + "\n" for s in written]
    except (ValueError, OSError) as e:  # a damaged or missing shard of the source (named): no half corpus left
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        else:  # it was empty: all in it is ours
            for p in out.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise  # the file system refused (the output's disk full, ...): the CLI names the file
        raise ValueError(f"{e}; the refilter stopped, nothing was written to {out}") from None
    (out / MANIFEST).write_text("".join(lines), encoding="utf-8")
    write_parquet_atomic(ledger.rejects_table(), out / "rejects" / "refilter.parquet")
    stats = {
        **ledger.to_dict([STAGE]),
        "stages": [*old_stats["stages"], *ledger.to_dict([STAGE])["stages"]],
        "items": old_stats.get("items", {}),
    }
    stats["build"] = {
        "documents": stage.n_out,
        "shards": len(lines),
        "units": len(info["units"]),
        "refiltered_from": str(corpus),
        "dedup_keepers_dropped": dropped_keepers,
        "errors": {},
        "notes": [f"{stage.n_out} of {stage.n_in} documents kept by the stricter thresholds"],
    }
    if dropped_keepers:
        stats["build"]["notes"].append(
            f"{dropped_keepers} dropped documents were the kept copy of a duplicate cluster: a fresh build with "
            f"these settings would keep another member of each; run `interloom build` for that corpus"
        )
    assert not check_funnel(stats), check_funnel(stats)
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True), encoding="utf-8")
    new_info = {
        **info,
        "config": cfg.model_dump(mode="json"),
        "refiltered_from": str(corpus),
        "signals": declared_signals(cfg.filters),
    }
    (out / "build.json").write_text(json.dumps(new_info, indent=2, sort_keys=True), encoding="utf-8")
    return stats
