"""The figures of a corpus report, computed by streaming over the corpus, never by loading it.

One pass over the Parquet index (only the columns needed, shard by shard) feeds fixed-bin histograms
(words and images per document, image sides and aspect ratio, every quality signal), language and domain
counts, and a seeded bottom-k sample of documents for the browser (each document draws a random key, the
k smallest are kept: uniform, deterministic). The rejects log is streamed for counts by reason and a small
bottom-k sample per reason; the dedup outputs (`dedup/clusters.parquet`,
`dedup/images.parquet`) give the largest clusters and the most repeated images. The funnel is copied from
`stats.json` as is, and the filter thresholds are the `signals` the filters declared, as the build
resolved them into `build.json`.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from tqdm import tqdm

from corpus.format import Corpus
from corpus.record import in_index_types

TOKENS_PER_WORD = 1.3  # rough English BPE ratio; the report says it is an estimate
INDEX_COLUMNS = ["id", "url", "source", "lang", "n_words", "n_images", "image_meta", "signals", "shard", "offset"]

# fixed bin edges; a value past the last edge counts as overflow, below the first as underflow
WORD_EDGES = [0, 1, 10, 20, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 20000, 50000, 100000]
IMAGE_COUNT_EDGES = list(range(22))
SIDE_EDGES = [0, 16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 8192]
ASPECT_EDGES = [0.0, 0.2, 0.33, 0.5, 0.67, 0.8, 0.95, 1.05, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0]


# ---- streaming aggregates --------------------------------------------------------------------------
class Histogram:
    """A histogram with fixed bins: given `edges`, or `n_bins` linear bins fixed from the first `warmup`
    values (range min .. 99.5th percentile, widened to include the `include` values when they are near).

    Values come in two series: kept (in the corpus) and `dropped` (documents the build dropped, from the
    rejects log), binned on the same edges; `count`, `mean`, `min` and `max` describe the kept ones."""

    def __init__(
        self,
        edges: Sequence[float] | None = None,
        *,
        n_bins: int = 30,
        warmup: int = 20_000,
        include: Sequence[float] | None = None,
    ):
        self.edges: np.ndarray | None = None if edges is None else np.asarray(edges, dtype=np.float64)
        self.n_bins = n_bins
        self.warmup = warmup
        self.include = list(include or [])
        self._buffer: list[tuple[np.ndarray, bool]] = []
        self._buffered = 0
        self.counts: np.ndarray | None = None  # per bin, once the edges are fixed
        self.dropped_counts: np.ndarray | None = None
        if self.edges is not None:
            self._zero()
        self.underflow = self.overflow = self.count = 0
        self.dropped_underflow = self.dropped_overflow = self.dropped_count = 0
        self.total = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def _zero(self) -> None:
        assert self.edges is not None
        self.counts = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.dropped_counts = np.zeros(len(self.edges) - 1, dtype=np.int64)

    def add(self, values: Any, dropped: bool = False) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if not v.size:
            return
        if dropped:
            self.dropped_count += int(v.size)
        else:
            self.count += int(v.size)
            self.total += float(v.sum())
            self.min = min(self.min, float(v.min()))
            self.max = max(self.max, float(v.max()))
        if self.edges is None:
            self._buffer.append((v, dropped))
            self._buffered += v.size
            if self._buffered >= self.warmup:
                self._freeze()
            return
        self._bin(v, dropped)

    def _bin(self, v: np.ndarray, dropped: bool = False) -> None:
        assert self.edges is not None and self.counts is not None and self.dropped_counts is not None
        lo, hi = self.edges[0], self.edges[-1]
        under, over = int((v < lo).sum()), int((v > hi).sum())
        inside = np.histogram(v[(v >= lo) & (v <= hi)], bins=self.edges)[0]
        if dropped:
            self.dropped_underflow += under
            self.dropped_overflow += over
            self.dropped_counts += inside
        else:
            self.underflow += under
            self.overflow += over
            self.counts += inside

    def _freeze(self) -> None:
        buffered, self._buffer, self._buffered = self._buffer, [], 0
        data = np.concatenate([v for v, _ in buffered]) if buffered else np.zeros(0)
        if data.size:
            lo, hi = float(data.min()), float(np.quantile(data, 0.995))
        else:
            lo, hi = 0.0, 1.0
        span = max(hi - lo, 1e-9)
        for t in self.include:  # a threshold next to the data widens the axis so it can be drawn
            if lo - span <= t < lo:
                lo = t
            elif hi < t <= hi + span:
                hi = t
        if hi <= lo:
            hi = lo + 1.0
        if (
            float(lo).is_integer()
            and float(hi).is_integer()
            and hi - lo <= self.n_bins
            and (data.size == 0 or np.all(data == np.round(data)))
        ):
            edges = np.arange(lo, hi + 2, dtype=np.float64)  # small integer range: one bin per value
        else:
            edges = np.linspace(lo, hi, self.n_bins + 1)
        self.edges = edges
        self._zero()
        for v, dropped in buffered:
            self._bin(v, dropped)

    def to_dict(self) -> dict[str, Any]:
        if self.edges is None:
            self._freeze()
        assert self.edges is not None and self.counts is not None and self.dropped_counts is not None
        out = {
            "edges": [round(float(e), 6) for e in self.edges],
            "counts": [int(c) for c in self.counts],
            "underflow": self.underflow,
            "overflow": self.overflow,
            "count": self.count,
            "mean": round(self.total / self.count, 6) if self.count else None,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
        }
        if self.dropped_count:
            out["dropped"] = {
                "counts": [int(c) for c in self.dropped_counts],
                "underflow": self.dropped_underflow,
                "overflow": self.dropped_overflow,
                "count": self.dropped_count,
            }
        return out


def passes(value: float, thresholds: list[dict[str, Any]]) -> bool:
    """Whether a signal value is kept by all `thresholds` of its signal ("min": value >= t, "max": <= t)."""
    return all(value >= t["value"] if t["kind"] == "min" else value <= t["value"] for t in thresholds)


@dataclass
class SignalStats:
    """Per signal, over every document that reached the stage writing it (the kept ones from the index, the
    dropped ones from the rejects log's `signals`): the histogram of both, how many each threshold keeps and
    cuts, and a seeded bottom-k sample of documents with all their signals for the report's what-if."""

    thresholds: dict[str, list[dict[str, Any]]]
    k: int = 5000
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(1))
    hist: dict[str, Histogram] = field(default_factory=dict)
    kept_docs: Counter = field(default_factory=Counter)  # documents in the corpus that carry each signal
    dropped_docs: Counter = field(default_factory=Counter)
    cut: dict[str, list[list[int]]] = field(default_factory=dict)  # signal -> per threshold [kept, cut]
    population: int = 0  # documents the what-if sample is drawn from
    candidates: list[tuple[float, int, str, str]] = field(default_factory=list)  # (key, n, signals, reason)

    def add(self, columns: dict[str, np.ndarray], dropped: bool) -> None:
        for name, values in columns.items():
            if name not in self.hist:
                self.hist[name] = Histogram(include=[t["value"] for t in self.thresholds.get(name, [])])
                self.cut[name] = [[0, 0] for _ in self.thresholds.get(name, [])]
            self.hist[name].add(values, dropped)
            (self.dropped_docs if dropped else self.kept_docs)[name] += len(values)
            v = values[np.isfinite(values)]
            for counts, t in zip(self.cut[name], self.thresholds.get(name, [])):
                keep = int((v >= t["value"]).sum() if t["kind"] == "min" else (v <= t["value"]).sum())
                counts[0] += keep
                counts[1] += int(v.size) - keep

    def sample(self, signals: pa.Array | pa.ChunkedArray, reasons: pa.Array | pa.ChunkedArray | None) -> None:
        """Offer documents (their signals JSON; reasons None: kept) to the what-if sample."""
        n = len(signals)
        if not n or not self.k:
            return
        base = self.population
        self.population += n
        keys = self.rng.random(n)
        take = np.argpartition(keys, min(self.k, n) - 1)[: self.k]
        idx = pa.array(take, pa.int64())
        raw = signals.take(idx).to_pylist()
        why = [""] * len(take) if reasons is None else [w or "(no reason)" for w in reasons.take(idx).to_pylist()]
        self.candidates += [(float(keys[j]), base + int(j), r or "{}", w) for j, r, w in zip(take, raw, why)]
        self.candidates = heapq.nsmallest(self.k, self.candidates)

    def what_if_data(self, final_documents: int) -> dict[str, Any]:
        """The sample as columns: per signal a list of values (null where a document lacks it), and the
        reason each was dropped ("" for kept); what report.js and `what_if` compute on."""
        rows = []
        for _, _, raw, reason in sorted(self.candidates, key=lambda c: c[1]):
            try:
                sig = json.loads(raw)
            except (ValueError, RecursionError):
                sig = {}
            rows.append(
                (
                    {
                        k: float(v)
                        for k, v in sig.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    }
                    if isinstance(sig, dict)
                    else {},
                    reason,
                )
            )
        names = sorted({k for sig, _ in rows for k in sig} & set(self.thresholds))
        reasons = sorted({r for _, r in rows})
        return {
            "population": self.population,
            "sample": len(rows),
            "final": final_documents,
            "thresholds": {n: self.thresholds[n] for n in names},
            "values": {n: [sig.get(n) for sig, _ in rows] for n in names},
            "reasons": reasons,
            "reason": [reasons.index(r) for _, r in rows],
        }


