import hashlib
import io
import json

import pytest
from PIL import Image as PILImage

from corpus.format import Corpus, append_manifest, repair_manifest, write_shards
from corpus.record import Document, Image, make_doc_id


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (160, 160), color).save(buf, format="JPEG")
    return buf.getvalue()


def _docs(n: int) -> list[Document]:
    docs = []
    for i in range(n):
        d = Document(id=make_doc_id(f"test#{i}"), url=f"https://ex.org/{i}", source=f"test#{i}")
        d.append_text(f"text of document {i} " * 20)
        d.append_image(
            Image(url=f"https://ex.org/{i}.jpg", format="jpeg", width=160, height=160, data=_jpeg((i * 20 % 255, 0, 0)))
        )
        d.append_text("after the image")
        docs.append(d)
    return docs


def test_write_read_roundtrip_with_images_in_order(tmp_path):
    shards = write_shards(_docs(5), tmp_path, "part-00000", max_docs=2)
    append_manifest(tmp_path, shards)
    assert [s.name for s in shards] == ["part-00000-0000", "part-00000-0001", "part-00000-0002"]
    assert [s.documents for s in shards] == [2, 2, 1]
    corpus = Corpus(tmp_path)
    docs = list(corpus.iter_documents())
    assert [d.url for d in docs] == [f"https://ex.org/{i}" for i in range(5)]
    assert docs[3].images[1].data == _docs(5)[3].images[1].data
    assert docs[3].images[1].member == "img0001.jpg" and docs[3].texts[2] == "after the image"
    # manifest sha256 is the file's
    s = shards[0]
    assert hashlib.sha256((tmp_path / "shards" / f"{s.name}.tar").read_bytes()).hexdigest() == s.sha256
    # random access through the index offset
    index = corpus.read_index(shards[1]).to_pylist()
    doc = corpus.read_document(index[1]["shard"], index[1]["offset"])
    assert doc.id == index[1]["id"] and doc.images[1].data


def test_shards_are_byte_deterministic(tmp_path):
    a = write_shards(_docs(3), tmp_path / "a", "p")
    b = write_shards(_docs(3), tmp_path / "b", "p")
    assert [s.sha256 for s in a] == [s.sha256 for s in b]
    for s in a:  # the files themselves, not only what the manifest says about them
        tar_a, tar_b = (root / "shards" / f"{s.name}.tar" for root in (tmp_path / "a", tmp_path / "b"))
        assert tar_a.read_bytes() == tar_b.read_bytes()
        assert hashlib.sha256(tar_a.read_bytes()).hexdigest() == s.sha256


def test_reader_trusts_only_complete_manifest_lines(tmp_path):
    shards = write_shards(_docs(4), tmp_path, "p", max_docs=2)
    append_manifest(tmp_path, shards[:1])
    with open(tmp_path / "manifest.jsonl", "a") as f:
        f.write(shards[1].line()[:20])  # a build killed mid-append
    corpus = Corpus(tmp_path)
    assert [s.name for s in corpus.shards()] == ["p-0000"]
    assert len(list(corpus.iter_documents())) == 2
    assert [s.name for s in repair_manifest(tmp_path)] == ["p-0000"]
    assert (tmp_path / "manifest.jsonl").read_text().count("\n") == 1


def test_manifest_cannot_point_outside_the_corpus(tmp_path):
    corpus_dir = tmp_path / "corpus"
    shards = write_shards(_docs(2), corpus_dir, "p")
    outside = write_shards(_docs(1), tmp_path / "elsewhere", "x")[0]  # a real shard beside the corpus
    append_manifest(corpus_dir, shards)
    hostile = json.loads(outside.line())
    hostile["name"] = "../../elsewhere/shards/x-0000"
    with open(corpus_dir / "manifest.jsonl", "a") as f:
        f.write(json.dumps(hostile) + "\n")
    with pytest.raises(ValueError, match=r"manifest.jsonl line 2: not a shard entry"):
        Corpus(corpus_dir).shards()
    assert [s.name for s in repair_manifest(corpus_dir)] == ["p-0000"]  # the repair drops it too


def test_not_a_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a corpus"):
        Corpus(tmp_path)


