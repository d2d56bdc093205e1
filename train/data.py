"""Streaming loader: corpus shards -> packed `Batch`es (train/batch.py), with exact save/restore of its position.

The pipeline is a chain of small generators, one per concern (webdataset style), with explicit splitting:

  plan_units       manifest shards -> units per (epoch, rank, dataloader worker), deterministic
  slot_documents   a slot's units -> (Position, Document); epoch after epoch, forever
  DocumentEncoder  Document -> EncodedDoc: token ids, labels, image spans with their uint8 patches
  pack_rows        EncodedDoc stream -> rows of exactly seq_len tokens, documents split at text positions
  collate          rows -> raw Batch (pixels still uint8: a quarter of the bytes between processes)
  normalise_pixels raw Batch -> Batch (float32 pixels), in the consuming process (Loader.__iter__)

Splitting rule. Epoch e shuffles the manifest's shards with `Random(f"{seed}:{e}")`; shard i of that order
goes to rank i % world, and a rank's j-th shard to its dataloader worker j % num_workers (a "slot" is one
(rank, worker) pair). When there are fewer shards than slots, each shard is split into `ceil(slots/shards)`
parts by document index modulo (part k holds documents k, k+parts, ...), so every slot still gets work and
every document is read exactly once per epoch. Documents are read in shard order (the shuffle is per shard).

Equal step counts (no DDP hang on uneven shards): a slot's stream never ends. When a slot has read its
units of epoch e it goes on with its units of epoch e+1 (epochs are per slot), so every rank can always
produce the next batch and all ranks run exactly the trainer's configured number of steps; the step count is
agreed from the config, never from how much data a rank happened to get. A slot whose units hold no
document at all (fewer documents than slots) is a ValueError, not a hang.

Follow mode (`follow=True`, a build still writing): epoch 0 takes shards in manifest order as they appear
(manifest line k goes to rank k % world, worker (k // world) % num_workers), polls the manifest when it
has run out, and ends when build.json says the build finished; later epochs are planned as above.

Token layout of one document (train/batch.py): `<bos> text <img_start> <image> x M <img_end> text ... <eos>`
with M = (h/2)*(w/2) for an image of h x w patches. Text blocks are separated by "\\n\\n". Labels are the
next token, IGNORE_INDEX where that target is a special or image token other than `<eos>`: so `<bos>`,
`<img_start>`, `<image>`, `<img_end>` and padding are never predicted, while `<eos>` is the target of a
document's last token (the model learns to stop).

Packing: rows are filled greedily, in stream order. A document that does not fit the rest of a row is cut
at a text position so the row is full (never inside an image span; if an image span does not fit the rest
of the row, the row is closed with padding and the span starts the next row). Each piece is its own segment
(position_ids restart at 0). An image whose span is longer than seq_len is dropped and counted.

Position/state: because packing is greedy and sequential, the only carry-over between batches is "the rest
of document D from token offset O". The state of a slot is its Position (epoch, unit, document within the
unit) plus that token offset, its shard count and its counters; the loader's state is every slot's state,
the next slot to read from, and the run facts it must match (`state_dict()` / `load_state_dict()`,
versioned). A loader restored from a state yields exactly the batches an uninterrupted one would have.

Images: Pillow decodes (JPEG at a reduced DCT scale via `draft` when the target is at least 2x smaller),
torch resizes on uint8 (bicubic with antialiasing, Pillow's filter), patchify is one reshape/transpose of the
uint8 array; pixels become float32 once per batch, after the process boundary.

Decoding is safe: JSON for documents (pipeline.corpus.iter_tar_documents) and Pillow for images, with a
decompression-bomb cap; nothing is unpickled. An image Pillow cannot decode, one too large or with an
extreme aspect ratio, is dropped from its document and counted by reason.
"""

from __future__ import annotations

import io
import logging
import math
import random
import tarfile
import time
import warnings
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from PIL import ImageOps
from pydantic import Field
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.config import Section
from pipeline.corpus import Corpus, ShardInfo, iter_tar_documents
from pipeline.record import Document
from train.batch import IGNORE_INDEX, Batch
from train.tokenizer import Tokenizer

