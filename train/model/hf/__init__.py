"""Hugging Face checkpoints in and out of interloom's decoder: our model code plus state-dict converters.

What it does (torchtitan style: the model is ours, a converter maps names and layouts both ways):
  - `load_pretrained_decoder(dir)`: a local HF model folder (config.json + model.safetensors or a sharded
    model.safetensors.index.json; a path only, never a hub download) -> (ModelConfig, decoder state dict)
  - `load_decoder_into(decoder, dir)`: the same folder straight into a built decoder, one shard at a time,
    never a second copy of the weights (vocabulary resize and upcycling per tensor): what training uses
  - `upcycle(cfg, state, n_experts, top_k)`: a dense decoder -> an MoE one whose experts are copies of the
    dense FFN (sparse upcycling, Komatsuzaki et al. 2022); its first forward equals the dense model's
  - `export_decoder(decoder, out_dir)`: our decoder -> an HF folder that `transformers` loads
  - `decoder_logits(decoder, input_ids_BT, attention_mask_BT)`: logits of token ids (padding allowed)

Families (`FAMILIES`): qwen3_moe, qwen2_moe, mixtral (MoE); qwen3, llama (dense: loaded with every layer
dense, or upcycled). Anything a family needs that our decoder lacked is a `ModelConfig` option (head_dim,
qk_norm, qkv_bias, tie_embeddings, rope_scaling, moe.gate, moe.d_shared, moe.shared_gate), not a fork.
"""

from train.model.hf.checkpoint import (
    decoder_logits,
    export_decoder,
    load_decoder_into,
    load_pretrained_decoder,
    read_hf_config,
    read_hf_state,
)
from train.model.hf.convert import (
    FAMILIES,
    Family,
    config_from_hf,
    config_to_hf,
    infer_family,
    state_from_hf,
    state_to_hf,
    upcycle,
    upcycle_config,
)

__all__ = [
    "FAMILIES",
    "Family",
    "config_from_hf",
    "config_to_hf",
    "decoder_logits",
    "export_decoder",
    "infer_family",
    "load_decoder_into",
    "load_pretrained_decoder",
    "read_hf_config",
    "read_hf_state",
    "state_from_hf",
    "state_to_hf",
    "upcycle",
    "upcycle_config",
]
