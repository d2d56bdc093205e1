"""Decoder-only language model whose FFNs are mixture-of-experts layers.

What it does:
  - token embedding (the VLM replaces `<|image|>` embeddings with image tokens before the blocks)
  - pre-norm blocks: RMSNorm -> grouped-query attention with RoPE -> RMSNorm -> MoE (or dense SwiGLU) FFN
  - attention is causal AND confined to one packed document: a query sees keys of its own segment id at
    or before its position; padding (segment -1) sees only itself, so no row is fully masked (no NaNs).
    The plan (`attention.Segments`: varlen, flex block mask, or the dense reference) is built once per
    forward and shared by the layers; no T x T mask exists outside the dense reference backend
  - each block optionally compiled and/or activation-checkpointed (block.py)
  - RoPE positions come from `position_ids_BT`, which restart at 0 per document, so a document packed
    anywhere in a row computes exactly what it computes alone
  - final RMSNorm and an untied LM head

Also holds the rotary helpers shared with the vision encoder (`rotary_cos_sin`, `apply_rotary`).

Shape legend:
  B  batch rows     T  tokens per row     D  model dim       V  vocab
  H  query heads    K  kv heads           Dh head dim        R  rotary frequencies (Dh/2)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from train.model.attention import Segments, attend
from train.model.block import Block
from train.model.config import ModelConfig
from train.model.moe import MoE, MoEStats, SwiGLU


def rotary_cos_sin(pos: torch.Tensor, n_freqs: int, theta: float,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of pos * theta^(-i/n_freqs), i < n_freqs, in `dtype` (at least fp32); shape pos.shape + (n_freqs,).

    1D RoPE over head dim Dh uses n_freqs = Dh/2; 2D RoPE uses Dh/4 per axis (see vision.py)."""
    dtype = torch.promote_types(dtype, torch.float32)
    inv_freq_R = theta ** (-torch.arange(n_freqs, dtype=dtype, device=pos.device) / n_freqs)
    angles = pos.to(dtype)[..., None] * inv_freq_R
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + Dh/2) of x[..., Dh] by the angles behind cos/sin[..., Dh/2]."""
    x1, x2 = x.to(cos.dtype).chunk(2, dim=-1)
    y = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return y.to(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE, within the segments of `seg` (attention.py)."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.wq = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, d_model, bias=False)

    def forward(self, x_BTD: torch.Tensor, cos_BTR: torch.Tensor, sin_BTR: torch.Tensor,
                seg: Segments) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        q_BHTd = self.wq(x_BTD).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k_BKTd = self.wk(x_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v_BKTd = self.wv(x_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos_BTR[:, None], sin_BTR[:, None]
        q_BHTd, k_BKTd = apply_rotary(q_BHTd, cos, sin), apply_rotary(k_BKTd, cos, sin)
        o_BHTd = attend(q_BHTd, k_BKTd, v_BKTd, seg)
        return self.wo(o_BHTd.transpose(1, 2).reshape(B, T, -1))


class DecoderBlock(Block):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__(cfg.activation_checkpointing, cfg.compile)
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.is_moe = cfg.is_moe_layer(layer)
        self.ffn = MoE(cfg.d_model, cfg.moe) if self.is_moe else SwiGLU(cfg.d_model, cfg.d_ffn)

    def block_forward(self, x_BTD: torch.Tensor, cos_BTR: torch.Tensor, sin_BTR: torch.Tensor,
                      seg: Segments, valid_BT: torch.Tensor) -> tuple[torch.Tensor, MoEStats | None]:
        B, T, D = x_BTD.shape
        x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), cos_BTR, sin_BTR, seg)
        h_SD = self.ffn_norm(x_BTD).view(B * T, D)
        if self.is_moe:
            y_SD, stats = self.ffn(h_SD, valid_BT.view(B * T))
        else:
            y_SD, stats = self.ffn(h_SD), None
        return x_BTD + y_SD.view(B, T, D), stats


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(DecoderBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, x_BTD: torch.Tensor, position_ids_BT: torch.Tensor,
                segment_ids_BT: torch.Tensor) -> tuple[torch.Tensor, list[MoEStats]]:
        """Embedded inputs -> final-normed hidden states h_BTD and the MoE statistics of each MoE layer."""
        head_dim = self.cfg.d_model // self.cfg.n_heads
        cos_BTR, sin_BTR = rotary_cos_sin(position_ids_BT, head_dim // 2, self.cfg.rope_theta, x_BTD.dtype)
        seg = Segments.build(segment_ids_BT, causal=True, backend=self.cfg.attention)
        valid_BT = segment_ids_BT >= 0
        moe_stats: list[MoEStats] = []
        for layer in self.layers:
            x_BTD, stats = layer(x_BTD, cos_BTR, sin_BTR, seg, valid_BT)
            if stats is not None:
                moe_stats.append(stats)
        return self.norm(x_BTD), moe_stats