def what_if(data: dict[str, Any], signal: str, values: list[float]) -> dict[str, int]:
    """The what-if of report.js in Python: move the thresholds of `signal` to `values` (in the order of
    data["thresholds"][signal]). A kept document that passed the old thresholds and fails the new ones is
    dropped; a dropped one that failed the old ones, passes the new ones and passes every other threshold
    on the signals it has is kept (optimistic: later stages did not see it). Counts are of the sample;
    `final_estimate` scales the change to the population."""
    old = data["thresholds"][signal]
    new = [{**t, "value": v} for t, v in zip(old, values)]
    kept_before = kept_after = reached = pass_before = pass_after = 0
    for i, v in enumerate(data["values"][signal]):
        kept = data["reasons"][data["reason"][i]] == ""
        kept_before += kept
        if v is None:
            kept_after += kept
            continue
        reached += 1
        before, after = passes(v, old), passes(v, new)
        pass_before += before
        pass_after += after
        if kept:
            kept_after += not (before and not after)
        elif not before and after:
            others = all(
                passes(data["values"][n][i], t)
                for n, t in data["thresholds"].items()
                if n != signal and data["values"][n][i] is not None
            )
            kept_after += others
    scale = data["population"] / data["sample"] if data["sample"] else 0.0
    return {
        "reached": reached,
        "pass_before": pass_before,
        "pass_after": pass_after,
        "kept_before": kept_before,
        "kept_after": kept_after,
        "final_estimate": max(0, round(data["final"] + (kept_after - kept_before) * scale)),
    }


