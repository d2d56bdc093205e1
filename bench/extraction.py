"""Extraction quality: interloom's `crawl.extract` in-sample and site-grouped cross-validated, beside plain
trafilatura, readability-lxml and magic-html, in one run.

Data: ../shared/data/real/dev/html (manifest.jsonl, 294 pages of 250 sites) with three gold sets and one
silver set:
- trafilatura `gold.jsonl`: snippets that must (`with`) / must not (`without`) appear in the text;
  micro-averaged snippet precision/recall/F1 (whitespace-normalised substring test).
- scrapinghub `ground-truth.json` (articleBody) and readability `expected.html` (its text): token
  precision/recall/F1 over lower-cased word tokens, bag-of-words overlap per page, micro-averaged.
- readability `expected.html` `<img>` tags (gold) and, for all 294 pages, Readability.js 0.6.0's article
  images (silver, ../shared/data/real/dev/silver): image URL precision/recall/F1, per page as sets of
  normalised absolute URLs (scheme and fragment dropped), micro-averaged over pages.

Everything interloom chooses by looking at labels is chosen inside the folds for the cross-validated rows:
the image model (crawl/image_select.py, fitted on the training pages' labels: gold where a page has gold,
silver elsewhere; its threshold too), its L2 penalty and page weighting (by an inner site-grouped 5-fold CV on
the training pages) and trafilatura's focus setting (the one with the best mean text F1 on the training
pages). Folds: 10, grouped by `site_group`, so a site's pages are never on both sides. The
in-sample row fits both on all pages (what bench/train_image_model.py ships).

Peers: `trafilatura.extract(html, url=url)` for text and `output_format="xml", include_images=True`
`<graphic src>` for images; readability-lxml `Document(html, url=url).summary(html_partial=True)`; magic-html
`GeneralExtractor().extract(html, base_url=url)` (text and `<img src>` of their HTML). All get the same
decoded HTML string.

    .venv/bin/python -m bench.extraction [--out results.json] [--limit N] [--no-peers]
    .venv/bin/python -m bench.extraction --speed 3 --vs ../main   # pages/s per core, side by side
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import re
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import lxml.html
import numpy as np
import trafilatura
from lxml import etree

from crawl.extract import (
    ExtractConfig,
    ExtractParts,
    assemble,
    decode_html,
    extract_document,
    extract_parts,
)
from crawl.image_select import FEATURES, ImageModel, fit_logistic

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
FAKEHOST = "http://fakehost/test/page.html"  # the page URL Readability's test suite used for URL-less pages
FOCUS = ("precision", "balanced", "recall")
FOLDS = 10
# (L2 penalty, page weighting power) of the image model, chosen by an inner site-grouped CV; strongest
# regularisation first: the inner CV moves to a weaker one only when it beats
# the one chosen so far by more than HYPER_TOLERANCE (the simplest model that fits about as well)
HYPER_GRID = ((3000.0, 0.5), (1000.0, 0.5), (1000.0, 0.0), (300.0, 0.5), (300.0, 0.0), (30.0, 0.5), (30.0, 0.0))
HYPER_TOLERANCE = 0.005
TEXT_ROWS = ("trafilatura snippets", "scrapinghub tokens", "readability tokens")
ROWS = (*TEXT_ROWS, "gold images", "silver images")


@dataclass
class Page:
    id: str
    source: str  # trafilatura | scrapinghub | readability
    url: str
    html: str
    site: str = ""
    gold_text: str = ""
    gold_with: list[str] = field(default_factory=list)
    gold_without: list[str] = field(default_factory=list)
    gold_images: set[str] | None = None  # readability pages only
    silver_images: set[str] | None = None  # Readability.js output, every page

    @property
    def image_labels(self) -> set[str]:
        """The labels the image model trains on: gold where the page has it, else silver."""
        return self.gold_images if self.gold_images is not None else (self.silver_images or set())


@dataclass
class Output:
    text: str
    images: list[str]


# ---- gold --------------------------------------------------------------------------------------------
def norm_image_url(url: str) -> str:
    """Host, path and query of an image URL, percent-encoded as a browser's URL parser writes them (the labels
    are Readability.js's `new URL(src, page).href`: `solidarité.jpg` is `solidarit%C3%A9.jpg` there, a space
    `%20`), so that the same URL is one string whichever extractor wrote it."""
    parts = urlsplit(url.strip())
    path, query = quote(parts.path, safe=_URL_SAFE), quote(parts.query, safe=_URL_SAFE)
    return parts.netloc.lower() + path + ("?" + query if query else "")


_URL_SAFE = "/%:@!$&'()*+,;=-._~?[]|^"  # kept as they are (existing escapes too); the rest is percent-encoded


def load_pages(
    data: Path = DATA,
    sources: tuple[str, ...] = ("trafilatura", "scrapinghub", "readability"),
    limit: int | None = None,
) -> list[Page]:
    """The dev pages with their gold and silver, per source at most `limit` (in manifest order)."""
    html_dir = data / "dev" / "html"
    rows = [json.loads(line) for line in (html_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
    tf_gold = {}
    for line in (html_dir / "trafilatura" / "gold.jsonl").read_text().splitlines():
        if line.strip():
            g = json.loads(line)
            tf_gold[g["url"]] = g
    sh_gold = json.loads((html_dir / "scrapinghub" / "ground-truth.json").read_text())
    silver_path = data / "dev" / "silver" / "readability_js_0.6.0.json"
    silver = json.loads(silver_path.read_text()) if silver_path.is_file() else {}
    pages, per_source = [], Counter()
    for r in rows:
        if r["source"] not in sources or (limit is not None and per_source[r["source"]] >= limit):
            continue
        raw = (data / r["html_path"]).read_bytes()
        if r.get("html_gzip"):
            raw = gzip.decompress(raw)
        url = r["url"] or FAKEHOST
        page = Page(
            id=r["id"], source=r["source"], url=url, html=decode_html(raw, None), site=r.get("site_group") or r["id"]
        )
        if r["id"] in silver:
            page.silver_images = {norm_image_url(u) for u in silver[r["id"]]["images"]}
        if r["source"] == "trafilatura":
            g = tf_gold[r["gold_key"]]
            page.gold_with, page.gold_without = list(g.get("with") or []), list(g.get("without") or [])
        elif r["source"] == "scrapinghub":
            page.gold_text = sh_gold[r["gold_key"]]["articleBody"]
        else:
            gold = lxml.html.fromstring((data / r["gold_path"]).read_bytes())
            page.gold_text = gold.text_content()
            page.gold_images = {
                norm_image_url(urljoin(url, img.get("src"))) for img in gold.iter("img") if img.get("src")
            }
        per_source[r["source"]] += 1
        pages.append(page)
    return pages


def site_folds(pages: list[Page], k: int = FOLDS) -> list[int]:
    """Fold number of each page: sites in a fixed pseudo-random order, dealt round-robin into k folds."""
    sites = sorted({p.site for p in pages}, key=lambda s: (zlib.crc32(s.encode()), s))
    fold_of = {s: i % k for i, s in enumerate(sites)}
    return [fold_of[p.site] for p in pages]


# ---- interloom: parts once, then the image decision per model ------------------------------------------
def compute_parts(pages: list[Page], focus: str) -> list[ExtractParts | None]:
    config = ExtractConfig(focus=focus)
    return [extract_parts(p.html, p.url, config) for p in pages]


def training_rows(pages: list[Page], parts: list[ExtractParts | None]) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels (1: the image's URL is in the page's labels) of the candidate images, one row per
    URL and page (its first occurrence: the scores count URLs, and one placeholder repeated 60 times on a
    page must not weigh as 60 images)."""
    xs, ys = [], []
    for page, pt in zip(pages, parts):
        if pt is None:
            continue
        labels = page.image_labels
        seen = set()
        for c in pt.candidates:
            url = norm_image_url(pt.records[c.n].url)
            if url in seen:
                continue
            seen.add(url)
            xs.append(c.features)
            ys.append(float(url in labels))
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def fit_image_model(
    pages: list[Page], parts: list[ExtractParts | None], l2: float = 30.0, page_power: float = 0.5
) -> ImageModel:
    """The image model fitted on `pages`; each page's rows weigh n_rows ** -page_power (0: every image alike,
    1: every page alike), so that one page with 90 images does not decide the model alone."""
    xs, ys, ws = [], [], []
    for page, pt in zip(pages, parts):
        x_NF, y_N = training_rows([page], [pt])
        if len(y_N):
            xs.append(x_NF)
            ys.append(y_N)
            ws.append(np.full(len(y_N), len(y_N) ** -page_power))
    w_N = np.concatenate(ws)
    return fit_logistic(np.vstack(xs), np.concatenate(ys), l2=l2, w_N=w_N * len(w_N) / w_N.sum())


