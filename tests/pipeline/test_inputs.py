"""`--input` at crawl scale without Ray: path lists (gzip or text, comments, relative entries joined to
--input-prefix), WET/WAT entries refused, seeded samples, and the CLI errors a user sees."""

from __future__ import annotations

import gzip

import pytest

from pipeline.cli import main
from pipeline.inputs import InputConfig, resolve_inputs, sample


def _files(tmp_path, n: int) -> list[str]:
    d = tmp_path / "crawl-data"
    d.mkdir()
    for i in range(n):
        (d / f"part-{i:02d}.warc.gz").write_bytes(b"")
    return [str(d / f"part-{i:02d}.warc.gz") for i in range(n)]


def test_a_gzip_path_list_resolves_relative_entries_against_the_prefix(tmp_path):
    files = _files(tmp_path, 3)
    listing = tmp_path / "warc.paths.gz"
    listing.write_bytes(gzip.compress(b"# a dump\ncrawl-data/part-02.warc.gz\n\ncrawl-data/part-00.warc.gz\n"))
    cfg = InputConfig(prefix=str(tmp_path) + "/")
    assert resolve_inputs([str(listing)], cfg) == [files[2], files[0]]
    with pytest.raises(
        ValueError,
        match=r"warc.paths.gz line 2: crawl-data/part-02.warc.gz is a relative path; "
        r"give --input-prefix",
    ):
        resolve_inputs([str(listing)])
    text = tmp_path / "mine.txt"  # a plain text list of absolute paths and URLs needs no prefix
    text.write_text(f"{files[1]}\ns3://bucket/x/CC-MAIN-1.warc.gz\n")
    assert resolve_inputs([str(text)]) == [files[1], "s3://bucket/x/CC-MAIN-1.warc.gz"]
    missing = tmp_path / "missing.txt"
    missing.write_text(f"{tmp_path}/nowhere.warc.gz\n")
    with pytest.raises(ValueError, match="nowhere.warc.gz does not exist"):
        resolve_inputs([str(missing)])


def test_a_path_list_that_starts_with_a_byte_order_mark_is_read(tmp_path):
    """A path list saved by an editor that writes a UTF-8 byte order mark (Notepad) with CRLF line ends: the
    mark was read as part of the first entry, so an absolute path was refused as 'a relative path' (the mark
    invisible in the message), and with --input-prefix joined into a URL no file has. The mark is skipped."""
    files = _files(tmp_path, 2)
    listing = tmp_path / "mine.txt"
    listing.write_bytes(f"\ufeff{files[1]}\r\n\r\n# comment\r\n{files[0]}\r\n".encode())
    assert resolve_inputs([str(listing)]) == [files[1], files[0]]
    relative = tmp_path / "warc.paths.gz"
    relative.write_bytes(gzip.compress("\ufeffcrawl-data/part-01.warc.gz\n".encode()))
    assert resolve_inputs([str(relative)], InputConfig(prefix=str(tmp_path))) == [files[1]]


@pytest.mark.parametrize(
    "entry,kind", [("crawl-data/x/wet/CC-MAIN-1.warc.wet.gz", "WET"), ("crawl-data/x/wat/CC-MAIN-1.warc.wat.gz", "WAT")]
)
def test_wet_and_wat_files_in_a_list_are_refused(tmp_path, entry, kind):
    listing = tmp_path / "wet.paths.gz"
    listing.write_bytes(gzip.compress(f"{entry}\n".encode()))
    with pytest.raises(ValueError, match=rf"line 1: {entry} is a {kind} .* use the dump's warc.paths.gz"):
        resolve_inputs([str(listing)], InputConfig(prefix="s3://commoncrawl/"))


def test_a_sample_is_seeded_sized_and_in_input_order(tmp_path):
    files = _files(tmp_path, 20)
    pattern = str(tmp_path / "crawl-data" / "*.warc.gz")
    five = resolve_inputs([pattern], InputConfig(sample_files=5, sample_seed=7))
    assert len(five) == 5 and five == sorted(five) and set(five) <= set(files)
    assert resolve_inputs([pattern], InputConfig(sample_files=5, sample_seed=7)) == five  # same seed, same files
    others = {tuple(resolve_inputs([pattern], InputConfig(sample_files=5, sample_seed=s))) for s in range(8)}
    assert len(others) > 1  # the seed decides
    assert len(resolve_inputs([pattern], InputConfig(sample_files=0.25))) == 5
    assert len(resolve_inputs([pattern], InputConfig(sample_files=0.001))) == 1  # a share keeps at least one
    assert resolve_inputs([pattern], InputConfig(sample_files=50)) == files
    with pytest.raises(ValueError, match="neither a whole number"):
        sample(files, 2.5, 0)