class BoundedCounter:
    """A Counter that keeps at most `cap` keys: past it, the smaller half is pruned and the counts of
    the survivors become lower bounds (`approximate` says so). Millions of domains stay in bounded memory."""

    def __init__(self, cap: int = 200_000):
        self.cap = cap
        self.counts: Counter = Counter()
        self.approximate = False

    def update(self, keys: Iterable[str] | Mapping[str, int]) -> None:
        self.counts.update(keys)
        if len(self.counts) > self.cap:
            self.counts = Counter(dict(self.counts.most_common(self.cap // 2)))
            self.approximate = True


# ---- thresholds from build.json ---------------------------------------------------------------------
def signal_thresholds(build: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
    """The thresholds the build applied, per signal, as the filters declared them (build.json `signals`:
    {signal: [{"value", "kind": "min" | "max", "config": "filters.<section>.<key>"}]}). A corpus whose
    build.json has none (an older version, a hand-made corpus) or malformed entries gets a report without
    those threshold lines, not a crash."""
    declared = (build or {}).get("signals")
    if not isinstance(declared, dict):
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for signal, thresholds in declared.items():
        good = [
            {"value": float(t["value"]), "kind": t["kind"], "config": str(t["config"])}
            for t in thresholds
            if isinstance(thresholds, list) and _is_threshold(t)
        ]
        if good:
            out[str(signal)] = good
    return out


def _is_threshold(t: Any) -> bool:
    return (
        isinstance(t, dict)
        and t.get("kind") in ("min", "max")
        and "config" in t
        and isinstance(t.get("value"), (int, float))
        and not isinstance(t.get("value"), bool)
    )


# ---- the pass over the index ------------------------------------------------------------------------
@dataclass
class IndexScan:
    """Aggregates of one pass over the index."""

    documents: int = 0
    images: int = 0
    words: int = 0
    shards: int = 0
    hist: dict[str, Histogram] = field(default_factory=dict)
    signals: SignalStats = field(default_factory=lambda: SignalStats({}))
    languages: Counter = field(default_factory=Counter)
    domains: BoundedCounter = field(default_factory=BoundedCounter)
    sources: BoundedCounter = field(default_factory=BoundedCounter)  # source file of each document
    sample_k: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    candidates: list[tuple[float, str, int, str]] = field(default_factory=list)  # (key, shard, offset, id)
    invalid_signals: int = 0  # rows whose signals JSON did not parse
    errors: list[str] = field(default_factory=list)  # shards whose index could not be read

    @property
    def sample(self) -> list[tuple[str, int, str]]:
        """The sampled documents as (shard, offset, id), in shard and offset order."""
        return sorted((shard, offset, doc_id) for _, shard, offset, doc_id in self.candidates)

    found_ids: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (shard, offset)
    found_phash: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # -> (shard, offset, member)


HOST_RE = r"^(?:[A-Za-z][A-Za-z0-9+.-]*://)?(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#]*)"


def _value_counts(arr: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    vc = pc.value_counts(arr)
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))


def _signal_columns(signals: pa.ChunkedArray, scan: IndexScan) -> dict[str, np.ndarray]:
    """Numeric values of each signal in a column of JSON objects, parsed by Arrow's JSON reader in one
    go; a column that Arrow cannot parse as a whole is parsed row by row, bad rows counted."""
    col = signals.combine_chunks()
    col = pc.fill_null(pc.if_else(pc.equal(pc.utf8_trim_whitespace(col), ""), None, col), "{}")
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(col)], pa.int32()), col), "\n")
    buf = joined[0].as_buffer() if len(col) else pa.py_buffer(b"")
    out: dict[str, np.ndarray] = {}
    try:
        table = pa_json.read_json(pa.BufferReader(buf), read_options=pa_json.ReadOptions(block_size=buf.size + 1))
    except pa.ArrowInvalid:
        per_signal: dict[str, list[float]] = {}
        for raw in col.to_pylist():
            try:
                sig = json.loads(raw)
            except (ValueError, RecursionError):
                scan.invalid_signals += 1
                continue
            for name, value in sig.items() if isinstance(sig, dict) else ():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    per_signal.setdefault(name, []).append(float(value))
        return {k: np.asarray(v, dtype=np.float64) for k, v in per_signal.items()}
    for name in table.column_names:
        col = table[name]
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            out[name] = col.drop_null().to_numpy().astype(np.float64)
    return out


