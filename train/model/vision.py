"""Vision encoder: a ViT at native resolution over the variable-size patch grids of all images in a batch.

What it does, in `VisionEncoder.forward` order:
  1. patch embedding: a Linear over each flattened patch (P = 3 * p * p values, as the loader cut them)
  2. positions, per `VisionConfig.pos_embed`: "rope2d" (default): per head, one half of the channels is
     rotated by the patch's row, the other by its column, so any (h, w) grid -- square or not, of any
     size -- gets consistent relative positions; "learned" (SigLIP2 NaFlex): a G x G table of position
     embeddings, resized bilinearly (antialiased) to each image's (h, w) grid, added to the patch embedding
  3. pre-norm blocks (LayerNorm -> attention -> LayerNorm -> GELU MLP) over the concatenated patches of
     all images (MLP width / activation per `VisionConfig`); attention is block-diagonal: a patch attends only to patches of its own image (an
     `attention.Segments` plan over the image ids: varlen groups equal-size images into one batched SDPA,
     flex uses a block mask; only the dense reference backend builds the N x N mask)
  4. final LayerNorm (`features` ends here: a pretrained tower's last_hidden_state), then merge: each m x m block of neighbouring patches (m = 2) is concatenated
     (top-left, top-right, bottom-left, bottom-right) and projected by a Linear (or, `merger="mlp"`,
     Linear -> GELU -> Linear: Qwen2-VL's PatchMerger, whose ln_q is the final LayerNorm), giving
     (h/m) * (w/m) tokens of width `VisionConfig.out_dim` per image in raster order -- the order of that
     image's `<|image|>` placeholders

The merger belongs to the tower (a pretrained Qwen2-VL tower loads with its merger, train/model/hf/vision.py;
a SigLIP2 tower has none, so its `merge` is a new Linear, trained with the adapter);
the adapter (adapter.py) after it is always ours and new, the projector that the `align` stage trains.

Shape legend:
  N  patches of all images   P  values per patch (3*p*p)   V  vision width (d_vit)   I  images
  M  merged image tokens     H  heads                       Dh head dim               R  rotary freqs (Dh/2)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from train.model.attention import Segments, attend
from train.model.block import Block
from train.model.config import VisionConfig
from train.model.decoder import apply_rotary, rotary_cos_sin


def patch_coords(grid_hw_I2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image_N, row_N, col_N) of every patch, patches of each image in raster order, images in order."""
    h_I, w_I = grid_hw_I2[:, 0], grid_hw_I2[:, 1]
    n_I = h_I * w_I
    image_N = torch.repeat_interleave(torch.arange(len(n_I), device=n_I.device), n_I)
    start_I = n_I.cumsum(0) - n_I
    local_N = torch.arange(image_N.numel(), device=n_I.device) - start_I[image_N]
    w_N = w_I[image_N]
    return image_N, local_N // w_N, local_N % w_N


