"""User errors of the `interloom` command line: one clear line on stderr naming the file or field, exit code 2,
no traceback; and broken inputs inside a build counted, not silently read as nothing. No Ray is started."""

from __future__ import annotations

import time

import pytest
from conftest import real_path

from corpus.stats import Ledger, check_funnel
from crawl.live.crawler import read_seeds
from crawl.sources import discover_units, open_source
from pipeline.cli import main


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_yaml_syntax_error_is_one_line_with_file_and_position(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("images:\n  min_side: [1\n")
    err = _error(capsys, ["build", "--config", str(f), "--print-config"])
    assert err.count("\n") == 1
    assert "run.yaml is not valid YAML: line 3, column 1" in err and "started at line 2, column 13" in err


def test_bad_set_value_names_the_key(capsys):
    err = _error(capsys, ["build", "--set", "images.min_side=[1", "--print-config"])
    assert err.count("\n") == 1 and "images.min_side=[1" in err and "line 1, column 3" in err


def test_folder_input_without_html_is_an_error_not_an_empty_build(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty: folder holds no HTML files"):
        discover_units([str(empty)])
    warcs = tmp_path / "warcs"
    warcs.mkdir()
    (warcs / "a.warc.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"holds WARC files; give them as files, e.g. --input '.*/warcs/\*.warc.gz'"):
        discover_units([str(warcs)])
    (warcs / "sub").mkdir()
    (warcs / "sub" / "page.HTML").write_text("<p>x</p>")
    assert discover_units([str(warcs)])[0].kind == "html"


def _read(path):
    src = open_source(discover_units([str(path)])[0])
    src.index_images()
    ledger = Ledger()
    pages = list(src.pages(ledger))
    return pages, ledger.to_dict(), ledger.rejects_table().to_pylist()


@pytest.mark.parametrize("payload", [b"hello, not a WARC\n", b"", bytes(range(256)) * 20])
def test_file_with_no_warc_record_is_a_counted_read_error(tmp_path, payload):
    f = tmp_path / "junk.warc"
    f.write_bytes(payload)
    pages, stats, rejects = _read(f)
    assert pages == [] and stats["stages"][0]["drops"] == {"warc_read_error": 1}
    assert check_funnel(stats) == []
    assert "junk.warc: no WARC record found" in rejects[0]["detail"]


def test_gzip_warc_cut_inside_a_record_is_a_counted_read_error(tmp_path):
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(real_path("dev", "warc", "iana.warc.gz").read_bytes()[:100_000])
    pages, stats, rejects = _read(cut)
    read = stats["stages"][0]
    assert read["drops"]["warc_read_error"] == 1 and read["out"] == len(pages) > 0
    assert check_funnel(stats) == []
    assert any("cut.warc.gz: file ends inside a record (truncated)" in r["detail"] for r in rejects)


def test_whole_warcs_have_no_read_error():
    for name in ("iana.warc.gz", "warcfile.warc.gz", "example-iana.org-chunked.warc"):
        _, stats, _ = _read(real_path("dev", "warc", name))
        assert "warc_read_error" not in stats["stages"][0]["drops"], name


def test_a_seed_file_that_starts_with_a_byte_order_mark_loses_no_seed(tmp_path):
    """A seed list saved by an editor that writes a UTF-8 byte order mark (Notepad, CRLF): the mark was read as
    part of the first URL, which the crawl then dropped (bad_scheme). The mark is skipped."""
    seeds = tmp_path / "seeds.txt"
    seeds.write_bytes("\ufeffhttp://h.test/a\r\n# c\r\nhttp://h.test/b\r\n".encode())
    assert read_seeds(seeds) == ["http://h.test/a", "http://h.test/b"]


def test_bad_seed_files_name_the_file(tmp_path):
    binary = tmp_path / "seeds.txt"
    binary.write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    with pytest.raises(ValueError, match="seeds.txt: not UTF-8 text"):
        read_seeds(binary)
    parquet = tmp_path / "seeds.parquet"
    parquet.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="seeds.parquet: not a readable Parquet file"):
        read_seeds(parquet)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="empty.txt holds no URL"):
        read_seeds(empty)
    with pytest.raises(ValueError, match="is a folder"):
        read_seeds(tmp_path)


def test_damaged_manifest_line_names_the_file_and_line(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    good = '{"name": "p", "documents": 1, "images": 0, "bytes": 10, "sha256": "x"}\n'
    (corpus / "manifest.jsonl").write_text(good + "not json\n" + '{"torn": ')
    err = _error(capsys, ["export", "hf", str(corpus), str(tmp_path / "out"), "--no-progress"])
    assert "manifest.jsonl line 2: not a shard entry" in err and "'not json'" in err


def test_demo_pages_out_of_range(capsys):
    assert "--pages 500: the sample has 1 to" in _error(capsys, ["demo", "--pages", "500"])


def test_every_command_help_has_an_example(capsys):
    for argv in (
        ["demo"],
        ["build"],
        ["refilter"],
        ["crawl"],
        ["inspect"],
        ["export"],
        ["quality", "train"],
        ["tokenizer", "train"],
        ["train"],
        ["eval"],
        ["generate"],
    ):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        # an example after the options, on a line of its own (the epilog's line breaks are kept, also for the
        # parsers of sub-subcommands such as `quality train`)
        assert f"\n  interloom {' '.join(argv)} " in out.split("options:", 1)[1], argv


def test_output_that_cannot_be_created_is_one_line_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder is needed
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.jsonl").write_text("")
    assert main(["export", "hf", str(corpus), str(blocker / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and f"{blocker / 'out'}: " in err


def test_tokenizer_max_documents_below_one(capsys):
    assert "--max-documents 0" in _error(
        capsys, ["tokenizer", "train", "corpus", "-o", "t.json", "--max-documents", "0"]
    )


def test_set_inside_a_list_says_to_set_the_list_whole(capsys):
    err = _error(capsys, ["train", "debug-cpu", "--corpus", "c", "--set", "stages.0.steps=5"])
    assert "'stages' is a list; set it whole, e.g. --set 'stages=[...]'" in err


@pytest.mark.parametrize(
    "setting,shown",
    [
        ("filters.x=abc", "filters.x: unknown key"),
        ("images.min_side=abc", "images.min_side: Input should be a valid integer, unable to parse string"),
        ("images=3", "images: Input should be a valid dictionary"),
    ],
)
def test_bad_config_value_is_one_line_naming_the_key(capsys, setting, shown):
    err = _error(capsys, ["build", "--set", setting, "--print-config"])
    assert err.count("\n") == 1 and shown in err and f"--set {setting}" in err


def test_yaml_config_with_two_problems_and_one_not_utf8_are_one_line(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("images:\n  min_side: abc\nfoo: 1\n")
    err = _error(capsys, ["build", "--config", str(f), "--print-config"])
    assert (
        err.count("\n") == 1 and "images.min_side: Input should be a valid integer" in err and "; foo: unknown" in err
    )
    f.write_bytes(b"\xff\xfeimages: {}\n")
    err = _error(capsys, ["build", "--config", str(f), "--print-config"])
    assert err.count("\n") == 1 and f"config file {f}: cannot read it" in err


@pytest.mark.parametrize(
    "argv,shown",
    [
        (["build", "--sample-files", "inf", "--print-config"], "input.sample_files: Input should be a finite number"),
        (
            ["build", "--set", "filters.language.min_score=.nan", "--print-config"],
            "min_score: Input should be a finite",
        ),
        (["build", "--set", "images.max_aspect=.inf", "--print-config"], "images.max_aspect: Input should be a fin"),
    ],
)
def test_infinite_or_nan_config_numbers_are_refused(capsys, argv, shown):
    """`--sample-files inf` used to end in an OverflowError traceback; `.nan` thresholds were taken."""
    err = _error(capsys, argv)
    assert err.count("\n") == 1 and shown in err


def test_a_yaml_alias_bomb_is_refused_not_expanded(tmp_path, capsys):
    """Nine lines of YAML aliases name 9**9 values; validating them would run for hours. Refused by size."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    f = tmp_path / "bomb.yaml"
    f.write_text("\n".join(lines) + "\nfilters:\n  language:\n    languages: *a8\n")
    started = time.monotonic()
    err = _error(capsys, ["build", "--config", str(f), "--print-config"])
    assert "bomb.yaml: more than 100,000 values once YAML aliases are expanded" in err and err.count("\n") == 1
    assert time.monotonic() - started < 5
    err = _error(capsys, ["build", "--set", "filters.language.languages=" + "[" * 3 + "]" * 3, "--print-config"])
    assert "alias" not in err  # a small value is validated as usual


def test_yaml_nested_thousands_deep_or_a_huge_integer_is_one_line(tmp_path, capsys):
    """A config file or --set value nested 50,000 deep (PyYAML's composer recursed: RecursionError traceback)
    and an integer of 5,000 digits (int() refused it with a ValueError that named no file)."""
    deep = tmp_path / "deep.yaml"
    deep.write_text("images:\n  min_side: " + "[" * 50_000 + "]" * 50_000 + "\n")
    big = tmp_path / "big.yaml"
    big.write_text("images:\n  min_side: " + "9" * 5_000 + "\n")
    for argv, shown in (
        (["build", "--config", str(deep), "--print-config"], "deep.yaml is not valid YAML: nested too deep"),
        (["build", "--config", str(big), "--print-config"], "big.yaml is not valid YAML: Exceeds the limit"),
        (["build", "--set", "images.min_side=" + "[" * 50_000, "--print-config"], "--set images.min_side: value"),
    ):
        err = _error(capsys, argv)
        assert err.count("\n") == 1 and shown in err and "Traceback" not in err


def test_train_on_a_damaged_or_empty_manifest_is_refused_before_ray_starts(tmp_path, capsys):
    damaged, empty = tmp_path / "damaged", tmp_path / "empty"
    damaged.mkdir()
    empty.mkdir()
    (damaged / "manifest.jsonl").write_text('{"name": "part-0\n')
    (empty / "manifest.jsonl").write_text("")
    for corpus, shown in ((damaged, "manifest.jsonl line 1: not a shard entry"), (empty, "lists no shard")):
        err = _error(capsys, ["train", "debug-cpu", "--corpus", str(corpus), "--output", str(tmp_path / "run")])
        assert err.count("\n") == 1 and shown in err