def scan_index(
    corpus: Corpus,
    *,
    sample: int,
    seed: int,
    signals: SignalStats,
    want_ids: Collection[str] = frozenset(),
    want_phash: Collection[str] = frozenset(),
    progress: bool = True,
) -> IndexScan:
    """One streaming pass over the index of every shard in the manifest."""
    scan = IndexScan(sample_k=sample, rng=np.random.default_rng(seed), signals=signals)
    scan.hist = {
        "words_per_document": Histogram(WORD_EDGES),
        "images_per_document": Histogram(IMAGE_COUNT_EDGES),
        "image_width": Histogram(SIDE_EDGES),
        "image_height": Histogram(SIDE_EDGES),
        "image_aspect_ratio": Histogram(ASPECT_EDGES),
    }
    shards = corpus.shards()
    want_ids_arr = pa.array(sorted(want_ids), pa.string())
    want_phash_arr = pa.array(sorted(want_phash), pa.string())
    bar = tqdm(shards, desc="reading index", unit="shard", disable=not progress)
    for shard in bar:
        try:
            table = corpus.read_index(shard, columns=INDEX_COLUMNS)
        except (OSError, KeyError, pa.ArrowException) as e:  # listed but unreadable: reported, not fatal
            scan.errors.append(f"index of shard {shard.name}: {type(e).__name__}: {e}")
            continue
        table, problem = _checked_index(table, shard.name)
        if problem:
            scan.errors.append(f"index of shard {shard.name}: {problem}")
            continue
        scan.shards += 1
        _scan_table(scan, table, want_ids_arr, want_phash_arr)
        bar.set_postfix(documents=scan.documents)
    bar.close()
    return scan


def _checked_index(table: pa.Table, name: str) -> tuple[pa.Table, str]:
    """(the index table in the writer's column types, "") or (table, what is wrong): a column of another
    type (n_words as text), or rows that do not point into this index's own shard at a byte offset (a null
    or negative offset, another shard's name, or a path such as ../../x that would read a tar outside the
    corpus). The report leaves such an index out, as one it cannot read."""
    try:
        table = in_index_types(table)
    except (pa.ArrowException, KeyError) as e:
        return table, f"columns of the wrong type ({type(e).__name__}: {e})"
    if not pc.all(pc.fill_null(pc.equal(table["shard"], f"{name}.tar"), False)).as_py() and table.num_rows:
        return table, f"rows whose shard is not {name}.tar"
    for column, what in (("offset", "a byte offset"), ("n_words", "a word count"), ("n_images", "an image count")):
        if table[column].null_count or (table.num_rows and pc.min(table[column]).as_py() < 0):
            return table, f"rows without {what}"
    return table, ""


SOURCE_FILE_RE = r"^(?P<file>[^#]*)"  # "warc:<file>#<record-id>" -> "warc:<file>"