def outputs_of(parts: list[ExtractParts | None], model: ImageModel) -> list[Output]:
    config = ExtractConfig()
    outs = []
    for pt in parts:
        doc = None if pt is None else assemble(pt, model, config)[0]
        outs.append(
            Output("", []) if doc is None else Output("\n".join(doc.text_blocks), [im.url for im in doc.image_list])
        )
    return outs


def text_score(scores: dict[str, dict[str, float]]) -> float:
    return float(np.mean([scores[r]["f1"] for r in TEXT_ROWS if r in scores]))


def choose_hyper(pages: list[Page], parts: list[ExtractParts | None], k: int = 5) -> tuple[float, float]:
    """The (L2 penalty, page weighting power) of `HYPER_GRID` with the best mean image F1 (gold and silver) in
    a site-grouped k-fold CV over `pages`, preferring the stronger regularisation unless a weaker one beats the
    one chosen so far by more than `HYPER_TOLERANCE`."""
    folds = site_folds(pages, k)
    best, best_f1 = HYPER_GRID[0], -1.0
    for l2, power in HYPER_GRID:
        outs: list[Output | None] = [None] * len(pages)
        for f in range(k):
            train = [i for i, g in enumerate(folds) if g != f]
            test = [i for i, g in enumerate(folds) if g == f]
            model = fit_image_model([pages[i] for i in train], [parts[i] for i in train], l2, power)
            for i, out in zip(test, outputs_of([parts[i] for i in test], model)):
                outs[i] = out
        s = score(pages, outs)
        f1 = float(np.mean([s[r]["f1"] for r in ("gold images", "silver images") if r in s]))
        if f1 > best_f1 + HYPER_TOLERANCE:
            best, best_f1 = (l2, power), f1
    return best