log = logging.getLogger(__name__)

STATE_VERSION = 1


class DataConfig(Section):
    """The loader. Patch size and merge come from the model config (model.vision), not from here."""

    corpus: str = ""  # local path or fsspec URL; `interloom train --corpus` sets it
    tokenizer: str = "train"  # path to a tokenizer.json, or "train": train one on the corpus into RUN_DIR
    vocab_size: int = 2048  # when tokenizer == "train"
    seq_len: int = 512  # T: tokens per packed row
    batch_size: int = 4  # B: rows per micro-batch per rank
    min_pixels: int = 64 * 64  # pixel budget of one resized image (h*w in pixels)
    max_pixels: int = 256 * 256
    max_decode_pixels: int = 40_000_000  # refuse to decode larger images (decompression bombs)
    max_aspect_ratio: float = 20.0  # longer side / shorter side; beyond it the image is dropped
    text_after_image: int = 32  # tokens after <img_end> that are the image's text for the contrastive loss
    image_mean: float = 0.5  # pixels -> (x/255 - mean) / std
    image_std: float = 0.5
    follow: bool = False  # keep reading new manifest lines while a build is writing
    poll_s: float = 2.0  # follow mode: seconds between manifest polls
    num_workers: int = 0  # torch DataLoader worker processes per rank (0 = in the training process)
    # threads of the training process that turn a batch's uint8 pixels into float32, one batch each, ahead
    # of the trainer (~30 ms per single-gpu batch here: one thread keeps up with ~30 batches/s)
    pixel_threads: int = Field(1, ge=1)


