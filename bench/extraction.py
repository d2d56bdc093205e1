"""Extraction quality: interloom's `crawl.extract` side by side with plain trafilatura, in one run.

Data: ../shared/data/real/dev/html (manifest.jsonl), three gold sets:
- trafilatura `gold.jsonl`: snippets that must (`with`) / must not (`without`) appear in the text;
  micro-averaged snippet precision/recall/F1 (whitespace-normalised substring test).
- scrapinghub `ground-truth.json` (articleBody) and readability `expected.html` (its text): token
  precision/recall/F1 over lower-cased word tokens, bag-of-words overlap per page, micro-averaged.
- readability `expected.html` `<img>` tags: image URL precision/recall/F1, per page as sets of normalised
  absolute URLs (scheme and fragment dropped), micro-averaged over pages.

Text of a method = its text blocks joined by newlines. The peers: `trafilatura.extract(html, url=url)` for
text, and `trafilatura.extract(..., output_format="xml", include_images=True)` `<graphic src>` for images.
Both methods get the same decoded HTML string.

    .venv/bin/python -m bench.extraction [--out results.json] [--limit N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import lxml.html
import trafilatura
from lxml import etree
from tqdm import tqdm

from crawl.extract import ExtractConfig, decode_html, extract_document

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
FAKEHOST = "http://fakehost/test/page.html"  # the page URL Readability's test suite used for URL-less pages


@dataclass
class Page:
    id: str
    source: str  # trafilatura | scrapinghub | readability
    url: str
    html: str
    gold_text: str = ""
    gold_with: list[str] = field(default_factory=list)
    gold_without: list[str] = field(default_factory=list)
    gold_images: set[str] | None = None


@dataclass
class Output:
    text: str
    images: list[str]


# ---- gold --------------------------------------------------------------------------------------------
def norm_image_url(url: str) -> str:
    parts = urlsplit(url.strip())
    return parts.netloc.lower() + parts.path + ("?" + parts.query if parts.query else "")


def load_pages(data: Path = DATA, sources: tuple[str, ...] = ("trafilatura", "scrapinghub", "readability"),
               limit: int | None = None) -> list[Page]:
    """The dev pages with their gold, per source at most `limit` (in manifest order)."""
    html_dir = data / "dev" / "html"
    rows = [json.loads(line) for line in (html_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
    tf_gold = {}
    for line in (html_dir / "trafilatura" / "gold.jsonl").read_text().splitlines():
        if line.strip():
            g = json.loads(line)
            tf_gold[g["url"]] = g
    sh_gold = json.loads((html_dir / "scrapinghub" / "ground-truth.json").read_text())
    pages, per_source = [], Counter()
    for r in rows:
        if r["source"] not in sources or (limit is not None and per_source[r["source"]] >= limit):
            continue
        raw = (data / r["html_path"]).read_bytes()
        if r.get("html_gzip"):
            raw = gzip.decompress(raw)
        url = r["url"] or FAKEHOST
        page = Page(id=r["id"], source=r["source"], url=url, html=decode_html(raw, None))
        if r["source"] == "trafilatura":
            g = tf_gold[r["gold_key"]]
            page.gold_with, page.gold_without = list(g.get("with") or []), list(g.get("without") or [])
        elif r["source"] == "scrapinghub":
            page.gold_text = sh_gold[r["gold_key"]]["articleBody"]
        else:
            gold = lxml.html.fromstring((data / r["gold_path"]).read_bytes())
            page.gold_text = gold.text_content()
            page.gold_images = {norm_image_url(urljoin(url, img.get("src")))
                                for img in gold.iter("img") if img.get("src")}
        per_source[r["source"]] += 1
        pages.append(page)
    return pages


# ---- methods -----------------------------------------------------------------------------------------
def run_ours(page: Page, config: ExtractConfig | None = None) -> Output:
    doc = extract_document(page.html, page.url, timeout_s=60.0, config=config)
    if doc is None:
        return Output("", [])
    return Output("\n".join(doc.text_blocks), [im.url for im in doc.image_list])


def run_trafilatura(page: Page) -> Output:
    text = trafilatura.extract(page.html, url=page.url) or ""
    images: list[str] = []
    if page.gold_images is not None:  # image scoring only where there is image gold
        xml = trafilatura.extract(page.html, url=page.url, output_format="xml", include_images=True)
        if xml:
            root = etree.fromstring(xml.encode("utf-8"))
            images = [urljoin(page.url, g.get("src")) for g in root.iter("graphic") if g.get("src")]
    return Output(text, images)


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
    img = Counter()
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
        if page.gold_images is not None:
            ours = {norm_image_url(u) for u in out.images}
            hit = len(ours & page.gold_images)
            img["tp"] += hit
            img["fp"] += len(ours) - hit
            img["fn"] += len(page.gold_images) - hit
    result = {}
    if snip:
        result["trafilatura snippets"] = _prf(snip["tp"], snip["fp"], snip["fn"])
    for name, c in tok.items():
        if c:
            result[f"{name} tokens"] = _prf(c["tp"], c["fp"], c["fn"])
    if img:
        result["readability images"] = _prf(img["tp"], img["fp"], img["fn"])
    return result


def evaluate(pages: list[Page], method: Callable[[Page], Output], desc: str = "") -> tuple[list[Output], float]:
    outputs, started = [], time.perf_counter()
    for page in tqdm(pages, desc=desc, disable=not desc, file=sys.stderr):
        outputs.append(method(page))
    return outputs, time.perf_counter() - started


def markdown_table(ours: dict, peer: dict) -> str:
    lines = ["| gold set / metric | interloom P | R | F1 | plain trafilatura P | R | F1 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in ours:
        o, p = ours[name], peer[name]
        lines.append(f"| {name} | {o['precision']:.3f} | {o['recall']:.3f} | **{o['f1']:.3f}** | "
                     f"{p['precision']:.3f} | {p['recall']:.3f} | **{p['f1']:.3f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the shared real-data folder")
    ap.add_argument("--limit", type=int, default=None, help="at most N pages per gold set")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if not (args.data / "dev" / "html" / "manifest.jsonl").is_file():
        print(f"no dev HTML data under {args.data}", file=sys.stderr)
        return 2
    pages = load_pages(args.data, limit=args.limit)
    ours_out, ours_s = evaluate(pages, run_ours, "interloom")
    peer_out, peer_s = evaluate(pages, run_trafilatura, "trafilatura")
    ours, peer = score(pages, ours_out), score(pages, peer_out)
    n = Counter(p.source for p in pages)
    print(markdown_table(ours, peer))
    print()
    print(f"pages: {dict(n)}; gold images: {sum(len(p.gold_images or ()) for p in pages)}")
    print(f"time: interloom {ours_s:.1f}s, plain trafilatura {peer_s:.1f}s "
          f"(the peer runs extract twice on image-gold pages: text, then xml with images)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"pages": dict(n), "interloom": ours, "trafilatura": peer,
                                        "seconds": {"interloom": ours_s, "trafilatura": peer_s}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