def _scan_table(scan: IndexScan, table: pa.Table, want_ids: pa.Array, want_phash: pa.Array) -> None:
    n = table.num_rows
    if not n:
        return
    n_words = table["n_words"].to_numpy(zero_copy_only=False).astype(np.int64)
    n_images = table["n_images"].to_numpy(zero_copy_only=False).astype(np.int64)
    scan.documents += n
    scan.words += int(n_words.sum())
    scan.images += int(n_images.sum())
    scan.hist["words_per_document"].add(n_words)
    scan.hist["images_per_document"].add(n_images)

    image_meta = table["image_meta"].combine_chunks()  # one array: parent indices are row numbers
    meta = pc.list_flatten(image_meta)  # null at text positions
    if len(meta):
        valid = meta.filter(pc.is_valid(meta))
        w = valid.field("width").to_numpy(zero_copy_only=False).astype(np.float64)
        h = valid.field("height").to_numpy(zero_copy_only=False).astype(np.float64)
        known = (w > 0) & (h > 0)
        scan.hist["image_width"].add(w[known])
        scan.hist["image_height"].add(h[known])
        scan.hist["image_aspect_ratio"].add(w[known] / h[known])

    langs = pc.fill_null(pc.if_else(pc.equal(table["lang"], ""), None, table["lang"]), "(none)")
    scan.languages.update(_value_counts(langs))
    host = pc.struct_field(pc.extract_regex(pc.fill_null(table["url"], ""), HOST_RE), [0])
    host = pc.fill_null(pc.if_else(pc.equal(host, ""), None, pc.utf8_lower(host)), "(none)")
    scan.domains.update(_value_counts(host))
    source = pc.struct_field(pc.extract_regex(pc.fill_null(table["source"], ""), SOURCE_FILE_RE), [0])
    scan.sources.update(_value_counts(pc.if_else(pc.equal(source, ""), "(none)", source)))

    scan.signals.add(_signal_columns(table["signals"], scan), dropped=False)
    scan.signals.sample(table["signals"], None)

    # bottom-k sampling: each row draws a key from the seeded generator, the k smallest keys are a
    # uniform sample without replacement; deterministic for a given seed and shard order
    keys = scan.rng.random(n)
    take: np.ndarray | list[int] = (
        np.argpartition(keys, min(scan.sample_k, n) - 1)[: scan.sample_k] if scan.sample_k else []
    )
    if len(take):
        ids, shards_, offsets = (table[c].take(pa.array(take)).to_pylist() for c in ("id", "shard", "offset"))
        scan.candidates += [(float(keys[j]), s, int(o), i) for j, s, o, i in zip(take, shards_, offsets, ids)]
        scan.candidates = heapq.nsmallest(scan.sample_k, scan.candidates)

    if len(want_ids):
        hits = pc.is_in(table["id"], value_set=want_ids).to_numpy(zero_copy_only=False)
        for hit in np.flatnonzero(hits):
            i = int(hit)
            scan.found_ids.setdefault(table["id"][i].as_py(), (table["shard"][i].as_py(), table["offset"][i].as_py()))
    if len(want_phash) and len(meta):
        parents = pc.list_parent_indices(image_meta)
        phash = meta.field("phash")
        hits = pc.fill_null(pc.is_in(phash, value_set=want_phash), False).to_numpy(zero_copy_only=False)
        members = meta.field("member")
        for j in np.flatnonzero(hits):
            ph = phash[j].as_py()
            if ph not in scan.found_phash:
                row = int(parents[j].as_py())
                scan.found_phash[ph] = (table["shard"][row].as_py(), table["offset"][row].as_py(), members[j].as_py())


# ---- rejects ----------------------------------------------------------------------------------------
def _parquet_files(corpus: Corpus, folder: str) -> list[str]:
    root = f"{corpus.root.rstrip('/')}/{folder}"
    if not corpus.fs.exists(root):
        return []
    return sorted(p for p in corpus.fs.find(root) if p.endswith(".parquet"))


