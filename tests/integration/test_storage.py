"""Corpus storage: a build reading its WARCs from and writing its corpus to a real S3 API (moto's server on
127.0.0.1) while the endpoint goes away and comes back; a full disk and a read-only output (a real tmpfs that
fills up and a real read-only bind mount) give a clear error naming the path and keep the finished units."""

from __future__ import annotations

import errno
import gzip
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from _s3server import BUCKET, S3Server, environ
from conftest import real_path

from corpus.config import load_config
from corpus.format import Corpus
from corpus.stats import check_funnel
from corpus.storage import Storage, StorageError, is_transient
from pipeline.build import BuildConfig, build_corpus
from pipeline.inputs import resolve_inputs

# build mechanics under test (see tests/integration/test_build.py): no text-quality filters, generous timeouts
SETTINGS = [
    "images.min_side=32",
    "images.max_aspect=8",
    "extract.timeout_s=300",
    "ray.workers=2",
    "filters.gopher_quality.enabled=false",
    "filters.gopher_repetition.enabled=false",
    "filters.c4.enabled=false",
    "filters.fineweb.enabled=false",
    "output.max_shard_docs=2",
    "filters.image_count.min_images=0",
]
INPUTS = ["example-iana.org-chunked.warc", "warcfile.warc.gz", "whirlwind.warc.gz"]


def _warcs() -> list[Path]:
    d = real_path("dev", "warc")
    return [d / name for name in INPUTS]


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    with environ(server.env()):
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    if not server.up:
        server.start()
    server.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_local):
    """The same build on local paths, uninterrupted."""
    out = tmp_path_factory.mktemp("ref") / "corpus"
    build_corpus([str(p) for p in _warcs()], out, load_config(BuildConfig, None, SETTINGS), progress=False)
    return out


# ---- Storage ------------------------------------------------------------------------------------------
def test_storage_on_s3_is_atomic_and_retries_across_an_outage(s3, tmp_path):
    store = Storage(f"s3://{BUCKET}/ops", retries=6, backoff_s=0.2)
    local = tmp_path / "a.bin"
    local.write_bytes(os.urandom(300_000))
    store.put_file(local, "shards/a.tar")
    assert store.read_bytes("shards/a.tar") == local.read_bytes()
    store.append_lines("manifest.jsonl", ['{"n": 1}'])
    store.append_lines("manifest.jsonl", ['{"n": 2}\n', '{"n": 3}'])
    assert store.read_bytes("manifest.jsonl") == b'{"n": 1}\n{"n": 2}\n{"n": 3}\n'
    assert store.glob("shards/*.tar") == [f"s3://{BUCKET}/ops/shards/a.tar"]
    # the endpoint goes away for 2 s: the write waits it out and lands once
    back = s3.outage(2.0)
    t0 = time.time()
    store.append_lines("manifest.jsonl", ['{"n": 4}'])
    back.join()
    assert time.time() - t0 >= 1.5
    assert store.read_bytes("manifest.jsonl").count(b"\n") == 4
    # what retrying cannot fix fails at once (no retries), naming the URL
    with pytest.raises(StorageError, match=f"s3://{BUCKET}/ops/missing.json") as e:
        store.read_bytes("missing.json")
    assert "still failing" not in str(e.value) and e.value.errno == errno.ENOENT
    assert isinstance(e.value.__cause__, FileNotFoundError) and not is_transient(e.value.__cause__)


def test_storage_gives_up_after_its_retries_naming_the_url(s3):
    store = Storage(f"s3://{BUCKET}/ops", retries=1, backoff_s=0.1)
    s3.stop()
    try:
        with pytest.raises(StorageError, match=rf"s3://{BUCKET}/ops/x.json: still failing after 2 attempts"):
            store.write_bytes("x.json", b"{}")
    finally:
        s3.start()


