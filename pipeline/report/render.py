"""The report page: one `index.html` (plus `assets/img/`) that opens from disk with no server and no network.

Everything the crawl supplied (text, URLs, alt text, titles, reasons, language codes, domains) is escaped
with `html.escape(..., quote=True)`; URLs become links only when they are http(s). The document browser is
rendered in the page by a small script (`report.js`) from JSON embedded in a
`<script type="application/json">` block whose `<`, `>` and `&` are written as `\\u003c`-style escapes,
so a `</script>` inside crawled text cannot end the block; the script inserts text with `textContent`
only. A Content-Security-Policy allows only that one script (by its sha256), inline styles and images
from the report's own folder or data: URIs, so even a mistake cannot load or run anything else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from html import escape
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from pipeline.report.charts import fmt, funnel_svg, hbar_svg, histogram_svg

HIST_TITLES = {
    "words_per_document": ("Words per document", "whitespace-separated words of all text blocks"),
    "images_per_document": ("Images per document", ""),
    "image_width": ("Image width (px)", "as stored in the shards (after the image stage)"),
    "image_height": ("Image height (px)", "as stored in the shards (after the image stage)"),
    "image_aspect_ratio": ("Image aspect ratio (width / height)", ""),
}


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def is_web_url(url: str) -> bool:
    try:
        return urlsplit(url).scheme.lower() in ("http", "https")
    except ValueError:
        return False


def link(url: str) -> str:
    """An http(s) URL as a link, anything else (javascript:, data:, junk) as plain escaped text."""
    if is_web_url(url):
        return f'<a class="url" href="{esc(url)}" rel="noopener noreferrer nofollow">{esc(url)}</a>'
    return f'<span class="url">{esc(url)}</span>'


def _finite(obj: Any) -> Any:
    """`obj` with NaN and infinities as the strings "NaN", "Infinity", "-Infinity": JSON.parse rejects the
    bare tokens Python's json writes for them, and one in a document would stop the whole browser."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj).replace("nan", "NaN").replace("inf", "Infinity")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def embed_json(obj: Any) -> str:
    """JSON safe inside a <script> element: no `<`, `>` or `&` characters left (so no `</script>`), and
    strict (no NaN/Infinity tokens), so the browser's JSON.parse accepts it."""
    text = json.dumps(_finite(obj), ensure_ascii=False, sort_keys=False, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _asset(name: str) -> str:
    return (resources.files("pipeline.report") / name).read_text(encoding="utf-8")


def csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (
        f"default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )


# ---- sections ---------------------------------------------------------------------------------------
def _cards(summary: dict[str, Any]) -> str:
    t = summary["totals"]
    items = [
        ("documents", t["documents"]),
        ("images", t["images"]),
        ("words", t["words"]),
        ("tokens (estimate)", t["tokens_estimate"]),
        ("shards", t["shards"]),
        ("languages", t["languages"]),
        ("domains", t["domains"]),
    ]
    cards = "".join(
        f'<div class="card" data-total="{esc(k)}" data-value="{v}"><div class="v">{fmt(v)}</div>'
        f'<div class="k">{esc(k)}</div></div>'
        for k, v in items
    )
    errors = "".join(f'<p class="warn">Left out: {esc(e)}</p>' for e in summary["index_errors"])
    return (
        f'<section id="overview"><h2>Overview</h2>{errors}<div class="cards">{cards}</div>'
        f'<p class="muted">Token estimate: {esc(t["tokens_estimate_method"])}. Figures below describe the '
        f"documents in the corpus (kept documents); drops are in the funnel and the rejects log.</p></section>"
    )


def _funnel(summary: dict[str, Any]) -> str:
    funnel = summary["funnel"]
    if funnel is None:
        return (
            f'<section id="funnel"><h2>Funnel</h2><p class="warn">No funnel: '
            f"{esc(summary['funnel_error'])} (a build still running, or a corpus made by hand).</p></section>"
        )
    stages = funnel["stages"]
    rows = []
    for s in stages:
        drops = sorted(s.get("drops", {}).items(), key=lambda kv: (-kv[1], kv[0]))
        drop_cells = (
            "<br>".join(
                f'<span data-drop-stage="{esc(s["name"])}" data-reason="{esc(r)}" data-count="{int(c)}">'
                f"{esc(r)}: {fmt(c)}</span>"
                for r, c in drops
            )
            or '<span class="muted">none</span>'
        )
        rows.append(
            f'<tr data-stage="{esc(s["name"])}" data-in="{int(s["in"])}" data-out="{int(s["out"])}">'
            f'<td>{esc(s["name"])}</td><td class="num">{fmt(s["in"])}</td><td class="num">{fmt(s["out"])}</td>'
            f'<td class="num">{fmt(s["in"] - s["out"])}</td><td>{drop_cells}</td></tr>'
        )
    table = (
        '<table id="funnel-table"><tr><th>stage</th><th class="num">in</th><th class="num">out</th>'
        f'<th class="num">dropped</th><th>drops by reason</th></tr>{"".join(rows)}</table>'
    )
    item_rows = []
    for key, s in funnel.get("items", {}).items():
        drops = ", ".join(f"{esc(r)}: {fmt(c)}" for r, c in sorted(s.get("drops", {}).items(), key=lambda kv: -kv[1]))
        item_rows.append(
            f'<tr data-item="{esc(key)}" data-in="{int(s["in"])}" data-out="{int(s["out"])}"><td>{esc(key)}'
            f'</td><td class="num">{fmt(s["in"])}</td><td class="num">{fmt(s["out"])}</td><td>{drops}</td></tr>'
        )
    items = (
        '<h3>Items inside documents</h3><table id="items-table"><tr><th>stage/item</th><th class="num">in'
        f'</th><th class="num">out</th><th>drops by reason</th></tr>{"".join(item_rows)}</table>'
        if item_rows
        else ""
    )
    counters = funnel.get("counters", {})
    counter_html = (
        (
            '<h3>Counters</h3><table><tr><th>counter</th><th class="num">value</th></tr>'
            + "".join(f'<tr><td>{esc(k)}</td><td class="num">{fmt(v)}</td></tr>' for k, v in counters.items())
            + "</table>"
        )
        if counters
        else ""
    )
    whole = [d for d in summary["drops"] if d["item"] in ("document", "record")][:15]
    parts = [d for d in summary["drops"] if d["item"] not in ("document", "record")][:10]
    top = _top_reasons("Documents dropped, by reason", "top-doc-reasons", whole) + _top_reasons(
        "Parts of documents dropped (the document goes on), by reason", "top-item-reasons", parts
    )
    return (
        f'<section id="funnel"><h2>Funnel</h2><p class="muted">Records in and out of each stage, from '
        f'stats.json (light bar: in, dark bar: out).</p><div class="scroll">'
        f'{funnel_svg(stages) if stages else ""}</div><div class="scroll">{table}</div>'
        f'<div class="scroll">{items}</div><h3>Top drop reasons</h3>{top}{counter_html}</section>'
    )


def _top_reasons(title: str, table_id: str, drops: list[dict[str, Any]]) -> str:
    if not drops:
        return f'<h4>{esc(title)}</h4><p class="muted">none</p>'
    chart = hbar_svg([(f"{d['stage']}: {d['reason']}", d["count"]) for d in drops], width=620, label=title)
    rows = "".join(
        f'<tr data-stage="{esc(d["stage"])}" data-item="{esc(d["item"])}" data-reason="{esc(d["reason"])}"'
        f' data-count="{int(d["count"])}"><td>{esc(d["stage"])}</td><td>{esc(d["reason"])}</td>'
        f'<td class="num">{fmt(d["count"])}</td></tr>'
        for d in drops
    )
    return (
        f'<h4>{esc(title)}</h4><div class="scroll">{chart}</div><details><summary>as a table</summary>'
        f'<table id="{table_id}"><tr><th>stage</th><th>reason</th><th class="num">count</th></tr>{rows}'
        "</table></details>"
    )


def _panel(title: str, chart: str, note: str = "", attrs: str = "") -> str:
    note_html = f'<div class="note">{note}</div>' if note else ""
    return f'<div class="panel"{attrs}><h3>{esc(title)}</h3>{chart}{note_html}</div>'


def _hist_note(h: dict[str, Any]) -> str:
    return esc(f"n={fmt(h['count'])}, mean {fmt(h['mean'])}, min {fmt(h['min'])}, max {fmt(h['max'])}")


def _distributions(summary: dict[str, Any]) -> str:
    panels = []
    for name, h in summary["histograms"].items():
        title, extra = HIST_TITLES.get(name, (name, ""))
        note = _hist_note(h) + (f"<br>{esc(extra)}" if extra else "")
        panels.append(_panel(title, histogram_svg(h, label=title), note, f' data-hist="{esc(name)}"'))
    langs = list(summary["languages"].items())[:50]
    panels.append(
        _panel(
            "By language",
            hbar_svg(langs, label="languages") if langs else "<p>none</p>",
            esc(f"{len(summary['languages'])} languages; top {len(langs)} shown"),
            ' data-breakdown="language"',
        )
    )
    for key, title, what in (("domains", "By domain", "hosts"), ("sources", "By source file", "source files")):
        part = summary[key]
        top = list(part["top"].items())
        note = esc(
            f"top {len(top)} {what}"
            + (" (counts are lower bounds: too many to count exactly)" if part["approximate"] else "")
        )
        panels.append(
            _panel(title, hbar_svg(top, label=title) if top else "<p>none</p>", note, f' data-breakdown="{key}"')
        )
    return f'<section id="distributions"><h2>Distributions</h2><div class="grid">{"".join(panels)}</div></section>'


def _signals(summary: dict[str, Any]) -> str:
    if not summary["signals"]:
        return '<section id="signals"><h2>Quality signals</h2><p class="muted">No signals in the index.</p></section>'
    panels = []
    what_if = summary["what_if"]
    for name, h in summary["signals"].items():
        thr = h["thresholds"]
        lo, hi = h["edges"][0], h["edges"][-1]
        lines = []
        for i, t in enumerate(thr):
            sign = "≥" if t["kind"] == "min" else "≤"
            off = "" if lo <= t["value"] <= hi else ", off the axis"
            lines.append(
                f'<div class="thr-row" data-threshold="{i}" data-kept="{t["kept"]}" data-cut="{t["cut"]}">'
                f"{esc(t['config'])} = {esc(fmt(t['value']))} (keeps {sign}{off}): "
                f"<b>{fmt(t['kept'])}</b> pass, <b>{fmt(t['cut'])}</b> cut"
                + (_what_if_control(name, i, t, h) if name in what_if["signals"] else "")
                + "</div>"
            )
        note = (
            _hist_note(h)
            + esc(f"; dropped documents with it: {fmt(h['dropped_documents'])}")
            + "<br>"
            + ("".join(lines) or esc("no threshold known for this signal"))
        )
        panels.append(_panel(name, histogram_svg(h, thr, label=name), note, f' data-signal="{esc(name)}"'))
    warn = "" if summary["build"] else (f'<p class="warn">No thresholds: {esc(summary["build_error"])}.</p>')
    if summary.get("invalid_signals"):
        warn += (
            f'<p class="warn">{fmt(summary["invalid_signals"])} index rows have a signals column that is '
            f"not a JSON object; they are left out of these histograms.</p>"
        )
    sampled = (
        f"all {fmt(what_if['population'])} documents (those in the corpus and the dropped ones with signals)"
        if what_if["sample"] >= what_if["population"]
        else f"a seeded sample of {fmt(what_if['sample'])} of the {fmt(what_if['population'])} documents in the "
        f"corpus or dropped with signals (seed {what_if.get('seed')}); counts are scaled to the build"
    )
    return (
        f'<section id="signals"><h2>Quality signals</h2>{warn}<p class="muted">Every document that reached '
        f"the stage writing a signal: blue, in the corpus (the index's <code>signals</code>); light red, "
        f"dropped at this or a later stage (the rejects log's <code>signals</code>). Red dashed lines: the "
        f"thresholds of the build (build.json); the shaded side is what a threshold cuts. Move a threshold: "
        f"the report recomputes how many documents it keeps from {esc(sampled)}; a dropped document that "
        f"would pass counts as kept if it passes the thresholds of the signals it has (later stages never "
        f'saw it, so the final figure is an upper bound).</p><div class="grid">{"".join(panels)}</div></section>'
    )


def _what_if_control(name: str, index: int, t: dict[str, Any], h: dict[str, Any]) -> str:
    lo, hi = min(h["edges"][0], t["value"]), max(h["edges"][-1], t["value"])
    step = (hi - lo) / 200 if hi > lo else 1
    if all(float(e).is_integer() for e in h["edges"]) and float(t["value"]).is_integer():
        step = max(1, round(step))
    return (
        f'<div class="what-if" data-signal="{esc(name)}" data-index="{index}">'
        f'<input type="range" class="wi-range" min="{lo:g}" max="{hi:g}" step="{step:g}" value="{t["value"]:g}" '
        f'aria-label="{esc(t["config"])}"><input type="number" class="wi-value" step="any" value="{t["value"]:g}">'
        '<output class="wi-out"></output><code class="wi-set"></code></div>'
    )


def _dedup(summary: dict[str, Any], keeper_docs: dict[str, int], repeated: list[dict[str, Any]]) -> str:
    d = summary["dedup"]
    errors = "".join(f'<p class="warn">{esc(e)}</p>' for e in d["errors"])
    if not d["available"]:
        return (
            f'<section id="dedup"><h2>Dedup</h2>{errors}<p class="warn" id="no-dedup">No dedup data: '
            f"this corpus has no dedup/clusters.parquet or dedup/images.parquet.</p></section>"
        )
    parts = [errors]
    clusters = d["clusters"]
    if clusters is None:
        parts.append('<p class="warn">No dedup/clusters.parquet.</p>')
    else:
        by_reason = ", ".join(f"{esc(r)}: {fmt(c)}" for r, c in clusters["dropped_by_reason"].items())
        parts.append(
            f"<p>{fmt(clusters['clusters'])} clusters, {fmt(clusters['rows'])} member rows, "
            f"{fmt(clusters['dropped'])} documents dropped as duplicates ({by_reason}).</p>"
        )
        for c in clusters["top"]:
            keepers = [m for m in c["members"] if m["keeper"]]
            dropped = [m for m in c["members"] if not m["keeper"]]
            keep_html = (
                "".join(
                    f'<div class="mono">{esc(m["id"])}</div>{link(m["url"])}'
                    + (
                        f' <a href="#doc-{keeper_docs[m["id"]]}">show document</a>'
                        if m["id"] in keeper_docs
                        else ' <span class="muted">(not in the corpus)</span>'
                    )
                    for m in keepers
                )
                or "<i>none</i>"
            )
            drop_html = "".join(
                f'<li><span class="mono">{esc(m["id"])}</span> {link(m["url"])} '
                f'<span class="muted">{esc(m["reason"])}</span></li>'
                for m in dropped[:20]
            )
            more = f'<li class="muted">… {len(dropped) - 20} more</li>' if len(dropped) > 20 else ""
            parts.append(
                f'<div class="dedup-cluster" data-cluster="{esc(c["cluster_id"])}" data-size="{c["size"]}">'
                f'<div class="keeper"><b>keeper</b> (cluster {esc(c["cluster_id"])}, size {fmt(c["size"])})'
                f'{keep_html}</div><div class="dropped"><b>dropped</b><ul>{drop_html}{more}</ul></div></div>'
            )
    images = d["images"]
    if images is None:
        parts.append('<p class="warn">No dedup/images.parquet.</p>')
    else:
        figs = []
        for im in repeated:
            pic = (
                f'<img src="{esc(im["src"])}" alt="">'
                if im.get("src")
                else f'<div class="broken">{esc(im.get("error") or "not in the corpus")}</div>'
            )
            figs.append(
                f'<figure data-phash="{esc(im["phash"])}">{pic}<figcaption><span class="mono">'
                f"{esc(im['phash'])}</span><br>{fmt(im['n_docs'])} documents, {fmt(im['dropped'])} "
                f"dropped</figcaption></figure>"
            )
        parts.append(
            f"<h3>Most repeated images</h3><p>{fmt(images['rows'])} distinct pHashes.</p>"
            f'<div class="thumbs">{"".join(figs)}</div>'
        )
    return f'<section id="dedup"><h2>Dedup</h2>{"".join(parts)}</section>'


def _browser(summary: dict[str, Any], n_docs: int, load_errors: list[str]) -> str:
    s = summary["sample"]
    errors = "".join(f'<p class="warn">{esc(e)}</p>' for e in load_errors)
    return (
        f'<section id="browser"><h2>Documents</h2><p class="muted">A uniform sample of {fmt(s["documents"])} '
        f"kept documents (seeded bottom-k sampling, seed {s['seed']}) and the keepers of the largest dedup "
        f"clusters, 20 per page; each opens to its text and images in reading order.</p>{errors}"
        '<form class="controls" id="jump-form"><label>search <input id="search-q" type="search" '
        'placeholder="text, title, URL or id"></label><label>language <select id="filter-lang">'
        '<option value="">all</option></select></label><label>sort by <select id="sort-by">'
        '<option value="">sample order</option></select></label><label><input type="checkbox" id="sort-desc">'
        ' descending</label><label>jump to id or URL <input id="jump-q"></label><button type="submit">go</button>'
        '<span id="jump-msg" class="muted"></span></form>'
        '<div class="pager"><button type="button" id="page-prev">previous</button><span id="page-info"></span>'
        '<button type="button" id="page-next">next</button><span id="docs-count" class="muted"></span></div>'
        f'<div id="docs" data-count="{n_docs}"></div></section>'
        '<section id="rejects"><h2>Rejects</h2>'
        + _rejects_counts(summary)
        + '<h3>Rejected documents, by reason</h3><p class="muted">A sample per stage and reason (the rows '
        "with the smallest keys, a hash of the document id); rejected documents show their text as the build "
        "saw it (first 2,000 characters), the signal values that decided and the threshold.</p>"
        '<div class="controls"><label>reason <select id="filter-reason"><option value="">all</option>'
        '</select></label><span id="rejects-count" class="muted"></span></div><div id="rejects-list"></div>'
        "</section>"
    )


def _rejects_counts(summary: dict[str, Any]) -> str:
    r = summary["rejects"]
    if not r["files"]:
        return '<p class="warn">No rejects log (rejects/*.parquet) in this corpus.</p>'
    rows = "".join(
        f"<tr><td>{esc(x['stage'])}</td><td>{esc(x['item'])}</td><td>{esc(x['reason'])}</td>"
        f'<td class="num">{fmt(x["count"])}</td></tr>'
        for x in r["by_reason"][:40]
    )
    errs = "".join(f'<p class="warn">{esc(e)}</p>' for e in r["errors"])
    return (
        f'{errs}<p>{fmt(r["rows"])} rows in {r["files"]} files.</p><div class="scroll"><table><tr>'
        f'<th>stage</th><th>item</th><th>reason</th><th class="num">rows</th></tr>{rows}</table></div>'
    )


def render_html(
    summary: dict[str, Any],
    documents: list[dict[str, Any]],
    rejects: list[dict[str, Any]],
    repeated: list[dict[str, Any]],
    load_errors: list[str],
    generated_at: str,
    what_if: dict[str, Any] | None = None,
) -> str:
    """The whole page as a string."""
    script = _asset("report.js")
    keeper_docs = {d["id"]: d["n"] for d in documents if d["role"] == "keeper"}
    what_if = what_if or {
        "population": 0,
        "sample": 0,
        "final": 0,
        "thresholds": {},
        "values": {},
        "reasons": [""],
        "reason": [],
    }
    summary = {
        **summary,
        "what_if": {
            **summary.get("what_if", {}),
            "signals": set(what_if["thresholds"]),
            "population": what_if["population"],
            "sample": what_if["sample"],
        },
    }
    data = {"documents": documents, "rejects": rejects, "what_if": what_if}
    build = summary["build"] or {}
    sub = f"corpus {summary['corpus']} · report generated {generated_at}"
    if build.get("finished_at"):
        sub += f" · build finished {build['finished_at']}"
    elif summary["build"] is not None:
        sub += " · build not finished (still running or interrupted)"
    toc = "".join(
        f'<a href="#{k}">{v}</a>'
        for k, v in [
            ("overview", "Overview"),
            ("funnel", "Funnel"),
            ("distributions", "Distributions"),
            ("signals", "Signals"),
            ("dedup", "Dedup"),
            ("browser", "Documents"),
            ("rejects", "Rejects"),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp(script))}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>interloom report: {esc(summary['corpus'])}</title><style>{_asset('report.css')}</style></head>"
        f'<body><header class="top"><h1>interloom corpus report</h1><div class="sub">{esc(sub)}</div></header>'
        f'<nav class="toc">{toc}</nav><main>'
        + _cards(summary)
        + _funnel(summary)
        + _distributions(summary)
        + _signals(summary)
        + _dedup(summary, keeper_docs, repeated)
        + _browser(summary, len(documents), load_errors)
        + "</main>"
        f'<script type="application/json" id="report-data">{embed_json(data)}</script>'
        f"<script>{script}</script></body></html>\n"
    )
