"""Attention over packed segments (documents in the decoder, images in the ViT) without a dense mask.

A `Segments` plan is built once per forward from the segment ids and shared by every layer; `attend` runs
one attention call with it. A query attends only to keys of its own segment (and, for documents, causally);
a padding token (segment id -1) attends only to itself, so no row is fully masked. Backends
(`ModelConfig.attention`), chosen by device, visibly, and logged once:

  dense   the reference: a boolean mask, (B, 1, T, T), and SDPA. O(T^2) memory per layer; tests only.
  varlen  no mask at all: the segments are sorted by length, and each group of equal-length segments is
          one batched SDPA call (is_causal for documents), so each segment is an ordinary dense attention
          of its own length. Exact on any device (CPU, CUDA); the CPU training path.
  flex    `torch.nn.attention.flex_attention` with a `BlockMask` built from the segment ids (block-sparse:
          blocks across segments are skipped, nothing N x N is stored), compiled on CUDA. Its CPU kernel is
          forward-only in torch 2.x: on CPU it is allowed without gradients (tests compare it with dense).
  auto    flex on CUDA, varlen elsewhere.

Shape legend:
  B  rows   T  tokens per row   H  query heads   K  kv heads   d  head dim
  N  tokens of all rows (B*T)   L  length of one segment       n  segments of one length
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BACKENDS = ("auto", "dense", "varlen", "flex")


def document_mask(segment_ids_BT: torch.Tensor) -> torch.Tensor:
    """Dense reference for documents: bool (B, 1, T, T), True = may attend; causal within each segment,
    padding sees only itself."""
    return _dense_mask(segment_ids_BT, causal=True)


def image_mask(image_ids_BT: torch.Tensor) -> torch.Tensor:
    """Dense reference for images: bool (B, 1, T, T), block-diagonal (a patch sees its own image)."""
    return _dense_mask(image_ids_BT, causal=False)


def _dense_mask(ids_BT: torch.Tensor, causal: bool) -> torch.Tensor:
    T = ids_BT.shape[1]
    ids_q, ids_k = ids_BT[:, :, None], ids_BT[:, None, :]
    mask_BTT = (ids_q == ids_k) & (ids_q >= 0)
    if causal:
        mask_BTT = mask_BTT & torch.ones(T, T, dtype=torch.bool, device=ids_BT.device).tril()
    return (mask_BTT | torch.eye(T, dtype=torch.bool, device=ids_BT.device))[:, None]


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"model.attention={backend!r}: expected one of {BACKENDS}")
    if backend == "auto":
        backend = "flex" if device.type == "cuda" else "varlen"
    _log_backend(backend, device.type)
    return backend


@functools.cache
def _log_backend(backend: str, device_type: str) -> None:
    log.info("attention backend = %s on %s", backend, device_type)


@functools.cache
def _flex_attention(device_type: str):
    """flex_attention, compiled on CUDA (the fused kernel); eager elsewhere (CPU: forward only)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if device_type == "cuda" else flex_attention


@dataclass
class Segments:
    """How the tokens of one attention call split into segments, for one backend."""

    backend: str
    causal: bool
    mask_B1TT: torch.Tensor | None = None  # dense
    block_mask: object | None = None  # flex: torch.nn.attention.flex_attention.BlockMask
    # varlen: a token permutation that sorts the segments by length, its inverse, and the (L, n) groups
    perm_N: torch.Tensor | None = None
    inv_perm_N: torch.Tensor | None = None
    groups: tuple[tuple[int, int], ...] = ()

    @classmethod
    def build(cls, ids_BT: torch.Tensor, causal: bool, backend: str) -> Segments:
        """Plan for segment ids (B, T): equal ids attend to each other (causally if `causal`); id -1 is
        padding and attends only to itself. Segments must be contiguous runs within a row."""
        backend = resolve_backend(backend, ids_BT.device)
        if backend == "dense":
            mask = document_mask(ids_BT) if causal else image_mask(ids_BT)
            return cls(backend, causal, mask_B1TT=mask)
        if backend == "flex":
            return cls(backend, causal, block_mask=_flex_block_mask(ids_BT, causal))
        perm_N, inv_perm_N, groups = _varlen_plan(ids_BT)
        return cls(backend, causal, perm_N=perm_N, inv_perm_N=inv_perm_N, groups=groups)


