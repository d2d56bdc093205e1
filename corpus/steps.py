"""Steps: the small classes a build is made of.

A `Step` has a `name` and one method, `process(item)`, which returns the (possibly changed) item or a
`Drop(reason)`. A `Filter` is a step whose one method is `filter(doc)`, returning `True` to keep or
`(False, reason)` to drop; the base class does the counting (datatrove's `BaseFilter`). Steps that need a
heavy model load it lazily in `setup()`, which the runner calls once per worker before the first item.
A step that writes `doc.signals` declares them (`signals`: each `Signal` with the config keys of its
`Threshold`s); the build resolves them against the config into build.json (`resolve_signals`), where the
report reads them. Each step declares the `Resources` one worker running it holds (NeMo Curator's `Resources`); a worker that
runs a chain of steps holds `Resources.covering(steps)`.

`run_steps` pushes items through a chain of steps and records every in/out/drop in a `Ledger`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol, cast

from corpus.stats import DeferredLedger, Ledger


@dataclass(frozen=True)
class Resources:
    """What one Ray task or actor of a step holds."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_bytes: int | None = None  # Ray's logical memory; None = not declared

    def ray_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.cpus}
        if self.gpus:
            opts["num_gpus"] = self.gpus
        if self.memory_bytes:
            opts["memory"] = self.memory_bytes
        return opts

    @classmethod
    def covering(cls, steps: Iterable[Step]) -> Resources:
        """The resources of a worker that runs all `steps`: the largest of each kind."""
        declared = [s.resources for s in steps]
        memory = [r.memory_bytes for r in declared if r.memory_bytes]
        return cls(
            cpus=max((r.cpus for r in declared), default=1.0),
            gpus=max((r.gpus for r in declared), default=0.0),
            memory_bytes=max(memory) if memory else None,
        )


@dataclass(frozen=True)
class Threshold:
    """A key of the step's config section whose value a signal is compared with."""

    key: str
    keeps: Literal["min", "max"]  # "min": documents with signal >= value stay; "max": signal <= value stay
    off_below: float | None = None  # a value below this turns the rule off (e.g. C4's -1)


def at_least(key: str, off_below: float | None = None) -> Threshold:
    return Threshold(key, "min", off_below)


def at_most(key: str) -> Threshold:
    return Threshold(key, "max")


class Signal:
    """A signal a step writes to `doc.signals`, with the thresholds applied to it. A name with "{n}" is a
    family: its thresholds' config values are dicts keyed by n, one signal per key."""

    def __init__(self, name: str, *thresholds: Threshold):
        self.name = name
        self.thresholds = thresholds

    def __repr__(self) -> str:
        return f"Signal({self.name!r}, {', '.join(map(repr, self.thresholds))})"

    def resolve(self, section: Any, prefix: str) -> dict[str, list[dict[str, Any]]]:
        """{signal name: [{"value", "kind", "config"}]} for a config `section` named `prefix`."""
        out: dict[str, list[dict[str, Any]]] = {} if "{n}" in self.name else {self.name: []}
        for t in self.thresholds:
            value = getattr(section, t.key)
            if "{n}" in self.name:
                assert isinstance(value, dict), f"{self.name}: {prefix}.{t.key} must be a dict of n -> value"
                for n, v in value.items():
                    out.setdefault(self.name.format(n=n), []).append(
                        {"value": float(v), "kind": t.keeps, "config": f"{prefix}.{t.key}.{n}"}
                    )
            elif t.off_below is None or value >= t.off_below:
                out[self.name].append({"value": float(value), "kind": t.keeps, "config": f"{prefix}.{t.key}"})
        return out


def resolve_signals(configured: Iterable[tuple[str, Any, Step | type[Step]]]) -> dict[str, list[dict[str, Any]]]:
    """The signals of (config prefix, config section, step) entries with their thresholds' values: what the
    build writes to build.json as `signals` and the report draws."""
    out: dict[str, list[dict[str, Any]]] = {}
    for prefix, section, step in configured:
        for signal in step.signals:
            for name, thresholds in signal.resolve(section, prefix).items():
                out.setdefault(name, []).extend(thresholds)
    return out


class Drop(NamedTuple):
    reason: str
    detail: str = ""  # what decided it, e.g. "gopher_n_words=12 (min 50: min_doc_words)"


