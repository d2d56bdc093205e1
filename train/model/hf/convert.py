"""Config and weight mapping between Hugging Face decoder families and interloom's `Decoder`.

A family (`Family`) names where a checkpoint keeps each tensor; `key_map(cfg, family)` lists, for every
tensor of our decoder's state dict, the HF key it comes from (or, for stacked expert weights, the E keys
of the per-expert matrices, transposed). The same list converts both ways, so import and export cannot
drift apart. Dense families load with every layer dense (`moe.first_dense_layers = n_layers`); `upcycle`
turns such a decoder into an MoE one.

Weight layouts (ours <- HF): nn.Linear weights are identical ((out, in)); routed experts are stacked
w1_EDF[e] = gate_proj.weight.T, w3_EDF[e] = up_proj.weight.T, w2_EFD[e] = down_proj.weight.T.

Shape legend: E experts, D model dim, F expert hidden dim.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from pydantic import ValidationError

from corpus.config import validation_problems
from train.model.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """Where one HF decoder family keeps its tensors and which of our options it needs."""

    model_type: str
    architecture: str
    moe: bool  # has routed experts (else a dense family, loaded dense or upcycled)
    qk_norm: bool = False
    qkv_bias: bool = False
    shared_expert: bool = False  # gated shared expert (qwen2_moe)
    moe_prefix: str = "mlp"  # module holding router ("gate") and experts
    expert_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")  # our w1, w3, w2
    always_renormalise: bool = False  # top-k weights always rescaled to 1 (mixtral: no norm_topk_prob)


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("qwen3_moe", "Qwen3MoeForCausalLM", moe=True, qk_norm=True),
        Family("qwen2_moe", "Qwen2MoeForCausalLM", moe=True, qkv_bias=True, shared_expert=True),
        Family(
            "mixtral",
            "MixtralForCausalLM",
            moe=True,
            moe_prefix="block_sparse_moe",
            expert_names=("w1", "w3", "w2"),
            always_renormalise=True,
        ),
        Family("qwen3", "Qwen3ForCausalLM", moe=False, qk_norm=True),
        Family("llama", "LlamaForCausalLM", moe=False),
    )
}


def _family(model_type: str, where: str) -> Family:
    if model_type not in FAMILIES:
        raise ValueError(f"{where}: model_type={model_type!r} is not supported; supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


# --- config ------------------------------------------------------------------------------------------


def _rope(hf: Mapping, where: str) -> tuple[float, dict]:
    """(theta, our rope_scaling fields) from either the legacy keys (rope_theta, rope_scaling) or
    transformers 5's rope_parameters."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or params)
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise ValueError(f"{where}: rope_theta={theta!r} is not a number")
    if kind == "default":
        return float(theta), {"kind": "none"}
    if kind == "llama3":
        return float(theta), {
            "kind": "llama3",
            "factor": scaling["factor"],
            "low_freq_factor": scaling["low_freq_factor"],
            "high_freq_factor": scaling["high_freq_factor"],
            "original_max_position": scaling["original_max_position_embeddings"],
        }
    raise ValueError(f"{where}: rope type {kind!r} is not supported (default and llama3 are)")


def _hf_moe_layers(hf: Mapping, n_layers: int, fam: Family) -> list[bool]:
    if fam.model_type == "mixtral":
        return [True] * n_layers
    step, dense = hf.get("decoder_sparse_step", 1), set(hf.get("mlp_only_layers") or [])
    return [i not in dense and (i + 1) % step == 0 for i in range(n_layers)]


def _layer_pattern(is_moe: list[bool], where: str) -> dict:
    """Our (first_dense_layers, moe_every) that reproduces a per-layer MoE/dense pattern."""
    n = len(is_moe)
    for first in range(n + 1):
        for every in range(1, n + 1):
            if all(m == (i >= first and (i - first) % every == 0) for i, m in enumerate(is_moe)):
                return {"first_dense_layers": first, "moe_every": every}
    raise ValueError(
        f"{where}: the MoE/dense layer pattern {is_moe} is not 'first k dense, then every n-th "
        "MoE' (moe.first_dense_layers, moe.moe_every)"
    )


@contextmanager
def config_errors(where: str) -> Iterator[None]:
    """A damaged config.json read into our config: a missing field, a value of the wrong type or one our
    config refuses is one ValueError line naming the file (`where`) and the field."""
    try:
        yield
    except KeyError as e:
        raise ValueError(f"{where}: lacks the field {e.args[0]!r}") from None
    except ValidationError as e:
        raise ValueError(f"{where}: {validation_problems(e)}") from None
    except (TypeError, AttributeError, ZeroDivisionError) as e:
        raise ValueError(f"{where}: a field has a value of the wrong type or size ({e})") from None


