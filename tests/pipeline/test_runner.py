"""The runner on a real local Ray: results, order, the failure policy (worker lost, write error, bug)."""

import os
import signal
import sys

import pytest
from ray import cloudpickle

from corpus.runner import FailurePolicy, Stage, UnitFailed, map_actors, map_tasks
from corpus.steps import Resources, Step

# the workers cannot import this test module (pytest's importlib mode): ship its functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _square(x):
    return x * x


def _write(path):
    with open(path, "w") as f:
        f.write("x")
    return path


def _bug(x):
    raise KeyError(x)


def test_map_tasks_gives_results_in_call_order(ray_local):
    assert map_tasks(Stage("squares"), _square, [(i,) for i in range(7)], progress=False) == [i * i for i in range(7)]


def test_a_write_error_finishes_the_others_then_names_where(ray_local, tmp_path):
    ok = tmp_path / "ok.txt"
    calls = [(str(tmp_path / "missing" / "a.txt"),), (str(ok),)]
    with pytest.raises(UnitFailed, match=r"could not write its output to .*missing/a.txt.*run the same command"):
        map_tasks(Stage("writes"), _write, calls, progress=False)
    assert ok.read_text() == "x", "the unit in flight finished"


def test_any_other_error_propagates(ray_local):
    import ray

    with pytest.raises(ray.exceptions.RayTaskError, match="KeyError"):
        map_tasks(Stage("bug"), _bug, [(1,)], progress=False)


class Counter:
    """A stateful worker: counts the units it ran; dies (its process) on a unit named 'die' the first time."""

    def __init__(self, marker: str):
        self.marker = marker
        self.n = 0

    def run(self, unit: str) -> tuple[str, int, int]:
        if unit == "die" and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        self.n += 1
        return unit, self.n, os.getpid()


def test_map_actors_keeps_state_and_reruns_a_lost_unit_on_a_fresh_actor(ray_local, tmp_path):
    seen = []
    units = ["a", "b", "die", "c", "d"]
    map_actors(
        Stage("count"),
        Counter,
        (str(tmp_path / "died"),),
        "run",
        units,
        lambda u: (u,),
        workers=2,
        progress=False,
        on_result=lambda u, r: seen.append(r),
    )
    assert sorted(r[0] for r in seen) == sorted(units), "every unit once, the lost one run again"
    assert max(r[1] for r in seen) > 1, "an actor keeps its state across units"
    assert (tmp_path / "died").exists()


def test_a_unit_whose_worker_keeps_dying_stops_the_run(ray_local, tmp_path):
    class Dier(Counter):
        def run(self, unit):
            os.kill(os.getpid(), signal.SIGKILL)

    stage = Stage("die", policy=FailurePolicy(max_deaths=1))
    with pytest.raises(UnitFailed, match="unit x: its worker died 2 times"):
        map_actors(stage, Dier, ("",), "run", ["x"], lambda u: (u,), workers=1, progress=False)


def test_a_worker_holds_the_largest_resources_its_steps_declare():
    class Light(Step):
        pass

    class Heavy(Step):
        resources = Resources(cpus=2, memory_bytes=1 << 30)

    assert Resources.covering([Light(), Heavy()]) == Resources(cpus=2, memory_bytes=1 << 30)
    assert Stage("s", resources=Resources(cpus=2, gpus=1)).options() == {"num_cpus": 2, "num_gpus": 1}
