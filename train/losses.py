"""Training losses across data-parallel ranks: next-token loss, image-text contrastive loss, their total.

Convention: the data-parallel wrapper (DDP, FSDP2) AVERAGES gradients over the W ranks of `group`. Each
loss below is scaled so that this average is the gradient of the global objective:
  - next-token loss: mean over ALL label tokens of all ranks (not a mean of per-rank means, which would
    over-weight ranks with few label tokens). Rank r returns  W * sum_r / sum_all(n); the mean of the
    returned values over ranks is the global token mean.
  - contrastive loss: InfoNCE where each rank's images see the texts of every rank as negatives (and the
    other way round); gathered tensors keep their gradient (the functional all-gather's backward
    sums the gradients of every rank into the local slice), averaged over all pairs of all ranks.
Single process, or torch.distributed not initialised, or group of size 1: W = 1, plain means.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F

from train.model.config import ModelConfig
from train.model.vlm import ModelOutput


def _world_size(group) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    """Sum of a detached tensor over ranks (identity in a single process)."""
    x = x.detach().clone()
    if _world_size(group) > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def next_token_loss(lm_loss_sum: torch.Tensor, n_label_tokens: torch.Tensor, group=None) -> torch.Tensor:
    """Loss whose rank-averaged gradient is that of the global token-mean cross-entropy (see module doc)."""
    W = _world_size(group)
    n_global = _all_reduce_sum(n_label_tokens.to(torch.float32), group)
    return lm_loss_sum * W / n_global.clamp(min=1.0)


def _gather_rows(x_ND: torch.Tensor, group) -> tuple[torch.Tensor, int, int]:
    """All ranks' rows concatenated in rank order, differentiable; plus this rank's offset and the total.
    Ranks may hold different numbers of rows (padded to the max for the collective, then trimmed)."""
    W = _world_size(group)
    if W == 1:
        return x_ND, 0, x_ND.shape[0]
    n_local = torch.tensor([x_ND.shape[0]], dtype=torch.long, device=x_ND.device)
    sizes = [torch.zeros_like(n_local) for _ in range(W)]
    dist.all_gather(sizes, n_local, group=group)
    sizes = [int(s) for s in sizes]
    if max(sizes) == 0:  # no rank has a pair: nothing to gather (and a 0-row collective cannot reshape)
        return x_ND, 0, 0
    padded_ND = F.pad(x_ND, (0, 0, 0, max(sizes) - x_ND.shape[0]))
    # differentiable all-gather: backward reduce-scatters (sums) every rank's gradient into the local slice
    all_gather = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd
    gathered_WND = all_gather(padded_ND, 0, group if group is not None else dist.group.WORLD)
    gathered_WND = gathered_WND.view(W, max(sizes), x_ND.shape[1])
    rank = dist.get_rank(group)
    rows = torch.cat([g[:n] for g, n in zip(gathered_WND, sizes)], dim=0)
    return rows, sum(sizes[:rank]), sum(sizes)


def contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, group=None, logit_scale: torch.Tensor | float = 1 / 0.07
) -> torch.Tensor:
    """Symmetric InfoNCE on L2-normalised embeddings (row i of image_emb pairs with row i of text_emb),
    similarities times `logit_scale` (1/temperature; a tensor is learned: it gets a gradient), negatives
    from every rank: 0.5 * (CE(image -> all texts) + CE(text -> all images)), averaged over all pairs of all
    ranks (scaled by W for rank-averaged gradients). 0 (with a graph through every input) if no rank has a
    pair."""
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} must match")
    W = _world_size(group)
    img_ND = F.normalize(image_emb.float(), dim=-1)
    txt_ND = F.normalize(text_emb.float(), dim=-1)
    all_img_MD, offset, n_total = _gather_rows(img_ND, group)
    all_txt_MD, _, _ = _gather_rows(txt_ND, group)
    if n_total == 0:
        zero = (img_ND.sum() + txt_ND.sum()) * 0.0
        return zero + logit_scale * 0.0 if isinstance(logit_scale, torch.Tensor) else zero
    target_N = torch.arange(offset, offset + img_ND.shape[0], device=img_ND.device)
    i2t = F.cross_entropy(logit_scale * (img_ND @ all_txt_MD.T), target_N, reduction="sum")
    t2i = F.cross_entropy(logit_scale * (txt_ND @ all_img_MD.T), target_N, reduction="sum")
    return 0.5 * (i2t + t2i) * W / n_total


def total_loss(out: ModelOutput, cfg: ModelConfig, group=None) -> dict[str, torch.Tensor]:
    """lm + aux_w * aux + z_w * z (+ contrastive_w * contrastive). Returns {"loss": differentiable total,
    and detached terms for logging: "lm" (global token mean), "aux", "z", "n_label_tokens" (global count),
    and with the contrastive loss on "contrastive" (global pair mean), "n_pairs" (global pair count of
    this micro-batch) and "logit_scale"}."""
    lm = next_token_loss(out.lm_loss_sum, out.n_label_tokens, group)
    loss = lm + cfg.moe.aux_loss_weight * out.aux_loss + cfg.moe.z_loss_weight * out.z_loss
    n_global = _all_reduce_sum(out.n_label_tokens, group)
    terms = {
        "lm": _all_reduce_sum(out.lm_loss_sum, group) / n_global.clamp(min=1),
        "aux": out.aux_loss.detach(),
        "z": out.z_loss.detach(),
        "n_label_tokens": n_global,
    }
    if cfg.contrastive.weight > 0:
        if out.image_emb_ID is None or out.logit_scale is None:
            raise ValueError(
                "contrastive.weight > 0 but the model output has no image/text embeddings "
                "(model built with contrastive.weight = 0?)"
            )
        con = contrastive_loss(out.image_emb_ID, out.text_emb_ID, group, out.logit_scale)
        loss = loss + cfg.contrastive.weight * con
        terms["contrastive"] = _all_reduce_sum(con, group) / _world_size(group)  # global pair mean
        terms["n_pairs"] = _all_reduce_sum(out.paired_I.sum(), group)
        terms["logit_scale"] = out.logit_scale.detach()
    terms["loss"] = loss
    return terms