def check_whole_numbers(section: Mapping, fields: tuple[str, ...], where: str) -> None:
    """Each of `fields` that `section` has is a whole number >= 1 (not a string, a float or a bool)."""
    for key in fields:
        v = section.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{where}: {key}={v!r} is not a whole number >= 1")


HF_WHOLE_NUMBERS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "moe_intermediate_size",
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "decoder_sparse_step",
)


def config_from_hf(hf: Mapping, base: ModelConfig | None = None, where: str = "config.json") -> ModelConfig:
    """Our ModelConfig for an HF decoder config (dict of config.json); vision, contrastive, attention and
    the training-only MoE fields (aux/z loss weights, bias rate) come from `base` (defaults if None). A
    missing or ill-typed field is a ValueError naming `where` and the field."""
    if not isinstance(hf, Mapping):
        raise ValueError(f"{where}: not a JSON object")
    with config_errors(where):
        return _config_from_hf(hf, base, where)


def _config_from_hf(hf: Mapping, base: ModelConfig | None, where: str) -> ModelConfig:
    fam = _family(str(hf.get("model_type")), where)
    check_whole_numbers(hf, HF_WHOLE_NUMBERS, where)
    for key in ("rope_scaling", "rope_parameters"):
        if hf.get(key) is not None and not isinstance(hf[key], Mapping):
            raise ValueError(f"{where}: {key}={hf[key]!r} is not an object")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act={hf['hidden_act']!r}; only silu (SwiGLU) is supported")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError(f"{where}: attention_bias / mlp_bias are not supported")
    if hf.get("use_sliding_window") or (fam.model_type == "mixtral" and hf.get("sliding_window")):
        raise ValueError(f"{where}: sliding-window attention is not supported")
    theta, scaling = _rope(hf, where)
    d_model, n_heads, n_layers = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    head_dim = hf.get("head_dim") or d_model // n_heads
    fields = {
        "vocab_size": hf["vocab_size"],
        "d_model": d_model,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_kv_heads": hf.get("num_key_value_heads") or n_heads,
        "head_dim": None if head_dim * n_heads == d_model else head_dim,
        "d_ffn": hf["intermediate_size"],
        "rope_theta": theta,
        "rope_scaling": scaling,
        "norm_eps": hf["rms_norm_eps"],
        "qk_norm": fam.qk_norm,
        "qkv_bias": fam.qkv_bias and hf.get("qkv_bias", True),  # qwen2_moe configs before v5 lack the key
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }
    data = (base or ModelConfig()).model_dump()
    data.update(fields)
    if fam.moe:
        renorm = fam.always_renormalise or hf.get("norm_topk_prob", False)
        shared = hf.get("shared_expert_intermediate_size", 0) if fam.shared_expert else 0
        data["moe"].update(
            {
                "n_experts": hf.get("num_experts", hf.get("num_local_experts")),
                "top_k": hf["num_experts_per_tok"],
                "d_expert": hf["intermediate_size"] if fam.model_type == "mixtral" else hf["moe_intermediate_size"],
                "gate": "renormalised" if renorm else "softmax",
                "n_shared_experts": 0,
                "d_shared": shared,
                "shared_gate": shared > 0,
                **_layer_pattern(_hf_moe_layers(hf, n_layers, fam), where),
            }
        )
    else:
        data["moe"].update({"first_dense_layers": n_layers, "moe_every": 1, "d_shared": 0, "shared_gate": False})
    return ModelConfig.model_validate(data)


def infer_family(cfg: ModelConfig) -> Family:
    """The HF family whose architecture equals this decoder's (for export)."""
    for fam in FAMILIES.values():
        if not mismatch(cfg, fam):
            return fam
    reasons = "; ".join(f"{name}: {mismatch(cfg, fam)}" for name, fam in FAMILIES.items())
    raise ValueError(f"no Hugging Face family has this decoder's architecture ({reasons})")