def _flex_block_mask(ids_BT: torch.Tensor, causal: bool):
    from torch.nn.attention.flex_attention import create_block_mask

    if ids_BT.device.type != "cuda" and torch.is_grad_enabled():
        raise ValueError(
            f"model.attention=flex on {ids_BT.device.type}: torch's flex_attention has no backward "
            "there; use model.attention=varlen (or auto) to train on this device"
        )
    B, T = ids_BT.shape

    def mask_mod(b, h, q, kv):  # the same rule as `_dense_mask`, one (q, kv) pair at a time
        same = (ids_BT[b, q] == ids_BT[b, kv]) & (ids_BT[b, q] >= 0)
        if causal:
            same = same & (q >= kv)
        return same | (q == kv)

    return create_block_mask(mask_mod, B, None, T, T, device=ids_BT.device)


def _varlen_plan(ids_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[tuple[int, int], ...]]:
    """Segment runs over the flattened tokens (a run ends at a row end or where the id changes; each
    padding token is a run of its own), sorted by length: (perm_N, inv_perm_N, groups)."""
    T = ids_BT.shape[1]
    flat_N = ids_BT.flatten()
    N = flat_N.numel()
    starts = torch.ones(N, dtype=torch.bool, device=flat_N.device)
    starts[1:] = (flat_N[1:] != flat_N[:-1]) | (flat_N[1:] < 0)
    starts[::T] = True
    start_R = starts.nonzero().flatten()
    len_R = torch.diff(start_R, append=torch.tensor([N], device=flat_N.device))
    len_R, order_R = len_R.sort(stable=True)
    lengths, counts = torch.unique_consecutive(len_R, return_counts=True)
    groups = tuple(zip(lengths.tolist(), counts.tolist()))  # host sync, once per forward
    # token permutation: the runs in length order, each run's tokens in order
    first_R = start_R[order_R]
    run_N = torch.repeat_interleave(torch.arange(len(len_R), device=flat_N.device), len_R)
    offset_N = torch.arange(N, device=flat_N.device) - (len_R.cumsum(0) - len_R)[run_N]
    perm_N = first_R[run_N] + offset_N
    inv_perm_N = torch.empty_like(perm_N)
    inv_perm_N[perm_N] = torch.arange(N, device=flat_N.device)
    return perm_N, inv_perm_N, groups


def attend(q_BHTd: torch.Tensor, k_BKTd: torch.Tensor, v_BKTd: torch.Tensor, seg: Segments) -> torch.Tensor:
    """Softmax attention of q over k, v within segments (see `Segments`): o_BHTd."""
    gqa = q_BHTd.shape[1] != k_BKTd.shape[1]
    if seg.backend == "dense":
        return F.scaled_dot_product_attention(q_BHTd, k_BKTd, v_BKTd, attn_mask=seg.mask_B1TT, enable_gqa=gqa)
    if seg.backend == "flex":
        return _flex_attention(q_BHTd.device.type)(q_BHTd, k_BKTd, v_BKTd, block_mask=seg.block_mask, enable_gqa=gqa)
    assert seg.backend == "varlen", seg.backend
    return _varlen_attention(q_BHTd, k_BKTd, v_BKTd, seg, gqa)


@torch.compiler.disable  # a host-side loop over segment lengths: compiled blocks run it eagerly (a graph
# break) instead of guarding on, and recompiling for, every new set of lengths
def _varlen_attention(
    q_BHTd: torch.Tensor, k_BKTd: torch.Tensor, v_BKTd: torch.Tensor, seg: Segments, gqa: bool
) -> torch.Tensor:
    B, H, T, d = q_BHTd.shape

    def sorted_tokens(x_BhTd: torch.Tensor) -> torch.Tensor:  # (h, N, d), segments in length order
        return x_BhTd.transpose(0, 1).reshape(x_BhTd.shape[1], B * T, d)[:, seg.perm_N]

    q_HNd, k_KNd, v_KNd = sorted_tokens(q_BHTd), sorted_tokens(k_BKTd), sorted_tokens(v_BKTd)
    outs, start = [], 0
    for L, n in seg.groups:  # n segments of length L: one batched SDPA of shape (n, heads, L, d)
        q_nHLd, k_nKLd, v_nKLd = (
            x[:, start : start + n * L].unflatten(1, (n, L)).transpose(0, 1) for x in (q_HNd, k_KNd, v_KNd)
        )
        o_nHLd = F.scaled_dot_product_attention(q_nHLd, k_nKLd, v_nKLd, is_causal=seg.causal and L > 1, enable_gqa=gqa)
        outs.append(o_nHLd.transpose(0, 1).flatten(1, 2))
        start += n * L
    o_HNd = torch.cat(outs, dim=1)[:, seg.inv_perm_N]
    return o_HNd.view(H, B, T, d).transpose(0, 1)
