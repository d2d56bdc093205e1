"""Streaming loader: splitting, equal step counts, exact resume, token/label layout (<eos> a target), patch
grids, follow (through the public Corpus.follow / is_finished), and the package's public surface."""

from __future__ import annotations

import io
import json
import math
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_corpus import REAL, build_corpus, make_documents, require_real
from PIL import Image as PILImage

from corpus.format import Corpus, append_manifest, write_shards
from corpus.record import Image
from train.batch import IGNORE_INDEX
from train.data import (
    DataConfig,
    DocumentEncoder,
    Loader,
    ShardReader,
    SlotState,
    patch_grid,
    plan_parts,
    slot_batches,
    slot_documents,
)
from train.tokenizer import Tokenizer, train_from_corpus

PATCH = 8
CFG = {"seq_len": 192, "batch_size": 2, "min_pixels": 16 * 16, "max_pixels": 48 * 48}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    require_real()
    root = tmp_path_factory.mktemp("data")
    c = build_corpus(root / "corpus", [3, 5, 1, 4, 2])  # uneven shards
    train_from_corpus(c, root / "tokenizer.json", vocab_size=1024)
    return c, root / "tokenizer.json"


def take(loader, n):
    return [b for _, b in zip(range(n), loader)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in x.__dataclass_fields__:
            assert torch.equal(getattr(x, name), getattr(y, name)), name


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (2, 2), (3, 2), (4, 1)])
def test_plan_covers_every_document_once_per_epoch(corpus, world, workers):
    c = Corpus(corpus[0])
    shards = c.shards()
    reader = ShardReader(c)
    all_ids = sorted(d.id for d in c.iter_documents(with_images=False))
    orders = []
    for epoch in (0, 1):
        slots = plan_parts(shards, epoch, seed=7, world=world, num_workers=workers)
        assert len(slots) == world * workers
        seen = [d.id for parts in slots for u in parts for _, d in reader.read(u, 0, Counter())]
        assert sorted(seen) == all_ids  # every document exactly once, across ranks and workers
        orders.append([u.shard for parts in slots for u in parts])
    assert plan_parts(shards, 0, 7, world, workers) == plan_parts(shards, 0, 7, world, workers)
    assert orders[0] != orders[1]  # reshuffled per epoch (seeded: the same two orders on every run)


def test_equal_steps_on_uneven_ranks(corpus):
    c, tok = corpus
    cfg = DataConfig(**CFG)
    # rank 1 holds far fewer documents than rank 0 in epoch 0; both still yield every step asked for
    docs_per_rank = []
    for rank in (0, 1):
        parts = plan_parts(Corpus(c).shards(), 0, seed=0, world=2, num_workers=1)[rank]
        sizes = {s.name: s.documents for s in Corpus(c).shards()}
        docs_per_rank.append(sum(u.n_documents(sizes[u.shard]) for u in parts))
    assert docs_per_rank[0] != docs_per_rank[1]
    loaders = [Loader(cfg, tok, PATCH, rank=r, world=2, corpus=str(c)) for r in (0, 1)]
    got = [take(ld, 40) for ld in loaders]
    assert [len(g) for g in got] == [40, 40]
    epochs = [ld.counters()["epochs"] for ld in loaders]
    small = docs_per_rank.index(min(docs_per_rank))
    assert epochs[small] > epochs[1 - small] >= 1  # the smaller rank wrapped into later epochs, no hang


def test_too_few_documents_is_a_clear_error(tmp_path, corpus):
    c = build_corpus(tmp_path / "tiny", [1])
    with pytest.raises(ValueError, match="fewer documents than ranks x workers"):
        take(Loader(DataConfig(**CFG), corpus[1], PATCH, rank=1, world=2, corpus=str(c)), 1)


