"""Which images of a page belong to its main content: DOM features per image and a small logistic model.

`crawl.extract` hands every normalised `<img>` of a page (junk by hard rule already gone: trackers, pixels,
data: URIs, SVG) to `image_features`, which describes it by page-independent features: where it sits
relative to the text blocks trafilatura extracted (inside the content container, before the first block, after
the last, how many characters away from the nearest block), what wraps it (a link to another page with a
title = a teaser card, repeated sibling cards with images = a teaser grid, `aside`/`nav`/`footer`, blocks whose
class or id says related / comments / ads / share / navigation, `figure`, `picture`, a table), its declared
size, its alt text against the extracted text, and its URL (chrome-like path words, a file extension or none).

`ImageModel` is a logistic regression over those features (standardised), stored as a small JSON file
(`image_model.json` next to this module; numpy only, no pickle). `bench/train_image_model.py` rebuilds it
from the dev gold and silver labels; `bench/extraction.py` fits the same model inside site-grouped folds to
measure how it carries to sites it was not trained on. A kept image is one whose probability reaches the
model's threshold (chosen for F1 on the training pages); a dropped one gets the reason of the feature that
pushed it down most (e.g. `image_model:teaser_card`), which the build records in its rejects.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from lxml import etree

MODEL_PATH = Path(__file__).with_name("image_model.json")

# Class/id words of the blocks around an image, by kind (each kind is one feature).
_TOKEN_KINDS = {
    "related": r"related|recommended|recommendations?|promo|promos|teasers?|trending|popular|most-?read|"
    r"more-?stories|read-?more|outbrain|taboola|recirc|carousel|cards?|tiles?|feed|list-?item|hub",
    "comments": r"comments?|reply|replies|disqus|discussion|respond",
    "chrome": r"nav|navigation|menu|footer|header|masthead|breadcrumbs?|sidebar|rail|widget|toolbar|topbar",
    "ads": r"ad|ads|advert|advertisement|adslot|banner|sponsor|sponsored|dfp|gpt|leaderboard|commercial",
    "social": r"share|sharing|social|author|byline|avatar|profile|bio|newsletter|subscribe|follow",
    "media": r"figure|image|img|photo|picture|media|gallery|hero|lead|featured|caption|slideshow|inline",
}
# one pass over an element's class/id/role words finds every kind (each word is matched whole, by kind)
_TOKEN_RE = re.compile(
    "|".join(rf"(?:(?<=[\s_-])|^)(?P<{k}>{v})(?=[\s_-]|$)" for k, v in _TOKEN_KINDS.items()), re.IGNORECASE
)
# the same patterns without IGNORECASE, for lower-cased ASCII text: the same matches, several times faster
# (`re.IGNORECASE` also folds a few non-ASCII characters, so other text goes to the patterns above)
_TOKEN_RE_LOWER = re.compile(_TOKEN_RE.pattern)
_WORD_RUN = re.compile(r"[^\s_-]+")  # a match of _TOKEN_RE starts where such a run starts
_SPLIT_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_CHROME_URL = re.compile(
    r"(/|^|[._-])(icons?|logos?|avatars?|badges?|buttons?|btns?|sprites?|emoji|emoticons?|smil(ies|eys)|"
    r"share|social|flags?|rating|stars?|thumbs?|thumbnails?|ads?|banners?|promo|sponsors?|widgets?|"
    r"profile|users?|authors?|gravatar|rss|feed)(/|[._-]|$)",
    re.IGNORECASE,
)
_CHROME_URL_LOWER = re.compile(_CHROME_URL.pattern)  # for lower-cased ASCII paths
_IMAGE_EXT = re.compile(r"\.(jpe?g|png|webp|gif|avif|bmp|tiff?)$", re.IGNORECASE)
WORD = re.compile(r"\w{3,}")
_ANCESTOR_LEVELS = 8  # how far up an image's wrappers are looked at
_GRID_LEVELS = 5  # how far up a repeated card structure is looked for
_GRID_SIBLINGS = 40  # siblings looked at per level (bounds the cost on long lists)

FEATURES = (
    "in_container",  # inside the main content container (or the page has none)
    "dom_steps_out",  # levels from the image up to an element that holds the container, /6 (0 inside)
    "before_first_block",  # above the first extracted block
    "after_last_block",  # below the last extracted block
    "inside_block",  # inside the text of an extracted block (an inline picture)
    "log_chars_to_block",  # log1p(characters of page text to the nearest extracted block) / 8
    "lead_zone",  # above the first block with at most 300 characters between them
    "page_position",  # offset in the page text / page text length
    "teaser_card",  # wrapped in a link to another page whose text is 15+ characters (a card title)
    "link_to_page",  # wrapped in a link to another page (not an image file)
    "link_to_image",  # wrapped in a link to an image file (a lightbox / full-size link)
    "grid",  # an ancestor has 2+ siblings of the same tag and class that hold images (a card grid / gallery)
    "grid_cards",  # ... and those siblings link to other pages with titles (a teaser grid, not a gallery)
    "tok_related",
    "tok_comments",
    "tok_chrome",
    "tok_ads",
    "tok_social",
    "tok_media",
    "tag_aside_nav_footer",  # inside <aside>, <nav>, <footer> or <header>
    "tag_figure",  # inside <figure> (or next to a <figcaption>)
    "tag_picture",
    "tag_table",
    "tag_list",  # inside <li>
    "link_density",  # share of link text in the nearest ancestor with 100+ characters of text
    "has_size",
    "log_size",  # declared width/height present; log2 of the larger one / 10
    "small",  # declared larger side under 100 px
    "has_alt",
    "alt_overlap",  # alt/title text present; share of its words found in the extracted text
    "url_chrome",  # path words of site chrome (icons, logos, avatars, thumbs, ads, banners, ...)
    "url_no_ext",  # no image file extension in the path (query-signed CDN URLs)
    "url_gif",
    "same_site",  # image host shares the page's last two host labels
    "many_images",  # log1p(images on the page) / 5
    "url_repeats",  # log2(occurrences of the same URL on the page) / 4 (placeholders, spacers, icons)
    "unlikely",  # an ancestor fails Readability's unlikely-candidate test (class/id words, ARIA role)
    "hidden",  # an ancestor is hidden (hidden, aria-hidden, display:none)
    "levels_to_text",  # DOM levels up to the first ancestor holding an extracted block, /8
    "text_share_at_join",  # share of the extracted blocks that ancestor holds
    "block_images",  # log1p(images in the nearest block wrapper holding more than this image) / 4
    "block_few_paragraphs",  # that wrapper has 2+ images and fewer than half as many <p> (Readability's test)
)


@dataclass
class Block:
    """An extracted text block located in the page text: [start, end) offsets, and its item index."""

    item: int
    start: int
    end: int


def is_ancestor(a: etree._Element, b: etree._Element) -> bool:
    while b is not None:
        if b is a:
            return True
        b = b.getparent()
    return False


def _link_text_len(a: etree._Element, ctx: PageContext) -> int:
    """Characters of a link's text with its whitespace squashed to single spaces, memoised per element."""
    n = ctx.link_len.get(a)
    if n is None:
        words = "".join(a.itertext()).split()
        n = ctx.link_len[a] = sum(map(len, words)) + max(0, len(words) - 1)
    return n