def merge_index(grid_hw_I2: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into the patch sequence of the m*m patches behind each merged token, and its image.

    Returns idx_Mq (q = m*m, neighbours in raster order within the block) and image_M."""
    h_I, w_I = grid_hw_I2[:, 0], grid_hw_I2[:, 1]
    start_I = (h_I * w_I).cumsum(0) - h_I * w_I
    nm_I = (h_I // m) * (w_I // m)
    image_M = torch.repeat_interleave(torch.arange(len(nm_I), device=nm_I.device), nm_I)
    local_M = torch.arange(image_M.numel(), device=nm_I.device) - (nm_I.cumsum(0) - nm_I)[image_M]
    wm_M, w_M = w_I[image_M] // m, w_I[image_M]
    top_M, left_M = (local_M // wm_M) * m, (local_M % wm_M) * m
    idx_Mq = torch.stack(
        [start_I[image_M] + (top_M + dr) * w_M + left_M + dc for dr in range(m) for dc in range(m)], dim=1
    )
    return idx_Mq, image_M


class VisionAttention(nn.Module):
    def __init__(self, d_vit: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_vit // n_heads
        self.wqkv = nn.Linear(d_vit, 3 * d_vit)
        self.wo = nn.Linear(d_vit, d_vit)

    def forward(
        self, x_NV: torch.Tensor, cos_NR: torch.Tensor | None, sin_NR: torch.Tensor | None, seg: Segments
    ) -> torch.Tensor:
        N, V = x_NV.shape
        q_HNd, k_HNd, v_HNd = self.wqkv(x_NV).view(N, 3, self.n_heads, self.head_dim).permute(1, 2, 0, 3)
        if cos_NR is not None and sin_NR is not None:  # 2D RoPE; None with learned position embeddings
            q_HNd, k_HNd = apply_rotary(q_HNd, cos_NR, sin_NR), apply_rotary(k_HNd, cos_NR, sin_NR)
        o_HNd = attend(q_HNd[None], k_HNd[None], v_HNd[None], seg)[0]  # one "row" of all patches
        return self.wo(o_HNd.transpose(0, 1).reshape(N, V))


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): CLIP's and Qwen2-VL's approximation of GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "quick_gelu": QuickGELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
}


class VisionBlock(Block):
    def __init__(self, cfg: VisionConfig, eps: float, activation_checkpointing: bool = False, compile: str = "off"):
        super().__init__(activation_checkpointing, compile)
        V, F = cfg.d_vit, int(cfg.mlp_ratio * cfg.d_vit)
        self.norm1 = nn.LayerNorm(V, eps=eps)
        self.attn = VisionAttention(V, cfg.n_heads)
        self.norm2 = nn.LayerNorm(V, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(V, F), ACTIVATIONS[cfg.mlp_act](), nn.Linear(F, V))

    def block_forward(
        self, x_NV: torch.Tensor, cos_NR: torch.Tensor | None, sin_NR: torch.Tensor | None, seg: Segments
    ) -> torch.Tensor:
        x_NV = x_NV + self.attn(self.norm1(x_NV), cos_NR, sin_NR, seg)
        return x_NV + self.mlp(self.norm2(x_NV))


class VisionEncoder(nn.Module):
    def __init__(
        self,
        cfg: VisionConfig,
        eps: float = 1e-6,
        attention: str = "auto",
        activation_checkpointing: bool = False,
        compile: str = "off",
    ):
        super().__init__()
        self.cfg, self.attention = cfg, attention
        V, q = cfg.d_vit, cfg.merge**2
        eps = eps if cfg.norm_eps is None else cfg.norm_eps
        self.patch_embed = nn.Linear(3 * cfg.patch_size**2, V, bias=cfg.patch_bias)
        self.pos_embed = nn.Embedding(cfg.pos_grid**2, V) if cfg.pos_embed == "learned" else None
        self.blocks = nn.ModuleList(
            VisionBlock(cfg, eps, activation_checkpointing, compile) for _ in range(cfg.n_layers)
        )
        self.norm = nn.LayerNorm(V, eps=eps)
        self.merge = (
            nn.Linear(q * V, cfg.out_dim)
            if cfg.merger == "linear"
            else nn.Sequential(nn.Linear(q * V, q * V), nn.GELU(), nn.Linear(q * V, cfg.out_dim))
        )

    def rope_2d(self, grid_hw_I2: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (N, Dh/2): first Dh/4 frequencies at the patch row, last Dh/4 at its column."""
        _, row_N, col_N = patch_coords(grid_hw_I2)
        n_freqs = self.cfg.d_vit // self.cfg.n_heads // 4
        cos_r, sin_r = rotary_cos_sin(row_N, n_freqs, self.cfg.rope_theta, dtype)
        cos_c, sin_c = rotary_cos_sin(col_N, n_freqs, self.cfg.rope_theta, dtype)
        return torch.cat([cos_r, cos_c], dim=-1), torch.cat([sin_r, sin_c], dim=-1)

    def learned_positions(self, grid_hw_I2: torch.Tensor) -> torch.Tensor:
        """pos_NV: the G x G table resized (bilinear, antialiased, as SigLIP2) to each image's grid, raster order."""
        assert self.pos_embed is not None
        G = self.cfg.pos_grid
        table_1VGG = self.pos_embed.weight.view(G, G, -1).permute(2, 0, 1)[None].float()
        pos = [
            F.interpolate(table_1VGG, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0].flatten(1).T
            for h, w in grid_hw_I2.tolist()
        ]
        return torch.cat(pos).to(self.pos_embed.weight.dtype)

    def check_inputs(self, pixel_values_NP: torch.Tensor, grid_hw_I2: torch.Tensor) -> None:
        P, m = self.patch_embed.in_features, self.cfg.merge
        if pixel_values_NP.ndim != 2 or pixel_values_NP.shape[1] != P:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values_NP.shape)}, expected (N, {P}) "
                f"for patch_size={self.cfg.patch_size}"
            )
        n_patches = int((grid_hw_I2[:, 0] * grid_hw_I2[:, 1]).sum())
        if n_patches != pixel_values_NP.shape[0]:
            raise ValueError(f"grid_hw sums to {n_patches} patches but pixel_values has {pixel_values_NP.shape[0]}")
        if bool((grid_hw_I2 % m != 0).any()) or bool((grid_hw_I2 <= 0).any()):
            raise ValueError(
                f"every image grid (h, w) must be positive multiples of merge={m}; got {grid_hw_I2.tolist()}"
            )

    def features(self, pixel_values_NP: torch.Tensor, grid_hw_I2: torch.Tensor) -> torch.Tensor:
        """Patches of all images -> x_NV after the final LayerNorm (before the merge), raster order."""
        self.check_inputs(pixel_values_NP, grid_hw_I2)
        x_NV = self.patch_embed(pixel_values_NP.to(self.patch_embed.weight.dtype))
        cos_NR: torch.Tensor | None = None
        sin_NR: torch.Tensor | None = None
        if self.pos_embed is not None:
            x_NV = x_NV + self.learned_positions(grid_hw_I2)
        else:
            cos_NR, sin_NR = self.rope_2d(grid_hw_I2, x_NV.dtype)
        image_N, _, _ = patch_coords(grid_hw_I2)
        seg = Segments.build(image_N[None], causal=False, backend=self.attention)  # within each image
        for block in self.blocks:
            x_NV = block(x_NV, cos_NR, sin_NR, seg)
        return self.norm(x_NV)

    def forward(self, pixel_values_NP: torch.Tensor, grid_hw_I2: torch.Tensor) -> torch.Tensor:
        """Patches of all images -> merged image tokens x_MV, images in order, raster order within each."""
        x_NV = self.features(pixel_values_NP, grid_hw_I2)
        idx_Mq, _ = merge_index(grid_hw_I2, self.cfg.merge)
        return self.merge(x_NV[idx_Mq].flatten(1))  # M, q*V -> M, out_dim
