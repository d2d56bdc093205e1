"""Configuration of a training run: one `Section` per component, composed into `TrainConfig`.

  data    the loader (train/data/config.py DataConfig): corpus, tokenizer, seq_len, batch size, pixel budget, follow
  model   the model (train/model/config.py ModelConfig); the loss weights live there too
          (model.moe.aux_loss_weight, model.moe.z_loss_weight, model.contrastive.weight), and the patch size
          (model.vision.patch_size) is the loader's patch size
  optim   AdamW, warmup + cosine, clipping, gradient accumulation
  stages  what trains when: a list of {trainable: adapter | adapter+vision | all, steps, lr?, min_pixels?,
          max_pixels?}; steps add up; the pixel budget per stage gives progressive resolution
  parallel  data parallelism (FSDP2 or DDP) and mixed precision (FSDP2 MixedPrecisionPolicy)
  run     output dir, checkpoint/log cadence, seed, Ray workers, GPU, MFU peak, failures

Recipes (train/recipes/NAME.yaml) are YAML files of these keys; `resolve_recipe` finds them by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from corpus.config import Section
from train.data import DataConfig
from train.model.config import ModelConfig

RECIPES = Path(__file__).resolve().parent / "recipes"


class OptimConfig(Section):
    lr: float = Field(3e-4, ge=0)  # peak learning rate (a stage may override it)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decays to lr * min_lr_ratio at the end of each stage
    warmup_steps: int = Field(100, ge=0)  # linear warmup at the start of each stage
    weight_decay: float = Field(0.1, ge=0)  # on matrices only (model.param_groups)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0)  # max global grad norm; 0 disables clipping
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step


class StageConfig(Section):
    trainable: Literal["adapter", "adapter+vision", "all"] = "all"
    steps: int = Field(1000, ge=1)
    lr: float | None = Field(None, ge=0)  # None: optim.lr
    # the stage's pixel budget per image (progressive resolution, Yi-VL: low in `align`, higher later);
    # None: data.min_pixels / data.max_pixels. The loader is rebuilt at the stage boundary, same position.
    min_pixels: int | None = Field(None, ge=1)
    max_pixels: int | None = Field(None, ge=1)


class ParallelConfig(Section):
    """How the model is spread over the data-parallel ranks and in which precision it computes.

    FSDP2 (`fully_shard` per vision block and decoder layer, then the root) keeps fp32 master weights
    sharded over the ranks and, with `param_dtype: bfloat16`, all-gathers them as bf16 for forward and
    backward (MixedPrecisionPolicy, as torchtitan does: no autocast, so every matmul -- the experts'
    grouped GEMMs included -- gets bf16 operands), and reduce-scatters gradients in `reduce_dtype`.
    DDP replicates an fp32 model (the CPU default; it has no mixed precision here)."""

    data_parallel: Literal["auto", "fsdp", "ddp"] = "auto"  # auto: fsdp on GPU, ddp on CPU
    param_dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # compute dtype; auto: bf16 on GPU, fp32 on CPU
    reduce_dtype: Literal["float32", "bfloat16"] = "float32"  # gradient reduce-scatter dtype (fsdp)
    reshard_after_forward: bool = True  # fsdp: free the gathered weights after forward (ZeRO-3), re-gather

    def resolved(self, use_gpu: bool) -> tuple[str, str]:
        """(data_parallel, param_dtype) with "auto" decided for the device; a ValueError for bf16 without
        fsdp (DDP here has no mixed precision policy)."""
        dp = self.data_parallel if self.data_parallel != "auto" else ("fsdp" if use_gpu else "ddp")
        dtype = self.param_dtype if self.param_dtype != "auto" else ("bfloat16" if use_gpu else "float32")
        if dp == "ddp" and dtype != "float32":
            raise ValueError(
                f"parallel.param_dtype={dtype} needs parallel.data_parallel=fsdp (the mixed "
                "precision policy is FSDP2's); DDP trains in float32"
            )
        return dp, dtype


class RunSection(Section):
    output: str = "runs/run"  # run directory: checkpoints, metrics.jsonl, tb/, tokenizer.json, config
    # where Ray Train keeps the checkpoints: None = next to the logs in `output`; or a URL such as
    # s3://bucket/runs (pyarrow file system; endpoint/credentials from the environment, e.g.
    # AWS_ENDPOINT_URL). The run is stored at STORAGE/<name of output>; a cluster needs shared or object storage
    storage: str | None = None
    checkpoint_every: int = Field(100, ge=1)  # optimizer steps; the last step always checkpoints
    keep_checkpoints: int = Field(3, ge=1)
    log_every: int = Field(10, ge=1)
    # held-out evaluation (train/evaluate.py): `interloom train --val-corpus` sets val_corpus; every eval_every
    # steps (a multiple of log_every; and at the last step) each rank reads the first eval_batches batches of
    # its share of it and the val_* losses join that step's metrics row
    val_corpus: str | None = None
    eval_every: int = Field(100, ge=1)
    eval_batches: int = Field(4, ge=1)  # per rank
    seed: int = 0  # model init (same on every rank) and shard shuffling
    num_workers: int = Field(2, ge=1)  # Ray Train workers (data-parallel ranks)
    use_gpu: bool = False  # NCCL (+ FSDP2 in bf16 by default, see parallel); False: gloo (+ DDP in fp32)
    cpus_per_worker: float = 1.0
    threads_per_worker: int = Field(1, ge=1)  # torch intra-op threads per CPU worker
    max_failures: int = 0  # worker failures Ray Train restarts from the last checkpoint
    # stop this invocation after this many optimizer steps (checkpointed there); the stages, their schedule
    # and pixel budgets stay the recipe's, and running again with a larger value (or none) continues the run.
    # None: run every stage to the end
    max_steps: int | None = Field(None, ge=1)
    peak_flops: float | None = None  # per device, for MFU; None: the bf16 dense peak of the GPU by name
    #                                  (train/flops.py), or the assumed CPU peak below
    cpu_peak_flops: float = 1e11  # ASSUMED peak of one CPU worker (not measured); MFU on CPU is indicative
    fail_delay_s: float = Field(5.0, ge=0)  # testing: how long after its checkpoint the injected failure waits
    fail_at_step: int | None = None  # testing the resume path: rank 1 (or 0) dies hard once after this step


class TrainConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    stages: list[StageConfig] = Field(default_factory=lambda: [StageConfig()])
    parallel: ParallelConfig = ParallelConfig()
    run: RunSection = RunSection()

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if not self.stages:
            raise ValueError("stages: need at least one stage")
        if self.model.vision.merge != 2:
            raise ValueError("model.vision.merge must be 2: the loader builds grids for a 2x2 merge")
        self.parallel.resolved(self.run.use_gpu)  # bf16 without fsdp is an error now, not on the workers
        if self.run.val_corpus and self.run.eval_every % self.run.log_every:
            raise ValueError(
                f"run.eval_every={self.run.eval_every} must be a multiple of run.log_every="
                f"{self.run.log_every}: the val_* metrics join the log step's row"
            )
        for i in range(len(self.stages)):
            d = self.stage_data(i)
            if d.min_pixels > d.max_pixels:
                raise ValueError(
                    f"stages[{i}]: min_pixels={d.min_pixels} > max_pixels={d.max_pixels} "
                    "(a stage's value, or data.* where the stage sets none)"
                )
        return self

    def stage_data(self, i: int) -> DataConfig:
        """The loader config of stage i: `data` with the stage's pixel budget where it sets one."""
        s = self.stages[i]
        budget = {k: v for k, v in (("min_pixels", s.min_pixels), ("max_pixels", s.max_pixels)) if v is not None}
        return self.data.model_copy(update=budget) if budget else self.data

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def last_step(self) -> int:
        """Where this invocation stops: the end of the stages, or run.max_steps if that comes first."""
        return min(self.total_steps, self.run.max_steps or self.total_steps)

    def stage_at(self, step: int) -> tuple[int, int]:
        """(stage index, first step of that stage) for optimizer step `step` (0-based)."""
        start = 0
        for i, s in enumerate(self.stages):
            if step < start + s.steps:
                return i, start
            start += s.steps
        return len(self.stages) - 1, start - self.stages[-1].steps


def resolve_recipe(name_or_path: str) -> Path:
    """A YAML path, or the name of a bundled recipe (`debug-cpu` -> train/recipes/debug-cpu.yaml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    bundled = RECIPES / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(q.stem for q in RECIPES.glob("*.yaml"))
    raise ValueError(f"no config file {name_or_path!r} and no recipe of that name (recipes: {', '.join(names)})")