def read_rejects(
    corpus: Corpus,
    per_reason: int,
    seed: int,
    progress: bool = True,
    signals: SignalStats | None = None,
    per_item_reason: int = 5,
) -> dict[str, Any]:
    """Counts of the rejects log by (stage, item, reason), and per (stage, reason) a bottom-k sample of rows
    by their `key` (the rows the build kept the text of): `per_reason` of whole documents, listed first, and
    `per_item_reason` of images and text blocks; vectorised per batch, so a log of millions of rows
    streams in bounded memory. The `signals` of dropped documents go to `signals` (histograms, what-if)."""
    files = _parquet_files(corpus, "rejects")
    counts: Counter = Counter()
    # (is an item drop, stage, reason) -> [(key, n, row)]
    picks: dict[tuple[bool, str, str], list[tuple[float, int, dict[str, str]]]] = {}
    scratch = IndexScan()
    rng = np.random.default_rng(seed)
    rows = 0
    errors: list[str] = []
    for path in tqdm(files, desc="reading rejects", unit="file", disable=not progress or not files):
        try:
            with corpus.fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                names = set(pf.schema_arrow.names)
                cols = [c for c in (*REJECT_COLUMNS, "key") if c in names]
                if "reason" not in cols:
                    errors.append(f"{path}: no `reason` column")
                    continue
                for batch in pf.iter_batches(batch_size=65_536, columns=cols):
                    t = pa.Table.from_batches([batch])
                    for c in REJECT_COLUMNS:  # absent or null fields read as ""
                        t = (
                            t.set_column(t.schema.get_field_index(c), c, pc.fill_null(t[c].cast(pa.string()), ""))
                            if c in t.column_names
                            else t.append_column(c, pa.array([""] * t.num_rows))
                        )
                    grouped = t.group_by(["stage", "item", "reason"]).aggregate([([], "count_all")])
                    for st, it, r, c in zip(
                        *(grouped[k].to_pylist() for k in ("stage", "item", "reason", "count_all"))
                    ):
                        counts[(st, it, r)] += c
                    keys = rng.random(t.num_rows) + 1.0  # rows without a key of the build come after those with
                    if "key" in t.column_names:
                        given = pc.fill_null(t["key"].cast(pa.float64()), 2.0).to_numpy(zero_copy_only=False)
                        keys = np.where(given < 1.0, given, keys)
                    if signals is not None:
                        docs = t.filter(pc.and_(pc.equal(t["item"], "document"), pc.not_equal(t["signals"], "")))
                        if docs.num_rows:
                            signals.add(_signal_columns(docs["signals"], scratch), dropped=True)
                            signals.sample(docs["signals"], docs["reason"])
                    group = pc.binary_join_element_wise(t["item"], t["stage"], t["reason"], "\x1f").combine_chunks()
                    for g in pc.unique(group).to_pylist():
                        item, stage, r = g.split("\x1f", 2)
                        k = per_reason if item in ("document", "record") else per_item_reason
                        idx = np.flatnonzero(pc.equal(group, g).to_numpy(zero_copy_only=False))
                        idx = idx[np.argsort(keys[idx], kind="stable")[:k]]
                        chosen = t.take(pa.array(idx, pa.int64())).select(list(REJECT_COLUMNS)).to_pylist()
                        heap = picks.setdefault((item not in ("document", "record"), stage, r), [])
                        heap += [(float(keys[j]), rows + int(j), row) for j, row in zip(idx, chosen)]
                        picks[(item not in ("document", "record"), stage, r)] = heapq.nsmallest(
                            k, heap, key=lambda x: (x[0], x[1])
                        )
                    rows += t.num_rows
        except (OSError, pa.ArrowException) as e:
            errors.append(f"{path}: {e}")
    by_reason = sorted(
        ({"stage": s, "item": it, "reason": r, "count": c} for (s, it, r), c in counts.items()),
        key=lambda x: (-x["count"], x["stage"], x["reason"]),
    )
    sample_rows = [{**row, "signals": _json_object(row["signals"])} for g in sorted(picks) for _, _, row in picks[g]]
    return {"files": len(files), "rows": rows, "by_reason": by_reason, "sample": sample_rows, "errors": errors}


REJECT_COLUMNS = ("id", "url", "stage", "item", "reason", "detail", "signals", "text")


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


# ---- dedup ------------------------------------------------------------------------------------------
def read_dedup(corpus: Corpus, top_clusters: int, top_images: int) -> dict[str, Any]:
    """The largest duplicate clusters and the most repeated images, from CORPUS/dedup/ if it is there."""
    root = corpus.root.rstrip("/")
    out: dict[str, Any] = {"clusters": None, "images": None, "errors": []}
    clusters_path = f"{root}/dedup/clusters.parquet"
    images_path = f"{root}/dedup/images.parquet"
    if corpus.fs.exists(clusters_path):
        try:
            out["clusters"] = _read_clusters(corpus, clusters_path, top_clusters)
        except (OSError, KeyError, pa.ArrowException) as e:
            out["errors"].append(f"dedup/clusters.parquet: {type(e).__name__}: {e}")
    if corpus.fs.exists(images_path):
        try:
            out["images"] = _read_images(corpus, images_path, top_images)
        except (OSError, KeyError, pa.ArrowException) as e:
            out["errors"].append(f"dedup/images.parquet: {type(e).__name__}: {e}")
    out["available"] = out["clusters"] is not None or out["images"] is not None
    return out