def _is_image_href(href: str) -> bool:
    return bool(_IMAGE_EXT.search(urlsplit(href.strip()).path))


def _grid(img: etree._Element, ctx: PageContext) -> tuple[bool, bool]:
    """Whether an ancestor of `img` (below the container) repeats as 2+ same-tag same-class siblings that hold
    images (a grid), and whether those cards link to other pages with a title (a teaser grid)."""
    el = img.getparent()
    for _ in range(_GRID_LEVELS):
        parent = el.getparent() if el is not None else None
        if el is None or parent is None or el is ctx.container:
            break
        found = ctx.grid.get(el)
        if found is None:
            found = ctx.grid[el] = _repeats(el, parent, ctx)
        if found[0]:
            return found
        el = parent
    return False, False


def _repeats(el: etree._Element, parent: etree._Element, ctx: PageContext) -> tuple[bool, bool]:
    """Whether 2+ other children among the first `_GRID_SIBLINGS` of `parent` share `el`'s tag and class and
    hold an image, and whether 2+ of those link to another page with a title. The children of a parent are
    grouped by (tag, class) once per page, so a grid of n cards costs n, not n * n."""
    groups = ctx.groups.get(parent)
    if groups is None:
        groups = ctx.groups[parent] = {}
        for sib in islice(parent, _GRID_SIBLINGS):
            if next(sib.iter("img"), None) is not None:
                groups.setdefault((sib.tag, sib.get("class") or ""), []).append(sib)
    cards = [sib for sib in groups.get((el.tag, el.get("class") or ""), ()) if sib is not el]
    if len(cards) < 2:
        return False, False
    return True, sum(map(ctx.titled_card, cards)) >= 2


