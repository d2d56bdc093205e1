"""Checkpoints of a training run on Ray Train: restore the latest one on entry, save on schedule.

    with Checkpointer(cfg, rank, world) as ckpt:     # opens ray.train.get_checkpoint(), if any
        step = ckpt.step                             # 0, or the step the checkpoint was written at
        ...build the TrainState of that step's stage...
        ckpt.restore(state, loader)                  # weights, optimizer, loader position, RNG
        while ...:
            ...
            ckpt.save_if_due(step, stage, state, loader, metrics)

One checkpoint is a directory `checkpoint_SSSSSSS`, reported with `ray.train.report(..., checkpoint=...)` by
every rank (Ray Train gathers the ranks' files into it):
  dcp/              model + optimizer, torch.distributed.checkpoint (each rank writes its shard)
  trainer.json      step, stage, world size (rank 0)
  rank_R.json       the loader position of rank R (train/data state_dict)
  rank_R_rng.pt     torch RNG states of rank R (tensors only; loaded with weights_only=True)
dcp/.metadata is a pickle: it is read by `safe_reader`, which allows only the classes DCP writes.
`after_save` hooks run after each save (the resume tests inject a worker failure there, train/faults.py).
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from train.config import TrainConfig
from train.parallel import TrainState

if TYPE_CHECKING:
    from train.data import Loader

AfterSave = Callable[[int, int], None]  # (step, rank)


# What a DCP .metadata file may name when it is unpickled (what torch's FileSystemWriter writes): DCP reads it
# with a bare pickle.load, so a checkpoint folder from elsewhere (export model, eval, generate, --init-from)
# could run any code; `safe_reader` refuses every other global.
_DCP_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _DCP_GLOBALS.get(module, ()) or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"names {module}.{name}, which a checkpoint's metadata never holds")


def safe_reader(dcp_dir: str | Path):
    """A DCP storage reader of `dcp_dir` whose .metadata is unpickled with only the globals DCP writes
    (`_DCP_GLOBALS`, torch dtypes); anything else is an UnpicklingError naming the file, nothing runs. The
    tensor files are read by DCP with torch.load(weights_only=True)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as f:
                try:
                    metadata = _MetadataUnpickler(f).load()
                except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
                    raise ValueError(f"{path}: not a checkpoint's metadata ({e})") from None
            if not isinstance(metadata, Metadata):
                raise ValueError(f"{path}: not a checkpoint's metadata (a {type(metadata).__name__})")
            storage_meta = getattr(metadata, "storage_meta", None) or StorageMeta()
            storage_meta.load_id = self.load_id
            metadata.storage_meta = storage_meta
            return metadata

    return SafeReader(str(dcp_dir))


def save_checkpoint(
    path: Path, state: TrainState, step: int, stage: int, loader: Loader, rank: int, world: int
) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(state.model, state.optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / "dcp"))
    if rank == 0:
        (path / "trainer.json").write_text(json.dumps({"step": step, "stage": stage, "world": world}))
    (path / f"rank_{rank}.json").write_text(json.dumps(loader.state_dict()))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, path / f"rank_{rank}_rng.pt")


def load_checkpoint(path: Path, state: TrainState, loader: Loader, rank: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(state.model, state.optimizer)
    sd: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    dcp.load(sd, storage_reader=safe_reader(path / "dcp"))
    set_state_dict(state.model, state.optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    loader.load_state_dict(json.loads((path / f"rank_{rank}.json").read_text()))
    rng = torch.load(path / f"rank_{rank}_rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


class Checkpointer:
    """Ray Train checkpoints of one worker (module doc); a context manager around the latest checkpoint."""

    def __init__(self, cfg: TrainConfig, rank: int, world: int, after_save: list[AfterSave] | None = None):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.after_save = after_save or []
        self.step = 0
        self._dir: Path | None = None
        self._dir_cm: AbstractContextManager[str] | None = None  # latest.as_directory() while it is open

    def __enter__(self) -> Checkpointer:
        import ray.train

        latest = ray.train.get_checkpoint()
        if latest is not None:
            self._dir_cm = latest.as_directory()
            self._dir = Path(self._dir_cm.__enter__())
            meta = json.loads((self._dir / "trainer.json").read_text())
            if meta["world"] != self.world:
                raise ValueError(
                    f"checkpoint {self._dir} was written by {meta['world']} workers, this run has "
                    f"{self.world}: set run.num_workers={meta['world']} to resume it"
                )
            self.step = int(meta["step"])
        return self

    def restore(self, state: TrainState, loader: Loader) -> None:
        """Load the latest checkpoint (if there is one) into the state and the loader, then let go of it."""
        if self._dir is not None:
            load_checkpoint(self._dir, state, loader, self.rank)
        self._close()

    def save_if_due(self, step: int, stage: int, state: TrainState, loader: Loader, metrics: dict[str, Any]) -> bool:
        """Every run.checkpoint_every steps and at the last step (`TrainConfig.last_step`): save, report to Ray Train, run the hooks."""
        import ray.train

        if step % self.cfg.run.checkpoint_every and step != self.cfg.last_step:
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f"interloom-ckpt-{self.rank}-"))
        try:
            save_checkpoint(tmp, state, step, stage, loader, self.rank, self.world)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                checkpoint_dir_name=f"checkpoint_{step:07d}",
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for hook in self.after_save:
            hook(step, self.rank)
        return True

    def _close(self) -> None:
        if self._dir_cm is not None:
            self._dir_cm.__exit__(None, None, None)
            self._dir_cm = self._dir = None

    def __exit__(self, *exc) -> None:
        self._close()
