"""HTML -> interleaved `Document`: main content in reading order, images kept at their positions.

The pipeline of one page:
1. `decode_html`: bytes -> str (BOM, Content-Type charset, `<meta charset>`, UTF-8, then detection; a label
   that lies is skipped: UTF-16/32 for bytes without a NUL, codecs no browser knows such as utf-7);
   binary garbage raises `ValueError`.
2. `prepare_tree`: parse with lxml and normalise every image before any extraction runs: a lazy image takes
   Readability's choice (its last attribute holding one image URL, mostly the largest variant), else
   lazy-loading attributes (`data-src`, `data-original`, `data-lazy-src`, `srcset`/`data-srcset`, `<picture><source>`),
   `<noscript><img>` fallbacks, absolute URLs against the page URL and `<base href>`. Images that can never be
   content are removed by hard rule (`junk_reason`: no usable URL, data: URIs, pixels, icon sizes, SVG/ICO,
   tracker hosts, chrome paths such as icons/logos/avatars/spacers). Each surviving `<img>` is numbered by a
   stand-in `src` that maps it back to our own image record.
3. trafilatura (`bare_extraction`, text and tables, one pass) picks the main content; its XML body (`<p>`,
   `<head>`, `<list>/<item>`, `<table>/<row>/<cell>`, `<quote>`, `<code>`) is walked in order into text
   blocks (one per paragraph, heading, list item, table row).
4. Image candidates (`_image_candidates`): each extracted block is anchored in the page's visible text, the
   main content container is the smallest element holding most anchored blocks, and every image gets its slot
   (before the block that follows it in the page, or after the last) and its DOM features
   (`crawl.image_select`: position against the blocks and the container, teaser cards and grids, related /
   comments / ads / navigation wrappers, Readability's unlikely-candidate test, size, alt text, URL).
5. `assemble`: the image model (`crawl/image_model.json`, a logistic regression rebuilt by
   bench/train_image_model.py) keeps the images whose probability reaches its threshold; every image left out
   has a reason (`image_model:<feature that pushed it down most>`, a hard-rule reason, `duplicate_in_page`,
   `max_images`), which `ExtractStep` records as `extract/image` item drops in the rejects.
   One trafilatura pass decides the text; the page's own layout and the model decide the images.
   docs/benchmarks.md, "Extraction quality", has the in-sample and site-grouped cross-validated numbers.

What a page costs is bounded by the page itself, never by the clock, so that the same input gives the same
corpus on an idle and on a loaded machine: `extract.max_html_bytes` (checked before decoding), MAX_ATTRIBUTES
attributes in one tag (checked before parsing: libxml2's cost grows with their square), `extract.max_elements`
and `extract.max_depth` (checked on the parsed tree, before trafilatura; libxml2 itself stops nesting at 256
levels), MAX_PARAGRAPH_CHILDREN child elements of one <p> and MAX_IMAGE_BLOCKS blocks holding only an image
in a row (trafilatura's costs: their square). Each is a counted drop (`html_too_large`, `too_many_attributes`,
`too_many_elements`, `too_deep`, `crowded_paragraph`, `too_many_image_blocks`).

The per-document time limit (`extract.timeout_s`, generous) is only a safety net for a page the bounds do
not catch. It is a real stop: `SIGALRM` (via `signal.setitimer`) interrupts the extraction. That needs the
main thread of the process (Ray task and actor methods run there); elsewhere `extract_document` refuses with
a `RuntimeError` rather than running without a limit. A hang inside a single C call (one lxml call) is
interrupted when that call returns. Its firing depends on the machine's load, so the step counts it as an
error of the run (`errors/extract_timeout`), which the build reports as such: the corpus may differ from
another run's.

`ExtractStep` wraps it all as the build's "extract" step, with counted drops `html_too_large`,
`undecodable_html`, `too_many_attributes`, `too_many_elements`, `too_deep`, `crowded_paragraph`,
`too_many_image_blocks`,
`extract_timeout`, `no_image_candidates`
(and the image gate's own reasons, such as `no_usable_image`), `no_main_content`, and the per-image drops above.
"""

from __future__ import annotations

import bisect
import codecs
import logging
import re
import signal
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Literal
from urllib.parse import urljoin, urlsplit

import lxml.html
import numpy as np
import trafilatura
from charset_normalizer import from_bytes
from lxml import etree
from pydantic import Field

from corpus.config import Section
from corpus.record import Document, Image, make_doc_id
from corpus.stats import Ledger
from corpus.steps import Drop, Step
from crawl.image_select import (
    WORD,
    Block,
    ImageModel,
    PageContext,
    image_features,
    int_attr,
    is_ancestor,
)
from crawl.page import RawPage

log = logging.getLogger(__name__)


class ExtractConfig(Section):
    """Options of the extract step (section `extract` of a build config)."""

    # a safety net, not a rule: a page that takes longer is the drop `extract_timeout` AND an error of the run
    # (it depends on machine load); the bounds below are what keep extraction cheap, deterministically
    timeout_s: float = Field(120.0, gt=0)
    max_html_bytes: int = 5_000_000  # larger pages are the drop `html_too_large`
    max_elements: int = Field(200_000, ge=1)  # parsed pages with more elements: the drop `too_many_elements`
    # deeper parsed pages: the drop `too_deep` (libxml2 stops nesting at 256, so a page that deep is cut off)
    max_depth: int = Field(255, ge=1, le=255)
    min_text_chars: int = 0  # text blocks shorter than this are left out (0 keeps all; filters come later)
    include_tables: bool = True
    include_comments: bool = False  # user comments below an article
    # trafilatura's trade-off: "precision" (as FineWeb/datatrove run it; also the best of the three on the
    # dev gold sets, docs/benchmarks.md "Extraction quality"), "balanced" (trafilatura's default) or "recall"
    focus: Literal["precision", "balanced", "recall"] = "precision"
    max_images: int = 200  # images kept per document, in reading order
    # which images are content: the logistic model of crawl/image_select.py; empty = the packaged
    # crawl/image_model.json (rebuilt by bench/train_image_model.py), else the path of another such file
    image_model: str = ""
    prefer_largest: bool = False  # take the largest srcset candidate even where <img src> is a real image
    # lossless early cut: where the build's later rules need an image (filters.image_count.min_images >= 1),
    # a page none of whose images can be kept is the drop `no_image_candidates` before trafilatura runs;
    # the corpus is the same either way (only the stage that counts those pages differs)
    early_cuts: bool = True