_ALL_TEXT = etree.XPath("string()", smart_strings=False)


def _link_density(img: etree._Element, ctx: PageContext) -> float:
    """Share of link words in the nearest ancestor with 20+ words (8 levels up at most)."""
    el = img.getparent()
    for _ in range(_ANCESTOR_LEVELS):
        if el is None:
            return 0.0
        density = ctx.density.get(el)
        if density is None:
            n = len(_ALL_TEXT(el).split())
            density = -1.0
            if n >= 20:
                density = min(1.0, sum(len(_ALL_TEXT(a).split()) for a in el.iter("a")) / n)
            ctx.density[el] = density
        if density >= 0:
            return density
        el = el.getparent()
    return 0.0


def _token_kinds(words: str) -> set[str]:
    """Kinds of the words of a class/id/role string (each word matched whole, by kind)."""
    if not words.strip():
        return set()
    pattern = _TOKEN_RE
    if words.isascii():
        words, pattern = words.lower(), _TOKEN_RE_LOWER
    # the matches of `finditer`, tried only where a word starts (the pattern's look-behind needs that)
    kinds, end = set(), 0
    for run in _WORD_RUN.finditer(words):
        if run.start() >= end:
            m = pattern.match(words, run.start())
            if m is not None:
                end = m.end()
                if m.lastgroup:
                    kinds.add(m.lastgroup)
    return kinds


def _wrapper_flags(el: etree._Element, ctx: PageContext) -> tuple[frozenset[str], bool, bool, bool]:
    """(token kinds of its class/id/role, fails Readability's unlikely test, hidden, holds a <figcaption>) of
    one element."""
    found = ctx.flags.get(el)
    if found is None:
        get = el.get
        kinds, unlikely, hidden_style = _attr_flags(
            get("class") or "", get("id") or "", get("role") or "", get("style") or ""
        )
        hidden = get("hidden") is not None or get("aria-hidden") == "true" or hidden_style
        caption = el.find("figcaption") is not None
        found = ctx.flags[el] = (kinds, unlikely, hidden, caption)
    return found


@lru_cache(maxsize=8192)
def _attr_flags(cls: str, id_: str, role: str, style: str) -> tuple[frozenset[str], bool, bool]:
    """(token kinds, fails Readability's unlikely test, hidden by style) of one set of attribute values; pages
    repeat the same class strings many times, so the answer is cached by the strings."""
    attrs = f"{cls} {id_}"
    kinds = frozenset(_token_kinds(_SPLIT_CAMEL.sub("-", f"{attrs} {role}")))
    if attrs.isascii():
        low = attrs.lower()
        unlikely = bool(_UNLIKELY_LOWER.search(low) and not _MAYBE_LOWER.search(low))
    else:
        unlikely = bool(_UNLIKELY.search(attrs) and not _MAYBE.search(attrs))
    unlikely = unlikely or role in _UNLIKELY_ROLES
    return kinds, unlikely, bool(style) and bool(_HIDDEN_STYLE.search(style))


