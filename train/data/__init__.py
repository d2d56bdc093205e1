"""Streaming loader: corpus shards -> packed `Batch`es (train/batch.py), with exact save/restore of its position.

The pipeline is a chain of small generators, one module per concern (webdataset style), with explicit
splitting; each module's docstring specifies its part:

  plan.py     manifest shards -> `ShardPart`s per (epoch, rank, dataloader worker), deterministic
  read.py     a slot's parts -> (Position, Document), epoch after epoch, forever; follow mode through
              the public `Corpus.follow()` / `Corpus.is_finished()`
  encode.py   Document -> EncodedDoc: token ids, labels (`<eos>` is a target), image spans with uint8 patches
  pack.py     EncodedDoc stream -> rows of exactly seq_len tokens, documents split at text positions
  collate.py  rows -> raw Batch (uint8 pixels); `normalise_pixels` -> float32, in the consuming process
  loader.py   `Loader`: one rank's batches, DataLoader workers, `state_dict()` / `load_state_dict()`
  config.py   `DataConfig`, the `data.*` keys

Everything public is re-exported here: `from train.data import Loader, DataConfig, ...`.
"""

from train.data.collate import collate, normalise_pixels
from train.data.config import DataConfig
from train.data.encode import (
    DocumentEncoder,
    EncodedDoc,
    EncodedImage,
    SpecialIds,
    patch_grid,
)
from train.data.loader import STATE_VERSION, Loader, slot_batches
from train.data.pack import Piece, cut_point, pack_rows
from train.data.plan import ShardPart, follow_slot_of, plan_parts
from train.data.read import (
    Position,
    ShardReader,
    SlotState,
    follow_parts,
    slot_documents,
)

__all__ = [
    "STATE_VERSION",
    "DataConfig",
    "DocumentEncoder",
    "EncodedDoc",
    "EncodedImage",
    "Loader",
    "Piece",
    "Position",
    "ShardPart",
    "ShardReader",
    "SlotState",
    "SpecialIds",
    "collate",
    "cut_point",
    "follow_parts",
    "follow_slot_of",
    "normalise_pixels",
    "pack_rows",
    "patch_grid",
    "plan_parts",
    "slot_batches",
    "slot_documents",
]
