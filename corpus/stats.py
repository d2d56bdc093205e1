"""The funnel: per stage, records in/out and drops by reason; plus the rejects log.

Every step of a build reports here. Two kinds of counts:
- document stages (`stage(name)`): in = out + sum(drops), and a stage's `out` feeds the next stage's `in`;
- item counts inside documents (`items(stage, kind)`): images or text blocks dropped from a document that
  itself goes on (e.g. an image not found in the WARC, a boilerplate paragraph).
`Ledger`s of units merge into the build's `stats.json`; merging is order-independent so a build with
1 or N workers writes the same numbers.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

REJECTS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # document id (empty when the record never became a document)
        ("url", pa.string()),
        ("stage", pa.string()),
        ("item", pa.string()),  # "document" | "image" | "text" | "record"
        ("reason", pa.string()),
        ("detail", pa.string()),  # e.g. the image URL, the exception text, the signal and threshold that decided
        ("signals", pa.string()),  # document drops: JSON of every signal the document had when dropped
        ("text", pa.string()),  # document drops: the text (first TEXT_CHARS) of a sample per reason, else ""
        ("key", pa.float64()),  # the sample key of the row (a hash of the id): smallest keys are the text sample
    ]
)
TEXT_CHARS = 2000  # characters of a rejected document's text kept in its rejects row
TEXT_PER_REASON = 20  # rejected documents per (stage, reason) whose text is kept, per unit of work


def as_text(s: str) -> str:
    """`s` as text that can be stored (UTF-8): the characters Python keeps for bytes that are not UTF-8 (in a
    file name) become `\\xNN` escapes; any other string is returned as it is."""
    if s.isascii():
        return s
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate surrogateescape does not make
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def sample_key(doc_id: str, seed: int = 0) -> float:
    """A uniform key in [0, 1) from a document id: the rejected documents of a reason with the smallest keys
    keep their text, so each unit keeps the same ones on a re-run and the report can take the smallest
    keys of all units."""
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class StageCount:
    n_in: int = 0
    n_out: int = 0
    drops: Counter = field(default_factory=Counter)

    def merge(self, other: StageCount) -> None:
        self.n_in += other.n_in
        self.n_out += other.n_out
        self.drops.update(other.drops)

    def to_dict(self) -> dict[str, Any]:
        return {"in": self.n_in, "out": self.n_out, "drops": dict(sorted(self.drops.items()))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageCount:
        return cls(int(d["in"]), int(d["out"]), Counter(d.get("drops", {})))


@dataclass
class Ledger:
    """Counts and rejects of one unit of work (or, merged, of a whole build)."""

    stages: dict[str, StageCount] = field(default_factory=dict)
    items: dict[str, StageCount] = field(default_factory=dict)  # key "stage/kind", e.g. "images/image"
    counters: Counter = field(default_factory=Counter)  # free counters, e.g. "pii/email"
    rejects: list[dict[str, Any]] = field(default_factory=list)
    # (stage, reason) -> heap of (-key, row index) of the rows whose text is kept (the TEXT_PER_REASON smallest)
    _texts: dict[tuple[str, str], list[tuple[float, int]]] = field(default_factory=dict, repr=False)

    def stage(self, name: str) -> StageCount:
        return self.stages.setdefault(name, StageCount())

    def item(self, stage: str, kind: str) -> StageCount:
        return self.items.setdefault(f"{stage}/{kind}", StageCount())

    def drop(
        self,
        stage: str,
        reason: str,
        *,
        id: str = "",
        url: str = "",
        item: str = "document",
        detail: str = "",
        signals: dict[str, Any] | None = None,
        text: str | None = None,
    ) -> None:
        """Record one drop: counted in the stage (documents/records) or item counts, and logged. A document
        drop carries the document's `signals` and, for a sample of TEXT_PER_REASON per (stage, reason)
        chosen by `sample_key(id)`, the first TEXT_CHARS characters of its `text`."""
        if item in ("document", "record"):
            self.stage(stage).drops[reason] += 1
        else:
            self.item(stage, item).drops[reason] += 1
        key = sample_key(id) if id else 1.0
        row = {
            "id": id,
            "url": as_text(url),
            "stage": stage,
            "item": item,
            "reason": reason,
            "detail": as_text(detail[:500]),
            "signals": json.dumps(signals, allow_nan=True) if signals else "",
            "text": "",
            "key": key,
        }
        self.rejects.append(row)
        if text and id:
            self._keep_text(stage, reason, key, len(self.rejects) - 1, text)

    def _keep_text(self, stage: str, reason: str, key: float, index: int, text: str) -> None:
        heap = self._texts.setdefault((stage, reason), [])
        if len(heap) < TEXT_PER_REASON:
            heapq.heappush(heap, (-key, index))
        elif key < -heap[0][0]:
            _, evicted = heapq.heapreplace(heap, (-key, index))
            self.rejects[evicted]["text"] = ""
        else:
            return
        self.rejects[index]["text"] = text[:TEXT_CHARS]

    def merge(self, other: Ledger) -> None:
        for name, c in other.stages.items():
            self.stage(name).merge(c)
        for name, c in other.items.items():
            self.items.setdefault(name, StageCount()).merge(c)
        self.counters.update(other.counters)
        self.rejects.extend(other.rejects)

    def to_dict(self, stage_order: list[str] | None = None) -> dict[str, Any]:
        names = list(stage_order or [])
        names += sorted(n for n in self.stages if n not in names)
        return {
            "stages": [{"name": n, **self.stages[n].to_dict()} for n in names if n in self.stages],
            "items": {k: self.items[k].to_dict() for k in sorted(self.items)},
            "counters": dict(sorted(self.counters.items())),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ledger:
        led = cls()
        for s in d.get("stages", []):
            led.stages[s["name"]] = StageCount.from_dict(s)
        for k, v in d.get("items", {}).items():
            led.items[k] = StageCount.from_dict(v)
        led.counters.update(d.get("counters", {}))
        return led

    def rejects_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rejects, schema=REJECTS_SCHEMA)

    def dumps(self, stage_order: list[str] | None = None) -> str:
        return json.dumps(self.to_dict(stage_order), indent=2, sort_keys=False)


@dataclass
class DeferredLedger(Ledger):
    """A ledger whose drops are held back, to be replayed later into another ledger in the order they came
    (`replay`): what lets a runner work on later items before an earlier item is finished while the rejects
    (their order, the text sample kept per reason) come out as if the items had gone one by one. Counts
    (stages, items, counters) add up here as usual and only what they grew by since the last `replay` is
    moved over (merging counts does not depend on order); the counts objects handed out (`stage()`,
    `item()`) keep their values, so a caller that compares a count with an earlier value of it (a source's
    "no record read" check) sees what it would see in a plain ledger."""

    held: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    _moved_stages: dict[str, StageCount] = field(default_factory=dict, repr=False)
    _moved_items: dict[str, StageCount] = field(default_factory=dict, repr=False)
    _moved_counters: Counter = field(default_factory=Counter, repr=False)

    def drop(self, stage: str, reason: str, **kw: Any) -> None:
        self.held.append((stage, reason, kw))

    def replay(self, into: Ledger) -> None:
        """Move what was recorded since the last replay into `into`: counts added, drops recorded there in
        order."""
        for mine, moved, theirs in (
            (self.stages, self._moved_stages, into.stages),
            (self.items, self._moved_items, into.items),
        ):
            for name, c in mine.items():
                m = moved.setdefault(name, StageCount())
                t = theirs.setdefault(name, StageCount())
                t.n_in += c.n_in - m.n_in
                t.n_out += c.n_out - m.n_out
                t.drops.update({k: v - m.drops.get(k, 0) for k, v in c.drops.items()})
                moved[name] = StageCount(c.n_in, c.n_out, Counter(c.drops))
        into.counters.update({k: v - self._moved_counters.get(k, 0) for k, v in self.counters.items()})
        self._moved_counters = Counter(self.counters)
        held, self.held = self.held, []
        for stage, reason, kw in held:
            into.drop(stage, reason, **kw)


def check_funnel(stats: dict[str, Any]) -> list[str]:
    """Return the violations of the funnel contract (empty when it adds up)."""
    problems = []
    for s in stats["stages"]:
        dropped = sum(s["drops"].values())
        if s["in"] != s["out"] + dropped:
            problems.append(f"stage {s['name']}: in {s['in']} != out {s['out']} + drops {dropped}")
    for k, s in stats.get("items", {}).items():
        dropped = sum(s["drops"].values())
        if s["in"] != s["out"] + dropped:
            problems.append(f"items {k}: in {s['in']} != out {s['out']} + drops {dropped}")
    return problems