@dataclass
class PageContext:
    """What the features of all images of one page share."""

    url: str
    text_len: int  # length of the squashed page text
    blocks: list[Block]  # extracted blocks located in the page, sorted by start offset (at least one)
    container: etree._Element | None  # the main content container (None: the whole page)
    holds: dict[etree._Element, int]  # element -> how many located blocks it holds
    text_words: set[str]  # lower-cased words (3+ characters) of the extracted text
    n_images: int
    url_counts: dict[str, int]  # how often each image URL occurs on the page

    def __post_init__(self) -> None:
        self.starts = [b.start for b in self.blocks]
        self.last_end = max(b.end for b in self.blocks)
        self.site = (urlsplit(self.url).hostname or "").split(".")[-2:]  # the last two labels of the page host
        # per-element results shared by the images of the page, one dict per kind
        self.link_len: dict[etree._Element, int] = {}
        self.grid: dict[etree._Element, tuple[bool, bool]] = {}
        self.groups: dict[etree._Element, dict[tuple[Any, str], list[etree._Element]]] = {}
        self.titled: dict[etree._Element, bool] = {}
        self.density: dict[etree._Element, float] = {}
        self.flags: dict[etree._Element, tuple[frozenset[str], bool, bool, bool]] = {}
        self.chain: dict[etree._Element, tuple[bool, bool]] = {}
        self.block: dict[etree._Element, tuple[int, int, bool]] = {}
        # the container and its ancestors: an element holds the container iff it is one of them
        self.container_chain: set[etree._Element] = (
            set() if self.container is None else {self.container, *self.container.iterancestors()}
        )

    def titled_card(self, card: etree._Element) -> bool:
        """Whether `card` holds a link to another page (not an image file) with 15+ characters of text."""
        found = self.titled.get(card)
        if found is None:
            found = self.titled[card] = any(
                _link_text_len(a, self) >= 15 and not _is_image_href(a.get("href") or "") for a in card.iter("a")
            )
        return found


_UNLIKELY = re.compile(
    r"-ad-|ai2html|banner|breadcrumbs|combx|comment|community|cover-wrap|disqus|extra|footer|"
    r"gdpr|header|legends|menu|related|remark|replies|rss|shoutbox|sidebar|skyscraper|social|"
    r"sponsor|supplemental|ad-break|agegate|pagination|pager|popup|yom-remote",
    re.IGNORECASE,
)
_MAYBE = re.compile(r"and|article|body|column|content|main|mathjax|shadow", re.IGNORECASE)
_UNLIKELY_LOWER, _MAYBE_LOWER = re.compile(_UNLIKELY.pattern), re.compile(_MAYBE.pattern)  # lower-cased ASCII
_UNLIKELY_ROLES = {"menu", "menubar", "complementary", "navigation", "alert", "alertdialog", "dialog"}
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)


def _chain_flags(el: etree._Element | None, ctx: PageContext) -> tuple[bool, bool]:
    """(unlikely, hidden) of `el` or any ancestor below <body>, memoised per element."""
    if el is None or el.tag in ("body", "html"):
        return False, False
    found = ctx.chain.get(el)
    if found is None:
        path = []  # the elements up to the first one already known
        while el is not None and el.tag not in ("body", "html") and el not in ctx.chain:
            path.append(el)
            el = el.getparent()
        found = (False, False) if el is None or el.tag in ("body", "html") else ctx.chain[el]
        for node in reversed(path):
            _, unlikely, hidden, _ = _wrapper_flags(node, ctx)
            found = (found[0] or unlikely, found[1] or hidden)
            ctx.chain[node] = found
    return found


def _page_structure(img: etree._Element, f: dict[str, float], ctx: PageContext) -> None:
    """Features over all ancestors: Readability's unlikely-candidate test (class/id words, roles), hidden
    wrappers, and where the image joins the extracted text in the DOM."""
    f["unlikely"], f["hidden"] = map(float, _chain_flags(img.getparent(), ctx))
    el, levels, joined = img.getparent(), 0, False
    while el is not None and el.tag not in ("body", "html"):
        levels += 1
        if ctx.holds.get(el):
            joined = True
            f["levels_to_text"] = min(levels, 8) / 8
            f["text_share_at_join"] = ctx.holds[el] / len(ctx.blocks)
            break
        el = el.getparent()
    if not joined:
        f["levels_to_text"] = 1.0
        f["text_share_at_join"] = 1.0
    block = img.getparent()  # the nearest block-level wrapper holding more than this image (6 levels up)
    for _ in range(6):
        if block is None or block.tag in ("body", "html"):
            return
        if block.tag in _BLOCKS:
            stats = ctx.block.get(block)
            if stats is None:
                n_img = len(block.findall(".//img"))
                big = n_img >= 2 or len("".join(block.itertext()).strip()) >= 25
                stats = ctx.block[block] = (n_img, len(block.findall(".//p")) if big else 0, big)
            n_img, n_p, big = stats
            if big:
                f["block_images"] = math.log1p(n_img) / 4
                f["block_few_paragraphs"] = float(n_img > 1 and n_p / n_img < 0.5)
                return
        block = block.getparent()


