"""How a transformer block runs: optionally compiled, optionally recomputed in backward.

`Block` is the base of the decoder and vision blocks. A subclass writes its computation in `block_forward`;
`forward` runs it
  - through `torch.compile(block_forward, backend=compile)` when `model.compile` names a backend
    ("inductor" on GPU; "off" by default, and on CPU, where compiling costs more than it saves), and
  - under non-reentrant activation checkpointing when `model.activation_checkpointing` is on: only the
    block's inputs are kept, its activations are recomputed in backward (memory for ~1/3 more compute).
The wrapping is inside the module's own forward, so an FSDP2 unit around the block (its all-gather hooks)
stays outside both the compiled region and the recomputed one, as in torchtitan.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

COMPILE_BACKENDS = ("off", "inductor", "aot_eager", "eager")


class Block(nn.Module):
    def __init__(self, activation_checkpointing: bool = False, compile: str = "off"):
        super().__init__()
        if compile not in COMPILE_BACKENDS:
            raise ValueError(f"model.compile={compile!r}: expected one of {COMPILE_BACKENDS}")
        self.activation_checkpointing = activation_checkpointing
        self._compiled = None if compile == "off" else torch.compile(self.block_forward, backend=compile)

    def block_forward(self, *args):
        raise NotImplementedError

    def forward(self, *args):
        fn = self._compiled or self.block_forward
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)
