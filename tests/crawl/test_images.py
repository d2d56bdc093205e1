import io
import struct
import zlib

import imagehash
import pytest
from PIL import Image as PILImage

from conftest import real_path
from crawl.images import ImageConfig, ImageStep, process_image
from pipeline.record import Document, Image
from pipeline.stats import Ledger, check_funnel

CFG = ImageConfig()


def _png(w, h, color=(10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(w, h) -> bytes:
    """A PNG that claims w x h pixels (a decompression bomb shape) with almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("name,reason", [
    ("pillow__truncated_jpeg.jpg", "truncated_image"),
    ("skimage__truncated.jpg", "truncated_image"),
    ("pillow__pil_sample_cmyk.jpg", "too_small"),
])
def test_broken_real_files_are_drops_with_reasons(name, reason):
    assert process_image(real_path("dev", "images", "edge_cases", name).read_bytes(), CFG) == reason


def test_corrupt_exif_keeps_the_image():
    r = process_image(real_path("dev", "images", "edge_cases", "pillow__hopper_bad_exif.jpg").read_bytes(), CFG)
    assert not isinstance(r, str) and r.width == 500


def test_every_real_photo_decodes_or_drops_without_raising():
    for p in sorted(real_path("dev", "images", "photos").iterdir()):
        r = process_image(p.read_bytes(), CFG)
        assert isinstance(r, str) or (r.format == "jpeg" and max(r.width, r.height) <= CFG.max_side)


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


def test_image_step_drops_items_and_counts():
    doc = Document(id="d1", url="https://a.org/", source="t")
    doc.append_text("hello")
    for u in ("https://a.org/ok.png", "https://a.org/small.png", "https://a.org/missing.png"):
        doc.append_image(Image(url=u))
    store = {"https://a.org/ok.png": _png(300, 200), "https://a.org/small.png": _png(20, 20)}
    step = ImageStep(CFG, lambda urls: {u: store.get(u, "image_not_in_source") for u in urls})
    ledger = Ledger()
    out = step.process(doc, ledger)
    assert [im.url if im else None for im in out.images] == [None, "https://a.org/ok.png"]
    assert out.images[1].sha1 and len(out.images[1].phash) == 16
    items = ledger.to_dict()["items"]["images/image"]
    assert items == {"in": 3, "out": 1, "drops": {"image_not_in_source": 1, "too_small": 1}}
    assert check_funnel(ledger.to_dict()) == []
    assert {r["reason"] for r in ledger.rejects} == {"image_not_in_source", "too_small"}