_BLOCKS = {
    "div",
    "section",
    "ul",
    "ol",
    "table",
    "aside",
    "article",
    "main",
    "figure",
    "header",
    "footer",
    "nav",
    "p",
    "li",
    "td",
    "body",
    "html",
}


def image_features(img: etree._Element, at: int, alt: str, url: str, ctx: PageContext) -> list[float]:
    """The feature vector of one image (in `FEATURES` order); `at` is its offset in the squashed page text."""
    f = dict.fromkeys(FEATURES, 0.0)
    blocks, starts, container, page_len = ctx.blocks, ctx.starts, ctx.container, ctx.text_len
    k = bisect.bisect_right(starts, at)
    first, last_end = blocks[0].start, ctx.last_end
    inside = k > 0 and blocks[k - 1].start <= at < blocks[k - 1].end
    if inside:
        dist = 0
    else:
        dist = min(
            [starts[k] - at] if k < len(blocks) else [at - last_end] + ([at - blocks[k - 1].end] if k > 0 else [])
        )
        dist = max(0, dist)
    f["inside_block"] = float(inside)
    f["before_first_block"] = float(at < first)
    f["after_last_block"] = float(at >= last_end)
    f["log_chars_to_block"] = math.log1p(dist) / 8
    f["lead_zone"] = float(at < first and first - at <= 300)
    f["page_position"] = at / page_len if page_len else 0.0
    if container is None or is_ancestor(container, img):
        f["in_container"] = 1.0
    else:
        steps, el, chain = 0, img.getparent(), ctx.container_chain
        while el is not None and el not in chain:
            steps += 1
            el = el.getparent()
        f["dom_steps_out"] = min(steps, 6) / 6
    f["tag_picture"] = float(img.get("data-in-picture") == "1")
    el, depth = img, 0  # the image's own class/id first, then its wrappers
    while el is not None and depth < _ANCESTOR_LEVELS and el.tag not in ("body", "html"):
        depth += 1
        tag = el.tag if isinstance(el.tag, str) else ""
        kinds, _, _, caption = _wrapper_flags(el, ctx)
        if tag == "a":
            href = el.get("href") or ""
            if _is_image_href(href):
                f["link_to_image"] = 1.0
            elif href and not href.startswith("#"):
                f["link_to_page"] = 1.0
                if _link_text_len(el, ctx) >= 15:
                    f["teaser_card"] = 1.0
        elif tag in ("aside", "nav", "footer", "header"):
            f["tag_aside_nav_footer"] = 1.0
        elif tag == "figure" or (tag and caption):
            f["tag_figure"] = 1.0
        elif tag in ("table", "td"):
            f["tag_table"] = 1.0
        elif tag == "li":
            f["tag_list"] = 1.0
        for kind in kinds:
            f[f"tok_{kind}"] = 1.0
        el = el.getparent()
    _page_structure(img, f, ctx)
    grid, cards = _grid(img, ctx)
    f["grid"], f["grid_cards"] = float(grid), float(cards)
    f["link_density"] = _link_density(img, ctx)
    w, h = int_attr(img.get("width")), int_attr(img.get("height"))
    side = max(w or 0, h or 0)
    if side:
        f["has_size"] = 1.0
        f["log_size"] = math.log2(side) / 10
        f["small"] = float(side < 100)
    if alt:
        f["has_alt"] = 1.0
        words = {w.lower() for w in WORD.findall(alt)}
        if words:
            f["alt_overlap"] = len(words & ctx.text_words) / len(words)
    parts = urlsplit(url)
    path = parts.path
    f["url_chrome"] = float(
        bool(_CHROME_URL_LOWER.search(path.lower()) if path.isascii() else _CHROME_URL.search(path))
    )
    f["url_no_ext"] = float(not _IMAGE_EXT.search(path))
    f["url_gif"] = float(path.lower().endswith(".gif"))
    f["same_site"] = float((parts.hostname or "").split(".")[-2:] == ctx.site)
    f["many_images"] = math.log1p(ctx.n_images) / 5
    f["url_repeats"] = math.log2(max(1, ctx.url_counts.get(url, 1))) / 4
    return [f[name] for name in FEATURES]


