"""Adapter from the vision encoder to the decoder: Linear -> LayerNorm -> GELU -> Linear -> LayerNorm.

Maps merged image tokens (vision width V) to decoder embeddings (model dim D); the trailing LayerNorm keeps
image-token scale comparable to text embeddings. Trained alone in the first stage (`VLM.set_trainable`).

Shape legend:  M  merged image tokens   V  vision width (d_vit)   D  decoder model dim
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Adapter(nn.Module):
    def __init__(self, d_vit: int, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.fc1 = nn.Linear(d_vit, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.fc2 = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model, eps=eps)

    def forward(self, x_MV: torch.Tensor) -> torch.Tensor:
        h_MD = F.gelu(self.norm1(self.fc1(x_MV)))
        return self.norm2(self.fc2(h_MD))
