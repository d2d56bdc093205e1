"""The one way interloom runs work on Ray: units mapped over tasks or actors, one failure policy.

    map_tasks(stage, fn, calls)                       one Ray task per call; results in call order
    map_actors(stage, worker_cls, args, method, units)  a pool of stateful actors (models loaded once);
                                                      results handed to `on_result` in completion order
    Runner(stage, total)                              the loop both are made of: `submit` a call for a
                                                      unit, iterate `completed()`; a caller with its own
                                                      scheduling (e.g. a crawler that calls each actor
                                                      again until it is done) uses it directly

A `Stage` names the work (progress bar, errors), declares what one task or actor holds (`Resources`, as
NeMo Curator's stages declare theirs) and the failure policy (`FailurePolicy`):
  - a unit whose worker died (its process or node was lost) runs again on a fresh worker, at most
    `max_deaths` times; Ray's own retries are off, so no second attempt runs beside ours. Unit outputs
    must therefore be atomic (temporary name + rename, then a marker), as every build output is;
  - a unit that raises one of `stop_on` (an `OSError` by default: disk full, read-only, permission denied,
    storage down for good) lets the units in flight finish (their outputs are kept), starts nothing new,
    and then raises `UnitFailed` naming where the unit writes, so the same command resumes after the fix;
  - any other exception raised by a unit is a bug and propagates at once.

The caller owns Ray (`ray.init` before mapping). Progress is a tqdm bar per stage; `on_result` may return
a dict shown as the bar's postfix (e.g. documents so far).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import ray
from tqdm import tqdm

from corpus.steps import Resources

log = logging.getLogger(__name__)

# what Ray raises when the worker (process, actor or node) running a call was lost, not the call itself
WORKER_LOST: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
)


@dataclass(frozen=True)
class FailurePolicy:
    max_deaths: int = 3  # a unit may see its worker die this many times; once more and the run stops
    stop_on: tuple[type[BaseException], ...] = (OSError,)  # finish the units in flight, then UnitFailed


@dataclass(frozen=True)
class Stage:
    """One step of work on Ray: its name, what each task/actor holds, and how failures are handled."""

    name: str
    resources: Resources = field(default_factory=Resources)
    policy: FailurePolicy = field(default_factory=FailurePolicy)
    env: dict[str, str] = field(default_factory=dict)  # environment variables of the workers
    unit_label: str = "unit"  # what the progress bar counts

    def options(self) -> dict[str, Any]:
        """Ray options of a task or actor of this stage (Ray's own retries off: the policy retries)."""
        opts = self.resources.ray_options()
        if self.env:
            opts["runtime_env"] = {"env_vars": dict(self.env)}
        return opts


class UnitFailed(ValueError):
    """A unit could not write its output (or its worker kept dying); finished units are kept."""

    def __init__(self, message: str, unit: Any):
        super().__init__(message)
        self.unit = unit


def unit_name(unit: Any) -> str:
    return str(getattr(unit, "name", unit))


class Runner:
    """Submitted calls, their units and workers; `completed()` yields (unit, worker, result) as calls finish.

    `on_lost(unit, worker, launch)` decides what happens to a unit whose worker died (after the policy's
    count): by default the same call is launched again (right for tasks; an actor pool replaces the actor).
    A unit may be submitted again after each of its calls (a stateful actor called until it is done); its
    deaths are counted over all its calls. `count(result)`: how far a result moves the bar (default 1).
    """

    def __init__(
        self,
        stage: Stage,
        total: int | None = None,
        progress: bool = True,
        on_lost: Callable[[Any, Any, Callable[[], Any]], None] | None = None,
        count: Callable[[Any], int] = lambda result: 1,
    ):
        self.stage = stage
        self.count = count
        self.on_lost = on_lost or (lambda unit, worker, launch: self.submit(unit, launch, worker))
        self._pending: dict[Any, tuple[Any, Any, Callable[[], Any]]] = {}
        self._deaths: dict[str, int] = {}
        self._failed: list[tuple[Any, BaseException]] = []
        self.bar = tqdm(total=total, desc=stage.name, unit=stage.unit_label, leave=False, disable=not progress)

    @property
    def stopping(self) -> bool:
        """True once a unit hit a `stop_on` error: submit nothing new."""
        return bool(self._failed)

    def submit(self, unit: Any, launch: Callable[[], Any], worker: Any = None) -> None:
        """Start `launch()` (a call that returns one ObjectRef) for `unit` on `worker` (None for tasks)."""
        self._pending[launch()] = (unit, worker, launch)

    def completed(self, writes_to: Callable[[Any], str] | None = None) -> Iterator[tuple[Any, Any, Any]]:
        """(unit, worker, result) in completion order until nothing is pending; then, if a unit failed on
        a `stop_on` error, `UnitFailed`. `writes_to(unit)` names the unit's outputs for that error."""
        while self._pending:
            [ref], _ = ray.wait(list(self._pending), num_returns=1)
            unit, worker, launch = self._pending.pop(ref)
            try:
                result = ray.get(ref)
            except WORKER_LOST as e:
                self._lost(unit, worker, launch, e)
                continue
            except ray.exceptions.RayTaskError as e:
                if not isinstance(e.cause, self.stage.policy.stop_on):
                    raise
                log.warning("%s: unit %s failed: %s", self.stage.name, unit_name(unit), e.cause)
                self._failed.append((unit, e.cause))
                continue
            self.bar.update(self.count(result))
            yield unit, worker, result
        if self._failed:
            unit, cause = self._failed[0]
            where = getattr(cause, "filename", None) or (writes_to(unit) if writes_to else "its output")
            raise UnitFailed(
                f"{self.stage.name}: unit {unit_name(unit)} could not write its output to {where}: "
                f"{cause} -- finished units are kept; fix the output (space, permissions) and run "
                f"the same command again to resume",
                unit,
            ) from cause

    def _lost(self, unit: Any, worker: Any, launch: Callable[[], Any], error: BaseException) -> None:
        key = unit_name(unit)
        self._deaths[key] = self._deaths.get(key, 0) + 1
        if self._deaths[key] > self.stage.policy.max_deaths:
            raise UnitFailed(
                f"{self.stage.name}: unit {key}: its worker died {self._deaths[key]} times "
                f"({error}); run the same command again to resume",
                unit,
            ) from error
        log.warning(
            "%s: the worker of unit %s was lost (%s); running it again", self.stage.name, key, type(error).__name__
        )
        self.on_lost(unit, worker, launch)

    def close(self) -> None:
        self.bar.close()


OnResult = Callable[[Any, Any], "dict[str, Any] | None"]


def _shown(runner: Runner, on_result: OnResult | None, unit: Any, result: Any) -> None:
    if on_result is not None:
        postfix = on_result(unit, result)
        if postfix:
            runner.bar.set_postfix(postfix)


def map_tasks(
    stage: Stage,
    fn: Callable[..., Any],
    calls: Sequence[tuple],
    *,
    progress: bool = True,
    writes_to: Callable[[Any], str] | None = None,
    on_result: OnResult | None = None,
) -> list[Any]:
    """Run `fn(*args)` for each args tuple of `calls` as a Ray task; the results in call order.
    A unit is the index of its call."""
    remote = ray.remote(fn).options(**stage.options(), max_retries=0)
    results: dict[int, Any] = {}
    runner = Runner(stage, total=len(calls), progress=progress)
    try:
        for i, args in enumerate(calls):
            runner.submit(i, partial(remote.remote, *args))
        for i, _, result in runner.completed(writes_to):
            results[i] = result
            _shown(runner, on_result, i, result)
    finally:
        runner.close()
    return [results[i] for i in range(len(calls))]


def map_actors(
    stage: Stage,
    worker_cls: type,
    init_args: tuple,
    method: str,
    units: Sequence[Any],
    args_of: Callable[[Any], tuple],
    *,
    workers: int,
    progress: bool = True,
    writes_to: Callable[[Any], str] | None = None,
    on_result: OnResult | None = None,
) -> None:
    """Run `method(*args_of(unit))` of a pool of `workers` actors of `worker_cls(*init_args)` over `units`;
    `on_result(unit, result)` as each finishes. The actors keep their state (loaded models) across units.
    An actor that died is retired and replaced, and its unit goes to the front of the queue."""
    if not units:
        return
    actor_cls: Any = ray.remote(max_restarts=0, max_task_retries=0)(worker_cls).options(**stage.options())
    actors: list[Any] = [actor_cls.remote(*init_args) for _ in range(min(workers, len(units)))]
    free = list(actors)
    queue = deque(units)

    def fill() -> None:
        while queue and free and not runner.stopping:
            actor, unit = free.pop(), queue.popleft()
            runner.submit(unit, partial(getattr(actor, method).remote, *args_of(unit)), actor)

    def lost(unit: Any, actor: Any, launch: Callable[[], Any]) -> None:
        ray.kill(actor, no_restart=True)
        replacement = actor_cls.remote(*init_args)
        actors.append(replacement)
        free.append(replacement)
        queue.appendleft(unit)
        fill()

    runner = Runner(stage, total=len(units), progress=progress, on_lost=lost)
    try:
        fill()
        for unit, actor, result in runner.completed(writes_to):
            free.append(actor)
            _shown(runner, on_result, unit, result)
            fill()
        assert not queue or runner.stopping, "every unit was run"
    finally:
        runner.close()
        for a in actors:
            ray.kill(a)