# image URLs of a page -> True when any of them may be kept; False (drop `no_image_candidates`) or a drop reason
# (such as `no_usable_image`) when none can
ImageGate = Callable[[list[str]], "bool | str"]


class PageRefused(Exception):  # noqa: N818 - an outcome, not an error
    """The page is not extracted, for a counted reason decided by the page itself (never by the clock)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


_COUNT_ELEMENTS = etree.XPath("count(descendant-or-self::*)")


@lru_cache(maxsize=8)
def _deeper_than(levels: int) -> etree.XPath:
    """An XPath that is true when the element has a descendant `levels` levels below it (C speed)."""
    return etree.XPath("boolean(self::*" + "/*" * levels + ")")


def _deepest(tree: etree._Element) -> int:
    depth = deepest = 0
    for event, _ in etree.iterwalk(tree, events=("start", "end")):
        if event == "start":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


# libxml2 checks each attribute of a start tag against the ones before it: a tag of n attributes costs n*n
# (100,000 attributes, under 1 MB: ~30 s in one C call the time limit cannot interrupt; a 5 MB page: many
# minutes). A page with a tag of more attributes than this is the drop `too_many_attributes`, before parsing.
MAX_ATTRIBUTES = 1000
_NAME = r"[^\s/>][^\s/>=]*+"
_VALUE = r"""(?:"[^"]*+"|'[^']*+'|[^\s>]*+)"""
_ATTRS = r"(?:[\s/]*+" + _NAME + r"(?:\s*+=\s*+" + _VALUE + r")?+){0," + str(MAX_ATTRIBUTES) + r"}+[\s/]*+(?:>|\Z)"
# the page read once, left to right, as HTML tokenizes it (text, comments, script/style text, tags with their
# attributes, other `<`), every tag holding at most MAX_ATTRIBUTES attributes: where it stops early, a tag
# has more. Possessive, so it never backtracks: linear in the page (~10 ms per MB).
_WITHIN_ATTRIBUTES = re.compile(
    r"(?:[^<]++|<!--.*?(?:-->|\Z)|<(?i:script|style)(?=[\s/>])" + _ATTRS + r".*?(?=</(?i:script|style)|\Z)"
    r"|<[A-Za-z][^\s/>]*+" + _ATTRS + r"|<(?![A-Za-z]))*+",
    re.DOTALL,
)


def check_attributes(html: str) -> None:
    """Raise `PageRefused` when a start tag of the page has more than MAX_ATTRIBUTES attributes."""
    match = _WITHIN_ATTRIBUTES.match(html)
    assert match is not None  # the pattern matches the empty string
    end = match.end()
    if end < len(html):
        raise PageRefused(
            "too_many_attributes",
            f"the tag at character {end} ({html[end : end + 40]!r}...) has more than {MAX_ATTRIBUTES} attributes",
        )


# trafilatura's Readability fallback looks, for each block without text (a div, table, ul, section, ... holding
# only an image), along its siblings for the nearest one with text: a row of n such image blocks costs n*n
# text_content calls (10,000 `<div><img></div>` in a row, 0.5 MB: ~50 s; 10,000 `<ul><li><img>`: ~200 s,
# past the time limit). A page with a longer row than this is the drop `too_many_image_blocks`, before it runs.
MAX_IMAGE_BLOCKS = 1000
_TEXTLESS = etree.XPath("//*[not(normalize-space())]")
_IMAGE_BLOCKS = etree.XPath(
    "//*[self::div or self::table or self::ul or self::aside or self::header or self::footer or self::section]"
    "[descendant::img][not(normalize-space())]"
)


# trafilatura's paragraph pass costs the square of a <p>'s child elements (40,000 <b> in one <p>, 0.5 MB: ~10 s,
# 100,000: minutes), while 40,000 in a <div>, <li> or <td> cost ~1 s: a <p> with more child elements than this
# is the drop `crowded_paragraph`, before it runs
MAX_PARAGRAPH_CHILDREN = 10_000
_CROWDED_PARAGRAPH = etree.XPath(f"boolean(//p[count(*) > {MAX_PARAGRAPH_CHILDREN}])")


def _image_block_row(tree: etree._Element) -> int:
    """The most blocks holding an image and no text among consecutive siblings without text (elements with
    text end a row; text between them does not: Readability reads the siblings' own text)."""
    blocks = _IMAGE_BLOCKS(tree)
    if len(blocks) <= MAX_IMAGE_BLOCKS:
        return len(blocks)
    textless, counted = set(_TEXTLESS(tree)), set(blocks)
    longest = 0
    for parent in {b.getparent() for b in blocks}:
        row = 0
        for child in parent:
            if child not in textless:
                row = 0
            elif child in counted:
                row += 1
                longest = max(longest, row)
    return longest


def check_bounds(tree: etree._Element, config: ExtractConfig) -> None:
    """Raise `PageRefused` when the parsed page has more elements or deeper nesting than the config allows,
    a <p> of more than MAX_PARAGRAPH_CHILDREN child elements, or a row of more than MAX_IMAGE_BLOCKS image
    blocks without text."""
    n_elements = int(_COUNT_ELEMENTS(tree))
    if n_elements > config.max_elements:
        raise PageRefused("too_many_elements", f"{n_elements} elements > max_elements {config.max_elements}")
    if _deeper_than(config.max_depth)(tree):  # (the walk that measures the depth only for the message)
        raise PageRefused("too_deep", f"nesting depth {_deepest(tree)} > max_depth {config.max_depth}")
    if _CROWDED_PARAGRAPH(tree):
        crowded = max(len(p) for p in tree.iter("p"))
        raise PageRefused("crowded_paragraph", f"a <p> with {crowded} child elements > {MAX_PARAGRAPH_CHILDREN}")
    row = _image_block_row(tree)
    if row > MAX_IMAGE_BLOCKS:
        raise PageRefused(
            "too_many_image_blocks",
            f"{row} blocks holding an image and no text in a row > {MAX_IMAGE_BLOCKS} (Readability's cost: their square)",
        )