def choose_focus(pages: list[Page], parts: dict[str, list[ExtractParts | None]]) -> str:
    """trafilatura's focus with the best mean text F1 over the three gold sets on `pages`."""
    return max(parts, key=lambda fo: text_score(score(pages, outputs_of(parts[fo], _NO_IMAGES))))


def fit_all(
    pages: list[Page],
    parts: dict[str, list[ExtractParts | None]],
) -> tuple[str, tuple[float, float], ImageModel]:
    """Everything interloom chooses by looking at labels, chosen on `pages` only: focus, the model's L2
    penalty and page weighting, the model (and its threshold)."""
    focus = choose_focus(pages, parts)
    hyper = choose_hyper(pages, parts[focus])
    return focus, hyper, fit_image_model(pages, parts[focus], *hyper)


def cross_validate(
    pages: list[Page],
    parts: dict[str, list[ExtractParts | None]],
) -> tuple[list[Output], dict[int, tuple[str, float]]]:
    """Site-grouped k-fold outputs: per fold, focus, model settings and image model are chosen on the other
    folds."""
    folds = site_folds(pages)
    outs: list[Output | None] = [None] * len(pages)
    chosen = {}
    for k in sorted(set(folds)):
        train = [i for i, f in enumerate(folds) if f != k]
        test = [i for i, f in enumerate(folds) if f == k]
        focus, l2, model = fit_all([pages[i] for i in train], {fo: [p[i] for i in train] for fo, p in parts.items()})
        chosen[k] = (focus, l2)
        for i, out in zip(test, outputs_of([parts[focus][i] for i in test], model)):
            outs[i] = out
    return outs, chosen


_NO_IMAGES = ImageModel(
    FEATURES, np.zeros(len(FEATURES)), np.ones(len(FEATURES)), np.zeros(len(FEATURES)), -50.0
)  # keeps no image: text-only scoring


def in_sample(
    pages: list[Page],
    parts: dict[str, list[ExtractParts | None]],
) -> tuple[list[Output], str, float, ImageModel]:
    focus, l2, model = fit_all(pages, parts)
    return outputs_of(parts[focus], model), focus, l2, model


