import hashlib
import io
import struct
import zlib

import imagehash
import pytest
from conftest import real_path
from PIL import Image as PILImage

from corpus.record import Document, Image
from corpus.stats import Ledger, check_funnel
from crawl.images import ImageConfig, ImageStep, certain_drop, process_image
from crawl.sources import discover_units, open_source

CFG = ImageConfig()


def _png(w, h, color=(10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(w, h) -> bytes:
    """A PNG that claims w x h pixels (a decompression bomb shape) with almost no data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "name,reason",
    [
        ("pillow__truncated_jpeg.jpg", "truncated_image"),
        ("skimage__truncated.jpg", "truncated_image"),
        ("pillow__pil_sample_cmyk.jpg", "too_small"),
    ],
)
def test_broken_real_files_are_drops_with_reasons(name, reason):
    assert process_image(real_path("dev", "images", "edge_cases", name).read_bytes(), CFG) == reason


def test_corrupt_exif_keeps_the_image():
    r = process_image(real_path("dev", "images", "edge_cases", "pillow__hopper_bad_exif.jpg").read_bytes(), CFG)
    assert not isinstance(r, str) and r.width == 500


def test_every_real_photo_decodes_or_drops_without_raising():
    decoded = 0
    for p in sorted(real_path("dev", "images", "photos").iterdir()):
        r = process_image(p.read_bytes(), CFG)
        with PILImage.open(p) as src:
            w, h = src.size
        if isinstance(r, str):  # the only reason a real, intact photo may be dropped: it is really small
            assert r == "too_small" and min(w, h) < CFG.min_side, (p.name, r, w, h)
            continue
        assert r.format == "jpeg" and max(r.width, r.height) <= CFG.max_side, p.name
        # downscaled (never up), aspect kept (up to EXIF rotation and rounding), bytes a JPEG of that size
        assert max(r.width, r.height) == min(max(w, h), CFG.max_side), (p.name, w, h, r.width, r.height)
        assert abs(min(r.width, r.height) / max(r.width, r.height) - min(w, h) / max(w, h)) < 0.01, p.name
        with PILImage.open(io.BytesIO(r.data)) as out:
            assert out.format == "JPEG" and out.size == (r.width, r.height), p.name
        decoded += 1
    assert decoded >= 30  # most real photos decode (the dropped ones are the 128 px hopper variants)


def test_exif_orientation_is_applied_before_phash():
    photos = real_path("dev", "images", "photos")
    upright = process_image((photos / "pillow__hopper.jpg").read_bytes(), ImageConfig(min_side=64))
    rotated = process_image((photos / "pillow__hopper_orientation_6.jpg").read_bytes(), ImageConfig(min_side=64))
    dist = imagehash.hex_to_hash(upright.phash) - imagehash.hex_to_hash(rotated.phash)
    assert dist <= 4


def test_caps_and_bands():
    assert process_image(b"x" * 100, ImageConfig(max_bytes=10)) == "too_large_bytes"
    assert process_image(_png_header_only(30000, 30000), CFG) == "decompression_bomb"
    assert process_image(_png(100, 400), CFG) == "too_small"
    assert process_image(_png(1000, 200), CFG) == "bad_aspect_ratio"
    assert process_image(b"<html>not an image</html>", CFG) == "not_an_image"
    ok = process_image(_png(3000, 2000), CFG)
    assert (ok.width, ok.height) == (1024, 683) and ok.data[:2] == b"\xff\xd8"


def test_image_step_drops_items_and_counts(tmp_path):
    # the resolver of an HTML-folder source: images are the files beside the page (never outside its folder)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html><body><p>hello</p><img src='ok.png'></body></html>")
    (site / "ok.png").write_bytes(_png(300, 200))
    (site / "small.png").write_bytes(_png(20, 20))
    (tmp_path / "outside.png").write_bytes(_png(300, 200))  # exists, but outside the source's folder
    [unit] = discover_units([str(site)])
    source = open_source(unit)
    source.index_images()
    ok, small, missing, outside = (
        (site / n).as_uri() for n in ("ok.png", "small.png", "missing.png", "../outside.png")
    )
    doc = Document(id="d1", url=(site / "index.html").as_uri(), source="t")
    doc.append_text("hello")
    for u in (ok, small, missing, outside):
        doc.append_image(Image(url=u))
    step = ImageStep(CFG, source.images.fetch_many)
    ledger = Ledger()
    out = step.process(doc, ledger)
    assert [im.url if im else None for im in out.images] == [None, ok]
    im = out.images[1]
    assert (im.width, im.height, im.format) == (300, 200, "jpeg") and im.data[:2] == b"\xff\xd8"
    assert im.sha1 == hashlib.sha1(im.data).hexdigest() and len(im.phash) == 16
    items = ledger.to_dict()["items"]["images/image"]
    assert items == {"in": 4, "out": 1, "drops": {"image_not_in_source": 2, "too_small": 1}}
    assert check_funnel(ledger.to_dict()) == []
    assert sorted((r["reason"], r["detail"]) for r in ledger.rejects) == sorted(
        [("image_not_in_source", missing), ("image_not_in_source", outside), ("too_small", small)]
    )


def test_an_unexpected_decoder_error_drops_the_image_not_the_document(monkeypatch):
    import crawl.images as ci

    real = ci.process_image

    def flaky(data, cfg):  # a decoder bug on one file, of a type process_image does not anticipate
        if data == b"bad":
            raise struct.error("unpack requires a buffer of 4 bytes")
        return real(data, cfg)

    monkeypatch.setattr(ci, "process_image", flaky)
    doc = Document(id="d1", url="https://ex.org/p", source="t")
    doc.append_text("hello")
    doc.append_image(Image(url="https://ex.org/bad.png"))
    doc.append_image(Image(url="https://ex.org/good.png"))
    payloads = {"https://ex.org/bad.png": b"bad", "https://ex.org/good.png": _png(300, 200)}
    ledger = Ledger()
    out = ImageStep(CFG, lambda urls: {u: payloads[u] for u in urls}).process(doc, ledger)
    assert [im.url for im in out.image_list] == ["https://ex.org/good.png"]
    assert ledger.to_dict()["items"]["images/image"]["drops"] == {"image_error:error": 1}
    assert check_funnel(ledger.to_dict()) == []


@pytest.mark.parametrize("min_side,max_aspect", [(150, 3.0), (32, 8.0), (400, 1.2)])
def test_certain_drop_is_never_wrong_on_real_files(min_side, max_aspect):
    """The early cut's header check (no pixels decoded): whenever it names a drop, process_image drops the
    file too; and a file it cannot settle is one process_image may keep or drop."""
    cfg = ImageConfig(min_side=min_side, max_aspect=max_aspect)
    files = [*real_path("dev", "images", "photos").iterdir(), *real_path("dev", "images", "edge_cases").iterdir()]
    settled = 0
    for p in sorted(files):
        raw = p.read_bytes()
        verdict = certain_drop(raw, cfg)
        if verdict is not None:
            assert isinstance(process_image(raw, cfg), str), (p.name, verdict)
            settled += 1
    assert settled >= 1  # at least one real file is settled by its header under each rule set
    assert certain_drop(b"<svg xmlns='http://www.w3.org/2000/svg'/>", cfg) == "not_an_image"
    assert certain_drop(_png_header_only(20_000, 20_000), cfg) == "decompression_bomb"
    assert certain_drop(_png(min_side - 1, min_side * 2), cfg) == "too_small"
    assert certain_drop(_png(min_side, min_side), cfg) is None


def _saved(fmt: str, size=(400, 300), **kw) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, (200, 40, 90)).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO", "MPO"])
def test_the_web_formats_are_decoded(fmt):
    """Every format of corpus.imagefile.WEB_FORMATS a browser shows is decoded and re-encoded as before."""
    size = (256, 200) if fmt == "ICO" else (400, 300)  # ICO holds at most 256 px
    kw = {"sizes": [size]} if fmt == "ICO" else {}
    got = process_image(_saved(fmt, size, **kw), ImageConfig(min_side=150))
    assert not isinstance(got, str), got
    assert (got.width, got.height) == size and got.data[:2] == b"\xff\xd8"
    assert certain_drop(_saved(fmt, size, **kw), ImageConfig(min_side=150)) is None


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "SGI", "PCX", "DDS", "EPS", "QOI"])
def test_formats_outside_the_web_are_never_decoded(fmt, monkeypatch):
    """Pillow decodes ~40 formats (EPS through Ghostscript, where installed); the image stage decodes the
    web's only: an intact file in another format is the drop unsupported_image_format, named apart from
    bytes that are no image at all, and decided from the header by the early cut alike. Before, a PPM, TGA,
    SGI, PCX, DDS or QOI image was decoded and kept, and an EPS was handed to Ghostscript."""
    from PIL import EpsImagePlugin

    if fmt not in PILImage.SAVE:
        pytest.skip(f"this Pillow cannot write {fmt}")
    raw = _saved(fmt)
    with PILImage.open(io.BytesIO(raw)) as im:
        assert im.format == fmt  # an intact file Pillow itself identifies

    def ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript was started on crawled bytes")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    assert process_image(raw, CFG) == "unsupported_image_format"
    assert certain_drop(raw, CFG) == "unsupported_image_format"
    assert process_image(b"<svg xmlns='http://www.w3.org/2000/svg'/>", CFG) == "not_an_image"