@pytest.mark.parametrize("workers,pixel_threads", [(0, 1), (2, 3)])
def test_resume_yields_the_uninterrupted_stream(corpus, workers, pixel_threads):
    c, tok = corpus
    # pixel_threads > 1: batches are normalised out of order on a pool and must still come out in order
    cfg = DataConfig(**CFG, num_workers=workers, pixel_threads=pixel_threads)
    full = take(Loader(cfg, tok, PATCH, rank=1, world=2, seed=3, corpus=str(c)), 25)
    first = Loader(cfg, tok, PATCH, rank=1, world=2, seed=3, corpus=str(c))
    head = take(first, 11)
    state = json.loads(json.dumps(first.state_dict()))  # the state survives a JSON round trip
    assert any(s["token"] > 0 for s in state["slots"])  # resumes in the middle of a split document
    resumed = Loader(cfg, tok, PATCH, rank=1, world=2, seed=3, corpus=str(c))
    resumed.load_state_dict(state)
    assert_batches_equal(head + take(resumed, 14), full)
    assert resumed.counters()["epochs"] >= 1  # the compared stream crosses an epoch boundary
    other = Loader(cfg, tok, PATCH, rank=0, world=2, seed=3, corpus=str(c))
    with pytest.raises(ValueError, match="rank=1, 0"):
        other.load_state_dict(state)


