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
  - final RMSNorm and an LM head (tied to the token embedding with `model.tie_embeddings`)
  - options that make it equal to pretrained families (see train/model/hf/): head_dim, qk_norm, qkv_bias,
    rope_scaling
  - an inference-only path with a KV cache (`Decoder.forward_cached`, `KVCache`): one sequence, each
    layer's keys/values appended step by step; it shares the weights and the math of the training path
    (attention over the cached keys with an explicit causal mask) and leaves that path untouched

Also holds the rotary helpers shared with the vision encoder (`rotary_cos_sin`, `apply_rotary`).

Shape legend:
  B  batch rows     T  tokens per row     D  model dim       V  vocab
  H  query heads    K  kv heads           Dh head dim        R  rotary frequencies (Dh/2)
  S  tokens already in the KV cache
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from train.model.attention import Segments, attend
from train.model.block import Block
from train.model.config import ModelConfig, RopeScalingConfig
from train.model.moe import MoE, MoEStats, SwiGLU


def rotary_cos_sin(
    pos: torch.Tensor,
    n_freqs: int,
    theta: float,
    dtype: torch.dtype = torch.float32,
    scaling: RopeScalingConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of pos * theta^(-i/n_freqs), i < n_freqs, in `dtype` (at least fp32); shape pos.shape + (n_freqs,).

    1D RoPE over head dim Dh uses n_freqs = Dh/2; 2D RoPE uses Dh/4 per axis (see vision.py). `scaling`
    (decoder only) rescales the frequencies (`RopeScalingConfig`)."""
    dtype = torch.promote_types(dtype, torch.float32)
    inv_freq_R = theta ** (-torch.arange(n_freqs, dtype=dtype, device=pos.device) / n_freqs)
    if scaling is not None and scaling.kind == "llama3":
        inv_freq_R = _llama3_scaled(inv_freq_R, scaling)
    angles = pos.to(dtype)[..., None] * inv_freq_R
    return angles.cos(), angles.sin()


def _llama3_scaled(inv_freq_R: torch.Tensor, s: RopeScalingConfig) -> torch.Tensor:
    """Llama 3.1's frequency rule: long wavelengths / factor, short ones kept, linear blend in between."""
    wavelen_R = 2 * math.pi / inv_freq_R
    low_wavelen, high_wavelen = (
        s.original_max_position / s.low_freq_factor,
        s.original_max_position / s.high_freq_factor,
    )
    smooth_R = (s.original_max_position / wavelen_R - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended_R = (1 - smooth_R) * inv_freq_R / s.factor + smooth_R * inv_freq_R
    out_R = torch.where(wavelen_R > low_wavelen, inv_freq_R / s.factor, inv_freq_R)
    is_medium_R = (wavelen_R <= low_wavelen) & (wavelen_R >= high_wavelen)
    return torch.where(is_medium_R, blended_R, out_R)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + Dh/2) of x[..., Dh] by the angles behind cos/sin[..., Dh/2]."""
    x1, x2 = x.to(cos.dtype).chunk(2, dim=-1)
    y = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return y.to(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE, within the segments of `seg` (attention.py); optional q/k/v
    biases and per-head RMSNorm of queries and keys before RoPE (`model.qkv_bias`, `model.qk_norm`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, Dh = cfg.d_model, cfg.d_head
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, Dh
        self.wq = nn.Linear(D, cfg.n_heads * Dh, bias=cfg.qkv_bias)
        self.wk = nn.Linear(D, cfg.n_kv_heads * Dh, bias=cfg.qkv_bias)
        self.wv = nn.Linear(D, cfg.n_kv_heads * Dh, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * Dh, D, bias=False)
        self.q_norm = nn.RMSNorm(Dh, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(Dh, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()

    def forward(self, x_BTD: torch.Tensor, cos_BTR: torch.Tensor, sin_BTR: torch.Tensor, seg: Segments) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        q_BHTd = self.q_norm(self.wq(x_BTD).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)
        k_BKTd = self.k_norm(self.wk(x_BTD).view(B, T, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v_BKTd = self.wv(x_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos_BTR[:, None], sin_BTR[:, None]
        q_BHTd, k_BKTd = apply_rotary(q_BHTd, cos, sin), apply_rotary(k_BKTd, cos, sin)
        o_BHTd = attend(q_BHTd, k_BKTd, v_BKTd, seg)
        return self.wo(o_BHTd.transpose(1, 2).reshape(B, T, -1))

    def forward_cached(
        self, x_1TD: torch.Tensor, cos_1TR: torch.Tensor, sin_1TR: torch.Tensor, cache: LayerCache
    ) -> torch.Tensor:
        """Inference: the T new tokens of one sequence attend to the S cached ones and causally to each
        other; their keys/values are appended to `cache`."""
        _, T, _ = x_1TD.shape
        q_1HTd = self.q_norm(self.wq(x_1TD).view(1, T, self.n_heads, self.head_dim)).transpose(1, 2)
        k_1KTd = self.k_norm(self.wk(x_1TD).view(1, T, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v_1KTd = self.wv(x_1TD).view(1, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos_1TR[:, None], sin_1TR[:, None]
        q_1HTd, k_1KTd = apply_rotary(q_1HTd, cos, sin), apply_rotary(k_1KTd, cos, sin)
        k_1KUd, v_1KUd = cache.append(k_1KTd, v_1KTd)  # U = S + T
        S = k_1KUd.shape[2] - T
        mask_TU = torch.ones(T, S + T, dtype=torch.bool, device=x_1TD.device).tril(diagonal=S)
        o_1HTd = F.scaled_dot_product_attention(
            q_1HTd, k_1KUd, v_1KUd, attn_mask=mask_TU, enable_gqa=self.n_heads != self.n_kv_heads
        )
        return self.wo(o_1HTd.transpose(1, 2).reshape(1, T, -1))


@dataclass
class LayerCache:
    """Keys and values of one decoder layer for the tokens seen so far (one sequence)."""

    k_1KSd: torch.Tensor | None = None
    v_1KSd: torch.Tensor | None = None

    def append(self, k_1KTd: torch.Tensor, v_1KTd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k_1KSd is not None and self.v_1KSd is not None:
            k_1KTd, v_1KTd = torch.cat([self.k_1KSd, k_1KTd], dim=2), torch.cat([self.v_1KSd, v_1KTd], dim=2)
        self.k_1KSd, self.v_1KSd = k_1KTd, v_1KTd
        return k_1KTd, v_1KTd


@dataclass
class KVCache:
    """The decoder's cache for one sequence: a `LayerCache` per layer and the number of tokens in it."""

    layers: list[LayerCache] = field(default_factory=list)
    length: int = 0

    @classmethod
    def empty(cls, n_layers: int) -> KVCache:
        return cls([LayerCache() for _ in range(n_layers)])


class DecoderBlock(Block):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__(cfg.activation_checkpointing, cfg.compile)
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.is_moe = cfg.is_moe_layer(layer)
        self.ffn = MoE(cfg.d_model, cfg.moe) if self.is_moe else SwiGLU(cfg.d_model, cfg.d_ffn)

    def block_forward(
        self, x_BTD: torch.Tensor, cos_BTR: torch.Tensor, sin_BTR: torch.Tensor, seg: Segments, valid_BT: torch.Tensor
    ) -> tuple[torch.Tensor, MoEStats | None]:
        B, T, D = x_BTD.shape
        x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), cos_BTR, sin_BTR, seg)
        h_SD = self.ffn_norm(x_BTD).view(B * T, D)
        if self.is_moe:
            y_SD, stats = self.ffn(h_SD, valid_BT.view(B * T))
        else:
            y_SD, stats = self.ffn(h_SD), None
        return x_BTD + y_SD.view(B, T, D), stats

    def forward_cached(
        self, x_1TD: torch.Tensor, cos_1TR: torch.Tensor, sin_1TR: torch.Tensor, cache: LayerCache
    ) -> torch.Tensor:
        """Inference: `block_forward` for new tokens of one sequence against the cache (no statistics)."""
        _, T, D = x_1TD.shape
        x_1TD = x_1TD + self.attn.forward_cached(self.attn_norm(x_1TD), cos_1TR, sin_1TR, cache)
        h_SD = self.ffn_norm(x_1TD).view(T, D)
        y_SD = self.ffn(h_SD, torch.ones(T, dtype=torch.bool, device=h_SD.device))[0] if self.is_moe else self.ffn(h_SD)
        return x_1TD + y_SD.view(1, T, D)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(DecoderBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:  # one Parameter, two modules
            self.output.weight = self.tok_embeddings.weight

    def forward(
        self, x_BTD: torch.Tensor, position_ids_BT: torch.Tensor, segment_ids_BT: torch.Tensor
    ) -> tuple[torch.Tensor, list[MoEStats]]:
        """Embedded inputs -> final-normed hidden states h_BTD and the MoE statistics of each MoE layer."""
        cos_BTR, sin_BTR = rotary_cos_sin(
            position_ids_BT, self.cfg.d_head // 2, self.cfg.rope_theta, x_BTD.dtype, self.cfg.rope_scaling
        )
        seg = Segments.build(segment_ids_BT, causal=True, backend=self.cfg.attention)
        valid_BT = segment_ids_BT >= 0
        moe_stats: list[MoEStats] = []
        for layer in self.layers:
            x_BTD, stats = layer(x_BTD, cos_BTR, sin_BTR, seg, valid_BT)
            if stats is not None:
                moe_stats.append(stats)
        return self.norm(x_BTD), moe_stats

    @torch.no_grad()
    def forward_cached(self, x_1TD: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Inference: embedded new tokens of one sequence (positions cache.length...) -> final-normed
        hidden states h_1TD; the cache grows by T. Equal to `forward` on the whole sequence so far."""
        T = x_1TD.shape[1]
        pos_1T = torch.arange(cache.length, cache.length + T, device=x_1TD.device)[None]
        cos_1TR, sin_1TR = rotary_cos_sin(
            pos_1T, self.cfg.d_head // 2, self.cfg.rope_theta, x_1TD.dtype, self.cfg.rope_scaling
        )
        for layer, layer_cache in zip(self.layers, cache.layers, strict=True):
            assert isinstance(layer, DecoderBlock)
            x_1TD = layer.forward_cached(x_1TD, cos_1TR, sin_1TR, layer_cache)
        cache.length += T
        return self.norm(x_1TD)
