"""The image stage: give each image position of a document its bytes, checked and normalised.

For every image of a document: look its bytes up through a resolver (the same WARC, local files, or the
live image fetcher), then decode with Pillow (the web's formats only, `corpus.imagefile`), apply the EXIF
orientation, refuse decompression bombs and files over the byte cap, drop images under a minimum side or
outside the aspect-ratio band, re-encode to one standard format with a maximum side, and record sha1 (of the stored bytes) and pHash (of the
EXIF-corrected image). Each failure is an item drop with its reason; the document goes on with the images
that passed (document rules on image counts come later).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import imagehash
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError
from pydantic import Field

from corpus.config import Section
from corpus.imagefile import open_image, unidentified_reason
from corpus.record import Document, Image
from corpus.stats import Ledger
from corpus.steps import Step, drop_images

# resolver: list of URLs -> {url: bytes | drop reason}
Resolver = Callable[[list[str]], dict[str, "bytes | str"]]
# a request already sent: called, it waits for and returns what the resolver would have returned
Pending = Callable[[], dict[str, "bytes | str"]]
# submit: list of URLs -> Pending (a resolver that does not wait: the answers are fetched meanwhile)
Submit = Callable[[list[str]], Pending]


class ImageConfig(Section):
    min_side: int = Field(150, ge=1, description="drop images whose shorter side is below this (px)")
    max_aspect: float = Field(3.0, ge=1.0, description="drop images outside the band 1:max_aspect..max_aspect:1")
    max_bytes: int = Field(20 << 20, ge=1, description="refuse encoded files larger than this")
    max_pixels: int = Field(64_000_000, ge=1, description="refuse larger images (decompression bombs)")
    max_side: int = Field(1024, ge=16, description="downscale so the longer side is at most this")
    format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: int = Field(90, ge=1, le=100)
    fetch: bool = Field(
        False,
        description="fetch images not found in the source over HTTP (crawler's "
        "politeness, robots and address rules, section `crawl`), archived to WARC",
    )


def chain(first: Resolver, then: Resolver, when: str) -> Resolver:
    """A resolver that asks `then` for the URLs `first` answered with the reason `when`."""

    def resolve(urls: list[str]) -> dict[str, bytes | str]:
        got = first(urls)
        missing = [u for u, v in got.items() if v == when]
        if missing:
            got.update(then(missing))
        return got

    return resolve


def chain_submit(first: Resolver, then: Submit, when: str) -> Submit:
    """`chain(first, then, when)` as a `Submit`: `first` is asked at once, `then` is sent the URLs it
    answered with `when`, and the answers come together when the `Pending` is called."""

    def submit(urls: list[str]) -> Pending:
        got = first(urls)
        missing = [u for u, v in got.items() if v == when]
        if not missing:
            return lambda: got
        later = then(missing)

        def result() -> dict[str, bytes | str]:
            got.update(later())
            return got

        return result

    return submit


@dataclass
class ProcessedImage:
    data: bytes
    width: int
    height: int
    format: str
    sha1: str
    phash: str


def process_image(raw: bytes, cfg: ImageConfig) -> ProcessedImage | str:
    """Decode, check and re-encode one image. Returns the result or a drop reason."""
    if len(raw) > cfg.max_bytes:
        return "too_large_bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            im = open_image(raw)
            w, h = im.size
            if w * h > cfg.max_pixels:
                return "decompression_bomb"
            im.load()
    except PILImage.DecompressionBombError:
        return "decompression_bomb"
    except PILImage.DecompressionBombWarning:
        return "decompression_bomb"
    except UnidentifiedImageError:
        return unidentified_reason(raw)
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        return "truncated_image" if "truncated" in str(e).lower() else "corrupt_image"
    fresh = False  # im is a new plain image of its own (not the decoder's object)
    try:
        im = ImageOps.exif_transpose(im)  # a new image: turned, or a copy when there is nothing to turn
        fresh = True
    except Exception:  # noqa: BLE001 - a broken EXIF block: keep the pixels as stored
        pass
    w, h = im.size
    if min(w, h) < cfg.min_side:
        return "too_small"
    if max(w, h) / min(w, h) > cfg.max_aspect:
        return "bad_aspect_ratio"
    if not (fresh and im.mode == "RGB"):  # convert("RGB") of an RGB image would only copy it again
        im = _to_rgb(im)
    phash = str(imagehash.phash(im))
    if max(w, h) > cfg.max_side:
        scale = cfg.max_side / max(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), PILImage.Resampling.LANCZOS)
    buf = io.BytesIO()
    save_kwargs = {"quality": cfg.quality} if cfg.format in ("jpeg", "webp") else {}
    im.save(buf, format=cfg.format.upper(), **save_kwargs)
    data = buf.getvalue()
    return ProcessedImage(data, im.width, im.height, cfg.format, hashlib.sha1(data).hexdigest(), phash)


def certain_drop(raw: bytes, cfg: ImageConfig) -> str | None:
    """The drop `process_image` is certain to return for `raw`, decided from the file's header alone (no pixels
    decoded), else None. The shorter side and the aspect ratio are those of the stored size: the EXIF
    orientation only rotates or mirrors, which changes neither. Anything the header cannot settle (a file
    Pillow opens but might fail to decode, an image that passes these checks) is None: left to
    `process_image`, so a page cut on this is one the image stage would leave without images."""
    if len(raw) > cfg.max_bytes:
        return "too_large_bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            w, h = open_image(raw).size
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        return "decompression_bomb"
    except UnidentifiedImageError:
        return unidentified_reason(raw)
    except Exception:  # noqa: BLE001 - not settled by the header: process_image decides
        return None
    if w * h > cfg.max_pixels:
        return "decompression_bomb"
    if min(w, h) < cfg.min_side:
        return "too_small"
    if max(w, h) / min(w, h) > cfg.max_aspect:
        return "bad_aspect_ratio"
    return None


def _to_rgb(im: PILImage.Image) -> PILImage.Image:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = PILImage.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.split()[-1])
        return bg
    return im.convert("RGB")


class ImageStep(Step):
    """Resolve and process every image of a document; failures are item drops (stage `images`).

    With `submit` (a resolver that does not wait, e.g. the live image fetcher's) the step can be told of a
    document before it gets there (`prefetch`, see `corpus.steps.run_steps_ahead`): the URLs that document
    would ask the resolver for are requested at once and fetched while earlier documents are worked on.
    The requests are the ones `process` would make, in the same order and grouping (one per document, the
    URLs not already answered or asked for), so the answers, and with them every outcome, are the same;
    only sooner. At most `prefetch_images` URLs are waited on at a time (`prefetch_full`)."""

    name = "images"

    def __init__(self, cfg: ImageConfig, resolver: Resolver, submit: Submit | None = None, prefetch_images: int = 256):
        self.cfg = cfg
        self.resolver = resolver
        self.submit = submit
        self.prefetch_images = prefetch_images
        self._cache: dict[str, ProcessedImage | str] = {}  # url -> result, within one unit
        self._pending: dict[str, Pending] = {}  # url -> the request sent ahead that answers it

    def prefetch(self, doc: Document) -> None:
        """Send the request `process(doc)` would send, now (nothing without `submit`)."""
        if self.submit is None:
            return
        missing = [u for u in dict.fromkeys(im.url for im in doc.image_list) if u not in self._cache]
        missing = [u for u in missing if u not in self._pending]
        if missing:
            pending = self.submit(missing)
            for u in missing:
                self._pending[u] = pending

    def prefetch_full(self) -> bool:
        return len(self._pending) >= self.prefetch_images

    def process(self, doc: Document, ledger: Ledger) -> Document:
        urls = [im.url for im in doc.image_list]
        missing = [u for u in dict.fromkeys(urls) if u not in self._cache]
        for pending in dict.fromkeys(self._pending[u] for u in missing if u in self._pending):
            self._take(pending)
        missing = [u for u in missing if u not in self._cache]
        if missing:
            self._answer(self.resolver(missing))
        drop_images(doc, ledger, self.name, self._fill)
        return doc

    def _take(self, pending: Pending) -> None:
        """The answers of a request sent ahead; if it failed, its URLs are no longer pending (a later
        document asks for them again, as it would have without the look-ahead) and the error is this
        document's."""
        try:
            got = pending()
        finally:
            for u in [u for u, p in self._pending.items() if p is pending]:
                del self._pending[u]
        self._answer(got)

    def _answer(self, got: dict[str, bytes | str]) -> None:
        for url, answer in got.items():
            self._cache[url] = answer if isinstance(answer, str) else self._process(answer)

    def _process(self, data: bytes) -> ProcessedImage | str:
        try:
            return process_image(data, self.cfg)
        except Exception as e:  # noqa: BLE001 - a decoder failure process_image does not know: this image's drop
            return f"image_error:{type(e).__name__}"

    def _fill(self, im: Image) -> str | None:
        """Give the image its processed bytes and facts, or return why it has none."""
        p = self._cache[im.url]
        if isinstance(p, str):
            return p
        im.data, im.width, im.height, im.format, im.sha1, im.phash = (
            p.data,
            p.width,
            p.height,
            p.format,
            p.sha1,
            p.phash,
        )
        return None