class Step:
    """A named processing step. Subclasses set `name` and implement `process`."""

    name: str = "step"
    resources: Resources = Resources()
    signals: tuple[Signal, ...] = ()  # what it writes to doc.signals

    def setup(self) -> None:
        """Load heavy state (models, pools). Called once per worker, before the first item."""

    def process(self, item: Any, ledger: Ledger) -> Any | Drop:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Filter(Step):
    """A step that keeps or drops whole documents. Implement `filter`; signals go on `doc.signals`."""

    def filter(self, doc: Any) -> bool | tuple[bool, str]:
        raise NotImplementedError

    def process(self, doc: Any, ledger: Ledger) -> Any | Drop:
        verdict = self.filter(doc)
        if verdict is True:
            return doc
        if isinstance(verdict, tuple) and len(verdict) == 2 and verdict[0] is False:
            return Drop(str(verdict[1]), self.decided(doc))
        raise TypeError(f"{self!r}.filter must return True or (False, reason), got {verdict!r}")

    def decided(self, doc: Any) -> str:
        """The detail of a drop: each declared signal's value on `doc` that is past one of its thresholds
        (all declared values when none is), with the threshold, e.g. "gopher_n_words=12 (min 50:
        min_doc_words)". The full signals go in the rejects row's `signals` column."""
        values = getattr(doc, "signals", None) or {}
        section = getattr(self, "cfg", None)
        past, known = [], []
        for signal in self.signals:
            for name, value in values.items():
                if not _matches(signal.name, name) or not isinstance(value, (int, float)):
                    continue
                rules = []
                for t in signal.thresholds:
                    limit = _threshold_value(section, t.key, name, signal.name)
                    if limit is None or (t.off_below is not None and limit < t.off_below):
                        continue
                    failed = value < limit if t.keeps == "min" else value > limit
                    rules.append((failed, f"{t.keeps} {limit:g}: {t.key}"))
                text = f"{name}={value:.6g}" + (f" ({'; '.join(r for _, r in rules)})" if rules else "")
                known.append(text)
                if any(failed for failed, _ in rules):
                    past.append(text)
        return ", ".join(past or known)


def _matches(declared: str, name: str) -> bool:
    if "{n}" not in declared:
        return declared == name
    head, tail = declared.split("{n}", 1)
    return name.startswith(head) and name.endswith(tail) and name[len(head) : len(name) - len(tail)].isdigit()


def _threshold_value(section: Any, key: str, name: str, declared: str) -> float | None:
    """The config value a signal `name` is compared with (a family's value picked by its n)."""
    value = getattr(section, key, None)
    if isinstance(value, dict):
        head, tail = declared.split("{n}", 1)
        n = name[len(head) : len(name) - len(tail)]
        value = value.get(int(n), value.get(n)) if n.isdigit() else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def drop_images(doc: Any, ledger: Ledger, stage: str, reason_of: Callable[[Any], str | None]) -> None:
    """Remove the images of `doc` for which `reason_of(image)` gives a reason; the text stays.

    Images are visited in reading order (so `reason_of` may keep state, e.g. the images kept so far); each
    is counted in the item count `stage/image`, and each removed one is an item drop with its reason and
    a rejects row naming the image URL."""
    count = ledger.item(stage, "image")
    keep = []
    for im in doc.images:
        reason = None if im is None else reason_of(im)
        if im is not None:
            count.n_in += 1
            if reason is None:
                count.n_out += 1
            else:
                ledger.drop(stage, reason, id=doc.id, url=doc.url, item="image", detail=im.url)
        keep.append(reason is None)
    if not all(keep):
        doc.keep_positions(keep)


def _ident(item: Any) -> tuple[str, str]:
    return str(getattr(item, "id", "") or ""), str(getattr(item, "url", "") or "")


def _signals(item: Any) -> dict[str, Any] | None:
    signals = getattr(item, "signals", None)
    return dict(signals) if isinstance(signals, dict) and signals else None


def _text(item: Any) -> str | None:
    try:
        text = getattr(item, "text", None)
    except Exception:  # noqa: BLE001 - a malformed document still gets its drop recorded, without text
        return None
    return text if isinstance(text, str) else None


