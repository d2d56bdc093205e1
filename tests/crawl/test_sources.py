import gzip
import os
import random
import re
import tracemalloc
import zlib
from pathlib import Path

import brotli
import pyarrow as pa
import pytest
from _warcgen import deflate_bomb, http_response, page_html, page_record, warc_record, write_warc
from conftest import real_path
from fastwarc.warc import ArchiveIterator

from corpus.stats import Ledger, check_funnel
from crawl.sources import PayloadTooLarge, dechunk, decode_payload, discover_units, open_source

WARCS = [
    "IAH-20080430204825-00000-blackbook.warc.gz",
    "IAH-urls-wget.warc.gz",
    "clueweb-quirk.warc.gz",
    "example-iana.org-chunked.warc",
    "example.warc.gz",
    "iana.warc.gz",
    "warcfile.warc.gz",
    "whirlwind.warc.gz",
    "whirlwind.warc.wat.gz",
    "whirlwind.warc.wet.gz",
]


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
    got = src.images.fetch_many(
        [
            "http://www.archive.org/images/logoc.jpg",
            "http://WWW.archive.org:80/images/star.png",
            "http://www.archive.org/images/nope.png",
        ]
    )
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


@pytest.mark.parametrize("name", WARCS)
def test_real_warc_cut_anywhere_counts_every_record_it_holds_once(tmp_path, name):
    """Each real dev WARC cut at 30 %, 50 % and 77 % of its bytes (inside a record's payload, its WARC header
    or a gzip member's header): read.in is exactly the number of records that start before the cut, and the
    cut record is the one read error."""
    whole = real_path("dev", "warc", name)
    starts = [r.stream_pos for r in ArchiveIterator(open(whole, "rb"), parse_http=False)]
    data = whole.read_bytes()
    for frac in (0.3, 0.5, 0.77):
        n = int(len(data) * frac)
        cut = tmp_path / name
        cut.write_bytes(data[:n])
        _, _, stats = _read(cut)
        read = stats["stages"][0]
        assert read["in"] == sum(s < n for s in starts), (frac, read)
        assert check_funnel(stats) == []
        errors = read["drops"].get("warc_read_error", 0) + read["drops"].get("unit_unreadable_rest", 0)
        assert errors <= 1, (frac, read)


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


def test_a_gzip_body_of_several_members_is_decoded_whole_and_capped():
    """A Content-Encoding: gzip body of several members (as gunzip and browsers read it) decoded to its first
    member only: the rest of the page was lost without a word. Every member counts toward the byte cap."""
    html = b"<html><body>" + b"".join(b"<p>paragraph %d</p>" % i for i in range(3000)) + b"</body></html>"
    body = b"".join(gzip.compress(html[i : i + 700]) for i in range(0, len(html), 700))
    assert decode_payload(body, {"content-encoding": "gzip"}) == html
    assert decode_payload(body + b"junk", {"content-encoding": "gzip"}) == html
    assert decode_payload(body[:-5], {"content-encoding": "gzip"}) == html  # a cut trailer: the text is all there
    with pytest.raises(PayloadTooLarge):
        decode_payload(gzip.compress(b" " * 600_000) * 9, {"content-encoding": "gzip"}, limit=5_000_000)


def test_html_folder_source(tmp_path):
    (tmp_path / "a.html").write_text("<html><body><p>hello</p></body></html>")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.html.gz").write_bytes(gzip.compress(b"<html><body><p>hi</p></body></html>"))
    (tmp_path / "sub" / "broken.html.gz").write_bytes(b"not gzip")
    (tmp_path / "sub" / "cut.html.gz").write_bytes(gzip.compress(b"<html><body><p>cut</p></body></html>")[:-12])
    pages, _, stats = _read(tmp_path)
    assert sorted(p.body for p in pages) == [
        b"<html><body><p>hello</p></body></html>",
        b"<html><body><p>hi</p></body></html>",
    ]
    assert stats["stages"][0]["drops"] == {"unreadable_file": 2}