# ---- splitting -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """Documents part, part+nparts, ... of one shard."""

    shard: str
    part: int = 0
    nparts: int = 1

    def n_documents(self, shard_documents: int) -> int:
        return max(0, -(-(shard_documents - self.part) // self.nparts))


def plan_units(shards: list[ShardInfo], epoch: int, seed: int, world: int, num_workers: int) -> list[list[Unit]]:
    """Units of every slot for one epoch; slot = rank * num_workers + worker. Every document of every shard
    is in exactly one unit of exactly one slot."""
    n_slots = world * max(1, num_workers)
    order = list(shards)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    nparts = max(1, math.ceil(n_slots / len(order))) if order else 1
    units = [Unit(s.name, k, nparts) for s in order for k in range(nparts)]
    slots: list[list[Unit]] = [[] for _ in range(n_slots)]
    per_rank = [units[r::world] for r in range(world)]
    for r, rank_units in enumerate(per_rank):
        for w in range(max(1, num_workers)):
            slots[r * max(1, num_workers) + w] = rank_units[w::max(1, num_workers)]
    return slots


def follow_slot_of(k: int, world: int, num_workers: int) -> int:
    """Follow mode, epoch 0: the slot of manifest line k."""
    w = max(1, num_workers)
    return (k % world) * w + (k // world) % w


# ---- positions and state ---------------------------------------------------------------------------------
@dataclass
class SlotState:
    epoch: int = 0
    unit: int = 0  # index into the slot's units of this epoch
    doc: int = 0  # index of the document within the unit
    token: int = 0  # tokens of that document already emitted (the packing carry-over)
    n_shards: int = 0  # manifest lines this epoch is planned over (0 = follow mode epoch 0: growing)
    counters: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "unit": self.unit, "doc": self.doc, "token": self.token,
                "n_shards": self.n_shards, "counters": dict(self.counters)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlotState:
        return cls(int(d["epoch"]), int(d["unit"]), int(d["doc"]), int(d["token"]), int(d["n_shards"]),
                   {str(k): int(v) for k, v in d.get("counters", {}).items()})


@dataclass(frozen=True)
class Position:
    epoch: int
    unit: int
    doc: int
    n_shards: int


# ---- reading ---------------------------------------------------------------------------------------------
class ShardReader:
    """Documents of one unit, from a document index on (seeks with the index Parquet's byte offsets)."""

    def __init__(self, corpus: Corpus):
        self.corpus = corpus
        self._offsets: dict[str, list[int]] = {}

    def offsets(self, shard: str) -> list[int]:
        if shard not in self._offsets:
            self._offsets[shard] = self.corpus.read_index(shard, columns=["offset"]).column("offset").to_pylist()
        return self._offsets[shard]

    def read(self, unit: Unit, start: int, counters: Counter) -> Iterator[tuple[int, Document]]:
        first = unit.part + start * unit.nparts  # document index within the shard
        offsets = self.offsets(unit.shard)
        if first >= len(offsets):
            return
        path = self.corpus.shard_path(unit.shard)
        try:
            with self.corpus.fs.open(path, "rb") as f:
                f.seek(offsets[first])
                for j, doc in enumerate(iter_tar_documents(f, with_images=True, where=path), start=first):
                    if (j - unit.part) % unit.nparts == 0:
                        yield (j - unit.part) // unit.nparts, doc
        except (ValueError, OSError, tarfile.TarError) as e:
            counters["shard_read_errors"] += 1
            log.warning("skipping the rest of %s: %s", path, e)


def slot_documents(corpus: Corpus, slot: int, world: int, num_workers: int, seed: int, follow: bool,
                   poll_s: float, start: SlotState, counters: Counter) -> Iterator[tuple[Position, Document]]:
    """One slot's documents, epoch after epoch, starting at `start`; never ends (see module docstring)."""
    reader = ShardReader(corpus)
    epoch, unit_i, doc_i, n_shards = start.epoch, start.unit, start.doc, start.n_shards
    while True:
        n_docs = 0
        if n_shards == 0:  # follow mode, epoch 0: manifest order, as lines appear
            units = _follow_units(corpus, slot, world, num_workers, poll_s)
        else:
            shards = corpus.shards()[:n_shards]
            units = iter(plan_units(shards, epoch, seed, world, num_workers)[slot])
        for ui, unit in enumerate(units):
            if ui < unit_i:
                continue
            for di, doc in reader.read(unit, doc_i if ui == unit_i else 0, counters):
                n_docs += 1
                yield Position(epoch, ui, di, n_shards), doc
        if n_docs == 0 and unit_i == 0 and doc_i == 0:
            raise ValueError(f"{corpus.path}: loader slot {slot} (rank {slot // max(1, num_workers)}, worker "
                             f"{slot % max(1, num_workers)}) got no documents in epoch {epoch}: the corpus has "
                             f"fewer documents than ranks x workers; use fewer workers")
        counters["epochs"] += 1
        epoch, unit_i, doc_i = epoch + 1, 0, 0
        n_shards = n_shards or len(corpus.shards())  # follow mode: epoch 1 on is planned over all lines


def _follow_units(corpus: Corpus, slot: int, world: int, num_workers: int, poll_s: float) -> Iterator[Unit]:
    k = 0
    while True:
        shards = corpus.shards()
        while k < len(shards):
            if follow_slot_of(k, world, num_workers) == slot:
                yield Unit(shards[k].name)
            k += 1
        if corpus._build_finished() and len(corpus.shards()) == k:
            return
        time.sleep(poll_s)


# ---- images ----------------------------------------------------------------------------------------------
def patch_grid(height: int, width: int, patch_size: int, min_pixels: int, max_pixels: int,
               merge: int = 2) -> tuple[int, int]:
    """(h, w) in patches, both multiples of `merge`, keeping the aspect ratio as closely as the grid allows,
    with h*w*patch_size^2 within [min_pixels, max_pixels] (Qwen2-VL style smart resize)."""
    f = patch_size * merge
    hb, wb = max(f, round(height / f) * f), max(f, round(width / f) * f)
    if hb * wb > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        hb, wb = max(f, math.floor(height / beta / f) * f), max(f, math.floor(width / beta / f) * f)
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        hb, wb = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
    return hb // patch_size, wb // patch_size


@dataclass
class EncodedImage:
    start: int  # position of <img_start> in the document's tokens; <img_end> at start + 1 + M
    end: int  # one past <img_end>
    patches_NP: np.ndarray  # uint8 [N, P]
    grid_hw: tuple[int, int]


@dataclass
class EncodedDoc:
    ids: np.ndarray  # int64 [L]
    labels: np.ndarray  # int64 [L], next-token targets, IGNORE_INDEX on special/image targets
    images: list[EncodedImage]


class SpecialIds:
    """Which token ids are special: a boolean table lookup (np.isin sorts on every call)."""

    def __init__(self, tok: Tokenizer):
        self.table = np.zeros(max(tok.special_ids) + 2, dtype=bool)  # last entry: every id above
        self.table[sorted(tok.special_ids)] = True

    def mask(self, ids: np.ndarray) -> np.ndarray:
        return self.table[np.minimum(ids, len(self.table) - 1)]


class DocumentEncoder:
    """Document -> EncodedDoc. Image problems drop the image (counted by reason), never the document."""

    def __init__(self, tok: Tokenizer, cfg: DataConfig, patch_size: int, merge: int = 2):
        self.tok, self.cfg, self.p, self.merge = tok, cfg, patch_size, merge
        f = patch_size * merge
        if cfg.max_pixels < f * f or cfg.min_pixels > cfg.max_pixels:
            raise ValueError(f"data.min_pixels={cfg.min_pixels} / max_pixels={cfg.max_pixels}: need "
                             f"min <= max and max >= {f * f} (one {merge}x{merge} group of {patch_size}px patches)")
        self._special = SpecialIds(tok)

    def image(self, data: bytes, counters: Counter) -> tuple[np.ndarray, tuple[int, int]] | None:
        """Decoded, resized and patchified image: uint8 patches [N, P] (raster order of patches, each patch
        channel-major 3 x p x p) and its grid (h, w) in patches; None (counted) when it is dropped.
        They become float32 once per batch, in `normalise_pixels`."""
        cfg, p = self.cfg, self.p
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", PILImage.DecompressionBombWarning)
                im = PILImage.open(io.BytesIO(data))
                if im.width * im.height > cfg.max_decode_pixels:
                    counters["images_dropped:too_large"] += 1
                    return None
                orientation = im.getexif().get(0x0112, 1)
                turned = orientation in (5, 6, 7, 8)  # EXIF orientation swaps w and h
                w, h = (im.height, im.width) if turned else (im.width, im.height)
                if min(w, h) < 1 or max(w, h) / min(w, h) > cfg.max_aspect_ratio:
                    counters["images_dropped:aspect_ratio"] += 1
                    return None
                gh, gw = patch_grid(h, w, p, cfg.min_pixels, cfg.max_pixels, self.merge)
                # JPEG: decode at a reduced DCT scale when the target is at least 2x smaller (same pixels
                # as a full decode would give after the resize, at a fraction of the cost)
                im.draft("RGB", (gh * p, gw * p) if turned else (gw * p, gh * p))
                if orientation != 1:  # exif_transpose copies the image even when there is nothing to do
                    im = ImageOps.exif_transpose(im)
                im = im if im.mode == "RGB" else im.convert("RGB")
                im.load()
                x_HWC = np.array(im)  # writable: torch.from_numpy below
        except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError,
                PILImage.DecompressionBombWarning) as e:
            counters["images_dropped:undecodable"] += 1
            log.debug("undecodable image: %s", e)
            return None
        if gh * gw * p * p > cfg.max_pixels:
            counters["images_dropped:aspect_ratio"] += 1
            return None
        H, W = gh * p, gw * p
        if x_HWC.shape[:2] != (H, W):
            # bicubic with antialiasing on uint8 (torch's vectorised kernel; the same filter as Pillow's
            # BICUBIC resize, within +-2 of 255, at about a third of its cost)
            x_1CHW = torch.from_numpy(x_HWC).permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
            x_1CHW = F.interpolate(x_1CHW, size=(H, W), mode="bicubic", antialias=True)
            x_HWC = x_1CHW[0].permute(1, 2, 0).numpy()  # channels_last: a contiguous H, W, C view
        patches_NP = x_HWC.reshape(gh, p, gw, p, 3).transpose(0, 2, 4, 1, 3).reshape(gh * gw, 3 * p * p)
        return patches_NP, (gh, gw)

    def encode(self, doc: Document, counters: Counter) -> EncodedDoc:
        tok = self.tok
        ids: list[int] = [tok.bos_id]
        images: list[EncodedImage] = []
        texts = [(i, t) for i, t in enumerate(doc.texts) if t is not None]
        last_text = texts[-1][0] if texts else -1
        encoded = dict(zip([i for i, _ in texts], tok.encode_batch(
            [t + ("\n\n" if i != last_text and doc.texts[i + 1] is not None else "") for i, t in texts])))
        for i, im in enumerate(doc.images):
            if im is None:
                ids.extend(encoded[i])
                continue
            counters["images"] += 1
            got = self.image(im.data or b"", counters)
            if got is None:
                continue
            patches, (gh, gw) = got
            m = (gh // self.merge) * (gw // self.merge)
            if m + 2 > self.cfg.seq_len:
                counters["images_dropped:span_exceeds_seq_len"] += 1
                continue
            images.append(EncodedImage(len(ids), len(ids) + m + 2, patches, (gh, gw)))
            ids.extend([tok.img_start_id] + [tok.image_id] * m + [tok.img_end_id])
            counters["images_kept"] += 1
        ids.append(tok.eos_id)
        ids_L = np.asarray(ids, dtype=np.int64)
        labels_L = np.full_like(ids_L, IGNORE_INDEX)
        target_L = ids_L[1:]  # <eos> is a target, the other special tokens are not
        labels_L[:-1] = np.where(self._special.mask(target_L) & (target_L != tok.eos_id), IGNORE_INDEX, target_L)
        counters["documents"] += 1
        return EncodedDoc(ids_L, labels_L, images)


# ---- packing ---------------------------------------------------------------------------------------------
@dataclass
class Piece:
    doc: EncodedDoc
    start: int
    end: int


def cut_point(doc: EncodedDoc, start: int, limit: int) -> int:
    """Largest end <= limit such that [start, end) does not cut an image span."""
    end = min(limit, len(doc.ids))
    for im in doc.images:
        if im.start < end < im.end:
            end = im.start
    return end


def pack_rows(docs: Iterator[tuple[Position, EncodedDoc]], seq_len: int, first_offset: int = 0
              ) -> Iterator[tuple[list[Piece], Position, int]]:
    """Greedy sequential packing. Yields (pieces of one row, position, token offset) where (position,
    offset) is where the next row starts: the rest of that document, or (offset == its length) the next."""
    row: list[Piece] = []
    used = 0
    for n, (pos, doc) in enumerate(docs):
        off = first_offset if n == 0 else 0
        while off < len(doc.ids):
            end = cut_point(doc, off, off + seq_len - used)
            if end <= off:  # an image span does not fit in the rest of this row
                assert used > 0, "image spans longer than seq_len are dropped by the encoder"
                yield row, pos, off
                row, used = [], 0
                continue
            row.append(Piece(doc, off, end))
            used += end - off
            off = end
            if used == seq_len:
                yield row, pos, off
                row, used = [], 0


def collate(rows: list[list[Piece]], seq_len: int, tok: Tokenizer, text_after_image: int, patch_size: int
            ) -> Batch:
    """Rows -> a raw Batch: token arrays filled by slices of preallocated numpy arrays, `pixel_values_NP`
    still uint8 (the images' patches concatenated once); `normalise_pixels` makes it the contract's float32."""
    B, T = len(rows), seq_len
    input_ids = np.full((B, T), tok.pad_id, dtype=np.int64)
    labels = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros((B, T), dtype=np.int64)
    segment_ids = np.full((B, T), -1, dtype=np.int32)
    after = np.full((B, T), -1, dtype=np.int64)
    special = SpecialIds(tok)
    positions = np.arange(T, dtype=np.int64)
    patches: list[np.ndarray] = []
    grids: list[tuple[int, int]] = []
    for b, row in enumerate(rows):
        t = 0
        for s, pc in enumerate(row):
            n = pc.end - pc.start
            input_ids[b, t:t + n] = pc.doc.ids[pc.start:pc.end]
            labels[b, t:t + n] = pc.doc.labels[pc.start:pc.end]
            position_ids[b, t:t + n] = positions[:n]
            segment_ids[b, t:t + n] = s
            for im in pc.doc.images:
                if pc.start <= im.start and im.end <= pc.end:
                    i = len(grids)
                    patches.append(im.patches_NP)
                    grids.append(im.grid_hw)
                    # text right after <img_end>, up to the next special token or the window
                    window = pc.doc.ids[im.end:min(pc.end, im.end + text_after_image)]
                    hit = np.flatnonzero(special.mask(window))
                    k = int(hit[0]) if len(hit) else len(window)
                    a = t + im.end - pc.start
                    after[b, a:a + k] = i
            t += n
    P = 3 * patch_size * patch_size
    pixel_values_NP = torch.from_numpy(np.concatenate(patches) if patches else np.zeros((0, P), np.uint8))
    return Batch(
        input_ids_BT=torch.from_numpy(input_ids),
        labels_BT=torch.from_numpy(labels),
        position_ids_BT=torch.from_numpy(position_ids),
        segment_ids_BT=torch.from_numpy(segment_ids),
        pixel_values_NP=pixel_values_NP,
        grid_hw_I2=torch.tensor(grids, dtype=torch.int64).reshape(-1, 2),
        text_after_image_BT=torch.from_numpy(after),
    )


def normalise_pixels(batch: Batch, mean: float, std: float) -> Batch:
    """Raw batch (uint8 pixels) -> the contract's float32 pixels (x/255 - mean) / std: in place on one
    float32 copy (vectorised numpy, which releases the GIL), the same float32 values as the formula."""
    x = batch.pixel_values_NP.numpy().astype(np.float32)
    x /= np.float32(255.0)
    x -= np.float32(mean)
    x /= np.float32(std)
    return replace(batch, pixel_values_NP=torch.from_numpy(x))


# ---- one slot, end to end --------------------------------------------------------------------------------
def slot_batches(corpus: Corpus, tok: Tokenizer, cfg: DataConfig, patch_size: int, slot: int, world: int,
                 seed: int, start: SlotState) -> Iterator[tuple[Batch, SlotState]]:
    """Raw batches of one slot (uint8 pixels, see `collate`), each with the slot's state right after it
    (resume from that state yields the batches that follow)."""
    counters: Counter = Counter(start.counters)
    encoder = DocumentEncoder(tok, cfg, patch_size)
    docs = slot_documents(corpus, slot, world, cfg.num_workers, seed, cfg.follow, cfg.poll_s, start, counters)

    def encoded() -> Iterator[tuple[Position, EncodedDoc]]:
        for n, (pos, doc) in enumerate(docs):
            # the resumed-on document was already counted before the state was saved
            yield pos, encoder.encode(doc, counters if (n > 0 or start.token == 0) else Counter())

    rows: list[list[Piece]] = []
    for row, pos, off in pack_rows(encoded(), cfg.seq_len, start.token):
        rows.append(row)
        if len(rows) == cfg.batch_size:
            batch = collate(rows, cfg.seq_len, tok, cfg.text_after_image, patch_size)
            rows = []
            counters["batches"] += 1
            counters["tokens"] += int((batch.segment_ids_BT >= 0).sum())
            yield batch, SlotState(pos.epoch, pos.unit, pos.doc, off, pos.n_shards, dict(counters))


class _SlotDataset(IterableDataset):
    """What each DataLoader worker runs: its slot's batches. Worker w plays slot (w + rotate) % workers so
    a restored loader starts with the slot that was next."""

    def __init__(self, corpus_path: str, tokenizer_path: str, cfg: DataConfig, patch_size: int, rank: int,
                 world: int, seed: int, slots: list[SlotState], rotate: int):
        super().__init__()
        self.corpus_path, self.tokenizer_path, self.cfg = corpus_path, tokenizer_path, cfg
        self.patch_size, self.rank, self.world, self.seed = patch_size, rank, world, seed
        self.slots, self.rotate = slots, rotate

    def __iter__(self) -> Iterator[tuple[Batch, dict[str, Any], int]]:
        info = get_worker_info()
        n_workers = max(1, self.cfg.num_workers)
        local = ((info.id if info else 0) + self.rotate) % n_workers
        corpus, tok = Corpus(self.corpus_path), Tokenizer.load(self.tokenizer_path)
        if info is not None:  # worker processes share the cores with the training process
            torch.set_num_threads(1)
        for batch, state in slot_batches(corpus, tok, self.cfg, self.patch_size, self.rank * n_workers + local,
                                         self.world, self.seed, self.slots[local]):
            yield batch, state.to_dict(), local


class Loader:
    """The loader of one rank: iterate for `Batch`es; `state_dict()` after any batch, `load_state_dict()`
    before iterating, to continue exactly there."""

    def __init__(self, cfg: DataConfig, tokenizer_path: str, patch_size: int, rank: int = 0, world: int = 1,
                 seed: int = 0, corpus: str | None = None):
        self.cfg, self.tokenizer_path, self.patch_size = cfg, str(tokenizer_path), patch_size
        self.corpus_path = corpus or cfg.corpus
        if not self.corpus_path:
            raise ValueError("data.corpus is empty: pass --corpus PATH (a corpus directory or URL)")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.rank, self.world, self.seed = rank, world, seed
        c = Corpus(self.corpus_path)
        n_shards = 0 if cfg.follow else len(c.shards())
        if not cfg.follow and n_shards == 0:
            raise ValueError(f"corpus {self.corpus_path} lists no finished shards in its manifest "
                             "(use data.follow=true to wait for a running build)")
        self.slots = [SlotState(n_shards=n_shards) for _ in range(max(1, cfg.num_workers))]
        self.next_slot = 0

    def __iter__(self) -> Iterator[Batch]:
        ds = _SlotDataset(self.corpus_path, self.tokenizer_path, self.cfg, self.patch_size, self.rank,
                          self.world, self.seed, list(self.slots), self.next_slot)
        if self.cfg.num_workers == 0:
            it = iter(ds)
        else:
            it = iter(DataLoader(ds, batch_size=None, num_workers=self.cfg.num_workers,
                                 persistent_workers=False, prefetch_factor=2))
        # Workers send uint8 pixels (a quarter of the bytes through shared memory); they are normalised here,
        # in the consuming process, by `pixel_threads` helper threads, each on one batch, in order and ahead
        # of the trainer, so that this overlaps the training step (numpy releases the GIL) instead of adding
        # to it.
        ahead: deque[tuple[Future, dict[str, Any], int]] = deque()
        with ThreadPoolExecutor(self.cfg.pixel_threads, thread_name_prefix="loader-pixels") as pool:
            for raw, state, local in it:
                ahead.append((pool.submit(normalise_pixels, raw, self.cfg.image_mean, self.cfg.image_std),
                              state, local))
                if len(ahead) > self.cfg.pixel_threads:
                    yield self._emit(*ahead.popleft())
            while ahead:
                yield self._emit(*ahead.popleft())

    def _emit(self, job: Future, state: dict[str, Any], local: int) -> Batch:
        batch = job.result()
        self.slots[local] = SlotState.from_dict(state)
        self.next_slot = (local + 1) % len(self.slots)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "rank": self.rank, "world": self.world,
                "num_workers": self.cfg.num_workers, "seed": self.seed, "seq_len": self.cfg.seq_len,
                "batch_size": self.cfg.batch_size, "next_slot": self.next_slot,
                "slots": [s.to_dict() for s in self.slots]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}")
        mine = {"rank": self.rank, "world": self.world, "num_workers": self.cfg.num_workers,
                "seed": self.seed, "seq_len": self.cfg.seq_len, "batch_size": self.cfg.batch_size}
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise ValueError("loader state was saved by a different setup (saved, now): " +
                             ", ".join(f"{k}={a}, {b}" for k, (a, b) in diff.items()))
        self.slots = [SlotState.from_dict(s) for s in state["slots"]]
        self.next_slot = int(state["next_slot"])

    def counters(self) -> dict[str, int]:
        total: Counter = Counter()
        for s in self.slots:
            total.update(s.counters)
        return dict(total)