def test_hf_datasets_reads_the_index(tmp_path):
    datasets = pytest.importorskip("datasets")
    append_manifest(tmp_path, write_shards(_docs(3), tmp_path, "p"))
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "index" / "*.parquet"), split="train")
    assert len(ds) == 3
    row = ds[0]
    assert row["texts"][1] is None and row["images"][1] == "https://ex.org/0.jpg"
    assert row["image_members"][1] == "img0001.jpg"


def test_export_hf_gives_decoded_images(tmp_path):
    datasets = pytest.importorskip("datasets")
    from pipeline.export import export_hf

    corpus = tmp_path / "c"
    append_manifest(corpus, write_shards(_docs(2), corpus, "p"))
    export_hf(str(corpus), str(tmp_path / "hf"), progress=False)
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "hf" / "*.parquet"), split="train")
    assert isinstance(ds.features["images"].feature, datasets.Image)
    im = ds[1]["images"][1]
    assert im.size == (160, 160) and ds[1]["images"][0] is None


def test_damaged_shards_raise_value_error_naming_the_shard(tmp_path):
    """Not a tar, a tar cut short, a sample JSON of the wrong shape: each a ValueError with the shard path
    (what readers catch and count), never a tarfile or TypeError escaping."""
    import tarfile

    [info] = write_shards(_docs(2), tmp_path, "p")
    append_manifest(tmp_path, [info])
    corpus = Corpus(tmp_path)
    shard = tmp_path / "shards" / "p-0000.tar"
    good = shard.read_bytes()
    shard.write_bytes(b"\x01 this is not a tar archive " * 64)
    with pytest.raises(ValueError, match="p-0000.tar"):
        corpus.read_document("p-0000", 0)
    with pytest.raises(ValueError, match="p-0000.tar"):
        list(corpus.iter_documents())
    shard.write_bytes(good[:1200])  # the first sample's JSON header and part of its body
    with pytest.raises(ValueError, match="p-0000.tar"):
        list(corpus.iter_documents())
    for body in (
        b"[1, 2]",
        b"[" * 100_000 + b"]" * 100_000,  # nested too deep for json (a RecursionError escaped)
        b'{"id": "x", "url": "u", "source": "s", "texts": ["a"], "images": [null], "signals": ["not", "a", "dict"]}',
    ):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            member = tarfile.TarInfo("x.json")
            member.size = len(body)
            tar.addfile(member, io.BytesIO(body))
        shard.write_bytes(buf.getvalue())
        with pytest.raises(ValueError, match="x.json"):
            list(corpus.iter_documents())


@pytest.mark.parametrize(
    "kind,shown",
    [("SYMTYPE", "a link"), ("LNKTYPE", "a link"), ("DIRTYPE", "a folder"), ("FIFOTYPE", "a special file")],
)
def test_a_member_that_is_no_file_is_damage_not_skipped(tmp_path, kind, shown):
    """A shard member that is a symlink, hard link, folder or FIFO (the writer writes only files) was skipped
    without a word: a shard holding a sample's JSON as a link to /etc/passwd read as a shard of no document,
    one holding an image as a hard link as a sample lacking its image. Now it is damage naming the member
    (readers count it: the loader's shard_read_errors, inspect's load errors, refilter stops). Nothing is
    ever written or followed."""
    import tarfile

    [doc] = _docs(1)
    good = tmp_path / "good"
    [info] = write_shards([doc], good, "p")
    members = []
    with tarfile.open(good / "shards" / "p-0000.tar") as tar:
        for m in tar.getmembers():
            members.append((m, tar.extractfile(m).read()))
    link = tarfile.TarInfo(members[-1][0].name)
    link.type, link.linkname = getattr(tarfile, kind), "/etc/passwd"
    append_manifest(tmp_path, [info])
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "p-0000.tar", "w") as tar:
        for m, data in members[:-1]:
            tar.addfile(m, io.BytesIO(data))
        tar.addfile(link)
    with pytest.raises(ValueError, match=rf"p-0000.tar: member {link.name} is {shown}, not a file"):
        list(Corpus(tmp_path).iter_documents(with_images=False))