class ExtractTimeout(BaseException):
    """The extraction of one document ran past its time limit. A BaseException, so that the broad
    `except Exception` blocks inside trafilatura's fallbacks cannot swallow it."""


# ---- decoding ------------------------------------------------------------------------------------------
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]{2,40})""", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_MAX_GARBAGE = 0.02  # share of control / replacement characters above which decoded text is garbage
# U+FFFD and the control characters (Unicode category Cc is exactly U+0000-001F and U+007F-009F) but \t\n\f\r
_GARBAGE_CHARS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")


def _garbage_share(text: str) -> float:
    sample = text[:20000]
    if not sample:
        return 0.0
    return len(_GARBAGE_CHARS.findall(sample)) / len(sample)


# Python codecs no browser knows as a charset that turn ordinary bytes into other text (escape sequences read as
# characters, `+...-` as base64, lone surrogates): a label naming one is a lie, not an encoding
_NOT_CHARSETS = frozenset({"utf-7", "unicode-escape", "raw-unicode-escape", "punycode", "idna"})


def _try_decode(body: bytes, charset: str) -> str | None:
    try:
        name = codecs.lookup(charset).name
        if name in _NOT_CHARSETS:
            return None
        if name.startswith(("utf-16", "utf-32")) and b"\x00" not in body[:4096]:
            return None  # HTML in UTF-16/32 has NUL bytes in its ASCII markup; without: the label lies (WHATWG)
        return body.decode(charset)
    except (LookupError, UnicodeDecodeError, ValueError):
        return None


def decode_html(body: bytes, charset_hint: str | None = None) -> str:
    """Decode an HTML payload: BOM, then the header's charset, then `<meta charset>`/http-equiv, then
    UTF-8, then charset detection. Raises ValueError when nothing yields text (binary data, garbage)."""
    if not body or not body.strip():
        raise ValueError("empty body")
    candidates: list[tuple[str, str]] = []
    for bom, name in _BOMS:
        if body.startswith(bom):
            candidates.append(("bom", name))
    if charset_hint:
        candidates.append(("content-type header", charset_hint.strip().lower()))
    m = _META_CHARSET.search(body[:8192])
    if m:
        candidates.append(("meta charset", m.group(1).decode("ascii").lower()))
    candidates.append(("utf-8 check", "utf-8"))
    tried = []
    for where, charset in candidates:
        text = _try_decode(body, charset)
        tried.append(f"{charset} ({where})")
        if text is not None and _garbage_share(text) <= _MAX_GARBAGE:
            return text
    best = from_bytes(body[:200_000]).best()
    if best is not None and best.encoding:
        text = _try_decode(body, best.encoding)
        tried.append(f"{best.encoding} (detected)")
        if text is not None and _garbage_share(text) <= _MAX_GARBAGE:
            return text
    raise ValueError(f"not decodable as text; tried {', '.join(tried)}")


# ---- time limit ----------------------------------------------------------------------------------------
@contextmanager
def time_limit(seconds: float):
    """Raise `ExtractTimeout` inside the block once `seconds` have passed (SIGALRM; main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "extract_document enforces its time limit with SIGALRM, which works only in the main thread of a "
            "process; run extraction in a process (Ray task/actor, multiprocessing), not in a thread pool"
        )

    def on_alarm(signum, frame):
        raise ExtractTimeout(f"extraction took longer than {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---- image normalisation -------------------------------------------------------------------------------
# lazy-loading attributes hold the real URL while `src` holds a placeholder (or nothing)
_LAZY_ATTRS = (
    "data-src",
    "data-original",
    "data-lazy-src",
    "data-lazy",
    "data-original-src",
    "data-url",
    "data-echo",
    "data-img-src",
)
# alternates of a real `src` (high-resolution variants): used when there is no `src`
_HIRES_ATTRS = ("data-hi-res-src", "data-full-src", "data-large-src")
_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset", "srcset")
# (a placeholder word, then an image extension in the same path segment; the atomic group takes the first such
# word of each segment only, which ends first since no word holds another: linear time on a long URL, where
# trying every word, each with a scan to the end of its segment, cost the square of the length)
_PLACEHOLDER = re.compile(
    r"(^data:)|(?:^|/)(?>[^/]*?(blank|spacer|placeholder|transparent|pixel|lazy|loading|grey|gray|"
    r"empty|1x1|dummy))[^/]*\.(gif|png|jpe?g|webp|svg)",
    re.IGNORECASE,
)
# Directory names and file-name starts that mark site chrome rather than content.
_JUNK_PATH = re.compile(
    r"(/|^)(icons?|logos?|avatars?|badges?|buttons?|btns?|sprites?|emoji|emoticons?|smilies|smileys|spacers?|"
    r"pixels?|tracking|tracker|beacons?|share|social|flags|rating|stars)(/|[._-])|"
    r"/(spacer|pixel|blank|clear|transparent|1x1|tracking|tracker|beacon|logo|icon|favicon|avatar|badge|button|"
    r"btn|sprite|gravatar|feed-icon|rss|loader|loading|spinner)[^/]*$|"
    # site-logo.png (not Wiki_File_logo.png) in the last segment: checked to be the last once per '/' (a trailing
    # [^/]*$ rescanned the segment for every "-" in it: 100 KB of "-logo" took ~5 s, 1 MB minutes)
    r"/(?=[^/]*$)[^/]*-(logo|icon|avatar|badge|button|sprite)s?[-.]|"
    r"/(facebook|twitter|pinterest|linkedin|whatsapp|reddit|email|e-mail|mail|print|share)"  # share buttons
    r"([._-](icon|logo|button|btn|share|small|\d{2}(x\d{2})?)[^/]*)?\.(png|gif|jpe?g|webp)$",  # not WhatsApp-Image-*
    re.IGNORECASE,
)
_JUNK_HOSTS = re.compile(
    r"(^|\.)(doubleclick\.net|google-analytics\.com|googletagmanager\.com|facebook\.com|"
    r"scorecardresearch\.com|quantserve\.com|gravatar\.com|pixel\.[a-z.]+|stats\.[a-z.]+|"
    r"feeds\.feedburner\.com|b\.scorecardresearch\.com|sb\.scorecardresearch\.com)$",
    re.IGNORECASE,
)
# the same without IGNORECASE, for lower-cased ASCII text (the same matches, faster; IGNORECASE also folds a few
# non-ASCII characters, so other text goes to the patterns above)
_PLACEHOLDER_LOWER, _JUNK_PATH_LOWER = re.compile(_PLACEHOLDER.pattern), re.compile(_JUNK_PATH.pattern)
_NOT_URL = re.compile(r"[\s{}\"'<>]")  # JSON blobs or templates in an attribute, not a URL
_STANDIN_HOST = "img.interloom.invalid"
_STANDIN = re.compile(r"^https?://img\.interloom\.invalid/(\d+)\.png$")


def largest_srcset_candidate(srcset: str) -> str | None:
    """The URL of the largest candidate of a srcset (by `w`, else by `x`, else the last one)."""
    best, best_size = None, -1.0
    # candidates are separated by commas followed by whitespace (URLs may contain commas themselves)
    for part in re.split(r",\s+", srcset.strip()):
        bits = part.strip().split()
        if not bits:
            continue
        url, size = bits[0].rstrip(","), 1.0
        if len(bits) > 1:
            m = re.match(r"^(\d+(?:\.\d+)?)([wx])$", bits[1])
            if m:
                size = float(m.group(1)) * (1.0 if m.group(2) == "w" else 1000.0)
        if size >= best_size and url:
            best, best_size = url, size
    return best


def _real(url: str | None) -> str | None:
    """`url` unless it is empty or a lazy-loading placeholder."""
    if not url:
        return None
    url = url.strip()
    if (
        not url
        or (_PLACEHOLDER_LOWER.search(url.lower()) if url.isascii() else _PLACEHOLDER.search(url))
        or url.startswith("#")
        or url.lower().startswith("javascript:")
        or _NOT_URL.search(url)
    ):
        return None
    return url


def _srcset_url(img: etree._Element) -> str | None:
    """Largest candidate of the srcset of an <img> or, inside <picture>, of its <source> elements."""
    for attr in _SRCSET_ATTRS:
        if img.get(attr):
            url = _real(largest_srcset_candidate(img.get(attr)))
            if url:
                return url
    picture = img.getparent()
    for _ in range(3):  # libxml2 does not know <source> is void and may nest the <img> inside it
        if picture is None or picture.tag == "picture":
            break
        picture = picture.getparent()
    if picture is not None and picture.tag == "picture":
        for source in picture.iter("source"):
            for attr in _SRCSET_ATTRS:
                if source.get(attr):
                    url = _real(largest_srcset_candidate(source.get(attr)))
                    if url:
                        return url
    return None


# Readability's lazy-image rule (`_fixLazyImages`): an attribute whose value is one image URL (not a srcset)
_IMAGE_DOT = re.compile(r"\.(jpg|jpeg|png|webp)")


def _one_image_url(value: str) -> bool:
    r"""Readability's test `/^\s*\S+\.(jpg|jpeg|png|webp)\S*\s*$/` in linear time (the regex backtracks
    quadratically on a long attribute value): one run of non-space characters holding `.jpg` etc. after its
    first character."""
    word = value.strip()
    return bool(word) and len(word.split()) == 1 and _IMAGE_DOT.search(word, 1) is not None


_SRCSET_LIKE = re.compile(r"\.(jpg|jpeg|png|webp)\s+\d")


def _lazy_url(img: etree._Element) -> str | None:
    """Readability's choice for a lazy image (no `src` and no `srcset`, or a class with "lazy"): the last
    attribute other than src/srcset/alt whose value is a single image URL; sites list their variants smallest
    first (`data-src`, `data-src-2x`, `data-src-4x`; `data-src` then `data-img` with `?w=960`), so that is
    mostly the largest. None when the image is not lazy or no attribute qualifies."""
    attrib = img.attrib
    src, srcset = attrib.get("src"), attrib.get("srcset")
    if ((src and src.strip()) or (srcset and srcset != "null")) and "lazy" not in (attrib.get("class") or "").lower():
        return None
    found = None
    for name, value in attrib.items():
        if name not in ("src", "srcset", "alt") and not _SRCSET_LIKE.search(value) and _one_image_url(value):
            found = value
    return _real(found)


def _image_url(img: etree._Element, prefer_largest: bool = False) -> str | None:
    """The real (not placeholder) URL of an <img>, relative as written in the page: Readability's lazy-image
    choice (`_lazy_url`), else a lazy-loading attribute, else `src`, else a high-resolution alternate, else
    the largest srcset / <picture> candidate. With `prefer_largest`, the largest srcset candidate wins over
    `src`."""
    url = _lazy_url(img)
    if url:
        return url
    for attr in _LAZY_ATTRS:
        url = _real(img.get(attr))
        if url:
            return url
    if prefer_largest:
        url = _srcset_url(img)
        if url:
            return url
    for attr in ("src", *_HIRES_ATTRS):
        url = _real(img.get(attr))
        if url:
            return url
    return _srcset_url(img)


def junk_reason(url: str, width: int | None, height: int | None) -> str | None:
    """Why an image can never be content, by hard rule: not an http(s)/file URL, a data: URI, a declared size
    of at most 2 px (a pixel) or an icon size (both sides <= 32 px), SVG/ICO, a tracker host, a path that names
    site chrome (icons, logos, avatars, sprites, spacers, share buttons); None otherwise: the image model of
    `crawl.image_select` decides."""
    if url.startswith("data:"):
        return "data_uri"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "file"):  # file: pages of a local HTML folder show local images
        return "not_http"
    if (width is not None and width <= 2) or (height is not None and height <= 2):
        return "pixel"
    path = parts.path.lower()
    if width is not None and height is not None and width <= 32 and height <= 32:
        return "icon_size"
    if path.endswith((".svg", ".svgz", ".ico")):
        return "svg_or_ico"
    if _JUNK_HOSTS.search(parts.hostname or ""):
        return "tracker_host"
    if (_JUNK_PATH_LOWER if path.isascii() else _JUNK_PATH).search(path):  # (`path` is lower-cased)
        return "chrome_path"
    return None


