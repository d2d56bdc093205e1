"""Read: a slot's documents from the corpus, epoch after epoch, with the position of each.

Equal step counts (no DDP hang on uneven shards): a slot's stream never ends. When a slot has read its
shard parts of epoch e it goes on with its parts of epoch e+1 (epochs are per slot), so every rank can
always produce the next batch and all ranks run exactly the trainer's configured number of steps; the step
count is agreed from the config, never from how much data a rank happened to get. A slot whose parts hold
no document at all (fewer documents than slots) is a ValueError, not a hang.

Follow mode (`follow=True`, a build still writing): epoch 0 takes shards in manifest order as they appear,
through the corpus's public `Corpus.follow()` (it polls the manifest and ends once `Corpus.is_finished()`
and every line is read); later epochs are planned over every line, as plan.py says.

Decoding is safe: JSON for documents (corpus.format.iter_tar_documents) and Pillow for images (encode.py),
with a decompression-bomb cap; nothing is unpickled. A shard that cannot be read is skipped from there on
and counted (`shard_read_errors`).
"""

from __future__ import annotations

import itertools
import logging
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from corpus.format import Corpus, iter_tar_documents
from corpus.record import Document
from train.data.plan import ShardPart, follow_slot_of, plan_parts

log = logging.getLogger(__name__)


@dataclass
class SlotState:
    epoch: int = 0
    unit: int = 0  # index into the slot's shard parts of this epoch (plan.py `ShardPart`)
    doc: int = 0  # index of the document within that part
    token: int = 0  # tokens of that document already emitted (the packing carry-over)
    n_shards: int = 0  # manifest lines this epoch is planned over (0 = follow mode epoch 0: growing)
    counters: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "unit": self.unit,
            "doc": self.doc,
            "token": self.token,
            "n_shards": self.n_shards,
            "counters": dict(self.counters),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlotState:
        return cls(
            int(d["epoch"]),
            int(d["unit"]),
            int(d["doc"]),
            int(d["token"]),
            int(d["n_shards"]),
            {str(k): int(v) for k, v in d.get("counters", {}).items()},
        )


@dataclass(frozen=True)
class Position:
    epoch: int
    unit: int
    doc: int
    n_shards: int


class ShardReader:
    """Documents of one shard part, from a document index on (seeks with the index Parquet's byte offsets)."""

    def __init__(self, corpus: Corpus):
        self.corpus = corpus
        self._offsets: dict[str, list[int]] = {}
        self._ids: dict[str, list[str]] = {}  # the index's document ids, to check where a part starts
        self._documents: dict[str, int] = {}  # manifest: shard name -> documents

    def offsets(self, shard: str) -> list[int]:
        """The byte offset of each document of `shard`, from its index; a ValueError naming the index when it
        does not list one increasing offset per document the manifest counts (a part of a split shard would
        start at the wrong document, or find no offset and read nothing, without a word)."""
        if shard not in self._offsets:
            table = self.corpus.read_index(shard, columns=["offset", "id"])
            offsets = table.column("offset").to_pylist()
            self._ids[shard] = table.column("id").to_pylist()
            if shard not in self._documents:  # (follow mode: the manifest grew since)
                self._documents = {s.name: s.documents for s in self.corpus.shards()}
            documents = self._documents.get(shard)
            where = self.corpus.index_path(shard)
            if documents is not None and len(offsets) != documents:
                raise ValueError(f"{where}: {len(offsets)} rows, but the manifest counts {documents} documents")
            if (
                not all(isinstance(o, int) for o in offsets)
                or (offsets and offsets[0] < 0)
                or any(b <= a for a, b in itertools.pairwise(offsets))
            ):
                raise ValueError(f"{where}: its offsets are not increasing byte offsets")
            self._offsets[shard] = offsets
        return self._offsets[shard]

    def read(self, part: ShardPart, start: int, counters: Counter) -> Iterator[tuple[int, Document]]:
        first = part.index + start * part.nparts  # document index within the shard
        path = self.corpus.shard_path(part.shard)
        try:
            offsets = self.offsets(part.shard)  # a missing or damaged index: the shard is skipped, counted
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
            counters["shard_read_errors"] += 1
            log.warning("skipping %s: its index %s cannot be read: %s", path, self.corpus.index_path(part.shard), e)
            return
        if first >= len(offsets):
            return
        try:
            with self.corpus.fs.open(path, "rb") as f:
                f.seek(offsets[first])
                for j, doc in enumerate(iter_tar_documents(f, with_images=True, where=path), start=first):
                    if j == first and doc.id != self._ids[part.shard][first]:  # offsets shifted: parts would
                        raise ValueError(  # start at other documents, some read twice, some never
                            f"{self.corpus.index_path(part.shard)} names document {self._ids[part.shard][first]} "
                            f"at byte {offsets[first]}, the shard holds {doc.id} there"
                        )
                    if (j - part.index) % part.nparts == 0:
                        yield (j - part.index) // part.nparts, doc
        except (ValueError, OSError, tarfile.TarError) as e:
            counters["shard_read_errors"] += 1
            log.warning("skipping the rest of %s: %s", path, e)


def slot_documents(
    corpus: Corpus,
    slot: int,
    world: int,
    num_workers: int,
    seed: int,
    follow: bool,
    poll_s: float,
    start: SlotState,
    counters: Counter,
) -> Iterator[tuple[Position, Document]]:
    """One slot's documents, epoch after epoch, starting at `start`; never ends (see module docstring)."""
    reader = ShardReader(corpus)
    epoch, part_i, doc_i, n_shards = start.epoch, start.unit, start.doc, start.n_shards
    while True:
        n_docs = 0
        if n_shards == 0:  # follow mode, epoch 0: manifest order, as lines appear
            parts = follow_parts(corpus, slot, world, num_workers, poll_s)
        else:
            shards = corpus.shards()[:n_shards]
            parts = iter(plan_parts(shards, epoch, seed, world, num_workers)[slot])
        for pi, part in enumerate(parts):
            if pi < part_i:
                continue
            for di, doc in reader.read(part, doc_i if pi == part_i else 0, counters):
                n_docs += 1
                yield Position(epoch, pi, di, n_shards), doc
        if n_docs == 0 and part_i == 0 and doc_i == 0:
            raise ValueError(
                f"{corpus.path}: loader slot {slot} (rank {slot // max(1, num_workers)}, worker "
                f"{slot % max(1, num_workers)}) got no documents in epoch {epoch}: the corpus has "
                f"fewer documents than ranks x workers; use fewer workers"
            )
        counters["epochs"] += 1
        epoch, part_i, doc_i = epoch + 1, 0, 0
        n_shards = n_shards or len(corpus.shards())  # follow mode: epoch 1 on is planned over all lines


def follow_parts(corpus: Corpus, slot: int, world: int, num_workers: int, poll_s: float) -> Iterator[ShardPart]:
    """Follow mode, epoch 0: this slot's manifest lines (whole shards) as the build appends them; ends
    when the build has finished and every line is read (`Corpus.follow`)."""
    for k, shard in enumerate(corpus.follow(poll_s)):
        if follow_slot_of(k, world, num_workers) == slot:
            yield ShardPart(shard.name)