def _read_clusters(corpus: Corpus, path: str, top: int) -> dict[str, Any]:
    """Pass 1: cluster count, drops by reason and the `top` largest clusters (a cluster's size is the
    same on each of its rows, so keeping the running top is exact); pass 2: the members of those."""
    best: dict[Any, int] = {}
    n_rows = n_dropped = 0
    clusters: set = set()
    reasons: Counter = Counter()
    with corpus.fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=65_536, columns=["cluster_id", "keeper", "reason", "size"]):
            t = pa.Table.from_batches([batch])
            n_rows += t.num_rows
            dropped = t.filter(pc.invert(pc.fill_null(t["keeper"], False)))
            n_dropped += dropped.num_rows
            reasons.update(_value_counts(pc.fill_null(dropped["reason"].cast(pa.string()), "")))
            per = t.group_by("cluster_id").aggregate([("size", "max")])
            ids = per["cluster_id"].to_pylist()
            clusters.update(ids)
            best.update(zip(ids, (int(x or 0) for x in per["size_max"].to_pylist())))
            best = dict(heapq.nlargest(top, best.items(), key=lambda kv: (kv[1], str(kv[0]))))
        members: dict[Any, list[dict[str, Any]]] = {cid: [] for cid in best}
        want = pa.array(list(best), pf.schema_arrow.field("cluster_id").type)
        for batch in pf.iter_batches(batch_size=65_536, columns=["cluster_id", "id", "url", "keeper", "reason"]):
            t = pa.Table.from_batches([batch])
            for r in t.filter(pc.is_in(t["cluster_id"], value_set=want)).to_pylist():
                members[r["cluster_id"]].append(
                    {
                        "id": str(r["id"] or ""),
                        "url": str(r["url"] or ""),
                        "keeper": bool(r["keeper"]),
                        "reason": str(r["reason"] or ""),
                    }
                )
    top_list = []
    for cid, size in sorted(best.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        rows = sorted(members[cid], key=lambda m: (not m["keeper"], m["id"]))
        top_list.append({"cluster_id": str(cid), "size": size, "members": rows})
    return {
        "rows": n_rows,
        "clusters": len(clusters),
        "dropped": n_dropped,
        "dropped_by_reason": dict(reasons.most_common()),
        "top": top_list,
    }


def _read_images(corpus: Corpus, path: str, top: int) -> dict[str, Any]:
    """The `top` pHashes by number of documents."""
    best: list[tuple[int, str, int]] = []
    n_rows = 0
    with corpus.fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=65_536, columns=["phash", "n_docs", "dropped"]):
            n_rows += batch.num_rows
            n_docs = pc.fill_null(batch.column("n_docs"), 0).to_numpy(zero_copy_only=False)
            idx = np.argsort(-n_docs, kind="stable")[:top]
            t = pa.Table.from_batches([batch]).take(pa.array(idx, pa.int64())).to_pydict()
            best += [(int(n or 0), str(ph), int(dr or 0)) for ph, n, dr in zip(t["phash"], t["n_docs"], t["dropped"])]
            best = sorted(best, key=lambda x: (-x[0], x[1]))[:top]
    return {"rows": n_rows, "top": [{"phash": ph, "n_docs": n, "dropped": dr} for n, ph, dr in best]}


# ---- the summary ------------------------------------------------------------------------------------
def _read_optional_json(corpus: Corpus, name: str) -> tuple[Any, str | None]:
    """(build.json or stats.json, None), or (None, why it is left out): missing, not JSON, or (stats.json)
    not of a funnel's shape. A damaged file costs its part of the report, not the report."""
    try:
        data = corpus.read_json(name)
    except FileNotFoundError:
        return None, f"{name} not found"
    except (OSError, ValueError) as e:
        return None, f"{name} unreadable: {e}"
    problem = _funnel_problem(data) if name == "stats.json" else None
    if not isinstance(data, dict):
        problem = f"a JSON {type(data).__name__}, not an object"
    return (None, f"{name} unreadable: {problem}") if problem else (data, None)