def test_html_folder_pages_are_confined_to_the_folder_and_odd_entries_are_counted(tmp_path):
    """A link out of the input folder (a page, a secret) is the drop outside_input, never a page; dangling
    links, FIFOs and linked folders are counted drops; a link that stays inside the folder is a page."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "page.html").write_text("<html><body><p>linked from outside</p></body></html>")
    (outside / "secret.jpg").write_bytes(b"not for the corpus")
    folder = tmp_path / "pages"
    folder.mkdir()
    (folder / "own.html").write_text("<html><body><p>own</p><img src='inner.jpg'></body></html>")
    (folder / "inner.jpg").write_bytes(b"jpeg bytes")
    (folder / "linked.html").symlink_to(outside / "page.html")
    (folder / "passwd.html").symlink_to("/etc/passwd")
    (folder / "alias.html").symlink_to(folder / "own.html")  # stays inside: read
    (folder / "gone.html").symlink_to(tmp_path / "missing.html")
    os.mkfifo(folder / "pipe.html")
    (folder / "elsewhere").symlink_to(outside, target_is_directory=True)
    (folder / "secret.jpg").symlink_to(outside / "secret.jpg")
    pages, src, stats = _read(folder)
    assert sorted(p.source for p in pages) == ["html:pages/alias.html", "html:pages/own.html"]
    assert not any(b"linked from outside" in p.body or b"root:" in p.body for p in pages)
    read = stats["stages"][0]
    assert read["in"] == 7 and not check_funnel(stats)
    assert read["drops"] == {"outside_input": 2, "dangling_link": 1, "not_a_regular_file": 1, "symlinked_folder": 1}
    own = next(p for p in pages if p.source.endswith("own.html"))
    base = own.url.rsplit("/", 1)[0]
    got = src.images.fetch_many([f"{base}/inner.jpg", f"{base}/secret.jpg"])
    assert got == {f"{base}/inner.jpg": b"jpeg bytes", f"{base}/secret.jpg": "image_not_in_source"}


@pytest.mark.timeout(30)
def test_fifo_given_as_a_page_file_is_a_counted_drop_not_a_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.html")
    pages, _, stats = _read(tmp_path / "pipe.html")
    assert pages == [] and stats["stages"][0]["drops"] == {"not_a_regular_file": 1}


def test_html_folder_gzip_bomb_and_oversized_files_are_counted_drops(tmp_path):
    (tmp_path / "bomb.html.gz").write_bytes(gzip.compress(b" " * (8 << 20), 9))
    (tmp_path / "big.html").write_bytes(b"<p>" + b"x" * 3_000_000)
    (tmp_path / "ok.html.gz").write_bytes(gzip.compress(b"<html><body><p>fine</p></body></html>"))
    (tmp_path / "photo.jpg").write_bytes(b"j" * 3_000)
    unit = discover_units([str(tmp_path)])[0]
    src = open_source(unit, max_html_bytes=1_000_000, max_image_bytes=2_000)
    ledger = Ledger()
    pages = list(src.pages(ledger))
    assert [p.source for p in pages] == [f"html:{tmp_path.name}/ok.html.gz"]
    assert ledger.to_dict()["stages"][0]["drops"] == {"html_too_large": 2}
    url = pages[0].url.rsplit("/", 1)[0] + "/photo.jpg"
    assert src.images.fetch_many([url]) == {url: "too_large_bytes"}


def test_a_page_file_of_several_gzip_members_is_read_whole(tmp_path):
    """gunzip reads every member of a .gz file (cat a.gz b.gz, bgzip's 64 KB blocks); the reader took the
    first member only, and the rest of the page was lost without a word. Bytes after the last member are
    left (as gunzip does); a member cut short is the drop unreadable_file; many tiny members cost linear time."""
    import time

    html = b"<html><body>" + b"".join(b"<p>paragraph %d</p>" % i for i in range(5000)) + b"</body></html>"
    pieces = [html[i : i + 1000] for i in range(0, len(html), 1000)]
    (tmp_path / "blocks.html.gz").write_bytes(b"".join(gzip.compress(p) for p in pieces))
    (tmp_path / "trailing.html.gz").write_bytes(gzip.compress(html) + b"not gzip")
    (tmp_path / "cut.html.gz").write_bytes(gzip.compress(html[:500]) + gzip.compress(html)[:100])
    (tmp_path / "empties.html.gz").write_bytes(gzip.compress(b"") * 200_000 + gzip.compress(html))  # 4 MB
    unit = discover_units([str(tmp_path)])[0]
    ledger = Ledger()
    started = time.process_time()
    pages = {p.source.rsplit("/", 1)[1]: p.body for p in open_source(unit).pages(ledger)}
    assert time.process_time() - started < 10
    assert pages == {"blocks.html.gz": html, "empties.html.gz": html, "trailing.html.gz": html}
    assert ledger.to_dict()["stages"][0]["drops"] == {"unreadable_file": 1}
    assert "cut.html.gz: gzip data cut short" in ledger.rejects[0]["detail"]


# ---- hostile WARCs (issue 11) ---------------------------------------------------------------------------
def _read_capped(path, **caps):
    src = open_source(discover_units([str(path)])[0], **caps)
    src.index_images()
    ledger = Ledger()
    pages = list(src.pages(ledger))
    return pages, src, ledger


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "gzip+chunked"])
def test_compression_bomb_is_refused_at_the_cap_with_bounded_memory(tmp_path, encoding):
    """A page and an image whose payloads inflate to 64 MiB, with caps of 1 MB: each is a counted drop
    (html_too_large / image_too_large), memory stays near the cap, and the ordinary page after them is read
    and gets nothing from the bomb image."""
    size = 64 << 20
    if encoding == "br":
        payload = brotli.compress(b" " * size, quality=1)
    else:
        payload = deflate_bomb(size, "zlib" if encoding == "deflate" else "gzip")
    headers = {"Content-Encoding": encoding.split("+")[0]}
    if encoding.endswith("chunked"):
        payload = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"
        headers["Transfer-Encoding"] = "chunked"
    warc = write_warc(
        tmp_path / "bomb.warc.gz",
        [
            page_record("http://bomb.test/first.html"),
            warc_record("http://bomb.test/bomb.html", http_response(payload, "text/html", headers)),
            warc_record("http://bomb.test/bomb.png", http_response(payload, "image/png", headers)),
            page_record("http://bomb.test/after.html", extra='<img src="bomb.png">'),
        ],
    )
    tracemalloc.start()
    try:
        pages, src, ledger = _read_capped(warc, max_html_bytes=1_000_000, max_image_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12_000_000, f"peak {peak} bytes while reading a {size}-byte bomb with 1 MB caps"
    assert [p.url for p in pages] == ["http://bomb.test/first.html", "http://bomb.test/after.html"]
    stats = ledger.to_dict()
    assert stats["stages"][0]["drops"] == {"html_too_large": 1, "image_too_large": 1}
    assert not check_funnel(stats)
    assert src.images.fetch_many(["http://bomb.test/bomb.png"]) == {"http://bomb.test/bomb.png": "too_large_bytes"}


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_encoded_payload_under_the_cap_is_decoded(encoding):
    body = page_html("small")
    packed = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}[encoding](body)
    assert decode_payload(packed, {"content-encoding": encoding}, len(body)) == body
    with pytest.raises(PayloadTooLarge):
        decode_payload(packed, {"content-encoding": encoding}, len(body) - 1)
    assert decode_payload(body, {"content-encoding": encoding}) == body  # stored decoded: kept as it is


def test_a_list_of_content_codings_is_undone_last_first(tmp_path):
    """`Content-Encoding: gzip, gzip` (or `identity, br`, or the header given twice) names codings applied in
    order; only a lone coding was decoded, so such a page reached extraction as compressed bytes and was the
    drop undecodable_html. Each coding is now undone, last first, when the bytes are so encoded; each inflation
    stops at the cap; more than MAX_CODINGS codings are left undecoded (extraction counts the page)."""
    body = page_html("layered")
    twice = gzip.compress(gzip.compress(body))
    assert decode_payload(twice, {"content-encoding": "gzip, gzip"}) == body
    assert decode_payload(gzip.compress(brotli.compress(body)), {"content-encoding": "br, x-gzip"}) == body
    assert decode_payload(brotli.compress(body), {"content-encoding": "identity, br"}) == body
    assert decode_payload(gzip.compress(body), {"content-encoding": "gzip, gzip"}) == body  # stored half decoded
    with pytest.raises(PayloadTooLarge):
        decode_payload(twice, {"content-encoding": "gzip, gzip"}, len(body) - 1)
    deep = body
    for _ in range(5):
        deep = gzip.compress(deep)
    assert decode_payload(deep, {"content-encoding": ", ".join(["gzip"] * 5)}) == deep
    block = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\nContent-Encoding: gzip\r\n\r\n"
    records = [
        warc_record("http://h.test/list.html", http_response(twice, headers={"Content-Encoding": "gzip, gzip"})),
        warc_record("http://h.test/twice.html", block + twice),
    ]
    pages, _, ledger = _read_capped(write_warc(tmp_path / "codings.warc.gz", records))
    assert [p.body for p in pages] == [body, body]
    assert ledger.to_dict()["stages"][0] == {"name": "read", "in": 2, "out": 2, "drops": {}}


@pytest.mark.parametrize("suffix", [".warc", ".warc.gz"])
def test_huge_http_header_costs_one_record_and_reading_goes_on(tmp_path, suffix):
    """2 pages, a response with a 2 MB HTTP header line, 5 pages: 7 pages and one counted drop."""
    big = http_response(page_html("big"), headers={"X-Filler": "a" * (2 << 20)})
    records = [page_record(f"http://h.test/{i}.html") for i in range(2)]
    records.append(warc_record("http://h.test/big.html", big))
    records += [page_record(f"http://h.test/{i}.html") for i in range(2, 7)]
    pages, _, ledger = _read_capped(write_warc(tmp_path / f"hdr{suffix}", records))
    assert [p.url for p in pages] == [f"http://h.test/{i}.html" for i in range(7)]
    stats = ledger.to_dict()
    assert stats["stages"][0] == {"name": "read", "in": 8, "out": 7, "drops": {"bad_http_header": 1}}
    [reject] = ledger.rejects
    assert reject["url"] == "http://h.test/big.html" and "header" in reject["detail"].lower()


def test_unreadable_bytes_are_skipped_to_the_next_record_and_counted(tmp_path):
    """A corrupt gzip member between records, an unparsable WARC header, and junk at the end of the file:
    every readable record after them is read, each damaged stretch is a counted drop naming its bytes."""
    recs = [gzip.compress(page_record(f"http://d.test/{i}.html")) for i in range(6)]
    long_warc_header = page_record("http://d.test/long.html").replace(
        b"WARC-Date", b"X-Long: " + b"a" * (3 << 20) + b"\r\nWARC-Date", 1
    )
    data = (
        recs[0]
        + recs[1]
        + gzip.compress(page_record("http://d.test/corrupt.html"))[:60]
        + recs[2]
        + recs[3]
        + gzip.compress(long_warc_header)
        + recs[4]
        + recs[5]
    )
    junk = b"\x1f\x8b\x08 trailing junk that is no gzip member"
    warc = tmp_path / "damaged.warc.gz"
    warc.write_bytes(data + junk)
    pages, _, ledger = _read_capped(warc)
    assert [p.url for p in pages] == [f"http://d.test/{i}.html" for i in range(6)]
    read = ledger.to_dict()["stages"][0]
    assert read["drops"] == {"warc_unreadable_bytes": 2, "unit_unreadable_rest": 1}
    assert read["in"] == 9 and read["out"] == 6
    [rest] = [r for r in ledger.rejects if r["reason"] == "unit_unreadable_rest"]
    offset, size = map(int, re.search(r"unreadable from byte (\d+) of (\d+) to the end", rest["detail"]).groups())
    assert len(data) - len(recs[5]) < offset <= len(data) and size == len(data) + len(junk)


def test_gzip_members_that_hold_no_warc_record_are_counted_and_swallow_no_records(tmp_path):
    """In a .warc.gz, a whole gzip member whose text is no WARC record fastwarc reads (an unknown version line,
    plain text) is a counted drop, first, between records or last; fastwarc skipped it quietly, and with it
    the good record after it. An empty gzip member is nothing to count and stops no reading."""
    recs = [page_record(f"http://m.test/{i}.html") for i in range(4)]
    odd = page_record("http://m.test/odd.html").replace(b"WARC/1.0", b"WARC/9.9", 1)
    members = [b"hello", recs[0], odd, recs[1], b"", recs[2], b"not a record", recs[3], b"", b"bye"]
    warc = tmp_path / "members.warc.gz"
    warc.write_bytes(b"".join(gzip.compress(m) for m in members))
    pages, _, ledger = _read_capped(warc)
    assert [p.url for p in pages] == [f"http://m.test/{i}.html" for i in range(4)]
    read = ledger.to_dict()["stages"][0]
    assert read == {"name": "read", "in": 8, "out": 4, "drops": {"warc_unreadable_bytes": 3, "unit_unreadable_rest": 1}}
    assert all("gzip member" in r["detail"] for r in ledger.rejects)


@pytest.mark.parametrize("suffix", [".warc", ".warc.gz"])
def test_pages_whose_records_repeat_an_id_or_have_none_get_distinct_document_ids(tmp_path, suffix):
    """A writer that repeats a WARC-Record-ID (or writes none) gave different pages one document id, and the
    build failed in dedup ("staged documents have duplicate ids"). The first record keeps its id."""
    recs = [page_record(f"http://r.test/{i}.html") for i in range(5)]
    first_id = re.search(rb"WARC-Record-ID: (<[^>]*>)", recs[0]).group(1)
    recs[1] = re.sub(rb"WARC-Record-ID: <[^>]*>", b"WARC-Record-ID: " + first_id, recs[1])
    recs[2] = re.sub(rb"WARC-Record-ID: <[^>]*>", b"WARC-Record-ID: " + first_id, recs[2])
    recs[3] = re.sub(rb"WARC-Record-ID: <[^>]*>\r\n", b"", recs[3])
    recs[4] = re.sub(rb"WARC-Record-ID: <[^>]*>\r\n", b"", recs[4])
    warc = write_warc(tmp_path / f"ids{suffix}", recs)
    source = open_source(discover_units([str(warc)])[0])
    source.index_images(captures=True)
    pages = list(source.pages(Ledger()))
    assert [p.url for p in pages] == [f"http://r.test/{i}.html" for i in range(5)]
    assert len({p.id for p in pages}) == 5
    assert pages[0].source == f"warc:{warc.name}#{first_id.decode().strip('<>')}"
    assert all(source.same_captures(p) == [(p.fetched_at, p.id)] for p in pages)  # pass 1 names them alike


def test_file_names_that_are_not_utf8_are_read_and_stored(tmp_path):
    """A page file, a folder, a link or a WARC whose name is not UTF-8 (Python keeps such bytes as surrogates):
    the unit was refused by a UnicodeEncodeError (discover_units, the document id) that ended the build; now
    its documents and drops name it with \\xNN escapes, which Parquet stores."""
    site = os.fsencode(tmp_path / "site")
    os.makedirs(os.path.join(site, b"dir\xff"))
    for name in (b"ok.html", b"bad\xfe.html", os.path.join(b"dir\xff", b"x.html")):
        with open(os.path.join(site, name), "wb") as f:
            f.write(page_html("t"))
    os.symlink(b"/nonexistent", os.path.join(site, b"gone\xfd.html"))
    warc = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"w\xff.warc.gz"))
    write_warc(Path(warc), [page_record("http://u.test/a.html")])
    pages, ledger = [], Ledger()
    for unit in discover_units([os.fsdecode(site), warc]):
        source = open_source(unit)
        source.index_images()
        pages += list(source.pages(ledger))
    assert sorted(p.source for p in pages)[:3] == [
        "html:site/bad\\xfe.html",
        "html:site/dir\\xff/x.html",
        "html:site/ok.html",
    ]
    assert pages[-1].source.startswith("warc:w\\xff.warc.gz#")
    [drop] = ledger.rejects
    assert drop["reason"] == "dangling_link" and drop["url"].endswith("gone\\xfd.html")
    assert ledger.rejects_table().num_rows == 1
    assert pa.Table.from_pylist([{"source": p.source, "url": p.url} for p in pages]).num_rows == 4


@pytest.mark.parametrize("suffix", [".warc", ".warc.gz"])
def test_record_running_past_the_end_swallows_no_records(tmp_path, suffix):
    """A WARC Content-Length far beyond the file: that record is one read error, the records fastwarc would
    read as its content are read as records."""
    recs = [page_record(f"http://l.test/{i}.html") for i in range(5)]
    recs[1] = re.sub(rb"Content-Length: \d+\r\n\r\nHTTP", b"Content-Length: 99999999\r\n\r\nHTTP", recs[1], count=1)
    pages, _, ledger = _read_capped(write_warc(tmp_path / f"long{suffix}", recs))
    assert [p.url for p in pages] == [f"http://l.test/{i}.html" for i in (0, 2, 3, 4)]
    assert ledger.to_dict()["stages"][0] == {"name": "read", "in": 5, "out": 4, "drops": {"warc_read_error": 1}}


@pytest.mark.parametrize("suffix", [".warc", ".warc.gz"])
def test_file_cut_inside_an_image_counts_each_record_once(tmp_path, suffix):
    """A WARC cut short inside an image response: read.in is the number of records in the file, the cut
    image is one warc_read_error (not also image_resource), and no page gets its partial bytes."""
    image = random.Random(0).randbytes(100_000)  # incompressible: the cut falls inside the last record
    records = [
        page_record("http://c.test/a.html", extra='<img src="pic.png">'),
        warc_record("http://c.test/pic.png", http_response(image, "image/png")),
        warc_record("http://c.test/cut.png", http_response(image, "image/png")),
    ]
    whole = write_warc(tmp_path / f"whole{suffix}", records).read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole[: len(whole) - 50_000])
    pages, src, ledger = _read_capped(cut)
    assert [p.url for p in pages] == ["http://c.test/a.html"]
    read = ledger.to_dict()["stages"][0]
    assert read == {"name": "read", "in": 3, "out": 1, "drops": {"image_resource": 1, "warc_read_error": 1}}
    got = src.images.fetch_many(["http://c.test/pic.png", "http://c.test/cut.png"])
    assert got == {"http://c.test/pic.png": image, "http://c.test/cut.png": "image_not_in_source"}


def test_unknown_input_kind_is_a_clear_error(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("x")
    with pytest.raises(ValueError, match="data.csv"):
        discover_units([str(f)])


def _set_length(record: bytes, value: int) -> bytes:
    return re.sub(rb"Content-Length: \d+\r\n\r\n", f"Content-Length: {value}\r\n\r\n".encode(), record, count=1)


@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_content_length_too_large_loses_no_record_quietly(tmp_path, where):
    """An uncompressed WARC whose record claims 100 bytes more than it has runs over the start of the next
    record; fastwarc then skips quietly to the next `WARC/` line. The bytes no record covers are a counted
    drop (`warc_unreadable_bytes` between records, `unit_unreadable_rest` at the end), never a record gone
    without a trace."""
    recs = [page_record(f"http://example.com/{i}") for i in range(4)]
    recs[1] = _set_length(recs[1], len(recs[1]) + 100)
    pages, _, stats = _read(write_warc(tmp_path / "lie.warc", recs[: 4 if where == "middle" else 3]))
    [read] = stats["stages"]
    assert check_funnel(stats) == []
    if where == "middle":  # record 2's start is eaten: 0, 1 (with 100 bytes of 2) and 3 are read
        assert [p.url for p in pages] == ["http://example.com/0", "http://example.com/1", "http://example.com/3"]
        assert read["drops"] == {"warc_unreadable_bytes": 1}
    else:
        assert len(pages) == 2 and read["drops"] == {"unit_unreadable_rest": 1}


def test_a_content_length_too_small_counts_the_bytes_it_leaves(tmp_path):
    recs = [page_record(f"http://example.com/{i}") for i in range(3)]
    recs[1] = _set_length(recs[1], 10)
    pages, _, stats = _read(write_warc(tmp_path / "short.warc", recs))
    [read] = stats["stages"]
    assert [p.url for p in pages] == ["http://example.com/0", "http://example.com/2"]
    # (the block cut to "HTTP/1.1 2": no three-digit status)
    assert read["drops"] == {"bad_http_status": 1, "warc_unreadable_bytes": 1} and check_funnel(stats) == []


@pytest.mark.parametrize("name", [w for w in WARCS if w.endswith(".gz")])
def test_an_uncompressed_copy_reads_as_the_gzip_file(tmp_path, name):
    """No false alarm: every real WARC, decompressed, gives the same pages and the same funnel."""
    gz = real_path("dev", "warc", name)
    plain = tmp_path / name.removesuffix(".gz")
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    pages_gz, _, stats_gz = _read(gz)
    pages_plain, _, stats_plain = _read(plain)
    assert [p.url for p in pages_plain] == [p.url for p in pages_gz]
    assert stats_plain["stages"] == stats_gz["stages"]


@pytest.mark.parametrize("name", ["zero.warc", "pipe.warc.gz"])
def test_a_warc_input_that_is_no_regular_file_is_a_counted_drop_not_a_hang(tmp_path, name):
    """A WARC name linked to /dev/zero, or a FIFO: reading it never ended; now one `not_a_regular_file`."""
    if name == "zero.warc":
        (tmp_path / name).symlink_to("/dev/zero")
    else:
        os.mkfifo(tmp_path / name)
    pages, _, stats = _read(tmp_path / name)
    assert pages == [] and stats["stages"][0]["drops"] == {"not_a_regular_file": 1} and check_funnel(stats) == []


def test_pages_whose_target_uri_is_not_a_web_url_are_counted_drops(tmp_path):
    """An HTML response archived under a javascript:, data: or empty target URI, or one urlsplit cannot
    parse, is no web page (its images could not be resolved, its URL would reach the corpus and the report):
    each is the drop `page_url_not_http` naming the URI; the web pages around them are read."""
    odd = ["javascript:alert(document.cookie)", "data:text/html,<b>x</b>", "", "http://[::1/x", "https:///no-host"]
    records = [page_record("http://h.test/0.html")]
    records += [warc_record(u, http_response(page_html(f"odd {i}"))) for i, u in enumerate(odd)]
    records.append(page_record("HTTPS://h.test/1.html"))
    pages, _, ledger = _read_capped(write_warc(tmp_path / "odd.warc.gz", records))
    assert [p.url for p in pages] == ["http://h.test/0.html", "HTTPS://h.test/1.html"]
    assert ledger.to_dict()["stages"][0] == {"name": "read", "in": 7, "out": 2, "drops": {"page_url_not_http": 5}}
    assert [r["reason"] for r in ledger.rejects] == ["page_url_not_http"] * 5
    assert "'javascript:alert(document.cookie)' is not an http(s) URL" in ledger.rejects[0]["detail"]


def test_a_response_without_a_readable_status_line_is_a_named_drop(tmp_path):
    """A response record whose block is empty (Content-Length 0) or whose status line is garbage was counted as
    `http_status:None`; it is the drop bad_http_status naming the record, and reading goes on."""
    url = "http://example.com/"
    records = [
        warc_record(url + "empty", b""),
        warc_record(url + "garbage", b"GARBAGE\r\nContent-Type: text/html\r\n\r\n" + page_html("g")),
        warc_record(url + "huge", http_response(page_html("h"), status="99999999999999999999 OK")),
        page_record(url + "ok"),
    ]
    unit = discover_units([str(write_warc(tmp_path / "s.warc.gz", records))])[0]
    src = open_source(unit)
    src.index_images()
    ledger = Ledger()
    assert [p.url for p in src.pages(ledger)] == [url + "ok"]
    assert ledger.to_dict()["stages"][0]["drops"] == {"bad_http_status": 3}
    assert all("no HTTP status line" in r["detail"] for r in ledger.rejects)


def test_a_warc_date_that_names_no_moment_is_left_empty_and_counted(tmp_path):
    """A WARC-Date reached the document's fetched_at as written, garbage included ('garbage', month 13, 5,000
    characters). A date as the standard writes it is kept as written; one in another readable form (an HTTP
    date, a 14-digit ARC timestamp, ClueWeb09's day of the year, a date alone) is rewritten to ISO 8601 and
    counted (read/warc_date_normalised); one that names no moment is "" and counted
    (read/warc_date_unreadable). Every page goes on, and the pass-1 capture entry sees the same date."""
    dates = {
        "2024-05-01T12:00:00Z": "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00.123456789+05:30": "2024-05-01T12:00:00.123456789+05:30",
        "2008-10-294T05:21:46-0700": "2008-10-20T05:21:46-07:00",
        "Tue, 01 May 2024 12:00:00 GMT": "2024-05-01T12:00:00Z",
        "20240501120000": "2024-05-01T12:00:00Z",
        "2024-05-01": "2024-05-01T00:00:00Z",
        "garbage": "",
        "2024-13-45T99:99:99Z": "",
        "2024-02-30T00:00:00Z": "",
        "2008-02-294T05:21:46-0700": "",
        "x" * 5000: "",
        "": "",
    }
    records = [
        warc_record(f"http://h.test/{i}.html", http_response(page_html(f"p{i}")), date=d) for i, d in enumerate(dates)
    ]
    unit = discover_units([str(write_warc(tmp_path / "d.warc.gz", records))])[0]
    src = open_source(unit)
    src.index_images(captures=True)
    ledger = Ledger()
    pages = list(src.pages(ledger))
    assert [p.fetched_at for p in pages] == list(dates.values())
    assert all(src.same_captures(p) == [(p.fetched_at, p.id)] for p in pages)
    assert ledger.to_dict()["counters"] == {"read/warc_date_normalised": 4, "read/warc_date_unreadable": 6}
    assert ledger.to_dict()["stages"][0]["drops"] == {}


def test_an_image_resource_record_is_indexed_for_the_pages_that_show_it(tmp_path):
    """A resource record holds its payload with no HTTP header, its type in the WARC Content-Type. Pass 2
    counted an image resource record as image_resource, but pass 1 looked only at the HTTP Content-Type and
    never indexed it, so every page showing it lost the image as image_not_in_source. It is now indexed; a
    response record without HTTP headers is still not_http and not indexed."""
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64  # the source stores bytes; decoding is the image stage's work

    def typed(url, block, rtype, ctype):
        return warc_record(url, block, rtype=rtype).replace(b"application/http; msgtype=response", ctype.encode())

    records = [
        typed("http://h.test/a.png", png, "resource", "image/png"),
        typed("http://h.test/b.png", png, "response", "image/png"),
        typed("http://h.test/p.html", page_html("p", '<img src="a.png">'), "resource", "text/html; charset=utf-8"),
    ]
    pages, src, ledger = _read(write_warc(tmp_path / "res.warc.gz", records))
    assert [p.url for p in pages] == ["http://h.test/p.html"]
    assert src.images.fetch_many(["http://h.test/a.png", "http://h.test/b.png"]) == {
        "http://h.test/a.png": png,
        "http://h.test/b.png": "image_not_in_source",
    }
    assert ledger["stages"][0] == {"name": "read", "in": 3, "out": 1, "drops": {"image_resource": 1, "not_http": 1}}


def test_a_target_uri_in_angle_brackets_is_read_as_its_uri(tmp_path):
    """wget since 1.19.4 writes `WARC-Target-URI: <http://...>` as the WARC 1.0 grammar said (an erratum fixed
    in WARC 1.1). Its pages were the drop page_url_not_http and its images were indexed under the bracketed
    text, so no page found them. The brackets are now taken off: the page is read under its URL, and the
    image is found by the URL pages give."""

    def bracketed(record: bytes, url: str) -> bytes:
        return record.replace(f"WARC-Target-URI: {url}".encode(), f"WARC-Target-URI: <{url}>".encode())

    image = warc_record("http://h.test/i.png", http_response(b"\x89PNG\r\n\x1a\n", "image/png"))
    records = [
        bracketed(image, "http://h.test/i.png"),
        bracketed(page_record("http://h.test/a.html"), "http://h.test/a.html"),
        page_record("http://h.test/b.html"),
    ]
    pages, src, ledger = _read(write_warc(tmp_path / "wget.warc.gz", records))
    assert [p.url for p in pages] == ["http://h.test/a.html", "http://h.test/b.html"]
    assert src.images.fetch_many(["http://h.test/i.png"]) == {"http://h.test/i.png": b"\x89PNG\r\n\x1a\n"}
    assert ledger["stages"][0] == {"name": "read", "in": 3, "out": 2, "drops": {"image_resource": 1}}


def test_repeated_robots_headers_are_one_list_and_keep_an_opt_out(tmp_path):
    """A response with `X-Robots-Tag: noai` then `X-Robots-Tag: noindex` kept only the last header, so the
    page's opt-out was lost and the page went into the corpus. A repeated X-Robots-Tag (as Transfer- and
    Content-Encoding) is one list, as RFC 9110 reads it: the opt-out is seen and the page is the drop
    optout_noai; other repeated headers keep their last value as before."""
    from corpus.steps import run_steps
    from filters.urlrules import UrlRules

    block = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Robots-Tag: noai\r\nX-Robots-Tag: noindex\r\n"
        b"X-Powered-By: a\r\nX-Powered-By: b\r\n\r\n" + page_html("opted out")
    )
    records = [warc_record("http://h.test/out.html", block), page_record("http://h.test/in.html")]
    pages, _, _ = _read(write_warc(tmp_path / "robots.warc.gz", records))
    assert pages[0].headers["x-robots-tag"] == "noai, noindex" and pages[0].headers["x-powered-by"] == "b"
    ledger = Ledger()
    assert [p.url for p in run_steps(pages, [UrlRules(optout=True)], ledger)] == ["http://h.test/in.html"]
    assert ledger.to_dict()["stages"][0]["drops"] == {"optout_noai": 1}


def test_a_garbled_content_type_or_status_makes_no_reason_of_its_own(tmp_path):
    """The read drop for a non-HTML response named its Content-Type as written: a garbled header put control
    characters (a terminal escape) into stats.json, the rejects and the end-of-build summary, and each
    distinct garbage a reason of its own; a status of any size was `http_status:N` too. A Content-Type that is
    no media type name (RFC 6838) is now `not_html:invalid`, named in the detail; a status that is not three
    digits is bad_http_status; real types and statuses are named as before."""
    body = page_html("p")
    types = ["text/x\x1b[31mred", "\x01\x02", "a" * 300 + "/b", "weird", "text/plain", "application/x-javascript"]
    records = [warc_record(f"http://h.test/{i}.html", http_response(body, content_type=c)) for i, c in enumerate(types)]
    records += [warc_record(f"http://h.test/s{s}", http_response(body, status=f"{s} X")) for s in (2**31 - 1, 99, 404)]
    _, _, ledger = _read(write_warc(tmp_path / "types.warc.gz", records))
    assert ledger["stages"][0]["drops"] == {
        "not_html:invalid": 4,
        "not_html:text/plain": 1,
        "not_html:application/x-javascript": 1,
        "bad_http_status": 2,
        "http_status:404": 1,
    }
