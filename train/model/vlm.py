"""The vision-language model: native-resolution ViT -> MLP adapter -> MoE decoder, on one `Batch`.

What `VLM.forward(batch)` does:
  1. vision: patches of all images -> merged image tokens (vision.py), adapter -> model dim
  2. embed: token embeddings; the embeddings at `<|image|>` placeholders are replaced, in order (row-major
     over B then T), by the image tokens (masked_scatter); counts must match exactly
  3. decoder over one flat token stream (1, N): the B rows one after the other (segment ids made unique
     per row), then -- with the contrastive loss on -- the caption of each image (the text following it,
     `text_after_image_BT`) again, as a document of its own from position 0. Attention never leaves a
     document (decoder.py, attention.py), so a caption's second copy cannot see the image: it is the
     text side of the contrastive pair, and changing only the pixels leaves it unchanged. One decoder
     pass, the same collectives whatever the batch holds.
  4. LM loss: sum of token cross-entropy (fp32) over labels != IGNORE_INDEX, plus their count, so the
     caller can take a token mean across data-parallel ranks (train/losses.py); captions' copies carry
     no labels
  5. MoE statistics: aux and z losses averaged over MoE layers, per-layer expert load (L x E)
  6. contrastive embeddings (if enabled): image = mean of its adapter tokens, text = mean of the final
     hidden states of its caption copy, each through a Linear head; only images that have following text
     are kept (`paired_I`); a learned CLIP logit scale exp(s), clamped to <= 100, initialised to
     1 / contrastive.temperature

Also: `set_trainable(stage)` for staged training, `param_groups(weight_decay)` for the optimizer,
`num_flops_per_token(seq_len)` for MFU.

Shape legend:
  B  batch rows   T  tokens per row   D  model dim   V  vocab   I  images   M  image tokens (merged)
  E  experts      L  MoE layers       C  contrastive projection dim        S  label tokens
  N  tokens of the flat decoder stream (B*T + caption tokens)              A  caption tokens
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from train.batch import IGNORE_INDEX, Batch
from train.model.adapter import Adapter
from train.model.config import ModelConfig
from train.model.decoder import Decoder
from train.model.moe import MoE
from train.model.vision import VisionEncoder, merge_index

STAGES = ("adapter", "adapter+vision", "all")
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of the learned contrastive logit scale


@dataclass
class ModelOutput:
    lm_loss_sum: torch.Tensor  # scalar fp32: sum of token CE over labels != IGNORE_INDEX
    n_label_tokens: torch.Tensor  # scalar int64: number of those labels
    aux_loss: torch.Tensor  # scalar fp32: load-balance loss, mean over MoE layers (1.0 = balanced)
    z_loss: torch.Tensor  # scalar fp32: router z-loss, mean over MoE layers
    expert_load_LE: torch.Tensor  # int64 (MoE layers, experts): token-slots routed, detached
    image_emb_ID: torch.Tensor | None  # (images with text, C=contrastive.d_proj); None if disabled
    text_emb_ID: torch.Tensor | None  # (images with text, C) projected text embeddings, rows aligned
    paired_I: torch.Tensor  # bool (I,): which images of the batch have following text (rows above)
    logit_scale: torch.Tensor | None = None  # scalar fp32: learned contrastive scale (1/temperature), <= 100
    logits_BTV: torch.Tensor | None = None  # only with forward(..., return_logits=True)

    @property
    def n_pairs(self) -> int:
        """Image-text pairs of this batch (rows of image_emb_ID / text_emb_ID)."""
        return int(self.paired_I.sum())

    @property
    def dead_expert_fraction(self) -> float:
        """Fraction of (MoE layer, expert) that received no token in this forward (dropless routing drops
        no token; an expert can still starve)."""
        return float((self.expert_load_LE == 0).float().mean()) if self.expert_load_LE.numel() else 0.0


def _segment_mean(x_XD: torch.Tensor, seg_X: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of rows of x per segment id in [0, n); rows with id < 0 are ignored. Returns (mean_nD, count_n)."""
    keep = seg_X >= 0
    idx = seg_X[keep]
    sums_nD = x_XD.new_zeros(n, x_XD.shape[-1]).index_add_(0, idx, x_XD[keep])
    count_n = torch.bincount(idx, minlength=n)[:n]
    return sums_nD / count_n.clamp(min=1)[:, None].to(x_XD.dtype), count_n


class VLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(
            cfg.vision,
            eps=cfg.norm_eps,
            attention=cfg.attention,
            activation_checkpointing=cfg.activation_checkpointing,
            compile=cfg.compile,
        )
        self.adapter = Adapter(cfg.vision.out_dim, cfg.d_model, eps=cfg.norm_eps)
        self.decoder = Decoder(cfg)
        if cfg.contrastive.weight > 0:
            self.image_proj = nn.Linear(cfg.d_model, cfg.contrastive.d_proj, bias=False)
            self.text_proj = nn.Linear(cfg.d_model, cfg.contrastive.d_proj, bias=False)
            self.logit_scale = nn.Parameter(torch.empty(1))  # log of the scale; (1,): FSDP2 shards dim 0
        else:
            self.image_proj = self.text_proj = self.logit_scale = None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Normal(0, std) for weights, zeros for biases, ones for norms; residual output projections
        (attention wo, FFN w2) scaled by 1/sqrt(2 * n_layers) (GPT-2 style)."""
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, mod in self.named_modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                is_out = name.endswith((".wo", ".w2")) and name.startswith("decoder.")
                nn.init.normal_(mod.weight, std=out_std if is_out else std)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, (nn.LayerNorm, nn.RMSNorm)):
                mod.reset_parameters()
            elif isinstance(mod, MoE):
                mod.reset_parameters(std=std, out_std=out_std)
        if self.logit_scale is not None:
            self.logit_scale.fill_(math.log(1.0 / self.cfg.contrastive.temperature))

    # --- forward -----------------------------------------------------------------------------------

    def encode_images(self, batch: Batch) -> torch.Tensor:
        """Image tokens in model dim, x_MD, images in batch order."""
        return self.adapter(self.vision(batch.pixel_values_NP, batch.grid_hw_I2))

    def encode_dummy_image(self, device: torch.device) -> torch.Tensor:
        """Image tokens x_MD of one black image of merge x merge patches (M = 1): what an image-less batch
        runs the vision tower on, so that its forward and backward touch every image-side parameter."""
        m, P = self.cfg.vision.merge, self.vision.patch_embed.in_features
        pixels_NP = torch.zeros(m * m, P, device=device)
        grid_hw_I2 = torch.tensor([[m, m]], dtype=torch.long, device=device)
        return self.adapter(self.vision(pixels_NP, grid_hw_I2))

    def embed(self, batch: Batch, img_MD: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with `<|image|>` placeholders replaced in order by the image tokens."""
        x_BTD = self.decoder.tok_embeddings(batch.input_ids_BT)
        is_image_BT = batch.input_ids_BT == self.cfg.image_token_id
        n_placeholders, n_tokens = int(is_image_BT.sum()), 0 if img_MD is None else img_MD.shape[0]
        if n_placeholders != n_tokens:
            raise ValueError(
                f"batch has {n_placeholders} <|image|> tokens (id {self.cfg.image_token_id}) but "
                f"its {batch.n_images} images give {n_tokens} merged tokens "
                f"(grid_hw {batch.grid_hw_I2.tolist()}, merge {self.cfg.vision.merge})"
            )
        if img_MD is not None:
            x_BTD = x_BTD.masked_scatter(is_image_BT[..., None], img_MD.to(x_BTD.dtype))
        return x_BTD

    def forward(self, batch: Batch, return_logits: bool = False) -> ModelOutput:
        # 1-2. vision -> adapter -> placeholders. Without images the tower still runs, on one dummy image,
        # and enters with zero weight: every rank then runs the same collectives whatever its batch holds
        # (FSDP2 all-gathers each vision block it runs and reduce-scatters the gradients it has) and every
        # parameter gets a gradient (DDP needs that)
        if batch.n_images > 0:
            img_MD = self.encode_images(batch)
            x_BTD = self.embed(batch, img_MD)
        else:
            img_MD = None
            x_BTD = self.embed(batch, None)
            x_BTD = x_BTD + 0.0 * self.encode_dummy_image(batch.input_ids_BT.device).sum().to(x_BTD.dtype)

        # 3. decoder over the rows, then (contrastive) the captions again as documents of their own
        B, T = batch.input_ids_BT.shape
        x_ND, position_ids_N, segment_ids_N = self.decoder_stream(batch, x_BTD)
        h_1ND, moe_stats = self.decoder(x_ND[None], position_ids_N[None], segment_ids_N[None])
        h_BTD, h_AD = h_1ND[0, : B * T].view(B, T, -1), h_1ND[0, B * T :]

        # 4. LM loss on labelled positions only (the head runs on S rows, not B*T)
        labels_BT = batch.labels_BT
        is_label_BT = labels_BT != IGNORE_INDEX
        logits_SV = self.decoder.output(h_BTD[is_label_BT]).float()
        lm_loss_sum = F.cross_entropy(logits_SV, labels_BT[is_label_BT], reduction="sum")
        n_label_tokens = is_label_BT.sum()

        # 5. MoE statistics
        if moe_stats:
            aux_loss = torch.stack([s.aux_loss for s in moe_stats]).mean()
            z_loss = torch.stack([s.z_loss for s in moe_stats]).mean()
            expert_load_LE = torch.stack([s.load_E for s in moe_stats])
        else:
            aux_loss = z_loss = h_BTD.new_zeros((), dtype=torch.float32)
            expert_load_LE = torch.zeros(0, self.cfg.moe.n_experts, dtype=torch.long, device=h_BTD.device)

        # 6. contrastive embeddings for images that have following text: pixels vs the caption's own pass
        n_img = batch.n_images if img_MD is not None else 0
        after_N = batch.text_after_image_BT.flatten()
        paired_I = torch.bincount(after_N[after_N >= 0], minlength=n_img)[:n_img] > 0
        image_emb_IC = text_emb_IC = logit_scale = None
        if self.image_proj is not None:  # empty (0, C) when no image has text: the loss is then 0
            img_ID = txt_ID = h_BTD.new_zeros(0, self.cfg.d_model)
            if n_img > 0:
                _, image_M = merge_index(batch.grid_hw_I2, self.cfg.vision.merge)
                img_ID, _ = _segment_mean(img_MD, image_M, n_img)
                txt_ID, _ = _segment_mean(h_AD, self.caption_image_ids(batch), n_img)
            image_emb_IC = self.image_proj(img_ID[paired_I])
            text_emb_IC = self.text_proj(txt_ID[paired_I])
            logit_scale = self.logit_scale.float().squeeze(0).exp().clamp(max=MAX_LOGIT_SCALE)  # not a view (FSDP2)

        logits_BTV = self.decoder.output(h_BTD).float() if return_logits else None
        return ModelOutput(
            lm_loss_sum=lm_loss_sum,
            n_label_tokens=n_label_tokens,
            aux_loss=aux_loss,
            z_loss=z_loss,
            expert_load_LE=expert_load_LE,
            image_emb_ID=image_emb_IC,
            text_emb_ID=text_emb_IC,
            paired_I=paired_I,
            logit_scale=logit_scale,
            logits_BTV=logits_BTV,
        )

    def caption_image_ids(self, batch: Batch) -> torch.Tensor:
        """Image index of each caption token, image_A, in flat row-major order (ascending: the captions of
        images 0, 1, 2... one after the other); empty when the contrastive loss is off or no image."""
        if self.image_proj is None or batch.n_images == 0:
            return batch.text_after_image_BT.new_zeros(0)
        after_N = batch.text_after_image_BT.flatten()
        return after_N[after_N >= 0]

    def decoder_stream(self, batch: Batch, x_BTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoder's flat input: rows (segment ids offset by row * T, so unique; padding stays -1),
        then each caption's tokens re-embedded as a document of its own (segment B*T + image index,
        positions from 0). Returns (x_ND, position_ids_N, segment_ids_N)."""
        B, T, D = x_BTD.shape
        seg_BT = batch.segment_ids_BT.long()
        row_B1 = torch.arange(B, device=seg_BT.device)[:, None] * T
        x_ND, pos_N, seg_N = (
            x_BTD.reshape(B * T, D),
            batch.position_ids_BT.flatten(),
            torch.where(seg_BT >= 0, seg_BT + row_B1, -1).flatten(),
        )
        image_A = self.caption_image_ids(batch)
        if image_A.numel() == 0:
            return x_ND, pos_N, seg_N
        assert bool((image_A[1:] >= image_A[:-1]).all()), "captions must follow their images in order"
        after_N = batch.text_after_image_BT.flatten()
        x_AD = self.decoder.tok_embeddings(batch.input_ids_BT.flatten()[after_N >= 0]).to(x_ND.dtype)
        count_I = torch.bincount(image_A, minlength=batch.n_images)
        pos_A = torch.arange(image_A.numel(), device=image_A.device) - (count_I.cumsum(0) - count_I)[image_A]
        return torch.cat([x_ND, x_AD]), torch.cat([pos_N, pos_A]), torch.cat([seg_N, B * T + image_A])

    # --- training helpers --------------------------------------------------------------------------

    def set_trainable(self, stage: str) -> int:
        """Freeze by training stage; returns the number of trainable parameters.

        "adapter": only the adapter (and the contrastive heads and logit scale, on the adapter side, and
        the vision merge if `vision.merge_with_adapter`) train;
        "adapter+vision": also the vision encoder; "all": everything. Rebuild the optimizer afterwards
        (`param_groups` lists trainable parameters only)."""
        if stage not in STAGES:
            raise ValueError(f"unknown training stage {stage!r}; expected one of {STAGES}")
        trainable = {"adapter": [self.adapter, self.image_proj, self.text_proj]}
        if self.cfg.vision.merge_with_adapter:  # a pretrained tower's new merge (SigLIP2) aligns too
            trainable["adapter"].append(self.vision.merge)
        trainable["adapter+vision"] = trainable["adapter"] + [self.vision]
        for p in self.parameters():
            p.requires_grad_(stage == "all")
        for mod in trainable.get(stage, []):
            if mod is not None:
                mod.requires_grad_(True)
        if self.logit_scale is not None:  # the contrastive temperature trains with its heads, in every stage
            self.logit_scale.requires_grad_(True)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Trainable parameters split for AdamW: matrices decay; norms, biases and embeddings do not."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 and "tok_embeddings" not in name else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    @torch.no_grad()
    def update_expert_bias(self, expert_load_LE: torch.Tensor) -> None:
        """Aux-loss-free balancing (moe.bias_update_rate > 0; nothing to do when it is 0), once after each
        optimizer step: each MoE layer's selection bias moves by the sign of its load error (moe.py).
        `expert_load_LE`: the step's `ModelOutput.expert_load_LE`, summed over micro-batches AND
        all-reduced over ranks, so every rank applies the same update."""
        if self.cfg.moe.bias_update_rate == 0:
            return
        moes = [layer.ffn for layer in self.decoder.layers if layer.is_moe]
        if expert_load_LE.shape != (len(moes), self.cfg.moe.n_experts):
            raise ValueError(
                f"expert_load_LE has shape {tuple(expert_load_LE.shape)}, expected "
                f"({len(moes)} MoE layers, {self.cfg.moe.n_experts} experts)"
            )
        for moe, load_E in zip(moes, expert_load_LE):
            assert isinstance(moe, MoE)
            moe.update_expert_bias(load_E)

    def num_active_params(self) -> int:
        """Decoder parameters one text token uses: all but the token embedding, with routed experts
        counted at top_k / n_experts (the LM head is included)."""
        n = 0
        for name, p in self.decoder.named_parameters():
            if name.startswith("tok_embeddings"):
                continue
            is_routed = name.rsplit(".", 1)[-1] in ("w1_EDF", "w3_EDF", "w2_EFD")
            n += p.numel() * self.cfg.moe.top_k // self.cfg.moe.n_experts if is_routed else p.numel()
        return n

    def num_flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per text token (forward + backward): 6 * active params + attention
        12 * n_layers * d_model * seq_len (PaLM/nanochat convention, full causal T x T counted).
        The vision encoder is not included (it scales with patches, not tokens)."""
        return 6 * self.num_active_params() + 12 * self.cfg.n_layers * self.cfg.d_model * seq_len