def test_token_layout_labels_and_images(corpus):
    c, tok_path = corpus
    tok = Tokenizer.load(tok_path)
    cfg = DataConfig(**CFG)
    batches = take(Loader(cfg, tok_path, PATCH, corpus=str(c)), 20)
    n_images = n_eos_targets = 0
    for b in batches:
        ids, lab, seg, pos = b.input_ids_BT, b.labels_BT, b.segment_ids_BT, b.position_ids_BT
        special = torch.isin(ids, torch.tensor(sorted(tok.special_ids)))
        # labels: never a special/image token except <eos>; where set, the next input token of the same segment
        assert not torch.isin(lab, torch.tensor(sorted(tok.special_ids - {tok.eos_id}))).any()
        # <eos> is a target: every <eos> whose predecessor is in the same piece is that token's label
        has_eos_before = (ids[:, 1:] == tok.eos_id) & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] >= 0)
        assert (lab[:, :-1][has_eos_before] == tok.eos_id).all()
        n_eos_targets += int((lab == tok.eos_id).sum())
        assert (lab[ids == tok.image_id] == IGNORE_INDEX).all()
        inner = (lab[:, :-1] != IGNORE_INDEX) & (seg[:, :-1] == seg[:, 1:])
        assert torch.equal(lab[:, :-1][inner], ids[:, 1:][inner])
        assert (lab[seg < 0] == IGNORE_INDEX).all() and (ids[seg < 0] == tok.pad_id).all()
        # positions restart at every segment start
        starts = torch.ones_like(seg, dtype=torch.bool)
        starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
        assert (pos[starts & (seg >= 0)] == 0).all()
        assert torch.equal(
            pos[:, 1:][~starts[:, 1:] & (seg[:, 1:] >= 0)], pos[:, :-1][~starts[:, 1:] & (seg[:, 1:] >= 0)] + 1
        )
        # each image: <img_start> <image> x (h/2)(w/2) <img_end>, images in row-major order of appearance
        grids = b.grid_hw_I2.tolist()
        assert b.pixel_values_NP.shape == (sum(h * w for h, w in grids), 3 * PATCH * PATCH)
        runs = []
        for row in ids.tolist():
            t = 0
            while t < len(row):
                if row[t] == tok.img_start_id:
                    m = 0
                    while row[t + 1 + m] == tok.image_id:
                        m += 1
                    assert row[t + 1 + m] == tok.img_end_id
                    runs.append(m)
                    t += m + 2
                else:
                    assert row[t] != tok.image_id
                    t += 1
        assert runs == [(h // 2) * (w // 2) for h, w in grids]
        assert all(h % 2 == 0 and w % 2 == 0 for h, w in grids)
        # text after an image points at that image; only text tokens carry it
        after = b.text_after_image_BT
        assert not special[after >= 0].any()
        assert set(after[after >= 0].tolist()) <= set(range(len(grids)))
        n_images += len(grids)
    assert n_images > 10 and n_eos_targets > 10
    # images start the batch stream with real pixel content (normalised to [-1, 1])
    pv = batches[0].pixel_values_NP
    assert pv.min() >= -1.0 and pv.max() <= 1.0 and pv.std() > 0.1


@pytest.mark.parametrize("h,w", [(480, 640), (640, 480), (100, 1000), (37, 41), (4000, 3000), (9, 9)])
def test_patch_grid_keeps_aspect_within_budget(h, w):
    p, lo, hi = 14, 56 * 56, 448 * 448
    gh, gw = patch_grid(h, w, p, lo, hi)
    assert gh % 2 == 0 and gw % 2 == 0 and gh >= 2 and gw >= 2
    assert gh * gw * p * p <= hi
    assert gh * gw * p * p >= lo or (gh == 2 or gw == 2)
    # aspect ratio kept up to the rounding of one 2-patch step on each side
    assert abs(math.log((gh / gw) / (h / w))) <= math.log((gh + 2) / gh) + math.log((gw + 2) / gw)


def test_real_photo_grids_follow_their_aspect(corpus):
    c, tok = corpus
    docs = list(Corpus(c).iter_documents())

    enc = DocumentEncoder(Tokenizer.load(tok), DataConfig(**CFG), PATCH)
    checked, aspects = 0, set()
    for doc in docs[:6]:
        for im in doc.image_list:
            patches, (gh, gw) = enc.image(im.data, Counter())
            assert patches.shape == (gh * gw, 3 * PATCH * PATCH)
            assert gh * gw * PATCH * PATCH <= CFG["max_pixels"]
            if min(im.width, im.height) >= 32:
                assert abs(math.log((gh / gw) / (im.height / im.width))) < 0.45
                checked += 1
                aspects.add(round(im.width / im.height, 2))
    # the check ran on several real photos of different shapes (not only squares)
    assert checked >= 10 and len(aspects) >= 3, (checked, aspects)


def test_pixels_are_pillow_bicubic_patches_normalised_once_per_batch(corpus):
    c, tok_path = corpus
    tok = Tokenizer.load(tok_path)
    cfg = DataConfig(**CFG, image_mean=0.4, image_std=0.3)
    enc = DocumentEncoder(tok, cfg, PATCH)
    n = 0
    for doc in list(Corpus(c).iter_documents())[:4]:
        for im in doc.image_list:
            patches, (gh, gw) = enc.image(im.data, Counter())
            assert patches.dtype == np.uint8 and patches.shape == (gh * gw, 3 * PATCH * PATCH)
            # reference: Pillow's own path (JPEG draft, RGB, bicubic resize), patches in raster order, each
            # patch channel-major
            ref = PILImage.open(io.BytesIO(im.data))
            ref.draft("RGB", (gw * PATCH, gh * PATCH))
            ref = np.asarray(ref.convert("RGB").resize((gw * PATCH, gh * PATCH), PILImage.Resampling.BICUBIC))
            got = patches.reshape(gh, gw, 3, PATCH, PATCH).transpose(0, 3, 1, 4, 2).reshape(ref.shape)
            diff = np.abs(got.astype(int) - ref.astype(int))
            assert diff.max() <= 2 and diff.mean() < 0.1
            n += 1
    assert n >= 4
    # the Loader's batch is the slot's raw batch with float32 pixels (x/255 - mean)/std, nothing else changed
    raw, _ = next(slot_batches(Corpus(c), tok, cfg, PATCH, 0, 1, 0, SlotState(n_shards=len(Corpus(c).shards()))))
    got = take(Loader(cfg, tok_path, PATCH, corpus=str(c)), 1)[0]
    assert raw.pixel_values_NP.dtype == torch.uint8 and got.pixel_values_NP.dtype == torch.float32
    assert torch.equal(got.pixel_values_NP, (raw.pixel_values_NP.float() / 255.0 - 0.4) / 0.3)
    for name in raw.__dataclass_fields__:
        if name != "pixel_values_NP":
            assert torch.equal(getattr(got, name), getattr(raw, name)), name


def unknown_pixel_format_dds() -> bytes:
    """A DDS file whose pixel format flags are 0: Pillow opens it with NotImplementedError, no OSError."""
    buf = io.BytesIO()
    PILImage.new("RGB", (64, 48)).save(buf, "DDS")
    data = buf.getvalue()
    return data[:80] + b"\x00\x00\x00\x00" + data[84:]


def test_bad_images_are_dropped_and_counted(tmp_path, corpus):
    doc = make_documents(1, images_per_doc=2)[0]
    broken = (REAL / "images" / "edge_cases" / "skimage__truncated.jpg").read_bytes()[:200]
    doc.append_image(Image(url="https://example.org/broken.jpg", format="jpeg", data=broken))
    doc.append_image(Image(url="https://example.org/not-an-image.png", format="png", data=b"\x00" * 64))
    # a DDS of unknown pixel format: Pillow raises NotImplementedError, which used to end the training run
    doc.append_image(Image(url="https://example.org/odd.dds", format="dds", data=unknown_pixel_format_dds()))
    doc.append_text("closing words")
    infos = write_shards([doc], tmp_path / "c", "bad")
    append_manifest(tmp_path / "c", infos)
    ld = Loader(DataConfig(**CFG), corpus[1], PATCH, corpus=str(tmp_path / "c"))
    b = take(ld, 1)[0]
    cnt = ld.counters()
    assert cnt["images_dropped:undecodable"] >= 3 and cnt["images_kept"] >= 2
    assert cnt["images"] == cnt["images_kept"] + cnt["images_dropped:undecodable"]
    assert b.n_images >= 1


def test_follow_picks_up_a_shard_appended_later(tmp_path, corpus):
    c = build_corpus(tmp_path / "live", [4], finished=False)
    seen: list[tuple[int, str]] = []
    done = threading.Event()

    def consume():
        docs = slot_documents(Corpus(c), 0, 1, 0, 0, True, 0.05, SlotState(n_shards=0), Counter())
        for pos, doc in docs:
            seen.append((pos.epoch, doc.id))
            if pos.epoch == 1:
                break
        done.set()

    th = threading.Thread(target=consume, daemon=True)
    th.start()
    deadline = time.time() + 20
    while len(seen) < 4 and time.time() < deadline:
        time.sleep(0.05)
    assert len(seen) == 4 and not done.is_set()  # waiting for the build, not finished
    assert not Corpus(c).is_finished()
    late = make_documents(3, start=50)
    append_manifest(c, write_shards(late, c, "late", max_docs=3))
    while len(seen) < 7 and time.time() < deadline:
        time.sleep(0.05)
    assert {d for _, d in seen[4:7]} == {d.id for d in late}
    (Path(c) / "build.json").write_text(json.dumps({"finished_at": "now"}))
    assert Corpus(c).is_finished()
    th.join(20)
    assert done.is_set() and seen[-1][0] == 1  # build finished -> epoch 1 over all shards

    # the whole loader in follow mode yields batches before the build is finished
    c2 = build_corpus(tmp_path / "live2", [4], finished=False)
    ld = Loader(DataConfig(**CFG, follow=True, poll_s=0.05), corpus[1], PATCH, corpus=str(c2))
    assert take(ld, 2)[0].input_ids_BT.shape == (2, CFG["seq_len"])


def test_package_builds_on_public_corpus_api_only():
    """train/data is a package of its sections; none of them reaches into Corpus' private methods."""
    import train.data as data

    sections = ["plan", "read", "encode", "pack", "collate", "loader", "config"]
    root = Path(data.__file__).parent
    assert sorted(p.stem for p in root.glob("*.py") if p.stem != "__init__") == sorted(sections)
    for name in sections:
        text = (root / f"{name}.py").read_text()
        assert "corpus._" not in text and "Corpus._" not in text, name
    assert data.ShardPart("s.tar", 1, 3).n_documents(7) == 2  # documents 1 and 4 of 0..6
    assert not hasattr(data, "Unit")  # renamed: a crawl unit (crawl.sources.Unit) is something else


@pytest.mark.parametrize(
    "damage", ["index junk", "index missing", "shard truncated", "shard missing", "json not utf-8"]
)
def test_damaged_shards_are_skipped_and_counted(tmp_path, damage):
    """A shard whose index or tar is damaged or missing costs only that shard: the reader skips it, counts
    `shard_read_errors`, and reads every document of the other shards."""
    root = build_corpus(tmp_path / "c", [3, 4])
    c = Corpus(root)
    shard, index = Path(c.shard_path("part-000-0000")), Path(c.index_path("part-000-0000"))
    if damage == "index junk":
        index.write_bytes(b"junk")
    elif damage == "index missing":
        index.unlink()
    elif damage == "shard truncated":
        shard.write_bytes(shard.read_bytes()[:700])
    elif damage == "shard missing":
        shard.unlink()
    else:
        data = shard.read_bytes()
        at = data.index(b'"url"')
        shard.write_bytes(data[:at] + b'"\xff\xfe"' + data[at + 5 :])  # same length: the tar stays whole
    reader, counters = ShardReader(c), Counter()
    got = [d.id for u in plan_parts(c.shards(), 0, 0, 1, 1)[0] for _, d in reader.read(u, 0, counters)]
    others = [d.id for d in c.iter_shard("part-001-0000", with_images=False)]
    assert counters["shard_read_errors"] == 1 and set(others) <= set(got) and len(got) < 7


def _edit_last_sample(shard: Path, edit) -> None:
    """Rewrite a shard with its last sample's JSON edited by `edit(obj)` (the earlier offsets stay)."""
    with tarfile.open(shard) as t:
        members = [(info.name, t.extractfile(info).read()) for info in t]  # type: ignore[union-attr]
    last = [n for n, _ in members if n.endswith(".json")][-1]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            if name == last:
                obj = json.loads(data)
                edit(obj)
                data = json.dumps(obj).encode()  # (ensure_ascii: a lone surrogate stays a \ud800 escape)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    shard.write_bytes(buf.getvalue())


def _first_image(obj: dict) -> int:
    return next(i for i, im in enumerate(obj["images"]) if im is not None)


SAMPLE_DAMAGE = {
    "text not a string": lambda o: o["texts"].__setitem__(0, 12345),
    "text a list": lambda o: o["texts"].__setitem__(0, ["a"]),
    "position with neither": lambda o: o["texts"].__setitem__(0, None),
    "position with both": lambda o: o["texts"].__setitem__(_first_image(o), "text"),
    "lone surrogate": lambda o: o["texts"].__setitem__(0, "a \ud800 b"),
    "image not an object": lambda o: o["images"].__setitem__(_first_image(o), "x.jpg"),
    "image width a string": lambda o: o["images"][_first_image(o)].__setitem__("width", "wide"),
}


@pytest.mark.parametrize("damage", list(SAMPLE_DAMAGE))
def test_a_sample_json_of_the_wrong_shape_skips_its_shard_and_training_goes_on(tmp_path, corpus, damage):
    """A sample whose JSON parses but is no document (a text that is a number or a list, a position holding
    neither or both a text and an image, a lone surrogate escape no tokenizer takes, an image that is no
    object) is damage like a torn tar: the reader skips the shard from there and counts it, and the loader
    trains on (the encoder used to end the run with TypeError/KeyError)."""
    root = build_corpus(tmp_path / "c", [3, 4])
    c = Corpus(root)
    _edit_last_sample(Path(c.shard_path("part-000-0000")), SAMPLE_DAMAGE[damage])
    reader, counters = ShardReader(c), Counter()
    got = [d.id for u in plan_parts(c.shards(), 0, 0, 1, 1)[0] for _, d in reader.read(u, 0, counters)]
    assert counters["shard_read_errors"] == 1 and len(got) == 6
    ld = Loader(DataConfig(**CFG), corpus[1], PATCH, corpus=str(root))
    assert len(take(ld, 12)) == 12 and ld.counters()["shard_read_errors"] >= 1


def test_a_shard_member_over_the_cap_is_damage_not_read_into_memory(tmp_path, corpus, monkeypatch):
    """A member larger than any sample the build writes (a forged multi-GB JSON or image) is refused by its tar
    header, before its bytes are read: the shard is skipped and counted (it was read whole into memory)."""
    import corpus.format as cf

    root = build_corpus(tmp_path / "c", [3, 4])
    c = Corpus(root)
    monkeypatch.setattr(cf, "MAX_MEMBER_BYTES", 1 << 20)
    _edit_last_sample(Path(c.shard_path("part-000-0000")), lambda o: o["texts"].__setitem__(0, "x" * (2 << 20)))
    reader, counters = ShardReader(c), Counter()
    got = [d.id for u in plan_parts(c.shards(), 0, 0, 1, 1)[0] for _, d in reader.read(u, 0, counters)]
    assert counters["shard_read_errors"] == 1 and len(got) == 6
    with pytest.raises(ValueError, match=r"part-000-0000.tar: member \w+\.json holds \d+ bytes, over 1048576"):
        list(c.iter_shard("part-000-0000", with_images=False))


def test_a_sample_key_given_twice_is_damage_not_a_quiet_swap(tmp_path):
    """Two samples with one key in a row (a forged or doubly written shard): the second replaced the first
    without a word; now the shard is damage, skipped from there and counted."""
    root = build_corpus(tmp_path / "c", [3, 4])
    c = Corpus(root)
    shard = Path(c.shard_path("part-000-0000"))
    with tarfile.open(shard) as t:
        members = [(info.name, t.extractfile(info).read()) for info in t]  # type: ignore[union-attr]
    last = [k for k, (n, _) in enumerate(members) if n.endswith(".json")][-1]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members[: last + 1] + [members[last]] + members[last + 1 :]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    shard.write_bytes(buf.getvalue())
    reader, counters = ShardReader(c), Counter()
    got = [d.id for u in plan_parts(c.shards(), 0, 0, 1, 1)[0] for _, d in reader.read(u, 0, counters)]
    assert counters["shard_read_errors"] == 1 and len(got) == 6
    with pytest.raises(ValueError, match="a second sample with the key"):
        list(c.iter_shard("part-000-0000", with_images=False))


@pytest.mark.parametrize(
    "damage,shown",
    [
        (lambda o: o[:1], "1 rows, but the manifest counts 4 documents"),
        (lambda o: [], "0 rows, but the manifest counts 4 documents"),
        (lambda o: [o[0]] * len(o), "its offsets are not increasing byte offsets"),
        (lambda o: [None] * len(o), "its offsets are not increasing byte offsets"),
        (lambda o: [*o[1:], o[-1] + 512], "names document"),  # increasing, but each row at the next document
    ],
    ids=["fewer rows", "no rows", "one offset repeated", "null offsets", "shifted by one"],
)
def test_an_index_that_disagrees_with_its_shard_is_damage_not_a_quiet_loss(tmp_path, damage, shown, caplog):
    """A split shard (fewer shards than slots) is read from its index's offsets: an index listing fewer rows
    than the manifest's documents left the later parts with no offset to start from (documents lost without
    a word), a repeated or shifted offset started a part at the wrong document (one read twice, one never), a
    null one was a TypeError that ended the run. Now the shard is skipped and counted, naming its index; the other shard is read whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = build_corpus(tmp_path / "c", [4, 3])
    c = Corpus(root)
    index = Path(c.index_path("part-000-0000"))
    table = pq.read_table(index)
    offsets = damage(table.column("offset").to_pylist())
    table = table.slice(0, len(offsets)) if len(offsets) < table.num_rows else table
    i = table.column_names.index("offset")
    pq.write_table(table.set_column(i, "offset", pa.array(offsets, table.schema.field(i).type)), index)
    reader, counters = ShardReader(c), Counter()
    slots = plan_parts(c.shards(), 0, 0, 1, 4)  # 4 slots, 2 shards: each shard read in 2 parts
    got = [d.id for parts in slots for u in parts for _, d in reader.read(u, 0, counters)]
    others = [d.id for d in c.iter_shard("part-001-0000", with_images=False)]
    assert counters["shard_read_errors"] >= 1 and sorted(got) == sorted(others)
    assert shown in caplog.text and "part-000-0000.parquet" in caplog.text
