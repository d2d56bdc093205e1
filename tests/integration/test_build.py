"""The corpus-build job end to end, on the real dev WARCs, on a real local Ray instance."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _warcgen import http_response, page_html, page_record, warc_record, write_warc
from conftest import DEV_SETTINGS, REPO, dev_warcs, real_path

from corpus.config import load_config
from corpus.format import Corpus
from corpus.stats import check_funnel
from crawl.image_select import FEATURES
from pipeline.build import BuildConfig, build_corpus

pytestmark = pytest.mark.slow


def test_funnel_adds_up_and_chains(dev_corpus):
    out, stats = dev_corpus
    assert check_funnel(stats) == []
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["stages"] == stats["stages"]
    # a stage's out is the next stage's in (documents flow through the stages in order)
    stages = stats["stages"]
    for prev, nxt in zip(stages, stages[1:]):
        assert prev["out"] == nxt["in"], (prev["name"], nxt["name"])
    # documents out of the last stage are exactly the documents in the manifest
    corpus = Corpus(out)
    assert stages[-1]["out"] == sum(s.documents for s in corpus.shards()) > 0
    # every dropped record, document and image is in rejects with its stage and reason
    import collections

    import pyarrow.parquet as pq

    rejects = pq.read_table(out / "rejects").to_pylist()
    logged = collections.Counter((r["stage"], r["item"] in ("document", "record"), r["reason"]) for r in rejects)
    for s in stages:
        for reason, n in s["drops"].items():
            assert logged[(s["name"], True, reason)] == n, (s["name"], reason)
    for key, s in stats["items"].items():
        stage, kind = key.split("/")
        if kind == "image":
            for reason, n in s["drops"].items():
                assert logged[(stage, False, reason)] == n, (key, reason)


def test_extract_image_drops_are_rejects_rows_with_their_reasons(dev_corpus):
    """Every image the extract step leaves out of a kept document is a rejects row of the build (stage
    `extract`, item `image`) with its reason: a hard rule, `image_model:<feature>` with the model's
    probability, or a duplicate; the rows add up to the step's image counts."""
    import collections

    import pyarrow.parquet as pq

    out, stats = dev_corpus
    rows = [r for r in pq.read_table(out / "rejects").to_pylist() if r["stage"] == "extract" and r["item"] == "image"]
    counts = stats["items"]["extract/image"]
    assert rows and collections.Counter(r["reason"] for r in rows) == collections.Counter(counts["drops"])
    assert counts["in"] - counts["out"] == len(rows)
    model_rows = [r for r in rows if r["reason"].startswith("image_model:")]
    assert model_rows and {r["reason"] for r in rows} - {r["reason"] for r in model_rows}  # model and rules
    for r in model_rows:
        assert r["reason"].removeprefix("image_model:") in FEATURES
        assert re.fullmatch(r"\S+ p=0\.\d\d", r["detail"]) and r["id"] and r["url"]


def test_images_sit_at_their_page_positions_with_bytes(dev_corpus):
    out, _ = dev_corpus
    corpus = Corpus(out)
    blackbook = [d for d in corpus.iter_documents() if "blackbook" in d.source]
    with_images = [d for d in blackbook if d.image_list]
    assert len(with_images) >= 10
    # most of the blackbook pages' images come from the same WARC
    import pyarrow.parquet as pq

    [rejects] = [p for p in (out / "rejects").glob("IAH-20080430204825*.parquet") if ".dedup." not in p.name]
    image_drops = [r for r in pq.read_table(rejects).to_pylist() if r["item"] == "image"]
    not_found = sum(r["reason"] == "image_not_in_source" for r in image_drops)
    n_kept = sum(len(d.image_list) for d in blackbook)
    assert not_found < 0.2 * (len(image_drops) + n_kept)
    for d in with_images:
        d.check()
        for im in d.image_list:
            assert im.data and im.sha1 and len(im.phash) == 16 and im.member

    # reading order: images sit between text blocks, not all appended at one end
    def has_text_around_an_image(d):
        pos = [i for i, im in enumerate(d.images) if im is not None]
        txt = [i for i, t in enumerate(d.texts) if t is not None]
        return any(txt and txt[0] < i < txt[-1] for i in pos)

    assert sum(map(has_text_around_an_image, with_images)) >= 3


