"""Global, deterministic dedup of a build's staged documents: four passes on Ray that talk through Parquet.

    staged/*.parquet --1 signatures (one task per file)--> WORK/signatures/<i>.parquet
                     --2 buckets (one task per hash partition of the band keys)--> WORK/buckets/<k>.parquet
                     --3 clusters (one task: URL, exact, near-duplicate decisions)--> WORK/clusters.parquet
                     --4 removals + image frequency (two tasks)--> WORK/removals.parquet,
                                                               WORK/image_removals.parquet

1. signatures: per staged file, only the needed columns are read (id, url, fetched_at, lang, texts, signals,
   images.phash; never the image bytes). Each document gets its normalised URL key, fetch time, exact hash of
   the normalised text, MinHash signature and band hashes, quality key (signals["quality_score"], else 0)
   and its image pHashes.
2. buckets: task k reads the band columns of every signature file and keeps the (band, hash) keys with
   hash % partitions == k, so one task holds 1/partitions of the keys; documents sharing a key are
   candidate pairs. With `verify`, each pair is kept only when the estimated Jaccard of the two full
   signatures is >= jaccard_threshold (the signatures of the task's candidates only are read back).
3. clusters, in order, each among the documents the previous step kept:
   URL duplicates (same normalised URL: keep the latest fetched_at, then the smallest id) ->
   exact duplicates (same normalised text hash: keep the best quality, then the smallest id) ->
   near duplicates (connected components of the verified pairs: keep the best quality, then the smallest id).
   The union of all these edges gives the reported clusters (cluster_id = smallest id in the cluster).
4. removals: every non-keeper with its reason and keeper. Image frequency: the pHashes of the surviving
   documents are clustered (exact or within image_hamming bits); a cluster seen in more than image_max_docs
   documents is dropped everywhere (`image_too_common`).

Every output is sorted by a content key and independent of how the input is split into files or partitions,
so the same documents give byte-identical removals and clusters files.

Appending to a corpus (`existing`): the documents already in the corpus come in as a second set of files,
tier 0 (new documents are tier 1). The tier is the first key of every keeper choice, so an existing
document beats a new one whatever their fetch times or quality, and an existing document is never removed:
a URL or text group holding one keeps it, a near-duplicate component holding some keeps all of them (two
existing documents joined only through new ones stay; an edge between two existing documents is ignored)
and removes its new members. The image rule counts the existing documents too, and a pHash the corpus's
own build already found too common (`common_phashes`) makes its whole cluster too common.
The caller owns Ray (`ray.init` before `run_dedup`); tests start a local instance themselves.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpus.runner import Stage, map_tasks
from corpus.steps import Resources
from corpus.storage import write_parquet_atomic
from filters.dedup.config import DedupConfig
from filters.dedup.graph import connected_components, pairs_in_groups
from filters.dedup.images import parse_phash, phash_clusters
from filters.dedup.minhash import MinHasher, estimate_jaccard
from filters.dedup.text import codepoints_to_str, is_cjk_codepoints, normalize_codepoints, normalize_url, text_hash

REASON_URL = "duplicate_url"
REASON_EXACT = "duplicate_exact"
REASON_NEAR = "near_duplicate"
REASON_IMAGE = "image_too_common"

_STAGED_COLUMNS = ["id", "url", "fetched_at", "lang", "texts", "signals", "images.list.element.phash"]


def signature_schema(num_perm: int) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.string()),
            ("url", pa.string()),
            ("url_key", pa.string()),  # null: no URL
            ("fetched_ts", pa.float64()),  # seconds since epoch; -inf when missing or unparsable
            ("text_hash", pa.string()),  # null: empty text
            ("quality", pa.float64()),
            ("n_shingles", pa.int32()),
            ("minhash", pa.list_(pa.uint32(), num_perm)),
            ("bands", pa.list_(pa.uint64())),  # empty: no shingles, never a candidate
            ("phashes", pa.list_(pa.string())),
            ("tier", pa.int8()),  # 0: a document already in the corpus (appending), 1: a new one
        ]
    )


CLUSTERS_SCHEMA = pa.schema(
    [
        ("cluster_id", pa.string()),  # smallest document id of the cluster
        ("id", pa.string()),
        ("keeper", pa.bool_()),
        ("reason", pa.string()),  # "" for keepers, else duplicate_url | duplicate_exact | near_duplicate
        ("keeper_id", pa.string()),  # who replaces a removed document ("" for keepers)
        ("url", pa.string()),
        ("size", pa.int32()),
    ]
)
REMOVALS_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("keeper", pa.string())])
IMAGE_REMOVALS_SCHEMA = pa.schema([("phash", pa.string()), ("n_docs", pa.int64()), ("cluster", pa.string())])
IMAGES_SCHEMA = pa.schema(
    [("phash", pa.string()), ("n_docs", pa.int64()), ("dropped", pa.bool_()), ("cluster", pa.string())]
)
EDGES_SCHEMA = pa.schema([("a", pa.string()), ("b", pa.string()), ("jaccard", pa.float32())])


@dataclass
class DedupResult:
    """What phase 3 needs: removed document ids (with reason and keeper) and too-common image pHashes."""

    removed: dict[str, str] = field(default_factory=dict)  # id -> reason
    keepers: dict[str, str] = field(default_factory=dict)  # removed id -> keeper id
    common_image_phashes: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, work_dir: str | os.PathLike) -> DedupResult:
        """Read a finished dedup back from WORK (removals.parquet, image_removals.parquet, counts.json)."""
        work = Path(work_dir)
        rem = pq.read_table(work / "removals.parquet").to_pydict()
        imgs = pq.read_table(work / "image_removals.parquet").to_pydict()
        counts_path = work / "counts.json"
        counts = json.loads(counts_path.read_text()) if counts_path.exists() else {}
        return cls(
            removed=dict(zip(rem["id"], rem["reason"])),
            keepers=dict(zip(rem["id"], rem["keeper"])),
            common_image_phashes=set(imgs["phash"]),
            counts=counts,
        )


# ---- pass 1: signatures --------------------------------------------------------------------------------
def fetch_ts(text: str | None) -> float:
    """A fetch time (ISO 8601) as seconds since the epoch, -inf when missing or unparsable: URL dedup keeps the
    latest."""
    if not text:
        return -math.inf
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return -math.inf
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _quality(signals_json: str | None) -> float:
    try:
        q = float(json.loads(signals_json or "{}").get("quality_score", 0.0))
    except (ValueError, TypeError, AttributeError):
        return 0.0
    return 0.0 if math.isnan(q) else q


def signatures_pass(staged_path: str, out_path: str, cfg: DedupConfig, tier: int = 1) -> int:
    """Pass 1 for one staged file; returns the number of documents. `tier` 0 marks documents already in
    the corpus (see the module docstring)."""
    table = pq.ParquetFile(staged_path).read(columns=_STAGED_COLUMNS)
    hasher = MinHasher(cfg.bands, cfg.rows, cfg.ngram, cfg.seed)
    cols = table.to_pydict()
    n = table.num_rows
    shingles, hashes = [], []
    for texts, lang in zip(cols["texts"], cols["lang"]):
        full = "\n\n".join(t for t in (texts or []) if t is not None)
        cp = normalize_codepoints(full)
        hashes.append(text_hash(codepoints_to_str(cp)) if cfg.exact else None)
        shingles.append(
            hasher.shingle_hashes(cp, is_cjk_codepoints(cp, lang or ""))
            if cfg.minhash
            else np.empty(0, dtype=np.uint64)
        )
    sigs = hasher.signatures(shingles)
    bands = hasher.band_hashes(sigs)
    n_sh = np.array([len(s) for s in shingles], dtype=np.int32)
    band_lists = [bands[i].tolist() if n_sh[i] else [] for i in range(n)]
    phashes = [[im["phash"] for im in (ims or []) if im is not None and im.get("phash")] for ims in cols["images"]]
    out = pa.table(
        {
            "id": cols["id"],
            "url": cols["url"],
            "url_key": [normalize_url(u) if cfg.url else None for u in cols["url"]],
            "fetched_ts": [fetch_ts(f) for f in cols["fetched_at"]],
            "text_hash": hashes,
            "quality": [_quality(s) for s in cols["signals"]],
            "n_shingles": n_sh,
            "minhash": pa.FixedSizeListArray.from_arrays(pa.array(sigs.reshape(-1), pa.uint32()), cfg.num_perm),
            "bands": pa.array(band_lists, pa.list_(pa.uint64())),
            "phashes": pa.array(phashes, pa.list_(pa.string())),
            "tier": pa.array([tier] * n, pa.int8()),
        },
        schema=signature_schema(cfg.num_perm),
    )
    write_parquet_atomic(out, out_path)
    return n


# ---- pass 2: buckets -----------------------------------------------------------------------------------
def buckets_pass(partition: int, sig_paths: list[str], out_path: str, cfg: DedupConfig) -> int:
    """Pass 2 for one hash partition of the band keys; returns the number of (verified) pairs written."""
    band_idx, band_hash, ids = [], [], []
    for path in sig_paths:
        t = pq.read_table(path, columns=["id", "bands"])
        lists = t.column("bands").combine_chunks()
        flat = lists.flatten().to_numpy(zero_copy_only=False).astype(np.uint64)
        lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
        row = np.repeat(np.arange(t.num_rows), lengths)
        pos = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mine = (flat % np.uint64(cfg.partitions)) == np.uint64(partition)
        band_idx.append(pos[mine].astype(np.int16))
        band_hash.append(flat[mine])
        ids.append(t.column("id").take(pa.array(row[mine])))
    keys = pa.table(
        {
            "band": np.concatenate(band_idx) if band_idx else np.empty(0, np.int16),
            "hash": np.concatenate(band_hash) if band_hash else np.empty(0, np.uint64),
            "id": pa.concat_arrays([c.combine_chunks() for c in ids]) if ids else pa.array([], pa.string()),
        }
    )
    keys = keys.sort_by([("band", "ascending"), ("hash", "ascending"), ("id", "ascending")])
    band = keys.column("band").to_numpy()
    hsh = keys.column("hash").to_numpy()
    group = np.zeros(len(band), dtype=np.int64)
    if len(band) > 1:
        group[1:] = np.cumsum((band[1:] != band[:-1]) | (hsh[1:] != hsh[:-1]))
    i, j = pairs_in_groups(group, cfg.max_bucket_pairs)
    id_col = keys.column("id")
    pairs = pa.table({"a": id_col.take(pa.array(i)), "b": id_col.take(pa.array(j))})
    pairs = pairs.filter(pc.not_equal(pairs["a"], pairs["b"]))  # one document, two equal bands
    pairs = pairs.group_by(["a", "b"]).aggregate([]).sort_by([("a", "ascending"), ("b", "ascending")])
    jaccard = _estimated_jaccard(pairs, sig_paths) if len(pairs) else np.empty(0, np.float32)
    edges = pa.table(
        {"a": pairs["a"], "b": pairs["b"], "jaccard": pa.array(jaccard, pa.float32())}, schema=EDGES_SCHEMA
    )
    if cfg.verify:
        edges = edges.filter(pc.greater_equal(edges["jaccard"], pa.scalar(cfg.jaccard_threshold, pa.float32())))
    write_parquet_atomic(edges, out_path)
    return edges.num_rows


def _estimated_jaccard(pairs: pa.Table, sig_paths: list[str]) -> np.ndarray:
    """Estimated Jaccard of each pair from the full signatures (read only for the pairs' documents)."""
    wanted = pc.unique(pa.concat_arrays([pairs["a"].combine_chunks(), pairs["b"].combine_chunks()]))
    parts = []
    for path in sig_paths:
        t = pq.read_table(path, columns=["id", "minhash"])
        parts.append(t.filter(pc.is_in(t["id"], value_set=wanted)))
    sigs = pa.concat_tables(parts).sort_by("id")
    num_perm = sigs.schema.field("minhash").type.list_size
    matrix = sigs.column("minhash").combine_chunks().flatten().to_numpy().reshape(-1, num_perm)
    ids = sigs.column("id").combine_chunks()
    ia = pc.index_in(pairs["a"], value_set=ids).to_numpy()
    ib = pc.index_in(pairs["b"], value_set=ids).to_numpy()
    return estimate_jaccard(matrix[ia], matrix[ib]).astype(np.float32)


def _read_signatures(paths: list[str], columns: list[str], cfg: DedupConfig) -> pa.Table:
    """The given columns of all signature files as one table (an empty one when there are none)."""
    tables = [pq.read_table(p, columns=columns) for p in paths]
    if not tables:
        return signature_schema(cfg.num_perm).empty_table().select(columns)
    return pa.concat_tables(tables)


# ---- pass 3: clusters ----------------------------------------------------------------------------------
def _first_of_groups(keys: pa.Array) -> np.ndarray:
    """For a key array sorted so that each group is contiguous: True at each group's first row."""
    n = len(keys)
    first = np.ones(n, dtype=bool)
    if n > 1:
        first[1:] = pc.not_equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return first


def _group_keepers(table: pa.Table, key: str, order: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows `node` of `table` (with a non-null `key`) grouped by key and sorted by `order` inside a group:
    returns (node of each non-first row, node of its group's first row)."""
    t = table.filter(pc.is_valid(table[key]))
    t = t.sort_by([(key, "ascending")] + order)
    first = _first_of_groups(t.column(key).combine_chunks())
    nodes = t.column("node").to_numpy()
    head = nodes[np.maximum.accumulate(np.where(first, np.arange(len(nodes)), 0))]
    return nodes[~first], head[~first]


def clusters_pass(
    sig_paths: list[str], edge_paths: list[str], work_dir: str, corpus_dir: str | None, cfg: DedupConfig
) -> dict[str, int]:
    """Pass 3: URL, exact and near-duplicate decisions; writes clusters.parquet (work and corpus)."""
    cols = ["id", "url", "url_key", "fetched_ts", "text_hash", "quality", "tier"]
    docs = _read_signatures(sig_paths, cols, cfg).sort_by("id")
    ids = docs.column("id").combine_chunks()
    n = len(ids)
    if len(pc.unique(ids)) != n:
        raise ValueError(f"dedup: staged documents have duplicate ids ({n - len(pc.unique(ids))} repeats)")
    docs = docs.append_column("node", pa.array(np.arange(n)))
    tier = docs.column("tier").to_numpy()
    reason = np.full(n, "", dtype=object)
    keeper = np.full(n, -1, dtype=np.int64)
    eu, ev = [], []

    def decide(removed: np.ndarray, by: np.ndarray, why: str) -> None:
        new = tier[removed] > 0  # a document already in the corpus is never removed
        removed, by = removed[new], by[new]
        reason[removed] = why
        keeper[removed] = by
        eu.append(removed)
        ev.append(by)

    if cfg.url:
        by_fetch = [("tier", "ascending"), ("fetched_ts", "descending"), ("node", "ascending")]
        decide(*_group_keepers(docs, "url_key", by_fetch), REASON_URL)
    if cfg.exact:
        alive = docs.filter(pa.array(reason == ""))
        by_quality = [("tier", "ascending"), ("quality", "descending"), ("node", "ascending")]
        decide(*_group_keepers(alive, "text_hash", by_quality), REASON_EXACT)
    n_edges = 0
    if cfg.minhash and edge_paths:
        edges = pa.concat_tables([pq.read_table(p) for p in edge_paths])
        n_edges = edges.num_rows
        a = pc.index_in(edges["a"], value_set=ids).to_numpy(zero_copy_only=False)
        b = pc.index_in(edges["b"], value_set=ids).to_numpy(zero_copy_only=False)
        ok = (reason[a] == "") & (reason[b] == "") & ((tier[a] > 0) | (tier[b] > 0))
        a, b = a[ok].astype(np.int64), b[ok].astype(np.int64)
        labels = connected_components(n, a, b)
        quality = docs.column("quality").to_numpy()
        # keeper of each component: an existing document, then best quality, then smallest id (= smallest node)
        order = np.lexsort((np.arange(n), -quality, tier, labels))
        sorted_labels = labels[order]
        first = np.ones(n, dtype=bool)
        first[1:] = sorted_labels[1:] != sorted_labels[:-1]
        head = order[np.maximum.accumulate(np.where(first, np.arange(n), 0))]
        in_edge = np.zeros(n, dtype=bool)
        in_edge[a] = in_edge[b] = True
        removed = order[~first & in_edge[order]]
        decide(removed, head[~first & in_edge[order]], REASON_NEAR)
        eu.append(a)
        ev.append(b)

    u = np.concatenate(eu) if eu else np.empty(0, np.int64)
    v = np.concatenate(ev) if ev else np.empty(0, np.int64)
    labels = connected_components(n, u, v)
    size = np.bincount(labels, minlength=n)[labels]
    members = np.flatnonzero(size > 1)
    id_list = ids.to_pylist()
    urls = docs.column("url").to_pylist()
    table = pa.table(
        {
            "cluster_id": [id_list[labels[i]] for i in members],
            "id": [id_list[i] for i in members],
            "keeper": reason[members] == "",
            "reason": reason[members].astype(str).tolist(),
            "keeper_id": [id_list[keeper[i]] if keeper[i] >= 0 else "" for i in members],
            "url": [urls[i] or "" for i in members],
            "size": size[members].astype(np.int32),
        },
        schema=CLUSTERS_SCHEMA,
    ).sort_by([("cluster_id", "ascending"), ("id", "ascending")])
    write_parquet_atomic(table, os.path.join(work_dir, "clusters.parquet"))
    if corpus_dir is not None:
        write_parquet_atomic(
            table.select(["cluster_id", "id", "url", "keeper", "reason", "size"]),
            os.path.join(corpus_dir, "dedup", "clusters.parquet"),
        )
    return {
        "documents": n,
        "candidate_pairs_verified": n_edges,
        "clusters": int(len(np.unique(labels[members]))),
        REASON_URL: int((reason == REASON_URL).sum()),
        REASON_EXACT: int((reason == REASON_EXACT).sum()),
        REASON_NEAR: int((reason == REASON_NEAR).sum()),
    }


# ---- pass 4: removals and image frequency --------------------------------------------------------------
def removals_pass(work_dir: str) -> int:
    clusters = pq.read_table(os.path.join(work_dir, "clusters.parquet"))
    rem = clusters.filter(pc.invert(clusters["keeper"]))
    out = pa.table(
        {"id": rem["id"], "reason": rem["reason"], "keeper": rem["keeper_id"]}, schema=REMOVALS_SCHEMA
    ).sort_by("id")
    write_parquet_atomic(out, os.path.join(work_dir, "removals.parquet"))
    return out.num_rows


def images_pass(
    sig_paths: list[str],
    work_dir: str,
    corpus_dir: str | None,
    cfg: DedupConfig,
    common_phashes: tuple[str, ...] = (),
) -> dict[str, int]:
    """Count, per pHash cluster, the surviving documents that show it; drop clusters in > image_max_docs,
    and clusters holding one of `common_phashes` (found too common before: appending to a corpus)."""
    removed = pq.read_table(os.path.join(work_dir, "clusters.parquet"), columns=["id", "keeper"])
    removed_ids = removed.filter(pc.invert(removed["keeper"])).column("id")
    pair_schema = pa.schema([("id", pa.string()), ("phash", pa.string())])
    pairs = [pair_schema.empty_table()]
    for path in sig_paths:
        t = pq.read_table(path, columns=["id", "phashes"])
        t = t.filter(pc.invert(pc.is_in(t["id"], value_set=removed_ids)))
        lengths = pc.list_value_length(t["phashes"]).fill_null(0).to_numpy(zero_copy_only=False)
        pairs.append(
            pa.table(
                {
                    "id": t.column("id").take(pa.array(np.repeat(np.arange(t.num_rows), lengths), pa.int64())),
                    "phash": pc.list_flatten(t["phashes"]),
                },
                schema=pair_schema,
            )
        )
    pairs = pa.concat_tables(pairs)
    pairs = pairs.group_by(["id", "phash"]).aggregate([])  # one document counts once per pHash
    distinct = sorted({p for p in pairs.column("phash").to_pylist() if parse_phash(p) is not None})
    n_invalid = len(set(pairs.column("phash").to_pylist())) - len(distinct)
    known = sorted({p for p in common_phashes if parse_phash(p) is not None} - set(distinct))
    values = np.array([parse_phash(p) for p in distinct + known], dtype=np.uint64)
    # parse_phash accepts upper/lower hex: identical values are one node
    values_u, inverse = np.unique(values, return_inverse=True)
    labels_u = phash_clusters(values_u, cfg.image_hamming)
    label_of = dict(zip(distinct + known, labels_u[inverse].tolist()))
    known_common = {label_of[p] for p in common_phashes if p in label_of}
    valid = pairs.filter(pc.is_in(pairs["phash"], value_set=pa.array(distinct, pa.string())))
    doc_cluster = (
        pa.table(
            {
                "id": valid["id"],
                "cluster": pa.array([label_of[p] for p in valid.column("phash").to_pylist()], pa.int64()),
            }
        )
        .group_by(["id", "cluster"])
        .aggregate([])
    )
    per_cluster = doc_cluster.group_by("cluster").aggregate([("id", "count")])
    n_docs = dict(zip(per_cluster.column("cluster").to_pylist(), per_cluster.column("id_count").to_pylist()))
    rep = [f"{int(values_u[label_of[p]]):016x}" for p in distinct]
    docs_per = [n_docs[label_of[p]] for p in distinct]
    dropped = [
        cfg.images and (d > cfg.image_max_docs or label_of[p] in known_common) for p, d in zip(distinct, docs_per)
    ]
    images = pa.table({"phash": distinct, "n_docs": docs_per, "dropped": dropped, "cluster": rep}, schema=IMAGES_SCHEMA)
    too_common = images.filter(images["dropped"]).select(["phash", "n_docs", "cluster"])
    write_parquet_atomic(too_common.cast(IMAGE_REMOVALS_SCHEMA), os.path.join(work_dir, "image_removals.parquet"))
    if corpus_dir is not None:
        write_parquet_atomic(images, os.path.join(corpus_dir, "dedup", "images.parquet"))
    return {"images_distinct": len(distinct), "images_invalid_phash": n_invalid, REASON_IMAGE: too_common.num_rows}


# ---- driver --------------------------------------------------------------------------------------------
# one CPU per pass task; a pass that cannot write stops the dedup once the passes in flight are done
PASS_RESOURCES = Resources(cpus=1)


def _run_all(calls: list[tuple[Any, tuple]], desc: str, work: str, progress: bool = True) -> list[Any]:
    """Run (function, args) calls as Ray tasks with the runner's policy; results in call order."""
    stage = Stage(desc, resources=PASS_RESOURCES, unit_label="task")
    return map_tasks(stage, _call, calls, progress=progress, writes_to=lambda _: work)


def _call(fn: Any, args: tuple) -> Any:
    return fn(*args)


def run_dedup(
    staged_paths: list[str],
    work_dir: str,
    cfg: DedupConfig,
    corpus_dir: str | None,
    *,
    existing: list[str] | None = None,
    common_phashes: tuple[str, ...] = (),
    progress: bool = True,
) -> DedupResult:
    """Run the four passes on the running Ray instance; returns the decisions (also on disk in work_dir).
    `existing`: staged-schema files of the documents already in a corpus being appended to (they win and
    are never removed), `common_phashes`: image pHashes that corpus's build found too common.
    `progress`: a progress bar per pass."""
    import ray

    if not ray.is_initialized():
        raise ValueError("run_dedup needs a running Ray instance: call ray.init(...) first (the build does)")
    existing = sorted(os.path.abspath(p) for p in existing or [])
    missing = [p for p in [*staged_paths, *existing] if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"dedup: staged file(s) not found: {missing[:5]}")
    work = os.path.abspath(work_dir)
    corpus = os.path.abspath(corpus_dir) if corpus_dir is not None else None
    staged = sorted(os.path.abspath(p) for p in staged_paths)
    sig_paths = [os.path.join(work, "signatures", f"{i:05d}.parquet") for i in range(len(staged))]
    old_paths = [os.path.join(work, "signatures", f"existing-{i:05d}.parquet") for i in range(len(existing))]
    n_docs = _run_all(
        [(signatures_pass, (s, o, cfg, 1)) for s, o in zip(staged, sig_paths)]
        + [(signatures_pass, (s, o, cfg, 0)) for s, o in zip(existing, old_paths)],
        "dedup signatures",
        work,
        progress,
    )
    sig_paths += old_paths
    edge_paths = []
    if cfg.minhash:
        edge_paths = [os.path.join(work, "buckets", f"{k:04d}.parquet") for k in range(cfg.partitions)]
        _run_all(
            [(buckets_pass, (k, sig_paths, p, cfg)) for k, p in enumerate(edge_paths)], "dedup buckets", work, progress
        )
    (counts,) = _run_all(
        [(clusters_pass, (sig_paths, edge_paths, work, corpus, cfg))], "dedup clusters", work, progress
    )
    n_removed, image_counts = _run_all(
        [(removals_pass, (work,)), (images_pass, (sig_paths, work, corpus, cfg, tuple(common_phashes)))],
        "dedup removals",
        work,
        progress,
    )
    counts = {**counts, **image_counts, "removed": n_removed, "staged_files": len(staged)}
    if existing:
        counts["existing_files"] = len(existing)
    assert counts["documents"] == sum(n_docs), "signature rows must match staged documents"
    Path(work, "counts.json").write_text(json.dumps(counts, indent=2, sort_keys=True))
    return DedupResult.load(work)
