import gzip

import pytest

from conftest import real_path
from crawl.sources import dechunk, decode_payload, discover_units, open_source
from pipeline.stats import Ledger, check_funnel

WARCS = ["IAH-20080430204825-00000-blackbook.warc.gz", "IAH-urls-wget.warc.gz", "clueweb-quirk.warc.gz",
         "example-iana.org-chunked.warc", "example.warc.gz", "iana.warc.gz", "warcfile.warc.gz",
         "whirlwind.warc.gz", "whirlwind.warc.wat.gz", "whirlwind.warc.wet.gz"]


def _read(path):
    unit = discover_units([str(path)])[0]
    src = open_source(unit)
    src.index_images()
    ledger = Ledger()
    pages = list(src.pages(ledger))
    return pages, src, ledger.to_dict()


@pytest.mark.parametrize("name", WARCS)
def test_every_record_is_a_page_or_a_counted_drop(name):
    pages, _, stats = _read(real_path("dev", "warc", name))
    [read] = stats["stages"]
    assert read["out"] == len(pages)
    assert check_funnel(stats) == []
    assert read["in"] >= 1


def test_chunked_transfer_encoding_is_decoded():
    pages, _, _ = _read(real_path("dev", "warc", "example-iana.org-chunked.warc"))
    assert pages[0].body.startswith(b"<!doctype html>")


def test_iana_html_with_stale_chunked_header_and_revisits():
    pages, src, stats = _read(real_path("dev", "warc", "iana.warc.gz"))
    assert len(pages) == 16 and all(b"<html" in p.body[:200].lower() for p in pages)
    assert stats["stages"][0]["drops"]["revisit_duplicate"] > 0
    assert len(src.images) >= 5


def test_blackbook_images_are_indexed_by_url():
    pages, src, _ = _read(real_path("dev", "warc", "IAH-20080430204825-00000-blackbook.warc.gz"))
    assert len(pages) == 94
    got = src.images.fetch_many(["http://www.archive.org/images/logoc.jpg", "http://WWW.archive.org:80/images/star.png",
                                 "http://www.archive.org/images/nope.png"])
    assert isinstance(got["http://www.archive.org/images/logoc.jpg"], bytes)
    assert isinstance(got["http://WWW.archive.org:80/images/star.png"], bytes)  # URL normalisation
    assert got["http://www.archive.org/images/nope.png"] == "image_not_in_source"


def test_clueweb_old_format_pages_are_read():
    pages, _, _ = _read(real_path("dev", "warc", "clueweb-quirk.warc.gz"))
    assert len(pages) == 29


def test_truncated_warc_is_a_counted_read_error(tmp_path):
    raw = gzip.decompress(real_path("dev", "warc", "warcfile.warc.gz").read_bytes())
    cut = tmp_path / "cut.warc"
    cut.write_bytes(raw[: len(raw) // 2])
    pages, _, stats = _read(cut)
    read = stats["stages"][0]
    assert 0 < len(pages) < 16
    assert check_funnel(stats) == []
    assert sum(read["drops"].values()) + read["out"] == read["in"]


def test_garbage_file_is_counted_not_raised(tmp_path):
    junk = tmp_path / "junk.warc.gz"
    junk.write_bytes(b"\x1f\x8b\x08\x00garbage" * 100)
    pages, _, stats = _read(junk)
    assert pages == [] and stats["stages"][0]["drops"] == {"warc_read_error": 1}


def test_lenient_payload_decoding():
    assert dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n") == b"hello world"
    assert dechunk(b"<!doctype html>") is None
    assert decode_payload(b"<html>", {"transfer-encoding": "chunked"}) == b"<html>"
    assert decode_payload(gzip.compress(b"<p>x</p>"), {"content-encoding": "gzip"}) == b"<p>x</p>"


def test_html_folder_source(tmp_path):
    (tmp_path / "a.html").write_text("<html><body><p>hello</p></body></html>")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.html.gz").write_bytes(gzip.compress(b"<html><body><p>hi</p></body></html>"))
    (tmp_path / "sub" / "broken.html.gz").write_bytes(b"not gzip")
    pages, _, stats = _read(tmp_path)
    assert sorted(p.body for p in pages) == [b"<html><body><p>hello</p></body></html>",
                                             b"<html><body><p>hi</p></body></html>"]
    assert stats["stages"][0]["drops"] == {"unreadable_file": 1}


def test_html_folder_symlink_out_of_the_folder_is_read_but_its_images_stay_inside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "page.html").write_text("<html><body><p>linked</p><img src='secret.jpg'></body></html>")
    (outside / "secret.jpg").write_bytes(b"not for the corpus")
    folder = tmp_path / "pages"
    folder.mkdir()
    (folder / "own.html").write_text("<html><body><p>own</p></body></html>")
    (folder / "linked.html").symlink_to(outside / "page.html")
    pages, src, stats = _read(folder)
    assert sorted(p.source for p in pages) == ["html:pages/linked.html", "html:pages/own.html"]
    assert not check_funnel(stats) and stats["stages"][0]["drops"] == {}
    linked = next(p for p in pages if p.source.endswith("linked.html"))
    secret = linked.url.rsplit("/", 1)[0] + "/secret.jpg"  # the page's own relative image, outside the folder
    assert src.images.fetch_many([secret])[secret] != b"not for the corpus"


def test_unknown_input_kind_is_a_clear_error(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("x")
    with pytest.raises(ValueError, match="data.csv"):
        discover_units([str(f)])
