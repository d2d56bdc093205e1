"""Loader: one rank's stream of `Batch`es, with exact save/restore of its position.

`slot_batches` chains one slot's stages (read -> encode -> pack -> collate); `Loader` runs the rank's slots
(in the training process or in torch DataLoader workers), normalises pixels in helper threads, and keeps
every slot's state.

Position/state: the state of a slot is its Position (epoch, shard part, document within the part) plus the
token offset of the packing carry-over, its shard count and its counters; the loader's state is every slot's
state, the next slot to read from, and the run facts it must match (`state_dict()` / `load_state_dict()`,
versioned). A loader restored from a state yields exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from corpus.format import Corpus
from train.batch import Batch
from train.data.collate import collate, normalise_pixels
from train.data.config import DataConfig
from train.data.encode import DocumentEncoder, EncodedDoc
from train.data.pack import Piece, pack_rows
from train.data.read import Position, SlotState, slot_documents
from train.tokenizer import Tokenizer

STATE_VERSION = 1


def slot_batches(
    corpus: Corpus, tok: Tokenizer, cfg: DataConfig, patch_size: int, slot: int, world: int, seed: int, start: SlotState
) -> Iterator[tuple[Batch, SlotState]]:
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

    def __init__(
        self,
        corpus_path: str,
        tokenizer_path: str,
        cfg: DataConfig,
        patch_size: int,
        rank: int,
        world: int,
        seed: int,
        slots: list[SlotState],
        rotate: int,
    ):
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
        for batch, state in slot_batches(
            corpus,
            tok,
            self.cfg,
            self.patch_size,
            self.rank * n_workers + local,
            self.world,
            self.seed,
            self.slots[local],
        ):
            yield batch, state.to_dict(), local


class Loader:
    """The loader of one rank: iterate for `Batch`es; `state_dict()` after any batch, `load_state_dict()`
    before iterating, to continue exactly there."""

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer_path: str,
        patch_size: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        corpus: str | None = None,
    ):
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
            raise ValueError(
                f"corpus {self.corpus_path} lists no finished shards in its manifest "
                "(use data.follow=true to wait for a running build)"
            )
        self.slots = [SlotState(n_shards=n_shards) for _ in range(max(1, cfg.num_workers))]
        self.next_slot = 0

    def __iter__(self) -> Iterator[Batch]:
        ds = _SlotDataset(
            self.corpus_path,
            self.tokenizer_path,
            self.cfg,
            self.patch_size,
            self.rank,
            self.world,
            self.seed,
            list(self.slots),
            self.next_slot,
        )
        if self.cfg.num_workers == 0:
            it = iter(ds)
        else:
            it = iter(
                DataLoader(
                    ds, batch_size=None, num_workers=self.cfg.num_workers, persistent_workers=False, prefetch_factor=2
                )
            )
        # Workers send uint8 pixels (a quarter of the bytes through shared memory); they are normalised here,
        # in the consuming process, by `pixel_threads` helper threads, each on one batch, in order and ahead
        # of the trainer, so that this overlaps the training step (numpy releases the GIL) instead of adding
        # to it.
        ahead: deque[tuple[Future, dict[str, Any], int]] = deque()
        with ThreadPoolExecutor(self.cfg.pixel_threads, thread_name_prefix="loader-pixels") as pool:
            for raw, state, local in it:
                ahead.append(
                    (pool.submit(normalise_pixels, raw, self.cfg.image_mean, self.cfg.image_std), state, local)
                )
                if len(ahead) > self.cfg.pixel_threads:
                    yield self._emit(*ahead.popleft())
            while ahead:
                yield self._emit(*ahead.popleft())

    def _emit(self, job: Future, state: dict[str, Any], local: int) -> Batch:
        batch = job.result()
        self.slots[local] = SlotState.from_dict(state)
        self.next_slot = (local + 1) % len(self.slots)
        return batch

    def _identity(self) -> dict[str, Any]:
        """What a saved state must agree on to be resumed here: the split of the stream and the batch shape."""
        return {
            "rank": self.rank,
            "world": self.world,
            "num_workers": self.cfg.num_workers,
            "seed": self.seed,
            "seq_len": self.cfg.seq_len,
            "batch_size": self.cfg.batch_size,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            **self._identity(),
            "next_slot": self.next_slot,
            "slots": [s.to_dict() for s in self.slots],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}")
        diff = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
        if diff:
            raise ValueError(
                "loader state was saved by a different setup (saved, now): "
                + ", ".join(f"{k}={a}, {b}" for k, (a, b) in diff.items())
            )
        self.slots = [SlotState.from_dict(s) for s in state["slots"]]
        self.next_slot = int(state["next_slot"])

    def counters(self) -> dict[str, int]:
        total: Counter = Counter()
        for s in self.slots:
            total.update(s.counters)
        return dict(total)
