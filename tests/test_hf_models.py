"""Pretrained decoders in and out (train/model/hf/): tiny random models made with transformers' own config
classes, saved with save_pretrained, loaded into our decoder; logits compared in float32."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from train.model.config import ModelConfig  # noqa: E402
from train.model.decoder import Decoder  # noqa: E402
from train.model.hf import (  # noqa: E402
    config_from_hf,
    decoder_logits,
    export_decoder,
    load_pretrained_decoder,
    read_hf_config,
    upcycle,
)

TOL = 1e-4
VOCAB = 97
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             rms_norm_eps=1e-6, max_position_embeddings=256)


def _hf_model(config, path, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():  # norms start at 1 and biases/shared gates at 0 in HF init: randomise them too
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight", ".bias")):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def _ours(path, base: ModelConfig | None = None) -> Decoder:
    cfg, state, _ = load_pretrained_decoder(path, base)
    dec = Decoder(cfg).float().eval()
    dec.load_state_dict(state, strict=True)
    return dec


def _batch(seed: int = 1):
    """Rows of different lengths: one full, the others right- or left-padded."""
    gen = torch.Generator().manual_seed(seed)
    ids_BT = torch.randint(0, VOCAB, (3, 23), generator=gen)
    mask_BT = torch.ones_like(ids_BT)
    mask_BT[1, 15:] = 0  # right padding
    mask_BT[2, :9] = 0  # left padding
    return ids_BT, mask_BT


def _assert_same_logits(hf_model, dec: Decoder) -> None:
    """Unpadded sequences of several lengths, then a padded batch (compared on real tokens only)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for T in (1, 7, 32):
            ids_BT = torch.randint(0, VOCAB, (2, T), generator=gen)
            ref = hf_model(input_ids=ids_BT).logits
            ours = decoder_logits(dec, ids_BT)
            assert (ours - ref).abs().max() <= TOL, T
        ids_BT, mask_BT = _batch()
        ref = hf_model(input_ids=ids_BT, attention_mask=mask_BT,
                       position_ids=(mask_BT.cumsum(1) - 1).clamp(min=0)).logits
        ours = decoder_logits(dec, ids_BT, mask_BT)
        real = mask_BT.bool()
        assert (ours[real] - ref[real]).abs().max() <= TOL


def qwen3_moe_config(**kw):
    return transformers.Qwen3MoeConfig(**SMALL, head_dim=24, intermediate_size=96, moe_intermediate_size=32,
                                       num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                                       rope_theta=1e6, **kw)


def test_qwen3_moe_logits_match_transformers(tmp_path):
    hf = _hf_model(qwen3_moe_config(), tmp_path)
    dec = _ours(tmp_path)
    cfg = dec.cfg
    assert (cfg.moe.n_experts, cfg.moe.top_k, cfg.moe.gate, cfg.d_head, cfg.qk_norm) == (8, 2, "renormalised", 24, True)
    assert cfg.moe.shared_hidden == 0 and cfg.rope_theta == 1e6
    _assert_same_logits(hf, dec)