# ---- peers -------------------------------------------------------------------------------------------
def run_trafilatura(page: Page) -> Output:
    text = trafilatura.extract(page.html, url=page.url) or ""
    images: list[str] = []
    xml = trafilatura.extract(page.html, url=page.url, output_format="xml", include_images=True)
    if xml:
        root = etree.fromstring(xml.encode("utf-8"))
        images = [urljoin(page.url, g.get("src")) for g in root.iter("graphic") if g.get("src")]
    return Output(text, images)


def _html_output(html: str, url: str) -> Output:
    if not html or not html.strip():
        return Output("", [])
    root = lxml.html.fromstring(html)
    images = [urljoin(url, img.get("src")) for img in root.iter("img") if img.get("src")]
    return Output(root.text_content(), images)


def run_readability_lxml(page: Page) -> Output:
    from readability import Document as ReadabilityDocument

    return _html_output(ReadabilityDocument(page.html, url=page.url).summary(html_partial=True), page.url)


def run_magic_html(page: Page, _extractor: list = []) -> Output:  # noqa: B006 - one extractor per process
    if not _extractor:
        from magic_html import GeneralExtractor

        _extractor.append(GeneralExtractor())
    result = _extractor[0].extract(page.html, base_url=page.url)
    return _html_output((result or {}).get("html", ""), page.url)


def run_ours(page: Page, config: ExtractConfig | None = None) -> Output:
    doc = extract_document(page.html, page.url, timeout_s=60.0, config=config)
    if doc is None:
        return Output("", [])
    return Output("\n".join(doc.text_blocks), [im.url for im in doc.image_list])


PEERS: dict[str, Callable[[Page], Output]] = {
    "plain trafilatura": run_trafilatura,
    "readability-lxml": run_readability_lxml,
    "magic-html": run_magic_html,
}


# ---- scores ------------------------------------------------------------------------------------------
def _prf(tp: float, fp: float, fn: float) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def _ws(text: str) -> str:
    return " ".join(text.split())


def tokens(text: str) -> Counter:
    return Counter(re.findall(r"\w+", text.lower()))


def score(pages: list[Page], outputs: list[Output]) -> dict[str, dict[str, float]]:
    snip = Counter()
    tok = {"scrapinghub": Counter(), "readability": Counter()}
    img = {"gold": Counter(), "silver": Counter()}
    for page, out in zip(pages, outputs):
        if page.source == "trafilatura":
            text = _ws(out.text)
            for s in page.gold_with:
                snip["tp" if _ws(s) in text else "fn"] += 1
            for s in page.gold_without:
                snip["fp" if _ws(s) in text else "tn"] += 1
        else:
            pred, gold = tokens(out.text), tokens(page.gold_text)
            overlap = sum((pred & gold).values())
            c = tok[page.source]
            c["tp"] += overlap
            c["fp"] += sum(pred.values()) - overlap
            c["fn"] += sum(gold.values()) - overlap
        ours = {norm_image_url(u) for u in out.images}
        for kind, labels in (("gold", page.gold_images), ("silver", page.silver_images)):
            if labels is not None:
                hit = len(ours & labels)
                img[kind]["tp"] += hit
                img[kind]["fp"] += len(ours) - hit
                img[kind]["fn"] += len(labels) - hit
    result = {}
    if snip:
        result["trafilatura snippets"] = _prf(snip["tp"], snip["fp"], snip["fn"])
    for name, c in tok.items():
        if c:
            result[f"{name} tokens"] = _prf(c["tp"], c["fp"], c["fn"])
    for name, c in img.items():
        if c:
            result[f"{name} images"] = _prf(c["tp"], c["fp"], c["fn"])
    return result


def evaluate(pages: list[Page], method: Callable[[Page], Output]) -> tuple[list[Output], float]:
    outputs, started = [], time.perf_counter()
    for page in pages:
        outputs.append(method(page))
    return outputs, time.perf_counter() - started


def _cell(s: dict[str, float], image: bool) -> str:
    if image:
        return f"{s['precision']:.2f} / {s['recall']:.2f} / **{s['f1']:.3f}**"
    return f"**{s['f1']:.3f}**"


def markdown_table(results: dict[str, dict], seconds: dict[str, float], n_pages: int) -> str:
    head = "| extractor | " + " | ".join(r + (" P / R / F1" if "images" in r else " F1") for r in ROWS)
    lines = [head + " | ms/page |", "| --- |" + " ---: |" * (len(ROWS) + 1)]
    for name, res in results.items():
        cells = [_cell(res[r], "images" in r) if r in res else "-" for r in ROWS]
        ms = f"{1000 * seconds[name] / n_pages:.0f}" if name in seconds else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ms} |")
    return "\n".join(lines)