@dataclass
class _ImageRecord:
    url: str
    alt: str
    element_id: int  # position in document order among kept <img> elements


def _page_base(tree: etree._Element, url: str) -> str:
    base = tree.find(".//base[@href]")
    href = base.get("href").strip() if base is not None else ""
    try:
        return urljoin(url, href) if href else url
    except ValueError:  # <base href="http://[bad">: a URL urllib refuses; the page's own URL stays the base
        return url


def _unwrap_noscript_images(tree: etree._Element) -> None:
    """Replace `<noscript>` elements that hold an <img> by their images (the no-JS fallback of a lazy image)
    and remove the lazy stand-ins it replaces: an <img> (or the images of an element) just before it, or,
    when the parent holds only this one noscript, the parent's other images (blurred previews, empty tags).
    Linear in the page: how many noscripts an element holds is counted once and kept up to date as they
    are unwrapped (counting them again for each, 100,000 sibling noscripts in 4 MB took minutes)."""
    held: dict[etree._Element, int] = {}  # element -> noscripts in it now, for the parents asked about

    def removed(ns: etree._Element, n: int) -> None:  # `ns` (and n - 1 noscripts inside it) leave the tree
        el = ns.getparent()
        while el is not None:
            if el in held:
                held[el] -= n
            el = el.getparent()

    for ns in list(tree.iter("noscript")):
        imgs = list(ns.iter("img"))
        parent = ns.getparent()
        if not imgs or parent is None:
            continue
        if len("".join(ns.itertext()).strip()) > 200:  # a parser artefact wrapping real content: keep it all
            removed(ns, 1)
            ns.drop_tag()
            continue
        prev = ns.getprevious()
        stand_ins: list[etree._Element] = []
        if prev is not None and prev.tag == "img":
            stand_ins = [prev]
        elif prev is not None and prev.find(".//noscript") is None and prev.find(".//img") is not None:
            stand_ins = list(prev.iter("img"))
        if parent not in held:
            held[parent] = len(parent.findall(".//noscript"))
        if held[parent] == 1:
            known = set(stand_ins)
            stand_ins += [el for el in parent.iter("img") if el not in known and not _inside(el, ns)]
        if len(stand_ins) <= 3 * len(imgs):  # never clear a whole gallery for one fallback
            for el in stand_ins:
                _drop_keep_tail(el)
        for img in imgs:
            copy = deepcopy(img)
            copy.tail = None
            ns.addprevious(copy)  # (in order, each just before the noscript)
        removed(ns, 1 + len(ns.findall(".//noscript")))
        _drop_keep_tail(ns)


