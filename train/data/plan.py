"""Plan: which loader slot reads which documents, per epoch, deterministically.

A "slot" is one (rank, dataloader worker) pair: slot = rank * num_workers + worker.

Splitting rule. Epoch e shuffles the manifest's shards with `Random(f"{seed}:{e}")`; shard i of that order
goes to rank i % world, and a rank's j-th shard to its dataloader worker j % num_workers. When there are
fewer shards than slots, each shard is split into `ceil(slots/shards)` parts by document index modulo (part
k holds documents k, k+parts, ...), so every slot still gets work and every document is read exactly once
per epoch. Documents are read in shard order (the shuffle is per shard).

Follow mode, epoch 0 (a build still writing): manifest line k goes to rank k % world, worker
(k // world) % num_workers, as lines appear (`follow_slot_of`, read.py).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from corpus.format import ShardInfo


@dataclass(frozen=True)
class ShardPart:
    """Documents index, index + nparts, index + 2*nparts, ... of one corpus shard: what one loader slot reads
    of that shard in one epoch (a strided slice of a shard; not a crawl unit, `crawl.sources.Unit`)."""

    shard: str
    index: int = 0
    nparts: int = 1

    def n_documents(self, shard_documents: int) -> int:
        return max(0, -(-(shard_documents - self.index) // self.nparts))


def plan_parts(shards: list[ShardInfo], epoch: int, seed: int, world: int, num_workers: int) -> list[list[ShardPart]]:
    """Shard parts of every slot for one epoch; slot = rank * num_workers + worker. Every document of every
    shard is in exactly one part of exactly one slot."""
    n_slots = world * max(1, num_workers)
    order = list(shards)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    nparts = max(1, math.ceil(n_slots / len(order))) if order else 1
    parts = [ShardPart(s.name, k, nparts) for s in order for k in range(nparts)]
    slots: list[list[ShardPart]] = [[] for _ in range(n_slots)]
    for r in range(world):
        rank_parts = parts[r::world]
        for w in range(max(1, num_workers)):
            slots[r * max(1, num_workers) + w] = rank_parts[w :: max(1, num_workers)]
    return slots


def follow_slot_of(k: int, world: int, num_workers: int) -> int:
    """Follow mode, epoch 0: the slot of manifest line k."""
    w = max(1, num_workers)
    return (k % world) * w + (k // world) % w