def mismatch(cfg: ModelConfig, fam: Family) -> str:
    """Why `cfg` cannot be written as `fam` ("" if it can)."""
    moe_layers = [cfg.is_moe_layer(i) for i in range(cfg.n_layers)]
    m = cfg.moe
    checks = [
        (any(moe_layers) == fam.moe, "MoE layers" if not fam.moe else "no MoE layer"),
        (cfg.qk_norm == fam.qk_norm, f"qk_norm={cfg.qk_norm}"),
        (cfg.qkv_bias == fam.qkv_bias, f"qkv_bias={cfg.qkv_bias}"),
        (
            not fam.moe or (m.shared_hidden > 0) == fam.shared_expert == m.shared_gate,
            f"shared expert {m.shared_hidden} (gate {m.shared_gate})",
        ),
        (not fam.always_renormalise or m.renormalise_gate, "gate not renormalised"),
        (fam.model_type != "mixtral" or all(moe_layers), "dense layers"),
        (cfg.rope_scaling.kind == "none" or fam.model_type == "llama", f"rope_scaling={cfg.rope_scaling.kind}"),
    ]
    return ", ".join(why for ok, why in checks if not ok)


def config_to_hf(
    cfg: ModelConfig, fam: Family, max_position_embeddings: int = 32768, dtype: torch.dtype = torch.float32
) -> dict:
    """config.json of `fam` for our decoder config (`mismatch` must be empty)."""
    assert not mismatch(cfg, fam), mismatch(cfg, fam)
    moe_layers = [cfg.is_moe_layer(i) for i in range(cfg.n_layers)]
    rs = cfg.rope_scaling
    hf = {
        "architectures": [fam.architecture],
        "model_type": fam.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ffn,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.d_head,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None
        if rs.kind == "none"
        else {
            "rope_type": "llama3",
            "factor": rs.factor,
            "low_freq_factor": rs.low_freq_factor,
            "high_freq_factor": rs.high_freq_factor,
            "original_max_position_embeddings": rs.original_max_position,
        },
        "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": max_position_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }
    if fam.model_type == "mixtral":
        hf.update(
            {
                "num_local_experts": cfg.moe.n_experts,
                "num_experts_per_tok": cfg.moe.top_k,
                "intermediate_size": cfg.moe.d_expert,
                "sliding_window": None,
                "router_aux_loss_coef": cfg.moe.aux_loss_weight,
            }
        )
    elif fam.moe:
        hf.update(
            {
                "num_experts": cfg.moe.n_experts,
                "num_experts_per_tok": cfg.moe.top_k,
                "moe_intermediate_size": cfg.moe.d_expert,
                "norm_topk_prob": cfg.moe.renormalise_gate,
                "decoder_sparse_step": 1,
                "mlp_only_layers": [i for i, m in enumerate(moe_layers) if not m],
                "use_sliding_window": False,
                "router_aux_loss_coef": cfg.moe.aux_loss_weight,
            }
        )
    if fam.shared_expert:
        hf.update({"shared_expert_intermediate_size": cfg.moe.shared_hidden, "qkv_bias": cfg.qkv_bias})
    if fam.model_type == "llama":
        hf["mlp_bias"] = False
    return hf


# --- weights -----------------------------------------------------------------------------------------


