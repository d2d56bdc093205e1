"""Fault injection for the resume tests, as a Checkpointer `after_save` hook (never part of the loop).

`run.fail_at_step = S` makes the last rank exit hard, once per run directory and value of S, right after
the first checkpoint at or after step S -- as a worker killed by the machine would.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from train.checkpoint import AfterSave
from train.config import TrainConfig


class KillAfterCheckpoint:
    def __init__(self, at_step: int, rank: int, out: Path, delay_s: float):
        self.at_step, self.rank, self.out, self.delay_s = at_step, rank, out, delay_s

    def __call__(self, step: int, rank: int) -> None:
        if step < self.at_step or rank != self.rank:
            return
        marker = self.out / f"injected_failure_{self.at_step}.done"
        if marker.exists():
            return
        marker.write_text(f"worker {rank} killed after step {step}\n")
        # A worker killed in the instant after `ray.train.report()` may die before the controller has
        # registered that checkpoint (it polls the workers), and the restart then rightly begins from the
        # previous one. The resume under test is from *this* checkpoint, so the worker dies once the
        # controller has seen it.
        time.sleep(self.delay_s)
        os._exit(1)


def fault_hooks(cfg: TrainConfig) -> list[AfterSave]:
    """The hooks `run.fail_at_step` asks for (none in a normal run)."""
    if cfg.run.fail_at_step is None:
        return []
    return [
        KillAfterCheckpoint(cfg.run.fail_at_step, cfg.run.num_workers - 1, Path(cfg.run.output), cfg.run.fail_delay_s)
    ]