def test_local_storage_errors_are_not_retried(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = Storage(blocker / "corpus")
    with pytest.raises(StorageError, match=str(blocker / "corpus")) as e:
        store.write_bytes("build.json", b"{}")
    assert not is_transient(e.value.__cause__)


# ---- a build on S3 ------------------------------------------------------------------------------------
class ManifestWatcher(threading.Thread):
    """Reads the manifest object while the build runs: every line must name a shard and an index that are
    already there, complete (size as listed). Also takes the endpoint down once the first shard appears."""

    def __init__(self, s3: S3Server, prefix: str, outage_s: float):
        super().__init__(daemon=True)
        self.s3, self.prefix, self.outage_s = s3, prefix, outage_s
        self.stop_event = threading.Event()
        self.violations: list[str] = []
        self.checked_lines = 0
        self.outage_at: float | None = None

    def run(self):
        from botocore.exceptions import BotoCoreError

        while not self.stop_event.is_set():
            try:
                self.check()
            except BotoCoreError:  # connection refused / reset: the endpoint is down on purpose for a while
                pass
            except Exception as e:  # noqa: BLE001 - anything else is a finding, not noise
                self.violations.append(f"watcher error: {type(e).__name__}: {e}")
            time.sleep(0.1)

    def _head(self, c, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return c.head_object(Bucket=BUCKET, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
            return None

    def check(self):
        from botocore.exceptions import ClientError

        c = self.s3.client()
        if self.outage_at is None:
            if c.list_objects_v2(Bucket=BUCKET, Prefix=f"{self.prefix}/shards/").get("KeyCount", 0):
                self.outage_at = time.time()
                self.s3.outage(self.outage_s)
                return
        try:
            raw = c.get_object(Bucket=BUCKET, Key=f"{self.prefix}/manifest.jsonl")["Body"].read().decode()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchKey":
                return  # no shard listed yet
            raise
        for line in raw.splitlines():
            entry = json.loads(line)
            head = self._head(c, f"{self.prefix}/shards/{entry['name']}.tar")
            if head is None:
                self.violations.append(f"{entry['name']}: listed, but its shard is not there")
            elif head["ContentLength"] != entry["bytes"]:
                self.violations.append(f"{entry['name']}: {head['ContentLength']} bytes, listed {entry['bytes']}")
            if self._head(c, f"{self.prefix}/index/{entry['name']}.parquet") is None:
                self.violations.append(f"{entry['name']}: listed, but its index is not there")
            self.checked_lines += 1


def _without_unit(corpus: Corpus) -> list[tuple]:
    return [(s.name, s.documents, s.images, s.bytes, s.sha256) for s in corpus.shards()]


@pytest.mark.slow
def test_build_from_and_to_s3_through_an_outage_equals_the_local_build(s3, reference, tmp_path):
    client = s3.client()
    for p in _warcs():
        client.upload_file(str(p), BUCKET, f"crawl/{p.name}")
    url = f"s3://{BUCKET}/corpus"
    cfg = load_config(BuildConfig, None, [*SETTINGS, f"output.work_dir={tmp_path / 'work'}"])
    watcher = ManifestWatcher(s3, "corpus", outage_s=3.0)
    watcher.start()
    try:
        stats = build_corpus([f"s3://{BUCKET}/crawl/*.warc*"], url, cfg, progress=False)
    finally:
        watcher.stop_event.set()
        watcher.join()
    finished = time.time()
    assert watcher.outage_at is not None and watcher.outage_at < finished - 3.0, "the outage hit the build"
    assert watcher.violations == []
    assert watcher.checked_lines > 0

    ref = Corpus(reference)
    got = Corpus(url)
    # same shards, byte for byte (the unit names differ: a remote unit is named by its URL)
    assert _without_unit(got) == _without_unit(ref)
    assert [d.id for d in got.iter_documents()] == [d.id for d in ref.iter_documents()]
    ref_stats = json.loads((reference / "stats.json").read_text())
    assert stats["stages"] == ref_stats["stages"] and check_funnel(stats) == []
    assert got.read_json("build.json")["finished_at"]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="corpus/")["Contents"]]
    assert not [k for k in keys if k.endswith((".tmp", ".part"))]
    assert {k.split("/")[1] for k in keys} == {
        "shards",
        "index",
        "manifest.jsonl",
        "stats.json",
        "rejects",
        "dedup",
        "build.json",
    }
    assert not (tmp_path / "work").exists()  # the work folder goes once the corpus is complete
    # the report reads the corpus where it is
    from pipeline.cli import main

    assert main(["inspect", url, "--output", str(tmp_path / "report"), "--no-progress", "--sample", "20"]) == 0
    assert list((tmp_path / "report").glob("*.html"))


@pytest.mark.slow
def test_build_from_a_path_list_on_s3_with_a_sample(s3, reference, tmp_path):
    """Common Crawl's way in: a warc.paths.gz on S3 listing relative paths, resolved against --input-prefix,
    read anonymously (input.anon), a seeded sample of 2 of the 3 WARCs. The corpus holds the documents of the
    sampled WARCs only, and every reference document of those WARCs."""
    client = s3.client()
    listing = "".join(f"crawl-data/seg/{p.name}\n" for p in _warcs())
    path_list = f"s3://{BUCKET}/cc/warc.paths.gz"
    client.put_object(Bucket=BUCKET, Key="cc/warc.paths.gz", Body=gzip.compress(listing.encode()))
    anon = load_config(BuildConfig, None, [*SETTINGS, f"input.prefix=s3://{BUCKET}/cc/", "input.anon=true"])
    with pytest.raises(ValueError, match="cannot read the path list: PermissionError"):
        resolve_inputs([path_list], anon.input)  # anonymous reads of a private object are refused ...
    # ... and work on public objects, as on s3://commoncrawl
    client.put_object(Bucket=BUCKET, Key="cc/warc.paths.gz", Body=gzip.compress(listing.encode()), ACL="public-read")
    for p in _warcs():
        client.upload_file(str(p), BUCKET, f"cc/crawl-data/seg/{p.name}", ExtraArgs={"ACL": "public-read"})
    cfg = load_config(
        BuildConfig,
        None,
        [
            *SETTINGS,
            f"input.prefix=s3://{BUCKET}/cc/",
            "input.anon=true",
            "input.sample_files=2",
            "input.sample_seed=1",
        ],
    )
    chosen = resolve_inputs([path_list], cfg.input)
    listed = [f"s3://{BUCKET}/cc/crawl-data/seg/{p.name}" for p in _warcs()]
    assert len(chosen) == 2 and set(chosen) < set(listed)
    out = tmp_path / "corpus"
    stats = build_corpus([path_list], out, cfg, progress=False)
    assert json.loads((out / "build.json").read_text())["inputs"] == chosen
    assert check_funnel(stats) == [] and stats["build"]["units"] == 2
    names = {url.rsplit("/", 1)[1] for url in chosen}

    def warc_of(doc):
        return doc.source.split(":", 1)[1].split("#", 1)[0]

    got = {d.id: warc_of(d) for d in Corpus(out).iter_documents()}
    assert got and set(got.values()) <= names
    expected = {d.id for d in Corpus(reference).iter_documents() if warc_of(d) in names}
    assert expected <= set(got)  # (a document the full build dropped as a duplicate of the third WARC's may stay)


def test_a_remote_corpus_needs_a_work_dir(s3):
    with pytest.raises(ValueError, match="output.work_dir"):
        build_corpus([str(_warcs()[0])], f"s3://{BUCKET}/c2", load_config(BuildConfig, None, SETTINGS))


# ---- a full disk, a read-only output ------------------------------------------------------------------
@pytest.fixture
def mount_point(tmp_path):
    mounts: list[Path] = []

    def mount(*args: str) -> Path:
        d = tmp_path / f"mnt{len(mounts)}"
        d.mkdir()
        r = subprocess.run(["mount", *args, str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount here (needs root and CAP_SYS_ADMIN): {r.stderr.strip()}")
        mounts.append(d)
        return d

    yield mount
    for d in reversed(mounts):
        subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(path: Path) -> None:
    """Write zeros until the file system is full (a real ENOSPC for everyone writing there)."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (64 << 10))
                f.flush()
        except OSError as e:
            assert e.errno == 28, e


@pytest.mark.slow
def test_disk_full_names_the_path_keeps_finished_units_and_resumes(mount_point, reference, ray_local):
    # the output lives on a real 8 MiB tmpfs; once the first unit is done, the disk fills up (another writer
    # takes all the space) while the next unit is being staged
    mnt = mount_point("-t", "tmpfs", "-o", "size=8m", "tmpfs")
    out = mnt / "corpus"
    units = out / "_work" / "units"
    cfg = load_config(BuildConfig, None, [*SETTINGS, "ray.workers=1", "output.keep_work=true"])
    inputs = [str(p) for p in _warcs()]

    def fill_after_first_unit():
        t0 = time.time()
        while not list(units.glob("*/DONE.json")) and time.time() - t0 < 300:
            time.sleep(0.02)
        _fill(mnt / "filler")

    filler = threading.Thread(target=fill_after_first_unit, daemon=True)
    filler.start()
    with pytest.raises(ValueError, match=r"No space left on device") as e:
        build_corpus(inputs, out, cfg, progress=False)
    filler.join()
    assert str(out) in str(e.value) and "run the same command again" in str(e.value)
    done = sorted(p.parent.name for p in units.glob("*/DONE.json"))
    assert done and not (out / "build.json").read_text().count('"finished_at": "')
    marker_mtimes = {n: (units / n / "DONE.json").stat().st_mtime_ns for n in done}
    # space again, same command: the finished units are not run again, the corpus is the uninterrupted one
    (mnt / "filler").unlink()
    stats = build_corpus(inputs, out, cfg, progress=False)
    assert check_funnel(stats) == []
    assert {n: (units / n / "DONE.json").stat().st_mtime_ns for n in done} == marker_mtimes
    assert (out / "manifest.jsonl").read_bytes() == (reference / "manifest.jsonl").read_bytes()


def test_read_only_output_names_the_path(mount_point, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ro = mount_point("--bind", "-o", "ro", str(src))
    out = ro / "corpus"
    with pytest.raises(ValueError, match=rf"Read-only file system.*{out}|{out}.*Read-only file system"):
        build_corpus([str(_warcs()[0])], out, load_config(BuildConfig, None, SETTINGS), progress=False)
