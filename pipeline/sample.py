"""The embedded default sample: a small, real, self-made web archive for `interloom demo` and the tests.

Pages of real prose (Python's own documentation topics, shipped with CPython as `pydoc_data.topics`) and
real photos (scikit-image's bundled images), laid out as web pages with the usual clutter (navigation,
cookie banner, footer, a tracking pixel, a logo icon, lazy-loaded images), plus planted exact and near
duplicates and junk pages, written as one WARC with warcio. Deterministic: the same bytes every time.
"""

from __future__ import annotations

import hashlib
import html
import io
import random
from datetime import datetime
from importlib import resources
from pathlib import Path

from PIL import Image as PILImage
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

HOST = "https://docs.example.org"
PHOTOS = [
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "retina.jpg",
    "hubble_deep_field.jpg",
    "coins.png",
    "camera.png",
    "horse.png",
    "moon.png",
    "brick.png",
    "page.png",
    "grass.png",
    "gravel.png",
    "ihc.png",
    "cell.png",
    "clock_motion.png",
    "text.png",
    "color.png",
]
DATE = datetime(2026, 1, 15, 12, 0, 0)


def _skimage_file(name: str) -> bytes:
    return (resources.files("skimage") / "data" / name).read_bytes()


def _photo_jpeg(name: str) -> bytes:
    im = PILImage.open(io.BytesIO(_skimage_file(name))).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def _paragraphs(text: str) -> list[tuple[str, str]]:
    """Split a pydoc topic into ("h"|"p"|"pre", text) blocks."""
    blocks: list[tuple[str, str]] = []
    lines = text.splitlines()
    buf: list[str] = []

    def flush(kind="p"):
        if buf:
            blocks.append((kind, "\n".join(buf).strip()))
            buf.clear()

    i = 0
    while i < len(lines):
        ln = lines[i]
        if i + 1 < len(lines) and set(lines[i + 1].strip()) in ({"*"}, {"="}, {"-"}) and ln.strip():
            flush()
            blocks.append(("h", ln.strip()))
            i += 2
            continue
        if ln.startswith("   ") and not buf:
            code = []
            while i < len(lines) and (lines[i].startswith("   ") or not lines[i].strip()):
                code.append(lines[i])
                i += 1
            blocks.append(("pre", "\n".join(code).strip("\n")))
            continue
        if not ln.strip():
            flush()
        else:
            buf.append(ln.strip())
        i += 1
    flush()
    return [(k, t) for k, t in blocks if t]


NAV = (
    '<header><div class="logo"><img src="/static/logo.png" width="32" height="32" alt="logo"></div>'
    '<nav><ul><li><a href="/">Home</a></li><li><a href="/topics/">Topics</a></li><li><a href="/about/">About'
    '</a></li><li><a href="/contact/">Contact</a></li></ul></nav></header>'
)
FOOTER = (
    '<div class="cookie-banner">We use cookies to improve your experience. <a href="/privacy/">'
    "Privacy policy</a> <button>Accept</button></div><footer><p>Copyright 2026 Example Docs. All rights "
    'reserved.</p><a href="/terms/">Terms</a> | <a href="/privacy/">Privacy</a></footer>'
    '<img src="https://tracker.example.net/pixel.gif?id=42" width="1" height="1" alt="">'
)


