"""Inline SVG charts for the report: histograms with threshold lines, horizontal bars, the funnel.

Plain SVG strings, no JavaScript library. Every label passes through `html.escape`, so a language code
or a domain taken from the crawl cannot inject markup.
"""

from __future__ import annotations

from html import escape
from typing import Any

BAR = "#4c78a8"
BAR_LIGHT = "#c6d6ea"
OUT = "#9aa5b1"
THRESHOLD = "#d62728"
DROPPED = "#f2a0a0"
OTHER = "#f58518"


def fmt(x: float | None) -> str:
    """Compact number: 1234567 -> 1,234,567; 0.123456 -> 0.1235."""
    if x is None:
        return "-"
    if isinstance(x, int) or float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:.4g}"


def _edge_label(x: float) -> str:
    if abs(x) >= 1000 and float(x).is_integer():
        return f"{x / 1000:g}k"
    return f"{x:.3g}"


def histogram_svg(
    hist: dict[str, Any],
    thresholds: list[dict[str, Any]] | None = None,
    *,
    width: int = 460,
    height: int = 170,
    label: str = "",
) -> str:
    """Bars of equal width per bin (bins may be uneven: the axis is piecewise linear between edges),
    plus underflow/overflow bars when they hold values, plus a red line at each threshold. With a
    `dropped` series (documents the build dropped), its counts are stacked on the kept ones in light red,
    and the side of each threshold that it cuts is shaded."""
    edges, counts = hist["edges"], list(hist["counts"])
    dropped = hist.get("dropped") or {}
    d_counts = list(dropped.get("counts") or [0] * len(counts))
    bars = [(f"{_edge_label(edges[i])}–{_edge_label(edges[i + 1])}", c, d_counts[i]) for i, c in enumerate(counts)]
    lead = 1 if hist.get("underflow") or dropped.get("underflow") else 0
    if lead:
        bars.insert(0, (f"< {_edge_label(edges[0])}", hist.get("underflow", 0), dropped.get("underflow", 0)))
    tail = 1 if hist.get("overflow") or dropped.get("overflow") else 0
    if tail:
        bars.append((f"> {_edge_label(edges[-1])}", hist.get("overflow", 0), dropped.get("overflow", 0)))
    left, right, top, bottom = 44, 18, 10, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(bars), 1)
    bw = plot_w / n
    peak = max([c + d for _, c, d in bars] + [1])
    parts = [
        (
            f'<svg class="chart" role="img" aria-label="{escape(label, quote=True)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        )
    ]
    for t in thresholds or []:  # the side a threshold cuts, shaded
        x = _value_x(t["value"], edges, left + lead * bw, bw)
        if x is None:
            continue
        x0, x1 = (left, x) if t["kind"] == "min" else (x, left + plot_w)
        parts.append(
            f'<rect class="cut" x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 0):.1f}" height="{plot_h}" '
            f'fill="{THRESHOLD}" fill-opacity="0.08"/>'
        )
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" class="ax" text-anchor="end">{fmt(peak)}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + plot_h}" class="ax" text-anchor="end">0</text>')
    for i, (name, c, d) in enumerate(bars):
        h = plot_h * c / peak
        hd = plot_h * d / peak
        x = left + i * bw
        colour = OUT if (lead and i == 0) or (tail and i == len(bars) - 1) else BAR
        title = f"{escape(name)}: {fmt(c)} kept" + (f", {fmt(d)} dropped" if d else "")
        parts.append(
            f'<rect x="{x + 0.5:.1f}" y="{top + plot_h - h:.1f}" width="{max(bw - 1, 0.5):.1f}" '
            f'height="{h:.1f}" fill="{colour}"><title>{title}</title></rect>'
        )
        if d:
            parts.append(
                f'<rect class="dropped" x="{x + 0.5:.1f}" y="{top + plot_h - h - hd:.1f}" '
                f'width="{max(bw - 1, 0.5):.1f}" height="{hd:.1f}" fill="{DROPPED}"><title>{title}</title>'
                "</rect>"
            )
    step = max(1, n // 6)
    for i in range(0, len(edges), step):
        x = left + (i + lead) * bw
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 14}" class="ax" text-anchor="middle">'
            f"{escape(_edge_label(edges[i]))}</text>"
        )
    for t in thresholds or []:
        x = _value_x(t["value"], edges, left + lead * bw, bw)
        if x is None:
            continue
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="{THRESHOLD}" '
            f'stroke-width="2" stroke-dasharray="4 2"><title>{escape(t["config"])} = '
            f"{fmt(t['value'])} ({escape(t['kind'])})</title></line>"
        )
        anchor = "start" if t["kind"] == "min" else "end"
        dx = 3 if t["kind"] == "min" else -3
        parts.append(
            f'<text x="{x + dx:.1f}" y="{top + plot_h + 28}" class="thr" text-anchor="{anchor}">'
            f"{escape(t['kind'])} {fmt(t['value'])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _value_x(value: float, edges: list[float], x0: float, bw: float) -> float | None:
    """x of a value on the piecewise-linear axis; None when it lies outside the edges."""
    if value < edges[0] or value > edges[-1]:
        return None
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        if lo <= value <= hi:
            frac = 0.0 if hi == lo else (value - lo) / (hi - lo)
            return x0 + (i + frac) * bw
    return None


def hbar_svg(items: list[tuple[str, int]], *, width: int = 460, label: str = "", row_h: int = 18) -> str:
    """Horizontal bars, one row per (label, count)."""
    label_w, right = 170, 70
    height = max(row_h * len(items) + 6, 24)
    peak = max([c for _, c in items] + [1])
    parts = [
        (
            f'<svg class="chart" role="img" aria-label="{escape(label, quote=True)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        )
    ]
    for i, (name, c) in enumerate(items):
        y = 3 + i * row_h
        w = (width - label_w - right) * c / peak
        short = name if len(name) <= 28 else name[:27] + "…"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 12}" class="lbl" text-anchor="end">{escape(short)}'
            f"<title>{escape(name)}</title></text>"
        )
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{max(w, 1):.1f}" height="{row_h - 5}" fill="{BAR}"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 12}" class="ax">{fmt(c)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def funnel_svg(stages: list[dict[str, Any]], *, width: int = 760, row_h: int = 26) -> str:
    """Per stage: a light bar for records in and a dark bar for records out, on one scale."""
    label_w, right = 150, 150
    height = max(row_h * len(stages) + 8, 24)
    peak = max([s["in"] for s in stages] + [1])
    scale = (width - label_w - right) / peak
    parts = [
        (
            f'<svg class="chart" role="img" aria-label="funnel" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        )
    ]
    for i, s in enumerate(stages):
        y = 4 + i * row_h
        dropped = s["in"] - s["out"]
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" class="lbl" text-anchor="end">{escape(s["name"])}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y + 2}" width="{max(s["in"] * scale, 1):.1f}" height="{row_h - 6}" '
            f'fill="{BAR_LIGHT}"><title>in {fmt(s["in"])}</title></rect>'
        )
        parts.append(
            f'<rect x="{label_w}" y="{y + 2}" width="{max(s["out"] * scale, 0):.1f}" height="{row_h - 6}" '
            f'fill="{BAR}"><title>out {fmt(s["out"])}</title></rect>'
        )
        parts.append(
            f'<text x="{label_w + s["in"] * scale + 6:.1f}" y="{y + 15}" class="ax">{fmt(s["out"])} / '
            f"{fmt(s['in'])}{f'  (−{fmt(dropped)})' if dropped else ''}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def overlay_svg(
    a: dict[str, Any] | None, b: dict[str, Any] | None, *, width: int = 460, height: int = 170, label: str = ""
) -> str:
    """Two histograms on the same bins (B binned on A's edges): per bin, A's bar (blue) and B's (orange)
    side by side, plus < and > bars for values outside the edges."""
    base = a or b
    if base is None:
        return ""
    edges = base["edges"]

    def series(h: dict[str, Any] | None) -> list[int]:
        if h is None or len(h["counts"]) != len(edges) - 1:
            return [0] * (len(edges) + 1)
        return [h.get("underflow", 0), *h["counts"], h.get("overflow", 0)]

    sa, sb = series(a), series(b)
    names = (
        [f"< {_edge_label(edges[0])}"]
        + [f"{_edge_label(edges[i])}–{_edge_label(edges[i + 1])}" for i in range(len(edges) - 1)]
        + [f"> {_edge_label(edges[-1])}"]
    )
    left, right, top, bottom = 44, 18, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    bw = plot_w / len(names)
    peak = max(sa + sb + [1])
    parts = [
        (
            f'<svg class="chart" role="img" aria-label="{escape(label, quote=True)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        ),
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
        f'<text x="{left - 4}" y="{top + 8}" class="ax" text-anchor="end">{fmt(peak)}</text>',
    ]
    for i, name in enumerate(names):
        for j, (count, colour) in enumerate(((sa[i], BAR), (sb[i], OTHER))):
            h = plot_h * count / peak
            x = left + i * bw + j * bw / 2
            parts.append(
                f'<rect class="{"a" if j == 0 else "b"}" x="{x + 0.3:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{max(bw / 2 - 0.6, 0.4):.1f}" height="{h:.1f}" fill="{colour}"><title>'
                f"{escape(name)}: {'A' if j == 0 else 'B'} {fmt(count)}</title></rect>"
            )
    step = max(1, len(edges) // 6)
    for i in range(0, len(edges), step):
        parts.append(
            f'<text x="{left + (i + 1) * bw:.1f}" y="{top + plot_h + 14}" class="ax" text-anchor="middle">'
            f"{escape(_edge_label(edges[i]))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