def _inside(el: etree._Element, ancestor: etree._Element) -> bool:
    return is_ancestor(ancestor, el)


def _drop_keep_tail(el: etree._Element) -> None:
    el.drop_tree() if hasattr(el, "drop_tree") else el.getparent().remove(el)


def prepare_tree(
    tree: etree._Element,
    url: str,
    prefer_largest: bool = False,
) -> tuple[list[_ImageRecord], list[tuple[str, str]]]:
    """Normalise the images of a parsed page in place; return the kept images (by stand-in number) and the
    removed ones as (URL or tag, reason): no usable URL, or junk by hard rule (`junk_reason`)."""
    base = _page_base(tree, url)
    _unwrap_noscript_images(tree)
    records: list[_ImageRecord] = []
    junk: list[tuple[str, str]] = []
    for img in list(tree.iter("img")):
        raw = _image_url(img, prefer_largest)
        if raw is None:
            junk.append(((img.get("src") or "<img>")[:200], "no_url"))
            _drop_keep_tail(img)
            continue
        try:
            absolute = urljoin(base, raw.strip())
        except ValueError:  # "http://[::1/a.jpg" (a broken IPv6 host): this image, not the page, is dropped
            junk.append((raw.strip()[:200], "bad_url"))
            _drop_keep_tail(img)
            continue
        reason = junk_reason(absolute, int_attr(img.get("width")), int_attr(img.get("height")))
        if reason is not None:
            junk.append((absolute[:500], reason))
            _drop_keep_tail(img)
            continue
        alt = " ".join((img.get("alt") or img.get("title") or "").split())
        n = len(records)
        records.append(_ImageRecord(url=absolute.split("#", 1)[0], alt=alt, element_id=n))
        for attr in list(img.attrib):
            if attr not in ("alt", "title", "width", "height", "class", "id"):
                del img.attrib[attr]
        img.set("src", f"http://{_STANDIN_HOST}/{n}.png")
    # <picture>/<source> leftovers (their srcset is resolved above): keep the bare <img>, marked for features
    for picture in list(tree.iter("picture")):
        for source in list(picture.iter("source")):
            source.drop_tag() if len(source) else _drop_keep_tail(source)
        for img in picture.iter("img"):
            img.set("data-in-picture", "1")
        if picture.getparent() is not None:
            picture.drop_tag()
    return records, junk


# ---- walking trafilatura's XML -------------------------------------------------------------------------
_BLOCK_TAGS = {"p", "head", "item", "row", "quote", "code", "cell", "list", "table", "div"}
_CONTAINER_TAGS = ("p", "head", "list", "table", "quote", "code")
_INVISIBLE = str.maketrans("", "", "\u00ad\u200b\u2060\ufeff")  # soft hyphen, zero-width space/no-break
_HAS_INVISIBLE = re.compile("[\u00ad\u200b\u2060\ufeff]")  # finds them much faster than translate works


def _clean(text: str) -> str:
    if not text.isascii():  # (ASCII text has no invisible characters and is NFC)
        text = unicodedata.normalize("NFC", text.translate(_INVISIBLE))
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return "\n".join(line for line in lines if line).strip()


