"""Steps: the small classes a build is made of.

A `Step` has a `name` and one method, `process(item)`, which returns the (possibly changed) item or a
`Drop(reason)`. A `Filter` is a step whose one method is `filter(doc)`, returning `True` to keep or
`(False, reason)` to drop; the base class does the counting (datatrove's `BaseFilter`). Steps that need a
heavy model load it lazily in `setup()`, which the runner calls once per worker before the first item.

`run_steps` pushes items through a chain of steps and records every in/out/drop in a `Ledger`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from pipeline.stats import Ledger


class Drop(NamedTuple):
    reason: str
    detail: str = ""


class Step:
    """A named processing step. Subclasses set `name` and implement `process`."""

    name: str = "step"

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
            return Drop(str(verdict[1]))
        raise TypeError(f"{self!r}.filter must return True or (False, reason), got {verdict!r}")


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


def run_steps(items: Iterable[Any], steps: list[Step], ledger: Ledger) -> Iterator[Any]:
    """Push items through the steps lazily; count each step's in/out/drops in `ledger`.

    An exception inside a step becomes a counted drop `error:<ExceptionType>` for that item, never a crash
    of the unit: bad input is a counted outcome.
    """
    for step in steps:
        ledger.stage(step.name)  # stages appear in pipeline order even when nothing reaches them
    for item in items:
        for step in steps:
            count = ledger.stage(step.name)
            count.n_in += 1
            try:
                out = step.process(item, ledger)
            except Exception as e:  # noqa: BLE001 - a failing record is a counted drop, by contract
                out = Drop(f"error:{type(e).__name__}", str(e))
            if isinstance(out, Drop):
                doc_id, url = _ident(item)
                ledger.drop(step.name, out.reason, id=doc_id, url=url,
                            item="document" if doc_id else "record", detail=out.detail)
                break
            count.n_out += 1
            item = out
        else:
            yield item
