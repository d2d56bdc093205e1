"""Dedup end to end on real Ray: planted near-duplicates of real articles, URL and exact dedup, determinism
across file splits and partitions, image pHash groups of real photos, and the phase-1/phase-3 steps."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from corpus.record import Document, Image, documents_to_staged_table, make_doc_id
from corpus.stats import Ledger, check_funnel
from corpus.steps import run_steps
from filters.dedup import ApplyDedup, DedupConfig, InDocumentImageDedup, image_phash, run_dedup
from filters.dedup.graph import connected_components
from filters.dedup.images import parse_phash, phash_clusters
from filters.dedup.minhash import shingles_reference
from filters.dedup.text import normalize_text

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
GROUND_TRUTH = REAL / "dev" / "html" / "scrapinghub" / "ground-truth.json"
IMAGES = REAL / "dev" / "images"
BOILERPLATE = "Share this article on Facebook, Twitter and LinkedIn. Subscribe to our newsletter."


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"../shared/data/real not present: {path} is needed")


# ---- data ----------------------------------------------------------------------------------------------
def _articles() -> list[tuple[str, str]]:
    _need(GROUND_TRUTH)
    gt = json.loads(GROUND_TRUTH.read_text(encoding="utf-8"))
    return [(v["url"], v["articleBody"]) for _, v in sorted(gt.items()) if len(v["articleBody"].split()) >= 150]


def _doc(
    source: str,
    url: str,
    text: str,
    quality: float,
    fetched_at: str = "2024-01-01T00:00:00+00:00",
    images: list[Image] | None = None,
) -> Document:
    doc = Document(
        id=make_doc_id(source),
        url=url,
        source=source,
        fetched_at=fetched_at,
        lang="en",
        signals={"quality_score": quality},
    )
    for i, para in enumerate(p for p in text.split("\n\n") if p.strip()):
        doc.append_text(para)
        if i == 0:
            for im in images or []:
                doc.append_image(im)
    return doc


def _near_copy(text: str, rng: random.Random, kind: int) -> str:
    """A realistic near-duplicate: a few words edited, paragraphs reordered, a boilerplate line added."""
    paras = [p for p in text.split("\n\n") if p.strip()]
    if kind in (1, 2) and len(paras) >= 3:
        i = rng.randrange(len(paras) - 1)
        paras[i], paras[i + 1] = paras[i + 1], paras[i]
    words = "\n\n".join(paras).split(" ")
    for _ in range(3):
        k = rng.randrange(len(words))
        words[k] = rng.choice(["however", "indeed", "reportedly", "notably"])
    out = " ".join(words)
    if kind in (0, 2):
        out = out + "\n\n" + BOILERPLATE
    return out


def _write_staged(docs: list[Document], directory: Path, n_files: int) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_files):
        part = docs[i::n_files]
        path = directory / f"unit{i:03d}.parquet"
        pq.write_table(documents_to_staged_table(part), path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def planted():
    """Originals (real articles, distinct URLs) + near copies of 40 long ones (other URLs, random quality)."""
    arts = _articles()
    rng = random.Random(0)
    originals, copies = [], []
    for i, (url, text) in enumerate(arts):
        originals.append(_doc(f"orig:{i}", url, text, quality=rng.random()))
    long = [i for i, (_, text) in enumerate(arts) if len(text.split()) >= 400][:40]
    assert len(long) == 40
    for i in long:
        url, text = arts[i]
        for c in range(1 + (i % 2)):
            copy = _near_copy(text, rng, (i + c) % 3)
            copies.append((i, _doc(f"copy:{i}:{c}", f"https://mirror{c}.example.org/{i}", copy, quality=rng.random())))
    return originals, copies


def _clusters(work: Path) -> dict[str, list[dict]]:
    rows = pq.read_table(work / "clusters.parquet").to_pylist()
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["cluster_id"], []).append(r)
    return out


# ---- planted near-duplicates ---------------------------------------------------------------------------
def test_planted_near_duplicates_found_without_false_merges(ray_local, planted, tmp_path):
    originals, copies = planted
    docs = originals + [d for _, d in copies]
    random.Random(1).shuffle(docs)
    staged = _write_staged(docs, tmp_path / "staged", n_files=5)
    cfg = DedupConfig(partitions=3)
    result = run_dedup(staged, str(tmp_path / "work"), cfg, str(tmp_path / "corpus"))

    clusters = _clusters(tmp_path / "work")
    cluster_of = {r["id"]: cid for cid, rows in clusters.items() for r in rows}
    # recall: each planted copy sits in the cluster of its original
    found = sum(1 for i, d in copies if d.id in cluster_of and cluster_of[d.id] == cluster_of.get(originals[i].id))
    assert found / len(copies) >= 0.95, f"recall {found}/{len(copies)}"
    # no false merges: two originals never share a cluster
    orig_clusters = [cluster_of[o.id] for o in originals if o.id in cluster_of]
    assert len(orig_clusters) == len(set(orig_clusters))
    # exactly one keeper per near-duplicate cluster, chosen by best quality then smallest id
    quality = {d.id: d.signals["quality_score"] for d in docs}
    for cid, rows in clusters.items():
        assert {r["reason"] for r in rows} <= {"", "near_duplicate"}
        best = sorted(rows, key=lambda r: (-quality[r["id"]], r["id"]))[0]
        assert [r["id"] for r in rows if r["keeper"]] == [best["id"]]
        assert cid == min(r["id"] for r in rows)
        assert all(r["keeper_id"] == best["id"] for r in rows if not r["keeper"])
    assert set(result.removed) == {r["id"] for rows in clusters.values() for r in rows if not r["keeper"]}
    assert set(result.removed.values()) == {"near_duplicate"}
    assert result.counts["documents"] == len(docs)
    # the corpus copy for the report
    corpus_rows = pq.read_table(tmp_path / "corpus" / "dedup" / "clusters.parquet").to_pylist()
    assert len(corpus_rows) == sum(len(r) for r in clusters.values())
    assert {"cluster_id", "id", "url", "keeper", "reason", "size"} == set(corpus_rows[0])


def test_planted_copies_are_true_near_duplicates(planted):
    """Guards the test data: planted copies are near-duplicates (true J >= 0.8), originals are not."""
    originals, copies = planted

    def shingles(d):
        return set(shingles_reference(normalize_text(d.text), 5, False))

    js = []
    for i, d in copies:
        a, b = shingles(originals[i]), shingles(d)
        js.append(len(a & b) / len(a | b))
    assert min(js) >= 0.8
    sets = [shingles(o) for o in originals]
    worst = max(len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2))
    assert worst < 0.3


def test_determinism_across_files_and_partitions(ray_local, planted, tmp_path):
    originals, copies = planted
    docs = originals[:50] + [d for i, d in copies if i < 50]
    outputs = []
    for n_files, partitions in [(2, 5), (7, 2)]:
        order = list(docs)
        random.Random(n_files).shuffle(order)
        staged = _write_staged(order, tmp_path / f"staged{n_files}", n_files)
        work = tmp_path / f"work{n_files}"
        run_dedup(staged, str(work), DedupConfig(partitions=partitions), None)
        outputs.append(
            {
                name: (work / name).read_bytes()
                for name in ("removals.parquet", "clusters.parquet", "image_removals.parquet")
            }
        )
    assert outputs[0] == outputs[1]
    assert pq.read_table(tmp_path / "work2" / "removals.parquet").num_rows > 0


# ---- URL and exact dedup -------------------------------------------------------------------------------
def test_url_keeps_latest_fetch_and_exact_uses_normalised_text(ray_local, tmp_path):
    arts = _articles()
    text_a, text_b, text_c = arts[0][1], arts[1][1], arts[2][1]
    docs = [
        # one page fetched three times (URL variants), different versions of its text
        _doc("u:1", "http://news.example.com/story/", text_a, 0.9, "2023-05-01T10:00:00+00:00"),
        _doc("u:2", "https://www.news.example.com/story?utm_source=feed", text_b, 0.1, "2024-02-01T10:00:00Z"),
        _doc("u:3", "https://news.example.com/story#comments", text_c, 0.5, "2023-12-31T23:59:59+00:00"),
        # exact duplicates after normalisation (case, punctuation, whitespace), other URLs
        _doc("e:1", "https://a.example.net/1", text_c.upper(), 0.2),
        _doc("e:2", "https://b.example.net/2", text_c.replace(". ", " .  ").replace(", ", " "), 0.7),
        _doc("e:3", "https://c.example.net/3", text_c, 0.7),
        # image-only documents have no text: never exact duplicates of each other
        Document(
            id=make_doc_id("i:1"),
            url="https://img.example/1",
            source="i:1",
            images=[Image(url="x1", phash="0f0f0f0f0f0f0f0f")],
            texts=[None],
        ),
        Document(
            id=make_doc_id("i:2"),
            url="https://img.example/2",
            source="i:2",
            images=[Image(url="x2", phash="f0f0f0f0f0f0f0f0")],
            texts=[None],
        ),
    ]
    ids = {d.source: d.id for d in docs}
    staged = _write_staged(docs, tmp_path / "staged", 3)
    result = run_dedup(staged, str(tmp_path / "work"), DedupConfig(partitions=2), str(tmp_path / "corpus"))
    assert result.removed[ids["u:1"]] == "duplicate_url"
    assert result.removed[ids["u:3"]] == "duplicate_url"
    assert result.keepers[ids["u:1"]] == ids["u:2"]  # the latest fetch
    assert ids["u:2"] not in result.removed
    # e:2 and e:3 tie on quality 0.7 -> smallest id keeps; e:1 (0.2) goes
    exact_keeper = min(ids["e:2"], ids["e:3"])
    exact_removed = {ids["e:1"], ids["e:2"], ids["e:3"]} - {exact_keeper}
    assert {k for k, v in result.removed.items() if v == "duplicate_exact"} == exact_removed
    assert all(result.keepers[i] == exact_keeper for i in exact_removed)
    assert ids["i:1"] not in result.removed and ids["i:2"] not in result.removed
    assert result.counts["duplicate_url"] == 2 and result.counts["duplicate_exact"] == 2


def test_url_tie_on_fetch_time_keeps_smallest_id(ray_local, tmp_path):
    arts = _articles()
    docs = [_doc(f"t:{i}", "https://same.example/page", arts[i][1], 0.5, "2024-01-01T00:00:00+00:00") for i in range(3)]
    staged = _write_staged(docs, tmp_path / "staged", 2)
    result = run_dedup(staged, str(tmp_path / "work"), DedupConfig(partitions=1, minhash=False), None)
    keeper = min(d.id for d in docs)
    assert set(result.removed) == {d.id for d in docs} - {keeper}
    assert set(result.keepers.values()) == {keeper}


# ---- images --------------------------------------------------------------------------------------------
def _manifest() -> dict:
    _need(IMAGES / "manifest.json")
    return json.loads((IMAGES / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def photo_hashes() -> dict[str, str]:
    m = _manifest()
    return {
        name: image_phash((REAL / info["path"]).read_bytes())
        for name, info in sorted(m["images"].items())
        if info["path"].startswith("dev/images/photos/")
    }


def test_real_near_duplicate_image_groups(photo_hashes):
    m = _manifest()
    names = sorted(photo_hashes)
    for name in names:  # our pHash (EXIF transposed RGB) is the manifest's
        assert photo_hashes[name] == m["images"][name]["phash"], name
    # expected clusters: manifest pairs labelled near-duplicate and within 4 bits (pHash cannot match a 45°
    # rotation or a translated ultrasound frame; the manifest measures those at 22-34 bits)
    index = {n: i for i, n in enumerate(names)}
    eu, ev, beyond = [], [], []
    for group in m["near_duplicate_groups"].values():
        for pair in group["pairs"]:
            if pair["phash_hamming"] <= 4:
                eu.append(index[pair["a"]])
                ev.append(index[pair["b"]])
            else:
                beyond.append((pair["a"], pair["b"]))
    expected = connected_components(len(names), np.array(eu), np.array(ev))
    assert len(set(expected.tolist())) < len(names) - 10  # several real groups

    values = np.array([parse_phash(photo_hashes[n]) for n in names], dtype=np.uint64)
    uniq, inverse = np.unique(values, return_inverse=True)
    got = phash_clusters(uniq, max_distance=4)[inverse]
    same_expected = expected[:, None] == expected[None, :]
    same_got = got[:, None] == got[None, :]
    assert np.array_equal(same_expected, same_got)  # every group found, no unrelated photos merged
    for a, b in beyond:
        assert got[index[a]] != got[index[b]]


def test_in_document_image_dedup_on_real_photos(photo_hashes):
    hopper = [
        "pillow__hopper.jpg",
        "pillow__hopper.png",
        "pillow__hopper.webp",
        "pillow__hopper_gray.jpg",
        "pillow__hopper_orientation_6.jpg",
    ]
    others = ["imagehash__peppers.png", "pillow__hopper_45.png", "pillow__flower.jpg", "pillow__flower_thumbnail.png"]
    doc = Document(id="d1", url="https://x.example/", source="t")
    doc.append_text("intro")
    for name in hopper + others:
        doc.append_image(Image(url=name, phash=photo_hashes[name]))
    doc.append_image(Image(url="undecoded.jpg"))  # no pHash: kept, counted
    doc.append_text("outro")
    ledger = Ledger()
    (out,) = list(run_steps([doc], [InDocumentImageDedup(4)], ledger))
    out.check()
    kept = [im.url for im in out.image_list]
    assert kept == [
        "pillow__hopper.jpg",
        "imagehash__peppers.png",
        "pillow__hopper_45.png",
        "pillow__flower.jpg",
        "undecoded.jpg",
    ]
    assert out.texts[0] == "intro" and out.texts[-1] == "outro"
    counts = ledger.items["image_dedup/image"]
    assert (counts.n_in, counts.n_out) == (10, 5)
    assert counts.drops == {"near_duplicate_in_document": 5}
    assert not check_funnel(ledger.to_dict())


def test_too_common_images_dropped_and_apply_step(ray_local, planted, photo_hashes, tmp_path):
    originals, copies = planted
    # hopper (in 4 encodings within 2 bits) in 12 distinct documents -> too common; flower in 3 -> kept
    hopper = ["pillow__hopper.jpg", "pillow__hopper.png", "pillow__hopper.webp", "pillow__hopper.gif"]
    docs = []
    for i, o in enumerate(originals[:30]):
        images = []
        if i < 12:
            images.append(Image(url=f"https://cdn.example/logo{i}", phash=photo_hashes[hopper[i % 4]]))
        if 12 <= i < 15:
            images.append(Image(url=f"https://cdn.example/flower{i}", phash=photo_hashes["pillow__flower.jpg"]))
        docs.append(_doc(o.source, o.url, o.text, o.signals["quality_score"], images=images))
    dup_source = [d for i, d in copies if i == 0][0]
    docs.append(dup_source)  # a near copy of originals[0]: removed
    staged = _write_staged(docs, tmp_path / "staged", 3)
    result = run_dedup(staged, str(tmp_path / "work"), DedupConfig(partitions=2), str(tmp_path / "corpus"))

    assert result.common_image_phashes == {photo_hashes[h] for h in hopper}
    images = {r["phash"]: r for r in pq.read_table(tmp_path / "corpus" / "dedup" / "images.parquet").to_pylist()}
    assert images[photo_hashes["pillow__hopper.jpg"]]["n_docs"] == 12
    assert images[photo_hashes["pillow__flower.jpg"]] == {
        "phash": photo_hashes["pillow__flower.jpg"],
        "n_docs": 3,
        "dropped": False,
        "cluster": photo_hashes["pillow__flower.jpg"],
    }
    removals = pq.read_table(tmp_path / "work" / "image_removals.parquet").to_pylist()
    assert {r["phash"] for r in removals} == result.common_image_phashes and all(r["n_docs"] == 12 for r in removals)

    ledger = Ledger()
    out = list(run_steps(docs, [ApplyDedup(result)], ledger))
    assert len(out) == len(docs) - len(result.removed) and result.removed
    assert all(d.id not in result.removed for d in out)
    for d in out:
        d.check()
        assert not any(im.phash in result.common_image_phashes for im in d.image_list)
    assert sum(len(d.image_list) for d in out) == 3
    assert ledger.stages["dedup"].drops == {"near_duplicate": len(result.removed)}
    assert ledger.items["dedup/image"].drops == {"image_too_common": 12}
    assert not check_funnel(ledger.to_dict())
    assert {r["reason"] for r in ledger.rejects} == {"near_duplicate", "image_too_common"}


def test_empty_inputs_and_missing_file(ray_local, tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(documents_to_staged_table([]), empty)
    for paths in ([], [str(empty)]):
        result = run_dedup(paths, str(tmp_path / f"work{len(paths)}"), DedupConfig(partitions=2), None)
        assert result.removed == {} and result.common_image_phashes == set()
        assert result.counts["documents"] == 0
    with pytest.raises(ValueError, match="not found"):
        run_dedup([str(tmp_path / "nope.parquet")], str(tmp_path / "w"), DedupConfig(), None)


def test_config_rejects_inconsistent_bands():
    with pytest.raises(ValueError, match="bands x rows"):
        DedupConfig(num_perm=112, bands=10, rows=8)


# ---- appending: documents already in the corpus win ----------------------------------------------------
def test_existing_documents_win_and_are_never_removed(ray_local, planted, photo_hashes, tmp_path):
    """`existing` documents (a corpus being appended to) beat new ones whatever the fetch time or quality,
    are never removed (not even when two of them are near duplicates of each other), and count for the image
    rule; a pHash the corpus's build found too common drops its whole cluster from the new documents."""
    arts = _articles()
    (url_a, text_a), (_, text_b), (_, text_c) = arts[3], arts[4], arts[5]
    hopper, flower = photo_hashes["pillow__hopper.jpg"], photo_hashes["pillow__flower.jpg"]
    common = photo_hashes["pillow__hopper.png"]  # within 2 bits of hopper.jpg: one cluster
    old = [
        _doc("old:url", url_a, text_a, 0.1, "2020-01-01T00:00:00+00:00"),
        _doc("old:exact", "https://old.example/exact", text_b, 0.1),
        _doc("old:near1", "https://old.example/near1", text_c, 0.1),
        _doc("old:near2", "https://old.example/near2", text_c + "\n\n" + BOILERPLATE, 0.1),
    ] + [
        _doc(
            f"old:img{i}",
            f"https://old.example/img{i}",
            arts[10 + i][1],
            0.5,
            images=[Image(url=f"f{i}", phash=flower)],
        )
        for i in range(6)
    ]
    new = [
        _doc("new:url", url_a + "?utm_source=x", arts[6][1], 0.9, "2025-01-01T00:00:00+00:00"),  # later fetch
        _doc("new:exact", "https://new.example/exact", text_b, 0.9),  # better quality
        _doc("new:near", "https://new.example/near", text_c + "\n\nA new closing line.", 0.9),
    ] + [
        _doc(
            f"new:img{i}",
            f"https://new.example/img{i}",
            arts[20 + i][1],
            0.5,
            images=[Image(url=f"g{i}", phash=flower)],
        )
        for i in range(5)
    ]
    new.append(_doc("new:hopper", "https://new.example/h", arts[30][1], 0.5, images=[Image(url="h", phash=hopper)]))
    ids = {d.source: d.id for d in old + new}
    staged = _write_staged(new, tmp_path / "new", 2)
    existing = _write_staged(old, tmp_path / "old", 2)
    cfg = DedupConfig(partitions=2, image_max_docs=10)
    result = run_dedup(staged, str(tmp_path / "work"), cfg, None, existing=existing, common_phashes=(common,))
    assert result.removed == {
        ids["new:url"]: "duplicate_url",
        ids["new:exact"]: "duplicate_exact",
        ids["new:near"]: "near_duplicate",
    }
    assert result.keepers[ids["new:url"]] == ids["old:url"] and result.keepers[ids["new:exact"]] == ids["old:exact"]
    assert result.keepers[ids["new:near"]] in {ids["old:near1"], ids["old:near2"]}
    # flower: 6 existing + 5 new documents > 10 -> too common (dropped from the new ones only: phase 3 runs
    # on new units); hopper: in 1 document, but in one cluster with a pHash the corpus already dropped
    assert result.common_image_phashes == {flower, hopper}
    # without the existing documents the same new documents keep everything
    alone = run_dedup(staged, str(tmp_path / "alone"), cfg, None)
    assert alone.removed == {} and alone.common_image_phashes == set()