def test_manifest_index_and_shards_agree(dev_corpus):
    out, _ = dev_corpus
    corpus = Corpus(out)
    for shard in corpus.shards():
        index = corpus.read_index(shard).to_pylist()
        docs = list(corpus.iter_shard(shard))
        assert [r["id"] for r in index] == [d.id for d in docs]
        assert shard.documents == len(docs) and shard.images == sum(len(d.image_list) for d in docs)
    build = json.loads((out / "build.json").read_text())
    assert build["finished_at"] and build["config"]["images"]["min_side"] == 32


def _wait_for(root: Path, pattern: str, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if root.exists() and any(root.glob(pattern)):
            return
        if proc.poll() is not None:
            pytest.fail(f"build ended before {pattern} appeared: rc={proc.returncode}")
        time.sleep(0.02)
    pytest.fail(f"{pattern} did not appear within {timeout}s")


def _run_build(out: Path, workers: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "build",
        "--no-progress",
        "--workers",
        str(workers),
        "--output",
        str(out),
    ]
    for setting in DEV_SETTINGS:
        cmd += ["--set", setting]
    for w in dev_warcs():
        cmd += ["--input", w]
    return subprocess.Popen(
        cmd, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _kill(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_and_resume_gives_the_same_corpus_with_other_parallelism(dev_corpus, tmp_path):
    """Killed in phase 1 and again in phase 3, each resume with another worker count (1, then 2, then 1; the
    worker count does not change the corpus, so it does not block a resume): the manifest is byte-identical
    to the uninterrupted 2-worker build's (same shards, same sha256, same order), and no work folder is left."""
    reference, _ = dev_corpus
    out = tmp_path / "corpus"
    proc = _run_build(out, workers=1)
    _wait_for(out, "_work/units/*/DONE.json", proc)
    _kill(proc)
    assert not (out / "manifest.jsonl").exists()
    proc = _run_build(out, workers=2)
    _wait_for(out, "_work/units/*/WRITTEN.json", proc)
    _kill(proc)
    proc = _run_build(out, workers=1)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    assert not (out / "_work").exists()
    assert (out / "manifest.jsonl").read_bytes() == (reference / "manifest.jsonl").read_bytes()
    ref_stats = json.loads((reference / "stats.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"] == ref_stats["stages"] and stats["items"] == ref_stats["items"]
    assert not list((out / "shards").glob("*.tmp"))
    assert re.search(r"documents in \d+ shards", log)


def test_rerun_of_a_finished_build_does_nothing(dev_corpus):
    """Also with another worker count, and without leaving a work folder behind."""
    out, stats = dev_corpus
    for workers in (2, 1):
        again = build_corpus(
            dev_warcs(), out, load_config(BuildConfig, None, [f"ray.workers={workers}", *DEV_SETTINGS]), progress=False
        )
        assert again["stages"] == stats["stages"]
        assert not (out / "_work").exists()


def test_other_config_on_same_output_is_refused_naming_what_differs(dev_corpus):
    out, _ = dev_corpus
    cfg = load_config(
        BuildConfig, None, ["ray.workers=1", *DEV_SETTINGS, "images.min_side=10", "output.max_shard_docs=20"]
    )
    with pytest.raises(ValueError, match="other inputs or config") as refused:
        build_corpus(dev_warcs(), out, cfg, progress=False)
    message = str(refused.value)
    assert "images.min_side: 32 -> 10" in message and "output.max_shard_docs: 16 -> 20" in message
    assert "ray.workers" not in message
    *kept, left_out = dev_warcs()
    with pytest.raises(ValueError, match=re.escape(f"inputs: - {left_out}")):
        build_corpus(kept, out, load_config(BuildConfig, None, ["ray.workers=2", *DEV_SETTINGS]), progress=False)
    assert not (out / "_work").exists()


def test_every_dev_page_and_broken_image_goes_through_a_build(tmp_path, ray_local):
    """All real dev pages (HTML folders, .html and .html.gz) and the broken images of images/edge_cases,
    shown by a page of their own, go through a build: no crash, every file and image accounted for."""
    html = real_path("dev", "html")
    edge = real_path("dev", "images", "edge_cases")
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    imgs = []
    for p in sorted(edge.iterdir()):
        (gallery / p.name).write_bytes(p.read_bytes())  # a temporary copy beside the page, outside the repo
        imgs.append(
            f"<p>Figure {p.stem} shows what the camera recorded that afternoon in the old town.</p>"
            f'<img src="{p.name}" alt="{p.stem}">'
        )
    (gallery / "index.html").write_text(
        "<html><head><title>Broken images</title></head><body><article><h1>A gallery of odd files</h1>"
        + "".join(imgs)
        + "<p>That is all of them, one after the other, as they came from the cameras.</p>"
        "</article></body></html>"
    )
    inputs = [
        str(html / "trafilatura" / "pages"),
        str(html / "readability"),
        str(html / "scrapinghub" / "html"),
        str(gallery),
    ]
    n_files = sum(
        1 for d in inputs for p in Path(d).rglob("*") if p.is_file() and p.name.endswith((".html", ".htm", ".html.gz"))
    )
    out = tmp_path / "corpus"
    cfg = load_config(BuildConfig, None, ["ray.workers=2", *DEV_SETTINGS, "images.min_side=8"])
    stats = build_corpus(inputs, out, cfg, progress=False)
    assert check_funnel(stats) == []
    read = stats["stages"][0]
    assert read["name"] == "read" and read["in"] == n_files
    image_drops = stats["items"]["images/image"]["drops"]
    assert image_drops.get("truncated_image", 0) >= 2  # the two truncated JPEGs
    gallery_docs = [d for d in Corpus(out).iter_documents() if d.url.endswith("gallery/index.html")]
    assert len(gallery_docs) == 1 and 1 <= len(gallery_docs[0].image_list) < len(list(edge.iterdir()))


def _corpus_bytes(out: Path) -> dict[str, bytes]:
    """The corpus's files that must not depend on the machine: manifest, shards, index."""
    files = [out / "manifest.jsonl", *sorted((out / "shards").glob("*")), *sorted((out / "index").glob("*"))]
    return {str(f.relative_to(out)): f.read_bytes() for f in files}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_a_build_under_a_cpu_hog_gives_the_same_corpus(tmp_path, ray_local):
    """No wall-clock limit decides what is kept: the same small build on an idle machine and with every CPU
    saturated by busy-looping processes (one per CPU, started and killed here) gives byte-identical manifests, shards and
    index, and neither run reports an error (a safety-net timeout would be one)."""
    names = ("IAH-urls-wget.warc.gz", "iana.warc.gz", "whirlwind.warc.gz")
    warcs = [w for w in dev_warcs() if Path(w).name in names]
    assert len(warcs) == 3
    cfg = load_config(BuildConfig, None, ["ray.workers=2", *DEV_SETTINGS])  # the default extract limits
    idle = build_corpus(warcs, tmp_path / "idle", cfg, progress=False)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in os.sched_getaffinity(0)]
    try:
        loaded = build_corpus(warcs, tmp_path / "loaded", cfg, progress=False)
        hog_cpu = sum(_cpu_seconds(h.pid) for h in hogs)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert hog_cpu > 0.5 * loaded["build"]["seconds"]  # the hogs really competed for the CPUs
    assert idle["build"]["documents"] > 10
    assert idle["build"]["errors"] == loaded["build"]["errors"] == {}
    assert loaded["stages"] == idle["stages"]
    assert _corpus_bytes(tmp_path / "loaded") == _corpus_bytes(tmp_path / "idle")


def test_early_cuts_give_the_same_corpus(tmp_path, ray_local):
    """With filters.image_count.min_images=1 a page none of whose images passes the junk rules and is in its
    WARC skips trafilatura (extract drop no_image_candidates); a page whose X-Robots-Tag header says noai is
    cut from its headers alone, before decoding (url_rules drop optout_noai; the URL cut against a corpus
    being appended to: tests/pipeline/test_append.py). The corpus is byte-identical to the build without
    the cuts, where image_count and opt_out drop those pages after extraction."""

    def optout_page(url: str, header: str) -> bytes:
        return warc_record(url, http_response(page_html(url.rsplit("/", 1)[-1]), headers={"X-Robots-Tag": header}))

    optout = write_warc(
        tmp_path / "optout.warc.gz",
        [
            optout_page("https://optout.example/a", "noai"),
            optout_page("https://optout.example/b", "googlebot: noindex, NoAI"),
            optout_page("https://optout.example/c", "noimageai"),  # not a page drop: extracted as before
            page_record("https://optout.example/d"),
        ],
    )
    inputs = [*dev_warcs(), str(optout)]
    settings = ["ray.workers=2", *DEV_SETTINGS, "filters.image_count.min_images=1"]
    cut = build_corpus(inputs, tmp_path / "cut", load_config(BuildConfig, None, settings), progress=False)
    full = build_corpus(
        inputs,
        tmp_path / "full",
        load_config(BuildConfig, None, [*settings, "extract.early_cuts=false"]),
        progress=False,
    )
    stages_cut, stages_full = ({s["name"]: s for s in st["stages"]} for st in (cut, full))
    n_cut = stages_cut["extract"]["drops"].get("no_image_candidates", 0)
    assert n_cut >= 20 and "no_image_candidates" not in stages_full["extract"]["drops"]
    assert stages_cut["url_rules"]["drops"] == {"optout_noai": 2} and "url_rules" not in stages_full
    assert stages_full["opt_out"]["drops"] == {"optout_noai": 2} and stages_cut["opt_out"]["drops"] == {}
    assert cut["build"]["documents"] == full["build"]["documents"] >= 10
    assert stages_cut["read"] == stages_full["read"]
    # the pages the cut decided early are the ones image_count (or a text filter before it) drops later
    assert stages_cut["image_count"]["in"] < stages_full["image_count"]["in"]
    assert _corpus_bytes(tmp_path / "cut") == _corpus_bytes(tmp_path / "full")


def test_pages_whose_images_all_fail_the_image_rules_are_cut_with_the_same_corpus(tmp_path, ray_local):
    """The early cut on image headers: with the default image rules (shorter side >= 150 px), a page of the
    dev WARC whose in-WARC images all fail them by their headers (icons, spacers, thumbnails) skips trafilatura
    as the extract drop no_usable_image; the corpus is byte-identical to the build without cuts."""
    inputs = [str(real_path("dev", "warc", "IAH-20080430204825-00000-blackbook.warc.gz"))]
    settings = ["ray.workers=2", "filters.image_count.min_images=1"]
    cut = build_corpus(inputs, tmp_path / "cut", load_config(BuildConfig, None, settings), progress=False)
    full = build_corpus(
        inputs,
        tmp_path / "full",
        load_config(BuildConfig, None, [*settings, "extract.early_cuts=false"]),
        progress=False,
    )
    extract_cut = next(s for s in cut["stages"] if s["name"] == "extract")
    assert extract_cut["drops"].get("no_usable_image", 0) >= 10, extract_cut["drops"]
    assert cut["build"]["documents"] == full["build"]["documents"] >= 1
    assert _corpus_bytes(tmp_path / "cut") == _corpus_bytes(tmp_path / "full")


def test_repeated_captures_are_cut_before_parsing_with_the_same_corpus(tmp_path, ray_local):
    """A WARC holding the same capture of a URL several times (same payload and headers, other fetch times
    and record ids): all but the one global URL dedup would keep (the latest, then the smallest id) are cut
    before parsing (url_rules duplicate_url); a capture of the URL with another payload is not. The corpus is
    byte-identical to the build without the cuts, where global dedup removes them."""
    truth = json.loads(real_path("dev", "html", "scrapinghub", "ground-truth.json").read_text(encoding="utf-8"))
    bodies = [v["articleBody"] for _, v in sorted(truth.items()) if len(v["articleBody"].split()) >= 150][:3]

    def page(i: int) -> bytes:
        paras = "".join(f"<p>{p}</p>" for p in bodies[i].split("\n") if p.strip())
        return f"<html><head><title>t{i}</title></head><body><article><h1>t{i}</h1>{paras}</article></body></html>".encode()

    x, z = "https://news.example/x", "https://news.example/z"
    captures = [  # (url, body, date, capture number)
        (x, 0, "2024-01-01T00:00:00Z", 1),
        (x, 0, "2024-02-01T00:00:00Z", 2),
        (x, 0, "2024-02-01T00:00:00Z", 3),  # these three: one page; 2 and 3 tie on the fetch time
        (x, 1, "2024-03-01T00:00:00Z", 4),  # another payload: the latest capture of x, kept by global dedup
        (z, 2, "2024-01-01T00:00:00Z", 1),
        (z, 2, "2024-01-01T00:00:00Z", 2),
    ]
    warc = write_warc(
        tmp_path / "captures.warc.gz",
        [warc_record(u, http_response(page(b)), date=d, capture=n) for u, b, d, n in captures],
    )
    cut = build_corpus([str(warc)], tmp_path / "cut", load_config(BuildConfig, None, DEV_SETTINGS), progress=False)
    full = build_corpus(
        [str(warc)],
        tmp_path / "full",
        load_config(BuildConfig, None, [*DEV_SETTINGS, "extract.early_cuts=false"]),
        progress=False,
    )
    stages_cut, stages_full = ({s["name"]: s for s in st["stages"]} for st in (cut, full))
    assert stages_cut["url_rules"]["drops"] == {"duplicate_url": 3}
    assert stages_cut["dedup"]["drops"] == {"duplicate_url": 1}
    assert stages_full["dedup"]["drops"] == {"duplicate_url": 4}
    assert _corpus_bytes(tmp_path / "cut") == _corpus_bytes(tmp_path / "full")
    docs = {d.url: d for d in Corpus(tmp_path / "cut").iter_documents()}
    assert set(docs) == {x, z} and docs[x].fetched_at.startswith("2024-03-01")


def test_summary_says_why_the_readme_example_is_small(tmp_path):
    """The README's first command (default settings, the dev WARCs) keeps a few documents: the end-of-build
    summary names the stages that removed most pages and the settings that decided it."""
    out = tmp_path / "corpus"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "build",
        "--no-progress",
        "--workers",
        "2",
        "--output",
        str(out),
        "--input",
        str(real_path("dev", "warc")) + "/*.warc.gz",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    stats = json.loads((out / "stats.json").read_text())
    pages = next(s for s in stats["stages"] if s["name"] == "extract")["in"]
    kept = stats["build"]["documents"]
    assert pages > 100 and kept < 0.1 * pages
    notes = stats["build"]["notes"]
    assert notes[0].startswith(f"{kept} of {pages} pages kept (") and "; most removed by: " in notes[0]
    by_stage = {line.split(" removed ", 1)[0]: line for line in notes[1:]}
    # the early cuts count the pages without a usable image at extract: no candidate in the WARC, or only
    # images whose headers fail the image rules (too small for images.min_side=150)
    extract_line = by_stage["extract"]
    assert "no_image_candidates" in extract_line and "--set images.fetch=true" in extract_line
    assert "lower filters.image_count.min_images (now 1)" in extract_line
    assert "no_usable_image" in extract_line and "lower images.min_side (now 150)" in extract_line
    assert "filters.gopher_quality.min_doc_words=50" in by_stage["gopher_quality"]
    for line in notes:
        assert f"  {line}" in done.stdout.splitlines()
    assert stats["build"]["errors"] == {} and "ERROR" not in done.stdout


def test_refilter_equals_a_fresh_build_with_the_stricter_settings(dev_corpus, tmp_path):
    """`interloom refilter` applies stricter thresholds to the stored signals, without re-extracting: the new
    corpus is byte for byte what a fresh build with those settings writes. A looser threshold, or a setting
    that is no threshold on a stored signal, is refused naming the key."""
    from pipeline.cli import main

    reference, _ = dev_corpus
    stricter = ["filters.image_count.min_images=1", "filters.language.min_score=0.8"]
    out = tmp_path / "refiltered"
    argv = ["refilter", str(reference), "--output", str(out)]
    assert main([*argv, *(a for s in stricter for a in ("--set", s))]) == 0
    stats = json.loads((out / "stats.json").read_text())
    refilter = stats["stages"][-1]
    assert refilter["name"] == "refilter" and check_funnel(stats) == []
    assert refilter["drops"]["filters.image_count.min_images"] >= 10
    assert refilter["drops"]["filters.language.min_score"] >= 1
    # dropped documents that were a duplicate cluster's kept copy are named (a fresh build could keep another
    # copy; on the dev WARCs their copies fail the stricter thresholds too, so the corpora agree below)
    keepers = stats["build"]["dedup_keepers_dropped"]
    assert any("kept copy of a duplicate cluster" in n for n in stats["build"]["notes"]) == (keepers > 0)
    fresh = build_corpus(
        dev_warcs(),
        tmp_path / "fresh",
        load_config(BuildConfig, None, ["ray.workers=2", *DEV_SETTINGS, *stricter]),
        progress=False,
    )
    assert fresh["build"]["documents"] == refilter["out"] > 0
    assert _corpus_bytes(out) == _corpus_bytes(tmp_path / "fresh")
    for looser, why in [
        ("filters.language.min_score=0.5", "filters.language.min_score: 0.65 -> 0.5 is looser"),
        ("images.min_side=300", "images.min_side: 32 -> 300 is not a threshold on a signal"),
        ("filters.c4.enabled=true", "filters.c4.enabled: False -> True is not a threshold"),
    ]:
        with pytest.raises(ValueError, match=re.escape(why)):
            from pipeline.refilter import refilter_corpus

            refilter_corpus(reference, tmp_path / "refused", [looser])
    assert not (tmp_path / "refused").exists()


def test_a_safety_net_timeout_is_an_error_of_the_run(tmp_path, ray_local, capsys):
    """When the wall-clock guard fires (here: set absurdly low), the page is the drop extract_timeout and the
    run reports an error in stats.json and the end-of-build summary: the corpus may differ from another run's."""
    from pipeline.cli.build import print_summary

    [warc] = [w for w in dev_warcs() if Path(w).name == "iana.warc.gz"]
    cfg = load_config(BuildConfig, None, ["ray.workers=1", *DEV_SETTINGS, "extract.timeout_s=0.000001"])
    stats = build_corpus([warc], tmp_path / "corpus", cfg, progress=False)
    extract = next(s for s in stats["stages"] if s["name"] == "extract")
    assert extract["drops"]["extract_timeout"] == extract["in"] > 0
    assert stats["build"]["errors"] == {"extract_timeout": extract["in"]}
    assert json.loads((tmp_path / "corpus" / "stats.json").read_text())["build"]["errors"] == stats["build"]["errors"]
    print_summary(stats, str(tmp_path / "corpus"))
    shown = capsys.readouterr().out
    assert f"ERROR: {extract['in']} x extract_timeout" in shown and "another run may give another corpus" in shown
