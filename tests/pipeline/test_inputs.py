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