def test_a_build_json_that_is_no_object_is_damage_naming_it(tmp_path):
    """Following a corpus (train --follow) asks build.json whether the build has finished: a build.json holding
    a list or a string was an AttributeError traceback in the loader; now a ValueError naming the file."""
    append_manifest(tmp_path, write_shards(_docs(1), tmp_path, "p"))
    for body, kind in (("[1]", "list"), ('"done"', "str")):
        (tmp_path / "build.json").write_text(body)
        with pytest.raises(ValueError, match=rf"build.json: holds a JSON {kind}, not an object"):
            Corpus(tmp_path).is_finished()
        with pytest.raises(ValueError, match="build.json: holds a JSON"):
            list(Corpus(tmp_path).follow(poll_s=0))


def test_a_manifest_listing_a_shard_twice_is_damage(tmp_path):
    """A manifest line appended twice (a copied or doubly written manifest): every reader took the shard's
    documents twice (the loader trained on them twice, refilter and export hf wrote them twice). Now it is
    damage naming the line, as any bad manifest line is."""
    append_manifest(tmp_path, write_shards(_docs(2), tmp_path, "p"))
    line = (tmp_path / "manifest.jsonl").read_text()
    (tmp_path / "manifest.jsonl").write_text(line + line)
    with pytest.raises(ValueError, match=r"manifest.jsonl line 2: lists shard p-0000 a second time"):
        Corpus(tmp_path).shards()


def test_json_nested_thousands_deep_is_damage_naming_the_file(tmp_path):
    """A manifest line, build.json or stats.json nested 100,000 deep: a ValueError naming the file, as for any
    other damaged JSON (json's RecursionError reached inspect, refilter and the loader as a traceback)."""
    [info] = write_shards(_docs(1), tmp_path, "p")
    append_manifest(tmp_path, [info])
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "build.json").write_text(deep)
    with pytest.raises(ValueError, match=r"build.json: not JSON \(maximum recursion depth"):
        Corpus(tmp_path).read_json("build.json")
    with (tmp_path / "manifest.jsonl").open("a") as f:
        f.write(deep + "\n")
    with pytest.raises(ValueError, match="manifest.jsonl line 2: not a shard entry"):
        Corpus(tmp_path).shards()


def test_a_corpus_url_whose_file_system_is_missing_is_a_value_error():
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed: gs:// can be read")
    with pytest.raises(ValueError, match=r"corpus gs://bucket/c: reading it needs a package that is not installed"):
        Corpus("gs://bucket/c")


def test_missing_s3_credentials_fail_at_once_not_after_retries(monkeypatch):
    """No credentials is no transient error: it used to be retried 8 times with backoff (71 s) before the
    build said so."""
    import time

    botocore = pytest.importorskip("botocore.exceptions")
    s3fs = pytest.importorskip("s3fs")
    from corpus.storage import Storage, StorageError, is_transient

    assert not is_transient(botocore.NoCredentialsError())
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    # fsspec caches filesystem instances by their arguments, not by the environment: an S3 test that ran
    # before in this worker leaves an instance holding its (now stopped) moto endpoint and credentials.
    s3fs.S3FileSystem.clear_instance_cache()
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"look up s3://interloom-no-such-bucket/c/build.json: NoCredentialsError"):
        Storage("s3://interloom-no-such-bucket/c").exists("build.json")
    assert time.monotonic() - started < 10


def test_export_hf_of_a_damaged_corpus_leaves_no_partial_dataset(tmp_path):
    from pipeline.export import export_hf

    corpus = tmp_path / "c"
    append_manifest(corpus, write_shards(_docs(2), corpus, "a"))
    append_manifest(corpus, write_shards(_docs(2), corpus, "b"))
    (corpus / "shards" / "b-0000.tar").write_bytes(b"\x01 not a tar " * 100)
    with pytest.raises(ValueError, match=r"b-0000.tar: not a readable tar .* the 1 files it had written were removed"):
        export_hf(str(corpus), str(tmp_path / "hf"), progress=False)
    assert list((tmp_path / "hf").glob("*.parquet")) == []
    with pytest.raises(ValueError, match="is the corpus folder itself"):
        export_hf(str(corpus), str(corpus), progress=False)