def test_cli_errors_name_the_list_and_line(tmp_path, capsys):
    listing = tmp_path / "warc.paths"
    listing.write_text("crawl-data/a.warc.wet.gz\n")
    assert (
        main(
            ["build", "--input", str(listing), "--output", str(tmp_path / "out"), "--input-prefix", "s3://commoncrawl/"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "warc.paths line 1: crawl-data/a.warc.wet.gz is a WET (extracted text only) file" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    assert (
        main(
            [
                "build",
                "--input-prefix",
                "s3://commoncrawl/",
                "--sample-files",
                "10",
                "--set",
                "input.anon=true",
                "--print-config",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert '"prefix": "s3://commoncrawl/"' in out and '"sample_files": 10.0' in out and '"anon": true' in out


@pytest.mark.parametrize(
    "listing,message",
    [
        (b"../outside.warc.gz\n", r"line 1: \.\./outside.warc.gz climbs out of the prefix with '\.\.'"),
        (b"crawl-data/../../outside.warc.gz\n", r"line 1: crawl-data/\.\./\.\./outside.warc.gz climbs out"),
        (b"# ok\ngopher://host/a.warc.gz\n", r"line 2: gopher://host/a.warc.gz has an unknown URL scheme 'gopher'"),
        (b"\n# only comments\n   \n", r"the path list names no file"),
        (b"crawl-data/a\x00b.warc.gz\n", r"line 1: 'crawl-data/a\\x00b.warc.gz' holds a control character"),
        (b"crawl-data/more.paths.gz\n", r"line 1: .*more.paths.gz is a path list; a list names input files"),
        (bytes(range(128, 256)), r"cannot read the path list: UnicodeDecodeError"),
    ],
)
def test_hostile_path_list_entries_are_refused_naming_list_and_line(tmp_path, listing, message):
    _files(tmp_path, 1)
    (tmp_path / "outside.warc.gz").write_bytes(b"")  # what `..` would reach: it exists, and is still refused
    path = tmp_path / "warc.paths"
    path.write_bytes(listing)
    with pytest.raises(ValueError, match=message):
        resolve_inputs([str(path)], InputConfig(prefix=str(tmp_path / "crawl-data") + "/"))


def test_a_list_that_lists_itself_is_refused(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text(f"{path}\n")
    with pytest.raises(ValueError, match=r"mine.txt line 1: .*mine.txt is a path list"):
        resolve_inputs([str(path)])


def test_a_gzip_list_that_is_not_gzip(tmp_path):
    files = _files(tmp_path, 1)
    plain = tmp_path / "warc.paths.gz"  # named .gz, written as plain text: read as text
    plain.write_text(files[0] + "\n")
    assert resolve_inputs([str(plain)]) == files
    packed = gzip.compress((files[0] + "\n").encode() * 50)
    damaged = tmp_path / "damaged.paths.gz"  # gzip magic, deflate stream garbled
    damaged.write_bytes(packed[:10] + bytes(b ^ 0xFF for b in packed[10:30]) + packed[30:])
    with pytest.raises(ValueError, match=r"damaged.paths.gz: cannot read the path list: damaged gzip data"):
        resolve_inputs([str(damaged)])
    cut = tmp_path / "cut.paths.gz"
    cut.write_bytes(packed[:20])
    with pytest.raises(ValueError, match=r"cut.paths.gz: cannot read the path list: EOFError"):
        resolve_inputs([str(cut)])


@pytest.mark.parametrize("name,kind", [("a.warc.wet.gz", "WET"), ("a.warc.wat.gz", "WAT"), ("b.wet", "WET")])
def test_wet_and_wat_files_given_directly_are_refused(tmp_path, capsys, name, kind):
    (tmp_path / name).write_bytes(b"")
    for pattern in (str(tmp_path / name), str(tmp_path / "*")):  # the file itself, and a glob matching it
        with pytest.raises(ValueError, match=rf"{name} is a {kind} .*: use the crawl's .warc.gz files"):
            resolve_inputs([pattern])
    assert main(["build", "--input", str(tmp_path / name), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{name} is a {kind}" in err and "Traceback" not in err and not (tmp_path / "out").exists()


def test_an_unknown_url_scheme_given_directly_names_the_input():
    with pytest.raises(ValueError, match=r"--input gopher://host/\*.warc.gz: .* unknown URL scheme 'gopher'"):
        resolve_inputs(["gopher://host/*.warc.gz"])


def test_a_scheme_whose_package_is_missing_is_one_line(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed: gs:// can be read")
    with pytest.raises(ValueError, match=r"--input gs://bucket/a.warc.gz: reading gs:// needs a package .*gcsfs"):
        resolve_inputs(["gs://bucket/a.warc.gz"])
    listing = tmp_path / "mine.txt"
    listing.write_text("gs://bucket/a.warc.gz\n")
    with pytest.raises(ValueError, match=r"mine.txt line 1: reading gs:// needs a package"):
        resolve_inputs([str(listing)])
    assert main(["build", "--input", "gs://bucket/warc.paths", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the path list: ImportError" in err and "Traceback" not in err


def test_inputs_named_alike_give_their_documents_distinct_ids(tmp_path, monkeypatch):
    """Documents are named by their input's file or folder name: two folders both named `html`, or a WARC and
    its copy in another folder, gave documents the same ids and the build failed in dedup ("staged documents
    have duplicate ids"). The first input of a name keeps it; one input given twice is one unit."""
    from _warcgen import page_record, write_warc

    from corpus.stats import Ledger
    from crawl.sources import open_source
    from pipeline.build import make_units

    monkeypatch.chdir(tmp_path)
    for site in ("site1", "site2"):
        (tmp_path / site / "html").mkdir(parents=True)
        (tmp_path / site / "html" / "index.html").write_text(f"<html><body><p>{site}</p></body></html>")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_warc(tmp_path / folder / "x.warc.gz", [page_record("http://x.test/p.html")])
    units = make_units(["site1/html", "site2/html/", "a/x.warc.gz", "./a/x.warc.gz", "b/x.warc.gz"])
    assert [u.path for u in units] == ["a/x.warc.gz", "b/x.warc.gz", "site1/html", "site2/html"]
    assert [bool(u.label) for u in units] == [False, True, False, True]
    pages = []
    for u in units:
        source = open_source(u)
        source.index_images()
        pages += list(source.pages(Ledger()))
    assert [p.source.split("#")[0].split("/")[0] for p in pages[::2]] == ["warc:x.warc.gz", "html:html"]
    assert len({p.id for p in pages}) == 4