class _Walker:
    """Turns trafilatura's XML body into an ordered list of ("text", str) items (images come later, from
    `_place_images`, as ("image", stand-in number) items)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, object]] = []
        self.buf: list[str] = []

    def flush(self) -> None:
        text = _clean("".join(self.buf))
        if text:
            self.items.append(("text", text))
        self.buf = []

    def visit(self, el: etree._Element) -> None:
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag == "row":
            self.flush()
            if next(el.iterdescendants(*_CONTAINER_TAGS), None) is not None:
                self.visit_children(el)  # a layout table: each cell holds blocks of its own
            else:
                cells = [_clean(" ".join(cell.itertext())).replace("\n", " ") for cell in el]
                self.flush_cells([c for c in cells if c])
            if el.tail and el.tail.strip():
                self.buf.append(el.tail)
            return
        block = tag in _BLOCK_TAGS
        if block:
            self.flush()
        if tag == "lb":
            self.buf.append("\n")
        if el.text:
            self.buf.append(el.text)
        self.visit_children(el)
        if block:
            self.flush()
        if el.tail:
            self.buf.append(el.tail)

    def visit_children(self, el: etree._Element) -> None:
        for child in el:
            self.visit(child)

    def flush_cells(self, cells: list[str]) -> None:
        if cells:
            self.items.append(("text", " | ".join(cells)))


def _walk(body: etree._Element) -> list[tuple[str, object]]:
    walker = _Walker()
    walker.visit(body)
    walker.flush()
    return walker.items


# ---- image placement -----------------------------------------------------------------------------------
# Elements whose text is not page text (JSON-LD in <script> often repeats the article body verbatim).
_NOT_PAGE_TEXT = {"script", "style", "template", "head", "title", "noscript", "select", "option", "textarea"}
_ANCHOR_CHARS = 30  # an extracted block is found in the page by its first 30 non-space characters


def _squash(text: str) -> str:
    """Text as compared between trafilatura's output and the page: NFC, no invisible characters and no
    whitespace at all (trafilatura inserts or drops spaces at tag boundaries; CJK text has none)."""
    text = "".join(text.split())
    if text.isascii():  # no invisible character, already NFC
        return text
    if _HAS_INVISIBLE.search(text):
        text = text.translate(_INVISIBLE)
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


@dataclass
class _PageText:
    """The visible text of a page as one squashed string, with where each piece and each image sits."""

    text: str
    piece_at: list[int]  # offset of each text piece (ascending)
    piece_owner: list[etree._Element]  # the element whose text (or whose child's tail) the piece is
    images: list[tuple[int, int, etree._Element]]  # (offset, stand-in number, <img>) in page order


def _page_text(root: etree._Element) -> _PageText:
    texts: list[str] = []  # each visible piece of text without whitespace ...
    owners: list[etree._Element] = []  # ... and the element it belongs to (for a tail: the parent)
    add_text, add_owner = texts.append, owners.append  # (the walk visits every element: no call per piece)
    images: list[tuple[int, etree._Element]] = []  # (pieces before it, <img>)
    walker = etree.iterwalk(root, events=("start", "end"))
    for event, el in walker:  # most tails are layout whitespace: test before asking for the parent
        if event == "end":
            tail = el.tail
            if tail and not tail.isspace():
                add_text("".join(tail.split()))
                add_owner(el.getparent())
            continue
        tag = el.tag
        if tag in _NOT_PAGE_TEXT:
            walker.skip_subtree()  # no "end" event follows for a skipped element: take its tail here
            tail = el.tail
            if tail and not tail.isspace():
                add_text("".join(tail.split()))
                add_owner(el.getparent())
            continue
        if tag == "img":
            images.append((len(texts), el))
        text = el.text
        if text and not text.isspace():
            add_text("".join(text.split()))
            add_owner(el)
    # `_squash` of every piece: the pieces are what they are unless one holds an invisible character (looked
    # for once in the whole page) or non-NFC text; only then is each piece cleaned (and may vanish)
    joined = "".join(texts)
    if joined.isascii() or (
        _HAS_INVISIBLE.search(joined) is None and all(t.isascii() or unicodedata.is_normalized("NFC", t) for t in texts)
    ):
        piece_start = [0, *accumulate(map(len, texts))]  # offset of each piece (every one is non-empty)
        page = _PageText(joined, piece_start[:-1], owners, [])
    else:
        page = _PageText("", [], [], [])
        invisible = _HAS_INVISIBLE.search(joined) is not None
        chunks: list[str] = []
        piece_start = []
        pos = 0
        for text, owner in zip(texts, owners):
            piece_start.append(pos)
            if invisible:
                text = text.translate(_INVISIBLE)
            if not text.isascii() and not unicodedata.is_normalized("NFC", text):
                text = unicodedata.normalize("NFC", text)
            if text:
                page.piece_at.append(pos)
                page.piece_owner.append(owner)
                chunks.append(text)
                pos += len(text)
        piece_start.append(pos)
        page.text = "".join(chunks)
    for n_before, el in images:
        m = _STANDIN.match(el.get("src") or "")
        if m:
            page.images.append((piece_start[n_before], int(m.group(1)), el))
    return page


@dataclass
class _Candidate:
    """A content-image candidate: its stand-in number, the item it goes before (-1: after the last placed
    block) and its features for the image model."""

    n: int
    slot: int
    features: list[float]


def _image_candidates(
    tree: etree._Element, items: list[tuple[str, object]], records: list[_ImageRecord], url: str
) -> tuple[list[_Candidate], dict[int, str]]:
    """Locate the extracted blocks and every image in the page text and describe each image for the model.

    Each extracted block is anchored in the page text (its first characters, searched forward from the
    previous anchor). The main content container is the smallest element holding at least half of the
    anchored blocks. An image goes before the first block that follows it in the page (an image at the very
    offset where a block starts precedes it), or after the last block when none follows. Returns the
    candidates and, by stand-in number, the images that cannot be placed with the reason."""
    page = _page_text(tree)
    seen = {n for _, n, _ in page.images}
    unplaced = {n: "not_in_page_text" for n in range(len(records)) if n not in seen}
    if not page.images:
        return [], unplaced
    anchors: list[tuple[int, int, int]] = []  # (item index, start, end) as offsets in page.text
    cursor = 0
    for i, (kind, text) in enumerate(items):
        if kind != "text":
            continue
        text = str(text)
        whole = _squash(text)
        squashed = _squash(text.split(" | ", 1)[0]) if " | " in text else whole  # a table row: its first cell
        key = squashed[:_ANCHOR_CHARS]
        if len(key) < 2:
            continue
        at = page.text.find(key, cursor)
        if at < 0 and len(key) >= 8:  # out of page order (trafilatura moved it): anywhere, if distinctive
            at = page.text.find(key)
        if at < 0:
            continue
        anchors.append((i, at, at + len(whole)))
        cursor = max(cursor, at + len(key))
    if not anchors:
        unplaced.update({n: "no_text_anchor" for _, n, _ in page.images})
        return [], unplaced
    owners = [page.piece_owner[bisect.bisect_right(page.piece_at, start) - 1] for _, start, _ in anchors]
    holds: Counter = Counter()  # element -> how many anchored blocks it holds
    for owner in owners:
        holds.update(owner.iterancestors())
        holds[owner] += 1
    container = owners[0]
    while container is not None and holds[container] < (len(owners) + 1) // 2:
        container = container.getparent()
    if container is None or container.tag in ("html", "body"):
        container = None  # no single content element
    blocks = sorted((Block(i, start, end) for i, start, end in anchors), key=lambda b: b.start)
    starts = [b.start for b in blocks]
    any_alt = any(records[n].alt for _, n, _ in page.images)  # the words are needed for alt texts only
    words = {w for kind, text in items if kind == "text" for w in WORD.findall(str(text))} if any_alt else set()
    text_words = {w.lower() for w in words}
    url_counts = Counter(records[n].url for _, n, _ in page.images)
    ctx = PageContext(url, len(page.text), blocks, container, holds, text_words, len(page.images), url_counts)
    candidates = []
    for at, n, img in page.images:
        k = bisect.bisect_left(starts, at)
        rec = records[n]
        features = image_features(img, at, rec.alt, rec.url, ctx)
        candidates.append(_Candidate(n, blocks[k].item if k < len(blocks) else -1, features))
    return candidates, unplaced


@lru_cache(maxsize=4)
def load_image_model(path: str = "") -> ImageModel:
    """The image model at `path` (empty: the one shipped in the package), read once per process."""
    if path and not Path(path).is_file():
        raise ValueError(f"extract.image_model: no such file {path!r} (leave it empty for the packaged model)")
    return ImageModel.load(Path(path)) if path else ImageModel.load()


# ---- the extraction ------------------------------------------------------------------------------------
def _meta_robots(tree: etree._Element) -> str:
    values = [
        m.get("content", "")
        for m in tree.iter("meta")
        if (m.get("name") or "").strip().lower() in ("robots", "googlebot", "ccbot")
    ]
    return ", ".join(v.strip().lower() for v in values if v and v.strip())


def _title(tree: etree._Element) -> str:
    for xpath in ('.//meta[@property="og:title"]/@content', ".//title//text()", ".//h1//text()"):
        found = tree.xpath(xpath)
        if found:
            t = " ".join(" ".join(found).split())
            if t:
                return t[:500]
    return ""


def _html_class_lookup() -> etree.ElementNamespaceClassLookup:
    """lxml.html's element classes (HtmlElement; FormElement, InputElement ... by tag) chosen in C: lxml.html's
    own lookup is a Python method called for every element proxy, a few percent of an extraction."""
    fallback = etree.ElementDefaultClassLookup(
        element=lxml.html.HtmlElement,
        comment=lxml.html.HtmlComment,
        pi=lxml.html.HtmlProcessingInstruction,
        entity=lxml.html.HtmlEntity,
    )
    lookup = etree.ElementNamespaceClassLookup(fallback)
    lookup.get_namespace(None).update(lxml.html.HtmlElementClassLookup._default_element_classes)
    return lookup


_HTML_LOOKUP = _html_class_lookup()


def _parse(html: str) -> etree._Element | None:
    data = html.encode("utf-8", "surrogatepass")
    parser = lxml.html.HTMLParser(
        encoding="utf-8", remove_comments=True, remove_pis=True, collect_ids=False, huge_tree=False
    )
    parser.set_element_class_lookup(_HTML_LOOKUP)
    try:
        tree = lxml.html.document_fromstring(data, parser=parser)
    except (etree.ParserError, ValueError):
        return None
    return tree


def _run_trafilatura(tree: etree._Element, url: str, config: ExtractConfig) -> etree._Element | None:
    """trafilatura's main-content extraction (text only) on a prepared tree; its XML body or None."""
    result = trafilatura.bare_extraction(
        tree,
        url=url or None,
        include_images=False,
        include_tables=config.include_tables,
        include_comments=config.include_comments,
        favor_precision=config.focus == "precision",
        favor_recall=config.focus == "recall",
        with_metadata=False,
        output_format="xml",  # the XML body only: "python" would also render it as plain text, unused here
    )
    if result is None or result.body is None:
        return None
    body = result.body
    if config.include_comments and result.commentsbody is not None and len(result.commentsbody):
        body.extend(list(result.commentsbody))
    return body