def page_html(
    title: str, blocks: list[tuple[str, str]], photos: list[tuple[str, str]], rng: random.Random, lazy: bool
) -> str:
    """An article page with photos placed between its paragraphs."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    slots = sorted(rng.sample(range(1, max(2, len(blocks))), k=min(len(photos), max(1, len(blocks) - 1))))
    photo_at = dict(zip(slots, photos))
    for i, (kind, text) in enumerate(blocks):
        if i in photo_at:
            name, alt = photo_at[i]
            src = f"{HOST}/images/{name.rsplit('.', 1)[0]}.jpg"  # absolute: copies on other hosts keep them
            attr = f'src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="{src}"' if lazy else f'src="{src}"'
            body.append(
                f'<figure><img {attr} alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'
            )
        tag = {"h": "h2", "p": "p", "pre": "pre"}[kind]
        body.append(f"<{tag}>{html.escape(text)}</{tag}>")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} - '
        f"Example Docs</title></head><body>{NAV}<main><article>{''.join(body)}</article></main>"
        f'<aside><h3>Related</h3><ul><li><a href="/topics/a">More topics</a></li></ul></aside>'
        f"{FOOTER}</body></html>"
    )


JUNK = {
    "not-found": "<html><head><title>404</title></head><body>"
    + NAV
    + "<p>Page not found.</p>"
    + FOOTER
    + "</body></html>",
    "links": "<html><head><title>Links</title></head><body>"
    + NAV
    + "<ul>"
    + "".join(f'<li><a href="/l/{i}">link {i}</a></li>' for i in range(80))
    + "</ul>"
    + FOOTER
    + "</body></html>",
    "spam": "<html><head><title>Best deals</title></head><body><main><p>"
    + " ".join(["buy cheap deals now"] * 150)
    + "</p></main></body></html>",
    "lorem": "<html><head><title>Lorem</title></head><body><main><p>"
    + ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 30)
    + "</p></main></body></html>",
}


def make_sample(out_dir: str | Path, n_pages: int = 60, seed: int = 0) -> Path:
    """Write the sample WARC into out_dir and return its path."""
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "interloom-sample.warc.gz"
    tmp = path.with_name(path.name + ".tmp")
    names = sorted(topics)[:n_pages]
    alts = {p: p.rsplit(".", 1)[0].replace("_", " ") for p in PHOTOS}
    with open(tmp, "wb") as f:
        w = WARCWriter(f, gzip=True)
        info = w.create_warcinfo_record(
            "interloom-sample.warc.gz", {"software": "interloom sample", "format": "WARC File Format 1.1"}
        )
        _fix_date(info)
        w.write_record(info)

        def response(url: str, body: bytes, ctype: str, status: str = "200 OK", extra=()):
            headers = StatusAndHeaders(status, [("Content-Type", ctype), *extra], protocol="HTTP/1.1")
            rec = w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
            _fix_date(rec, url)
            w.write_record(rec)

        pages: dict[str, str] = {}
        for i, name in enumerate(names):
            blocks = _paragraphs(topics[name])
            photos = [(p, alts[p]) for p in rng.sample(PHOTOS, k=1 + i % 3)]
            title = blocks[0][1] if blocks and blocks[0][0] == "h" else name
            pages[f"{HOST}/topics/{name}.html"] = page_html(title, blocks[1:], photos, rng, lazy=i % 4 == 0)
        keys = sorted(pages)
        for j, url in enumerate(keys[:3]):  # exact copies under other URLs (mirrors)
            pages[f"https://mirror.example.com/docs/{j}.html"] = pages[url]
        for j, url in enumerate(keys[3:6]):  # near duplicates: a few words changed, one line added
            pages[f"https://blog.example.com/copy-{j}.html"] = (
                pages[url].replace(" the ", " this ", 3).replace("</article>", "<p>Reposted with thanks.</p></article>")
            )
        for slug, body in JUNK.items():
            pages[f"{HOST}/junk/{slug}.html"] = body
        for url in sorted(pages):
            response(url, pages[url].encode("utf-8"), "text/html; charset=utf-8")
        for p in PHOTOS:
            response(f"{HOST}/images/{p.rsplit('.', 1)[0]}.jpg", _photo_jpeg(p), "image/jpeg")
        response(f"{HOST}/static/logo.png", _skimage_file("logo.png"), "image/png")
        response(f"{HOST}/static/site.css", b"body { font-family: serif; }", "text/css")
        response(f"{HOST}/gone.html", b"<html><body>gone</body></html>", "text/html", status="404 Not Found")
    tmp.replace(path)
    return path


def _fix_date(rec, url: str = "") -> None:
    """Fixed dates and record ids so the sample is byte-identical run to run."""
    digest = hashlib.sha1((url or "warcinfo").encode()).hexdigest()
    rec.rec_headers.replace_header("WARC-Date", DATE.strftime("%Y-%m-%dT%H:%M:%SZ"))
    rec.rec_headers.replace_header(
        "WARC-Record-ID", f"<urn:uuid:{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}>"
    )