def gap_table(ins: dict, cv: dict) -> str:
    lines = ["| metric | in-sample F1 | cross-validated F1 | in-sample - CV |", "| --- | ---: | ---: | ---: |"]
    for r in ROWS:
        if r in ins and r in cv:
            lines.append(f"| {r} | {ins[r]['f1']:.3f} | {cv[r]['f1']:.3f} | {ins[r]['f1'] - cv[r]['f1']:+.3f} |")
    return "\n".join(lines)


_SPEED_CODE = """
import sys, time
from bench.extraction import load_pages
from crawl.extract import extract_document
pages = load_pages()
started = time.process_time()  # CPU seconds of this process: one core, robust to other jobs' load
for p in pages:
    extract_document(p.html, p.url, timeout_s=60.0)
print(len(pages) / (time.process_time() - started))
"""


def speed_side_by_side(checkouts: list[Path], rounds: int) -> dict[str, float]:
    """Pages per CPU second of `extract_document` (one process, one core) of each checkout over all dev pages,
    best of `rounds`; the checkouts take turns in every round, so machine load hits them alike."""
    import os
    import subprocess

    best: dict[str, float] = {}
    for _ in range(rounds):
        for checkout in checkouts:
            env = {**os.environ, "PYTHONPATH": str(checkout)}
            out = subprocess.run(
                [sys.executable, "-c", _SPEED_CODE], env=env, cwd=checkout, check=True, capture_output=True, text=True
            ).stdout
            best[str(checkout)] = max(best.get(str(checkout), 0.0), float(out.split()[-1]))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the shared real-data folder")
    ap.add_argument("--limit", type=int, default=None, help="at most N pages per gold set")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--no-peers", action="store_true", help="interloom rows only")
    ap.add_argument(
        "--speed",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only measure extract_document's pages/s, best of ROUNDS, of this checkout and of --vs",
    )
    ap.add_argument(
        "--vs",
        type=Path,
        action="append",
        default=[],
        help="another checkout (e.g. main) to time side by side with --speed",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not (args.data / "dev" / "html" / "manifest.jsonl").is_file():
        print(f"no dev HTML data under {args.data}", file=sys.stderr)
        return 2
    if args.speed:
        here = Path(__file__).resolve().parents[1]
        for checkout, pages_s in speed_side_by_side([here, *args.vs], args.speed).items():
            print(f"{checkout}: {pages_s:.2f} pages/s per core")
        return 0
    pages = load_pages(args.data, limit=args.limit)
    started = time.perf_counter()
    parts = {fo: compute_parts(pages, fo) for fo in FOCUS}
    parts_s = (time.perf_counter() - started) / len(FOCUS)
    results, seconds = {}, {}
    ins_out, ins_focus, ins_l2, model = in_sample(pages, parts)
    cv_out, cv_chosen = cross_validate(pages, parts)
    results["interloom, in-sample"] = score(pages, ins_out)
    results["interloom, site-grouped 10-fold CV"] = score(pages, cv_out)
    seconds["interloom, in-sample"] = parts_s
    if not args.no_peers:
        for name, run in PEERS.items():
            outs, secs = evaluate(pages, run)
            results[name], seconds[name] = score(pages, outs), secs
    n = Counter(p.source for p in pages)
    print(markdown_table(results, seconds, len(pages)))
    print()
    print(gap_table(results["interloom, in-sample"], results["interloom, site-grouped 10-fold CV"]))
    print()
    print(
        f"pages: {dict(n)}, sites: {len({p.site for p in pages})}; gold images: "
        f"{sum(len(p.gold_images or ()) for p in pages)}, silver images: "
        f"{sum(len(p.silver_images or ()) for p in pages)}; in-sample: focus {ins_focus}, (l2, page power) "
        f"{ins_l2}, threshold {model.threshold}; per fold (focus, (l2, page power)): "
        f"{dict(Counter(cv_chosen.values()))}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "pages": dict(n),
                    "results": results,
                    "seconds": seconds,
                    "in_sample": {"focus": ins_focus, "l2": ins_l2, "threshold": model.threshold},
                    "cv_chosen": {str(k): v for k, v in cv_chosen.items()},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