@dataclass
class ImageDrop:
    """An image of a page left out of its document: its URL and why."""

    url: str
    reason: str
    detail: str = ""


@dataclass
class ExtractParts:
    """Everything of one page the image decision needs, computed once: text items, image records,
    candidates with features, and the images already ruled out (hard junk rules, not placeable)."""

    url: str
    title: str
    meta: dict[str, str]
    items: list[tuple[str, object]]
    records: list[_ImageRecord]
    candidates: list[_Candidate]
    ruled_out: list[ImageDrop]


def extract_parts(
    html: str, url: str, config: ExtractConfig, image_gate: ImageGate | None = None
) -> ExtractParts | None:
    """Parse, normalise the images, run trafilatura and describe every image (None: no main content).
    Raises `PageRefused` for a page over the bounds or (with `image_gate`) without a keepable image."""
    check_attributes(html)
    tree = _parse(html)
    if tree is None:
        return None
    check_bounds(tree, config)
    meta = {}
    robots = _meta_robots(tree)
    if robots:
        meta["meta_robots"] = robots
    title = _title(tree)
    records, junk = prepare_tree(tree, url, config.prefer_largest)
    verdict = True if image_gate is None else image_gate([r.url for r in records])
    if verdict is not True:
        if verdict:  # a reason of the gate's own: candidates there are, and every one fails the image rules
            raise PageRefused(str(verdict), f"each of its {len(records)} image candidates fails the image rules")
        raise PageRefused(
            "no_image_candidates",
            f"none of its {len(records)} image candidates can be kept" if records else "no image passes the junk rules",
        )
    body = _run_trafilatura(tree, url, config)  # works on its own copy of the tree
    if body is None:
        return None
    items = _walk(body)
    candidates, unplaced = _image_candidates(tree, items, records, url) if records else ([], {})
    ruled_out = [ImageDrop(u, r) for u, r in junk]
    ruled_out += [ImageDrop(records[n].url, r) for n, r in sorted(unplaced.items())]
    return ExtractParts(url, title, meta, items, records, candidates, ruled_out)