MAX_ATTR_DIGITS = 9  # a declared width or height of more digits is no size (int() refuses over 4,300 digits)


def int_attr(value: str | None) -> int | None:
    """A declared width or height (`640`, `640.5`, `640px`), None when there is none or it is no size."""
    if not value:
        return None
    m = re.match(r"\s*(\d+)(\.\d+)?\s*(px)?\s*$", value)
    digits = m.group(1).lstrip("0") or "0" if m else ""
    return int(digits) if digits and len(digits) <= MAX_ATTR_DIGITS else None


# ---- the model -----------------------------------------------------------------------------------------
@dataclass
class ImageModel:
    """Logistic regression over standardised features: p = sigmoid(w . (x - mean) / scale + b)."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float = 0.5
    note: str = ""

    def probabilities(self, x_NF: np.ndarray) -> np.ndarray:
        z_N = ((x_NF - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-z_N))

    def drop_reason(self, x_F: np.ndarray) -> str:
        """The feature that pushed this image down most (its contribution against the average image)."""
        contrib_F = (x_F - self.mean) / self.scale * self.weights
        return f"image_model:{self.features[int(np.argmin(contrib_F))]}"

    def to_dict(self) -> dict:
        return {
            "kind": "logistic_regression",
            "note": self.note,
            "threshold": self.threshold,
            "bias": self.bias,
            "features": list(self.features),
            "mean": self.mean.round(6).tolist(),
            "scale": self.scale.round(6).tolist(),
            "weights": self.weights.round(6).tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "image model") -> ImageModel:
        if d.get("kind") != "logistic_regression":
            raise ValueError(f"{where}: kind must be 'logistic_regression', got {d.get('kind')!r}")
        features = tuple(d["features"])
        if features != FEATURES:
            raise ValueError(
                f"{where}: features {features} differ from the code's {FEATURES}; rebuild it with "
                "bench/train_image_model.py"
            )
        arrays = [np.asarray(d[k], dtype=np.float64) for k in ("mean", "scale", "weights")]
        if any(a.shape != (len(features),) for a in arrays):
            raise ValueError(f"{where}: mean/scale/weights must each hold {len(features)} numbers")
        mean, scale, weights = arrays
        return cls(
            features,
            mean,
            scale,
            weights,
            bias=float(d["bias"]),
            threshold=float(d["threshold"]),
            note=str(d.get("note", "")),
        )

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> ImageModel:
        return cls.from_dict(json.loads(Path(path).read_text()), where=str(path))


def fit_logistic(
    x_NF: np.ndarray, y_N: np.ndarray, l2: float = 1.0, steps: int = 30, w_N: np.ndarray | None = None
) -> ImageModel:
    """L2-regularised logistic regression by Newton's method on standardised features, rows weighted by `w_N`
    (default 1); the threshold is the one with the best weighted F1 on the training rows."""
    w_N = np.ones(len(y_N)) if w_N is None else np.asarray(w_N, dtype=np.float64)
    mean_F = x_NF.mean(axis=0)
    scale_F = x_NF.std(axis=0)
    scale_F[scale_F < 1e-6] = 1.0
    z_NF = np.hstack([(x_NF - mean_F) / scale_F, np.ones((len(x_NF), 1))])
    w = np.zeros(z_NF.shape[1])
    reg = np.full(z_NF.shape[1], l2)
    reg[-1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z_NF @ w)))
        grad = z_NF.T @ (w_N * (p - y_N)) + reg * w
        hess = (z_NF * (w_N * p * (1 - p))[:, None]).T @ z_NF + np.diag(reg) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    model = ImageModel(FEATURES, mean_F, scale_F, w[:-1], float(w[-1]))
    p = model.probabilities(x_NF)
    best_t, best_f1 = 0.5, -1.0
    pos_N = y_N > 0.5
    for t in np.arange(0.2, 0.81, 0.05):
        keep = p >= t
        denom = w_N[keep].sum() + w_N[pos_N].sum()
        f1 = 2 * w_N[keep & pos_N].sum() / denom if denom else 0.0
        if f1 > best_f1 + 1e-9:
            best_t, best_f1 = float(t), f1
    model.threshold = round(best_t, 2)
    return model
