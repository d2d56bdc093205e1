"""Held-out evaluation: the loss on text that follows an image, apart from the loss on the rest, and
image-text retrieval from the contrastive embeddings.

  image_conditioned_BT  which positions have an image earlier in their own document (segment): their
                        next-token loss can use the image; the loss of the other label tokens cannot.
                        Comparing `val_image_text_loss` with the same tokens' loss when the pixels are noise
                        is what says the model uses the images
  eval_sums             one batch -> fixed-size sums (loss and count per kind, pairs): the same tensor shape
                        on every rank, so `evaluate` all-reduces once whatever each rank's batch holds
  noise_images          the same batch with noise for pixels: `interloom eval` reports the image-text loss
                        of both (`image_text_loss_noise_images`)
  evaluate              `n_batches` batches of one rank's held-out loader, reduced over all ranks (every
                        rank calls it: the same forwards and the same single all-reduce) -> the metrics row
  retrieval_recall      recall@k of image->text and text->image over L2-normalised embeddings

Metrics (`val_` prefix in metrics.jsonl / TensorBoard):
  val_lm_loss          token mean of the next-token cross-entropy over all label tokens
  val_image_text_loss  the same over the label tokens after an image in their document
  val_text_loss        the same over the other label tokens (documents, or their parts, without an image)
  val_tokens, val_image_text_tokens   counts behind them (all ranks)

Shape legend: B rows   T tokens per row   V vocab   I pairs   C contrastive dim
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.nn.functional as F

from train.batch import IGNORE_INDEX, Batch

SUMS = ("image_text_loss_sum", "image_text_tokens", "text_loss_sum", "text_tokens")


def image_conditioned_BT(batch: Batch, image_token_id: int) -> torch.Tensor:
    """bool (B, T): an `<|image|>` token lies at or before this position in the same document."""
    is_image_BT = batch.input_ids_BT == image_token_id
    seen_BT = is_image_BT.long().cumsum(dim=1)  # images at or before t in the row
    seg_BT = batch.segment_ids_BT
    starts_BT = torch.ones_like(is_image_BT)
    starts_BT[:, 1:] = seg_BT[:, 1:] != seg_BT[:, :-1]
    before_BT = seen_BT - is_image_BT.long()  # images strictly before t in the row
    base_BT = torch.where(starts_BT, before_BT, 0).cummax(dim=1).values  # ... before this document started
    return (seen_BT - base_BT > 0) & (seg_BT >= 0)


@torch.no_grad()
def eval_sums(
    model: torch.nn.Module, batch: Batch, image_token_id: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(float64 sums in SUMS order, image_emb_IC, text_emb_IC) of one batch."""
    out = model(batch, return_logits=True)
    labels_BT = batch.labels_BT
    is_label_BT = labels_BT != IGNORE_INDEX
    ce_BT = (
        F.cross_entropy(out.logits_BTV.flatten(0, 1), labels_BT.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
        .view_as(labels_BT)
        .double()
    )
    img_BT = image_conditioned_BT(batch, image_token_id) & is_label_BT
    txt_BT = is_label_BT & ~img_BT
    sums = torch.stack([(ce_BT * img_BT).sum(), img_BT.sum().double(), (ce_BT * txt_BT).sum(), txt_BT.sum().double()])
    return sums, out.image_emb_ID, out.text_emb_ID


def _mean(total: float, n: float) -> float:
    return total / n if n else math.nan


def metrics_of(sums: torch.Tensor, prefix: str = "val_") -> dict[str, float]:
    img, n_img, txt, n_txt = (float(x) for x in sums.cpu())
    return {
        f"{prefix}lm_loss": _mean(img + txt, n_img + n_txt),
        f"{prefix}image_text_loss": _mean(img, n_img),
        f"{prefix}text_loss": _mean(txt, n_txt),
        f"{prefix}tokens": int(n_img + n_txt),
        f"{prefix}image_text_tokens": int(n_img),
    }


def noise_images(batch: Batch, gen: torch.Generator) -> Batch:
    """The batch with every image's pixels replaced by Gaussian noise (the normalised pixels' scale)."""
    noise_NP = torch.randn(batch.pixel_values_NP.shape, generator=gen).to(batch.pixel_values_NP)
    return replace(batch, pixel_values_NP=noise_NP)


def evaluate(
    model: torch.nn.Module,
    batches: Iterator[Batch],
    n_batches: int,
    image_token_id: int,
    device: torch.device,
    noise_seed: int | None = None,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Loss metrics over `n_batches` batches of this rank, summed over all ranks (one all-reduce), and this
    rank's contrastive embeddings (image_IC, text_IC; empty when the heads are off). With `noise_seed`, every
    image is replaced by noise first (`noise_images`): the baseline the image-conditioned loss beats when
    the model uses the images."""
    gen = torch.Generator().manual_seed(noise_seed) if noise_seed is not None else None
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(SUMS), dtype=torch.float64, device=device)
    img_embs, txt_embs = [], []
    try:
        for _ in range(n_batches):
            batch = next(batches)
            batch = noise_images(batch, gen) if gen is not None else batch
            s, img_IC, txt_IC = eval_sums(model, batch.to(device), image_token_id)
            sums += s
            if img_IC is not None and txt_IC is not None:
                img_embs.append(img_IC.float().cpu())
                txt_embs.append(txt_IC.float().cpu())
    finally:
        model.train(was_training)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    empty = torch.zeros(0, 0)
    return (metrics_of(sums), torch.cat(img_embs) if img_embs else empty, torch.cat(txt_embs) if txt_embs else empty)


def retrieval_recall(image_IC: torch.Tensor, text_IC: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Recall@k of image->text and text->image: the pair's own partner among the k most cosine-similar of
    all I candidates (chance: k / I)."""
    n = image_IC.shape[0]
    if n == 0:
        return {}
    sim_II = F.normalize(image_IC.float(), dim=-1) @ F.normalize(text_IC.float(), dim=-1).T
    own_I = sim_II.diagonal()
    rank_i2t_I = (sim_II > own_I[:, None]).sum(1)  # how many texts beat the image's own
    rank_t2i_I = (sim_II > own_I[None, :]).sum(0)
    out: dict[str, float] = {"retrieval_pairs": n}
    for k in ks:
        out[f"recall@{k}_image_to_text"] = float((rank_i2t_I < k).float().mean())
        out[f"recall@{k}_text_to_image"] = float((rank_t2i_I < k).float().mean())
    return out