def _funnel_problem(stats: Any) -> str | None:
    """What makes `stats` no funnel (stats.json: stages [{name, in, out, drops}], items {key: {...}}, counters,
    build), or None."""

    def count_problem(where: str, s: Any) -> str | None:
        if not isinstance(s, dict) or not all(_is_count(s.get(k)) for k in ("in", "out")):
            return f"{where} has no whole in/out counts"
        drops = s.get("drops", {})
        if not isinstance(drops, dict) or not all(_is_count(c) for c in drops.values()):
            return f"{where}: drops is not reason -> count"
        return None

    if not isinstance(stats, dict):
        return None  # said by the caller
    stages, items = stats.get("stages", []), stats.get("items", {})
    if not isinstance(stages, list) or not isinstance(items, dict):
        return "stages is not a list or items not an object"
    for i, s in enumerate(stages):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            return f"stage {i} has no name"
        if why := count_problem(f"stage {s['name']}", s):
            return why
    for key, s in items.items():
        if why := count_problem(f"item {key}", s):
            return why
    if not isinstance(stats.get("counters", {}), dict) or not isinstance(stats.get("build", {}), dict):
        return "counters or build is not an object"
    return None


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def summarize(
    corpus: Corpus,
    *,
    sample: int = 200,
    seed: int = 0,
    top_domains: int = 50,
    top_clusters: int = 10,
    top_images: int = 12,
    rejects_per_reason: int = 20,
    what_if_sample: int = 5000,
    progress: bool = True,
) -> tuple[dict[str, Any], IndexScan, dict[str, Any]]:
    """Compute the summary figures. Returns (summary, the index scan, rejects with samples)."""
    stats, stats_error = _read_optional_json(corpus, "stats.json")
    build, build_error = _read_optional_json(corpus, "build.json")
    thresholds = signal_thresholds(build)
    dedup = read_dedup(corpus, top_clusters, top_images)
    want_ids = {m["id"] for c in (dedup["clusters"] or {}).get("top", []) for m in c["members"] if m["keeper"]}
    want_phash = {im["phash"] for im in (dedup["images"] or {}).get("top", [])}
    signals = SignalStats(thresholds, k=what_if_sample, rng=np.random.default_rng(seed + 1))
    scan = scan_index(
        corpus, sample=sample, seed=seed, signals=signals, want_ids=want_ids, want_phash=want_phash, progress=progress
    )
    rejects = read_rejects(corpus, rejects_per_reason, seed, progress, signals=signals)

    drops = []
    for s in (stats or {}).get("stages", []):
        drops += [
            {"stage": s["name"], "item": "document", "reason": r, "count": int(c)}
            for r, c in s.get("drops", {}).items()
        ]
    for key, s in (stats or {}).get("items", {}).items():
        drops += [
            {"stage": key.split("/", 1)[0], "item": key.split("/", 1)[-1], "reason": r, "count": int(c)}
            for r, c in s.get("drops", {}).items()
        ]
    drops.sort(key=lambda d: (-d["count"], d["stage"], d["reason"]))

    summary = {
        "corpus": corpus.path,
        "totals": {
            "documents": scan.documents,
            "images": scan.images,
            "words": scan.words,
            "tokens_estimate": round(scan.words * TOKENS_PER_WORD),
            "tokens_estimate_method": f"words * {TOKENS_PER_WORD} (whitespace words, rough BPE ratio)",
            "shards": scan.shards,
            "languages": len(scan.languages),
            "domains": len(scan.domains.counts),
        },
        "funnel": None
        if stats is None
        else {
            "stages": stats.get("stages", []),
            "items": stats.get("items", {}),
            "counters": stats.get("counters", {}),
            "build": stats.get("build", {}),
        },
        "funnel_error": stats_error,
        "drops": drops,
        "build": None
        if build is None
        else {k: build.get(k) for k in ("started_at", "finished_at", "inputs", "versions")},
        "build_error": build_error,
        "histograms": {name: h.to_dict() for name, h in scan.hist.items()},
        "signals": {
            name: {
                **signals.hist[name].to_dict(),
                "documents": signals.kept_docs[name],
                "dropped_documents": signals.dropped_docs[name],
                "thresholds": [
                    {**t, "kept": kc[0], "cut": kc[1]} for t, kc in zip(thresholds.get(name, []), signals.cut[name])
                ],
            }
            for name in sorted(signals.hist)
        },
        "what_if": {"population": signals.population, "sample": min(signals.k, signals.population), "seed": seed + 1},
        "languages": dict(scan.languages.most_common()),
        "domains": {"top": dict(scan.domains.counts.most_common(top_domains)), "approximate": scan.domains.approximate},
        "sources": {
            "top": dict(scan.sources.counts.most_common(top_domains)),
            "approximate": scan.sources.approximate,
            "count": len(scan.sources.counts),
        },
        "rejects": {k: rejects[k] for k in ("files", "rows", "by_reason", "errors")},
        "dedup": dedup,
        "sample": {
            "requested": sample,
            "seed": seed,
            "documents": len(scan.candidates),
            "method": "bottom-k: a seeded random key per document, the k smallest kept",
        },
        "invalid_signals": scan.invalid_signals,
        "index_errors": scan.errors,
    }
    return summary, scan, rejects