def key_map(cfg: ModelConfig, fam: Family) -> dict[str, str | list[str]]:
    """Our decoder state-dict key -> its HF key, or the E per-expert HF keys it stacks (transposed)."""
    km: dict[str, str | list[str]] = {
        "tok_embeddings.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
    }
    if not cfg.tie_embeddings:
        km["output.weight"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        km[ours + "attn_norm.weight"] = hf + "input_layernorm.weight"
        km[ours + "ffn_norm.weight"] = hf + "post_attention_layernorm.weight"
        for w, p in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
            km[f"{ours}attn.{w}.weight"] = f"{hf}self_attn.{p}.weight"
            if cfg.qkv_bias and w != "wo":
                km[f"{ours}attn.{w}.bias"] = f"{hf}self_attn.{p}.bias"
        if cfg.qk_norm:
            km[ours + "attn.q_norm.weight"] = hf + "self_attn.q_norm.weight"
            km[ours + "attn.k_norm.weight"] = hf + "self_attn.k_norm.weight"
        if not cfg.is_moe_layer(i):
            for w, p in zip(("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj"), strict=True):
                km[f"{ours}ffn.{w}.weight"] = f"{hf}mlp.{p}.weight"
            continue
        moe = f"{hf}{fam.moe_prefix}."
        km[ours + "ffn.router.weight"] = moe + "gate.weight"
        for w, p in zip(("w1_EDF", "w3_EDF", "w2_EFD"), fam.expert_names, strict=True):
            km[f"{ours}ffn.{w}"] = [f"{moe}experts.{e}.{p}.weight" for e in range(cfg.moe.n_experts)]
        if cfg.moe.shared_hidden > 0:
            for w, p in zip(("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj"), strict=True):
                km[f"{ours}ffn.shared.{w}.weight"] = f"{moe}shared_expert.{p}.weight"
        if cfg.moe.shared_gate:
            km[ours + "ffn.shared_gate.weight"] = moe + "shared_expert_gate.weight"
    return km


def state_from_hf(get: Callable[[str], torch.Tensor], cfg: ModelConfig, fam: Family) -> dict[str, torch.Tensor]:
    """Our decoder state dict from HF tensors (`get(key)` reads one, e.g. from safetensors lazily)."""
    state: dict[str, torch.Tensor] = {}
    for ours, hf in key_map(cfg, fam).items():
        state[ours] = get(hf) if isinstance(hf, str) else torch.stack([get(k).T for k in hf])
    if cfg.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    if cfg.moe.bias_update_rate > 0:  # no HF family has a selection bias: start at 0
        for i in range(cfg.n_layers):
            if cfg.is_moe_layer(i):
                state[f"layers.{i}.ffn.expert_bias_E"] = torch.zeros(cfg.moe.n_experts)
    return state


def state_to_hf(state: Mapping[str, torch.Tensor], cfg: ModelConfig, fam: Family) -> dict[str, torch.Tensor]:
    """HF tensors (contiguous, one per key, as the family's checkpoints store them) of our decoder state."""
    for key, t in state.items():
        if key.endswith("expert_bias_E") and bool(t.abs().max() > 0):
            raise ValueError(
                f"{key} is non-zero (moe.bias_update_rate > 0): {fam.model_type} has no expert "
                "selection bias, so the exported model would route differently"
            )
    out: dict[str, torch.Tensor] = {}
    for ours, hf in key_map(cfg, fam).items():
        t = state[ours].detach()
        if isinstance(hf, str):
            out[hf] = t.contiguous()
        else:
            out.update({k: t[e].T.contiguous() for e, k in enumerate(hf)})
    return out


def upcycle_config(cfg: ModelConfig, n_experts: int, top_k: int) -> ModelConfig:
    """The MoE config of an upcycled dense decoder (see `upcycle`)."""
    if any(cfg.is_moe_layer(i) for i in range(cfg.n_layers)):
        raise ValueError("upcycle: the decoder already has MoE layers (expected a dense one)")
    if not 2 <= top_k <= n_experts:
        raise ValueError(
            f"upcycle: top_k={top_k} must be in [2, n_experts={n_experts}] (with one expert per "
            "token a renormalised gate is always 1 and the router gets no gradient)"
        )
    data = cfg.model_dump()
    data["moe"].update(
        {
            "n_experts": n_experts,
            "top_k": top_k,
            "d_expert": cfg.d_ffn,
            "n_shared_experts": 0,
            "d_shared": None,
            "shared_gate": False,
            "gate": "renormalised",
            "first_dense_layers": 0,
            "moe_every": 1,
        }
    )
    return ModelConfig.model_validate(data)


def upcycle(
    cfg: ModelConfig,
    state: Mapping[str, torch.Tensor],
    n_experts: int,
    top_k: int,
    router_std: float = 0.02,
    seed: int = 0,
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Sparse upcycling: a dense decoder (every layer dense) -> every layer MoE with `n_experts` experts that
    are copies of the layer's dense FFN, no shared expert, top-k gate weights renormalised to sum to 1, and
    a router drawn N(0, router_std). Whatever the router picks, the weights sum to 1 over identical experts,
    so the first forward equals the dense model's (to float rounding of the weighted sum)."""
    new_cfg = upcycle_config(cfg, n_experts, top_k)
    gen = torch.Generator().manual_seed(seed)
    out = {k: v for k, v in state.items() if ".ffn." not in k}
    for i in range(cfg.n_layers):
        p = f"layers.{i}.ffn."
        w1, w3, w2 = state[p + "w1.weight"], state[p + "w3.weight"], state[p + "w2.weight"]
        out[p + "w1_EDF"] = w1.T.expand(n_experts, -1, -1).clone()
        out[p + "w3_EDF"] = w3.T.expand(n_experts, -1, -1).clone()
        out[p + "w2_EFD"] = w2.T.expand(n_experts, -1, -1).clone()
        out[p + "router.weight"] = (torch.randn(n_experts, cfg.d_model, generator=gen) * router_std).to(w1.dtype)
        if new_cfg.moe.bias_update_rate > 0:
            out[p + "expert_bias_E"] = torch.zeros(n_experts)
    log.info("upcycled %d dense layers into %d experts (top-%d) each", cfg.n_layers, n_experts, top_k)
    return new_cfg, out