def run_steps(items: Iterable[Any], steps: list[Step], ledger: Ledger) -> Iterator[Any]:
    """Push items through the steps lazily; count each step's in/out/drops in `ledger`.

    An exception inside a step becomes a counted drop `error:<ExceptionType>` for that item, never a crash
    of the unit: bad input is a counted outcome.
    """
    for step in steps:
        ledger.stage(step.name)  # stages appear in pipeline order even when nothing reaches them
    for item in items:
        out = _through(item, steps, ledger)
        if out is not _DROPPED:
            yield out


_DROPPED = object()


def _through(item: Any, steps: list[Step], ledger: Ledger) -> Any:
    """`item` through `steps` (counted in `ledger`): the item out of the last one, or _DROPPED."""
    for step in steps:
        count = ledger.stage(step.name)
        count.n_in += 1
        try:
            out = step.process(item, ledger)
        except Exception as e:  # noqa: BLE001 - a failing record is a counted drop, by contract
            out = Drop(f"error:{type(e).__name__}", str(e))
        if isinstance(out, Drop):
            doc_id, url = _ident(item)
            ledger.drop(
                step.name,
                out.reason,
                id=doc_id,
                url=url,
                item="document" if doc_id else "record",
                detail=out.detail,
                signals=_signals(item),
                text=_text(item) if doc_id else None,
            )
            return _DROPPED
        count.n_out += 1
        item = out
    return item


class Prefetching(Protocol):
    """A step that can start slow work for an item (I/O elsewhere: fetching its images) before the item
    reaches it. `prefetch` only starts work: what `process` then decides and records must not depend on
    whether or when `prefetch` ran (the results are the same, only sooner)."""

    name: str

    def prefetch(self, item: Any) -> None: ...

    def prefetch_full(self) -> bool:
        """True while the work started and not yet taken by `process` is at its bound (stop looking ahead)."""
        ...


def run_steps_ahead(
    items: Iterable[Any],
    source_ledger: DeferredLedger,
    steps: list[Step],
    ledger: Ledger,
    at: int,
    ahead: int,
) -> Iterator[Any]:
    """`run_steps` with a look-ahead: `steps[at]` (a `Prefetching` step) gets `prefetch(item)` for up to
    `ahead` later items while an item is in the steps from `at` on, so that (say) the images of the next
    documents are fetched while this one's are processed, and the next pages extracted while this one's
    images are fetched. The outcome is that of `run_steps`, event for event: the items come out in the same
    order and `ledger` ends with the same counts and the same rejects in the same order. The steps before
    `at` run ahead into held-back ledgers (`DeferredLedger`), replayed into `ledger` just before the item
    goes on, as does `source_ledger`, the ledger `items` (a source) records its own drops in.

    What this needs of the steps: the steps before `at` and the steps from `at` on share no state that the
    order between them could change (each group still sees its items in order), and `prefetch` changes no
    outcome (see `Prefetching`). `ahead` items ahead at most (counting only items that reach `steps[at]`;
    those dropped before it are held as their ledger events only, at most `4 * ahead` of them), and fewer
    while the step says it is full."""
    if ahead < 1:
        raise ValueError("ahead must be >= 1 (run_steps is the runner without look-ahead)")
    for step in steps:
        ledger.stage(step.name)
    before, after = steps[:at], steps[at:]
    prefetching = cast(Prefetching, steps[at])
    waiting: deque[tuple[Any, DeferredLedger, DeferredLedger]] = deque()  # (item or _DROPPED, source's, steps')
    n_ahead = 0  # items in `waiting` that reached steps[at]
    it = iter(items)
    exhausted = False
    while True:
        while (
            not exhausted
            and n_ahead < ahead
            and len(waiting) < 4 * ahead
            and not (n_ahead and prefetching.prefetch_full())
        ):
            try:
                item = next(it)
            except StopIteration:
                exhausted = True
                break
            from_source = DeferredLedger()
            source_ledger.replay(from_source)  # the source's drops up to and including this item
            held = DeferredLedger()
            out = _through(item, before, held)
            if out is not _DROPPED:
                prefetching.prefetch(out)
                n_ahead += 1
            waiting.append((out, from_source, held))
        if not waiting:
            break
        out, from_source, held = waiting.popleft()
        from_source.replay(ledger)
        held.replay(ledger)
        if out is _DROPPED:
            continue
        n_ahead -= 1
        out = _through(out, after, ledger)
        if out is not _DROPPED:
            yield out
    source_ledger.replay(ledger)  # the source's drops after its last item