def assemble(
    parts: ExtractParts,
    model: ImageModel,
    config: ExtractConfig,
    *,
    source: str = "",
    fetched_at: str = "",
    doc_id: str = "",
) -> tuple[Document | None, list[ImageDrop]]:
    """The document of a page from its parts: the images the model keeps, placed between the text blocks;
    and every image left out with its reason (None when no text block is left)."""
    drops = list(parts.ruled_out)
    before: dict[int, list[int]] = {}  # item index -> images that go just before it (-1: after the last)
    if parts.candidates:
        x_NF = np.asarray([c.features for c in parts.candidates], dtype=np.float64)
        p_N = model.probabilities(x_NF)
        for c, p, x_F in zip(parts.candidates, p_N, x_NF):
            if p >= model.threshold:
                before.setdefault(c.slot, []).append(c.n)
            else:
                drops.append(ImageDrop(parts.records[c.n].url, model.drop_reason(x_F), f"p={p:.2f}"))
    doc = Document(
        id=doc_id or make_doc_id(source or parts.url),
        url=parts.url,
        source=source,
        fetched_at=fetched_at,
        title=parts.title,
        meta=dict(parts.meta),
    )
    seen: set[str] = set()

    def add_images(ns: list[int]) -> None:
        for n in ns:
            rec = parts.records[n]
            if rec.url in seen:
                drops.append(ImageDrop(rec.url, "duplicate_in_page"))
            elif len(seen) >= config.max_images:
                drops.append(ImageDrop(rec.url, "max_images", f"{config.max_images} kept"))
            else:
                seen.add(rec.url)
                doc.append_image(Image(url=rec.url, alt=rec.alt))

    last_text = max((i for i, (kind, _) in enumerate(parts.items) if kind == "text"), default=-1)
    for i, (kind, value) in enumerate(parts.items):
        add_images(before.get(i, []))
        if kind == "text" and len(value) >= max(1, config.min_text_chars):
            doc.append_text(value)
        if i == last_text:
            add_images(before.get(-1, []))
    if not doc.text_blocks:
        return None, drops
    doc.check()
    return doc, drops


def extract_with_drops(
    html: str,
    url: str,
    *,
    source: str = "",
    fetched_at: str = "",
    doc_id: str = "",
    timeout_s: float = 10.0,
    config: ExtractConfig | None = None,
    image_gate: ImageGate | None = None,
) -> tuple[Document | None, list[ImageDrop]]:
    """`extract_document`, plus the page's images that were left out, each with its reason."""
    config = config or ExtractConfig()
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    model = load_image_model(config.image_model)
    with time_limit(timeout_s):
        parts = extract_parts(html, url, config, image_gate)
        if parts is None:
            return None, []
        return assemble(parts, model, config, source=source, fetched_at=fetched_at, doc_id=doc_id)


def extract_document(
    html: str,
    url: str,
    *,
    source: str = "",
    fetched_at: str = "",
    doc_id: str = "",
    timeout_s: float = 10.0,
    config: ExtractConfig | None = None,
    image_gate: ImageGate | None = None,
) -> Document | None:
    """Extract the main content of a page as an interleaved Document (None when there is no main content).

    `timeout_s` bounds the whole extraction (raises `ExtractTimeout`); `config` holds the other options.
    `image_gate`, when given, is asked before trafilatura runs whether any of the page's image candidates
    (after the junk rules) can become an image of the document; if not, `PageRefused("no_image_candidates")`
    (or the gate's own reason, such as `no_usable_image`).
    """
    return extract_with_drops(
        html,
        url,
        source=source,
        fetched_at=fetched_at,
        doc_id=doc_id,
        timeout_s=timeout_s,
        config=config,
        image_gate=image_gate,
    )[0]


class ExtractStep(Step):
    """RawPage -> Document. Drops: html_too_large, undecodable_html, too_many_attributes, too_many_elements,
    too_deep, crowded_paragraph, too_many_image_blocks, no_image_candidates, extract_timeout (also counted as the run error `errors/extract_timeout`),
    no_main_content; the images left out of a kept document are item drops `extract/image` with their
    reasons (rejects rows)."""

    name = "extract"

    def __init__(self, config: ExtractConfig | None = None, image_gate: ImageGate | None = None) -> None:
        self.config = config or ExtractConfig()
        load_image_model(self.config.image_model)  # a broken model file fails the build at start, not per page
        self.image_gate = image_gate  # see extract_document; the build sets one per unit (early cuts)

    def process(self, page: RawPage, ledger: Ledger) -> Document | Drop:
        cfg = self.config
        if len(page.body) > cfg.max_html_bytes:
            return Drop("html_too_large", f"{len(page.body)} bytes > max_html_bytes {cfg.max_html_bytes}")
        try:
            html = decode_html(page.body, page.charset)
        except ValueError as e:
            return Drop("undecodable_html", str(e))
        started = time.monotonic()
        try:
            doc, drops = extract_with_drops(
                html,
                page.url,
                source=page.source,
                fetched_at=page.fetched_at,
                doc_id=page.id or make_doc_id(page.source),
                timeout_s=cfg.timeout_s,
                config=cfg,
                image_gate=self.image_gate,
            )
        except PageRefused as e:
            return Drop(e.reason, e.detail)
        except ExtractTimeout as e:
            # the clock decided, not the page: an error of the run, reported by the build
            ledger.counters["errors/extract_timeout"] += 1
            log.error("extract_timeout on %s: %s; the corpus may differ from another run's", page.url, e)
            return Drop("extract_timeout", f"{e} (after {time.monotonic() - started:.1f}s)")
        if doc is None:
            return Drop("no_main_content")
        robots_header = page.headers.get("x-robots-tag", "")
        if robots_header:
            doc.meta["x_robots_tag"] = robots_header.strip().lower()
        count = ledger.item(self.name, "image")
        count.n_in += len(doc.image_list) + len(drops)
        count.n_out += len(doc.image_list)
        for d in drops:
            ledger.drop(self.name, d.reason, id=doc.id, url=doc.url, item="image", detail=f"{d.url} {d.detail}".strip())
        ledger.counters["extract/images"] += len(doc.image_list)
        return doc
