"""`interloom inspect A --against B`: a page of the differences between two builds.

One streaming pass over each index: totals, the histogram of every signal (B binned on A's bins, so the two
overlay), and a bottom-k sample of document ids by `sample_key(id)` (a hash, the same for both builds). Since
the key is a function of the id, the two samples cover the same key range: below the smaller of the two k-th
keys both are complete, and the ids found in one and not the other are an exact sample of the documents only
in A or only in B (counts scaled by that range when the sample is not the whole corpus). For the shown ones,
the other build's rejects log says why it dropped them. The funnels (stats.json) are set side by side, stage
by stage and reason by reason, and the settings (build.json `config`) that differ are listed.

The page has no script at all (its CSP allows none); every string from the corpora is escaped.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from corpus.format import Corpus
from corpus.record import in_index_types
from corpus.stats import sample_key
from pipeline.report.charts import fmt, overlay_svg
from pipeline.report.render import _asset, esc, link
from pipeline.report.summary import (
    Histogram,
    IndexScan,
    _parquet_files,
    _read_optional_json,
    _signal_columns,
)

SAMPLE_K = 20_000  # ids per build in the key-range sample
SHOWN = 50  # documents listed per side
COLUMNS = ["id", "url", "title", "lang", "n_words", "signals"]


@dataclass
class Side:
    """One build, as one pass over its index saw it."""

    path: str
    k: int = SAMPLE_K
    documents: int = 0
    words: int = 0
    shards: int = 0
    signals: dict[str, Histogram] = field(default_factory=dict)
    candidates: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)  # (key, id, row)
    errors: list[str] = field(default_factory=list)
    stats: dict[str, Any] | None = None
    build: dict[str, Any] | None = None

    @property
    def key_limit(self) -> float:
        """Keys below this are all in the sample (1.0: the sample is the whole corpus)."""
        return self.candidates[-1][0] if len(self.candidates) >= self.k else 1.0


def scan_side(path: str | Path, edges: dict[str, list[float]], k: int = SAMPLE_K, progress: bool = True) -> Side:
    corpus = Corpus(path)
    side = Side(corpus.path, k)
    side.stats, _ = _read_optional_json(corpus, "stats.json")
    side.build, _ = _read_optional_json(corpus, "build.json")
    scratch = IndexScan()
    for shard in tqdm(corpus.shards(), desc=f"reading index of {corpus.path}", unit="shard", disable=not progress):
        try:
            table = corpus.read_index(shard, columns=COLUMNS)
            # in the writer's types: a column of another type (n_words as text) is an unreadable index
            table = in_index_types(table)
        except (OSError, KeyError, pa.ArrowException) as e:
            side.errors.append(f"index of shard {shard.name}: {type(e).__name__}: {e}")
            continue
        side.shards += 1
        n = table.num_rows
        if not n:
            continue
        side.documents += n
        side.words += int(pc.sum(table["n_words"]).as_py() or 0)
        for name, values in _signal_columns(table["signals"], scratch).items():
            if name not in side.signals:
                side.signals[name] = Histogram(edges.get(name))
            side.signals[name].add(values)
        ids = table["id"].to_pylist()
        keys = np.fromiter((sample_key(i or "") for i in ids), dtype=np.float64, count=n)
        take = np.argpartition(keys, min(k, n) - 1)[:k]
        rows = table.select(["url", "title", "lang", "n_words"]).take(pa.array(take, pa.int64())).to_pylist()
        side.candidates += [(float(keys[j]), ids[j], row) for j, row in zip(take, rows)]
        side.candidates = heapq.nsmallest(k, side.candidates, key=lambda c: (c[0], c[1]))
    return side


def why_dropped(path: str, ids: list[str]) -> dict[str, dict[str, str]]:
    """id -> the rejects row (stage, reason, detail) of a document dropped by the build at `path`."""
    corpus = Corpus(path)
    want = pa.array(sorted(set(ids)), pa.string())
    found: dict[str, dict[str, str]] = {}
    if not len(want):
        return found
    for p in _parquet_files(corpus, "rejects"):
        try:
            with corpus.fs.open(p, "rb") as f:
                pf = pq.ParquetFile(f)
                cols = [c for c in ("id", "stage", "item", "reason", "detail") if c in pf.schema_arrow.names]
                if "id" not in cols or "reason" not in cols:
                    continue
                for batch in pf.iter_batches(batch_size=65_536, columns=cols):
                    t = pa.Table.from_batches([batch])
                    hits = t.filter(pc.fill_null(pc.is_in(t["id"], value_set=want), False))
                    for r in hits.to_pylist():
                        if r.get("item", "document") in ("document", "record", None):
                            found.setdefault(r["id"], {k: str(r.get(k) or "") for k in ("stage", "reason", "detail")})
        except (OSError, pa.ArrowException):
            continue
    return found


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def compare(a_path: str | Path, b_path: str | Path, progress: bool = True, k: int = SAMPLE_K) -> dict[str, Any]:
    """The figures of the comparison page (also written as compare.json); `k` ids sampled per build."""
    a = scan_side(a_path, {}, k, progress=progress)
    a_hists = {n: h.to_dict() for n, h in a.signals.items()}
    b = scan_side(b_path, {n: h["edges"] for n, h in a_hists.items()}, k, progress=progress)
    limit = min(a.key_limit, b.key_limit)
    in_a = {i: row for key, i, row in a.candidates if key < limit or limit == 1.0}
    in_b = {i: row for key, i, row in b.candidates if key < limit or limit == 1.0}
    only_a = sorted(set(in_a) - set(in_b), key=sample_key)
    only_b = sorted(set(in_b) - set(in_a), key=sample_key)
    b_why = why_dropped(b.path, only_a[:SHOWN])
    a_why = why_dropped(a.path, only_b[:SHOWN])
    scale = 1.0 if limit == 1.0 else 1.0 / limit

    stages: list[dict[str, Any]] = []
    a_stages = {s["name"]: s for s in (a.stats or {}).get("stages", [])}
    b_stages = {s["name"]: s for s in (b.stats or {}).get("stages", [])}
    for name in list(a_stages) + [n for n in b_stages if n not in a_stages]:
        sa, sb = a_stages.get(name, {}), b_stages.get(name, {})
        reasons = sorted(set(sa.get("drops", {})) | set(sb.get("drops", {})))
        stages.append(
            {
                "name": name,
                "in": [sa.get("in"), sb.get("in")],
                "out": [sa.get("out"), sb.get("out")],
                "drops": {r: [sa.get("drops", {}).get(r, 0), sb.get("drops", {}).get(r, 0)] for r in reasons},
            }
        )
    ca = _flatten((a.build or {}).get("config", {}))
    cb = _flatten((b.build or {}).get("config", {}))
    settings = {k: [ca.get(k), cb.get(k)] for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)}
    signals = {}
    for name in sorted(set(a.signals) | set(b.signals)):
        ha = a_hists.get(name)
        hb = b.signals[name].to_dict() if name in b.signals else None
        signals[name] = {"a": ha, "b": hb}

    def listed(ids: list[str], rows: dict[str, dict], why: dict[str, dict]) -> list[dict[str, Any]]:
        return [{"id": i, **rows[i], "other": why.get(i)} for i in ids[:SHOWN]]

    return {
        "a": a.path,
        "b": b.path,
        "totals": {
            "documents": [a.documents, b.documents],
            "words": [a.words, b.words],
            "shards": [a.shards, b.shards],
        },
        "errors": a.errors + b.errors,
        "settings": settings,
        "funnel": stages,
        "only": {
            "exact": limit == 1.0,
            "key_limit": limit,
            "a": {"count": round(len(only_a) * scale), "sampled": len(only_a), "shown": listed(only_a, in_a, b_why)},
            "b": {"count": round(len(only_b) * scale), "sampled": len(only_b), "shown": listed(only_b, in_b, a_why)},
        },
        "signals": signals,
    }


# ---- the page -----------------------------------------------------------------------------------------
CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'none'; "
    "base-uri 'none'; form-action 'none'"
)


def _delta(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return ""
    d = b - a
    return f"{'+' if d > 0 else ''}{fmt(d)}" if d else "0"


def _pair_row(label: str, a: Any, b: Any, attrs: str = "", cls: str = "") -> str:
    return (
        f'<tr{attrs}{f" class={cls!r}" if cls else ""}><td>{label}</td><td class="num">{fmt(a)}</td>'
        f'<td class="num">{fmt(b)}</td><td class="num">{_delta(a, b)}</td></tr>'
    )


def _only(side: str, part: dict[str, Any], other: str, exact: bool) -> str:
    how = "" if exact else " (estimated from a sample of document ids chosen by a hash of the id)"
    items = []
    for d in part["shown"]:
        why = d["other"]
        why_html = (
            f'<div class="why">{esc(other)} dropped it at <b>{esc(why["stage"])}</b>: '
            f"<b>{esc(why['reason'])}</b> {esc(why['detail'])}</div>"
            if why
            else f'<div class="why muted">not in the rejects log of {esc(other)}</div>'
        )
        items.append(
            f'<li data-doc-id="{esc(d["id"])}"><div class="mono">{esc(d["id"])}</div>{link(d["url"] or "")}'
            f"<div>{esc(d['title'] or '(no title)')} · {esc(d['lang'])} · {fmt(d['n_words'])} words</div>"
            f"{why_html}</li>"
        )
    return (
        f'<div class="panel only" id="only-{side}" data-count="{part["count"]}"><h3>Only in {side.upper()}: '
        f'{fmt(part["count"])} documents{esc(how)}</h3><ul class="only-list">{"".join(items)}</ul></div>'
    )


def render_compare(c: dict[str, Any], generated_at: str) -> str:
    totals = "".join(_pair_row(esc(k), v[0], v[1], f' data-total="{esc(k)}"') for k, v in c["totals"].items())
    settings = "".join(
        f'<tr data-setting="{esc(k)}"><td class="mono">{esc(k)}</td><td class="mono">{esc(json.dumps(v[0]))}'
        f'</td><td class="mono">{esc(json.dumps(v[1]))}</td></tr>'
        for k, v in c["settings"].items()
    )
    funnel = []
    for s in c["funnel"]:
        funnel.append(
            _pair_row(
                f"<b>{esc(s['name'])}</b> out",
                s["out"][0],
                s["out"][1],
                f' data-stage="{esc(s["name"])}" data-out-a="{s["out"][0]}" data-out-b="{s["out"][1]}"',
            )
        )
        funnel += [
            _pair_row(
                f"&nbsp;&nbsp;dropped: {esc(r)}",
                v[0],
                v[1],
                f' data-stage="{esc(s["name"])}" data-reason="{esc(r)}" data-a="{v[0]}" data-b="{v[1]}"',
                "reason",
            )
            for r, v in s["drops"].items()
        ]
    panels = []
    for name, h in c["signals"].items():
        chart = overlay_svg(h["a"], h["b"], label=name)
        n = [x["count"] if x else 0 for x in (h["a"], h["b"])]
        panels.append(
            f'<div class="panel" data-signal="{esc(name)}"><h3>{esc(name)}</h3><div class="scroll">{chart}'
            f'</div><div class="note">A (blue): {fmt(n[0])} documents; B (orange): {fmt(n[1])}; '
            f"B binned on A's bins, values outside them in the &lt; and &gt; bars</div></div>"
        )
    errors = "".join(f'<p class="warn">Left out: {esc(e)}</p>' for e in c["errors"])
    head = '<tr><th></th><th class="num">A</th><th class="num">B</th><th class="num">B − A</th></tr>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}"><meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>interloom comparison</title><style>{_asset('report.css')}</style></head><body>"
        f'<header class="top"><h1>interloom: A against B</h1><div class="sub">A = {esc(c["a"])} · B = {esc(c["b"])}'
        f" · generated {esc(generated_at)}</div></header><main>{errors}"
        f'<section id="totals"><h2>Totals</h2><table id="totals-table">{head}{totals}</table></section>'
        f'<section id="settings"><h2>Settings that differ</h2>'
        + (
            f'<table id="settings-table"><tr><th>key</th><th>A</th><th>B</th></tr>{settings}</table>'
            if settings
            else '<p class="muted">The two build.json configs are the same (or absent).</p>'
        )
        + f'</section><section id="funnel"><h2>Funnel, stage by stage and reason by reason</h2>'
        f'<table id="compare-funnel">{head}{"".join(funnel)}</table></section>'
        f'<section id="only"><h2>Documents in one build only</h2><div class="grid">'
        f"{_only('a', c['only']['a'], 'B', c['only']['exact'])}{_only('b', c['only']['b'], 'A', c['only']['exact'])}"
        f'</div></section><section id="signals"><h2>Signals, overlaid</h2><div class="grid">{"".join(panels)}</div>'
        "</section></main></body></html>\n"
    )


def make_comparison(a: str | Path, b: str | Path, output: str | Path, progress: bool = True) -> dict[str, Any]:
    """Write OUTPUT/index.html and OUTPUT/compare.json; returns the comparison."""
    c = compare(a, b, progress)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    generated_at = datetime.now(UTC).isoformat(timespec="seconds")
    (out / "index.html").write_text(render_compare(c, generated_at), encoding="utf-8")
    (out / "compare.json").write_text(json.dumps(c, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return c
