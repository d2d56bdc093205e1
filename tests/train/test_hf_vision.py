"""Parity of interloom's ViT with transformers' Qwen2-VL vision tower (tiny random tower, no download)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import Qwen2VLVisionConfig  # noqa: E402
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel  # noqa: E402

from train.model.hf.vision import load_pretrained_vision  # noqa: E402
from train.model.vision import VisionEncoder  # noqa: E402

P = 4  # patch size


def to_hf_patches(patches_NCpp: torch.Tensor, h: int, w: int, m: int) -> torch.Tensor:
    """Our raster-order patches of one image -> Qwen2-VL's pixel_values: grouped by m x m block, the
    frame repeated over temporal_patch_size=2, each patch flattened (C, T, p, p)."""
    x = patches_NCpp.view(h // m, m, w // m, m, 3, P, P).permute(0, 2, 1, 3, 4, 5, 6).reshape(h * w, 3, 1, P, P)
    return x.expand(-1, -1, 2, -1, -1).reshape(h * w, -1)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_qwen2_vl_tower_parity(tmp_path, act):
    torch.manual_seed(0)
    hf_cfg = Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=48, hidden_act=act, mlp_ratio=4,
                                 num_heads=4, in_channels=3, patch_size=P, spatial_merge_size=2,
                                 temporal_patch_size=2)
    hf = Qwen2VisionTransformerPretrainedModel._from_config(hf_cfg, attn_implementation="eager").eval()
    for p in hf.parameters():  # random, not the init's zeros/ones, so every mapping is exercised
        torch.nn.init.normal_(p, std=0.2)
    hf.save_pretrained(tmp_path)

    cfg, state = load_pretrained_vision(tmp_path)
    ours = VisionEncoder(cfg, attention="dense").eval()
    ours.load_state_dict(state)
    assert cfg.d_out == 48 and cfg.mlp_act == act and not cfg.patch_bias

    grids = [(4, 4), (2, 6), (8, 4)]  # square, wide, tall (in patches)
    ours_in, hf_in = [], []
    for h, w in grids:
        patches = torch.randn(h * w, 3, P, P)
        ours_in.append(patches.reshape(h * w, -1))
        hf_in.append(to_hf_patches(patches, h, w, 2))
    grid_hw = torch.tensor(grids)
    grid_thw = torch.cat([torch.ones(len(grids), 1, dtype=torch.long), grid_hw], dim=1)
    with torch.no_grad():
        out = hf(torch.cat(hf_in), grid_thw=grid_thw)
        want = out.pooler_output if hasattr(out, "pooler_output") else out
        got = ours(torch.cat(ours_in), grid_hw)
    assert got.shape == want.shape == (sum(h * w // 4 for h, w in grids), 48)
    assert (got - want).abs().max().item() <= 1e-4
    # each image alone gives its own tokens: attention stays within an image
    with torch.no_grad():
        first = ours(ours_in[0], grid_hw[:1])
    torch.testing.assert_close(first, got[: first.shape[0]], atol=1e-5, rtol=0)
