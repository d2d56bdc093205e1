"""Configuration of the MoE vision-language model: one pydantic `Section` per part, defaults in code.

Recipes set fields (there is no size-preset table). `ModelConfig.image_token_id` must equal the
tokenizer's id of `<|image|>`; the trainer sets it from the tokenizer it built.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from corpus.config import Section


class MoEConfig(Section):
    """Mixture-of-experts FFN: top-k softmax router in fp32, always-on shared expert(s), SwiGLU experts."""

    n_experts: int = Field(8, ge=1)
    top_k: int = Field(2, ge=1)
    n_shared_experts: int = 1  # shared expert hidden size = n_shared_experts * d_expert; 0 disables it
    d_expert: int = Field(256, ge=1)  # hidden size F of each routed expert
    d_shared: int | None = Field(None, ge=0)  # hidden size of the shared expert; None = n_shared_experts * d_expert
    shared_gate: bool = False  # scale the shared expert's output per token by sigmoid(w . x) (qwen2_moe)
    aux_loss_weight: float = 0.01  # load-balance loss E * sum_e f_e * P_e (minimum 1.0 when balanced)
    z_loss_weight: float = 0.001  # router z-loss mean(logsumexp(logits)^2)
    first_dense_layers: int = 0  # the first k decoder layers use a dense SwiGLU FFN (d_ffn) instead
    moe_every: int = 1  # after those, every n-th layer is MoE (1 = all), the others dense
    grouped_mm: Literal["auto", "grouped_mm", "loop"] = "auto"
    # "auto": torch's grouped matmul where a probe on the actual device/dtype/shapes succeeds, else the
    # per-expert loop over sorted contiguous slices; "grouped_mm": require it (error if unsupported);
    # "loop": always the loop. The chosen backend is logged once and kept in `MoE.grouped_mm_backend`.
    gate: Literal["auto", "softmax", "renormalised"] = "auto"
    # the weight of a routed expert's output: "softmax" = its router probability (Switch, DeepSeek-V2),
    # "renormalised" = the top-k probabilities rescaled to sum to 1 (Mixtral, Qwen-MoE); "auto" = softmax
    # for top_k = 1 (a renormalised single weight is always 1: the LM loss would not train the router),
    # renormalised otherwise
    bias_update_rate: float = Field(0.0, ge=0.0)
    # auxiliary-loss-free balancing (DeepSeek-V3): > 0 adds a per-expert bias to the router logits
    # for the top-k SELECTION only (gate weights stay unbiased), moved by this much per optimizer step
    # towards balance by the sign of each expert's load error (`VLM.update_expert_bias`, called by the
    # trainer); 0 disables it. DeepSeek-V3 uses 0.001, with aux_loss_weight near 0.

    @model_validator(mode="after")
    def _check(self) -> MoEConfig:
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"moe.top_k={self.top_k} must be in [1, n_experts={self.n_experts}]")
        if self.top_k == 1 and self.gate == "renormalised":
            raise ValueError(
                "moe.gate=renormalised with moe.top_k=1 makes every gate weight 1, so the LM loss "
                "gives the router no gradient: use moe.gate=softmax (or auto)"
            )
        if self.moe_every < 1 or self.first_dense_layers < 0 or self.n_shared_experts < 0:
            raise ValueError("moe.moe_every must be >= 1, first_dense_layers and n_shared_experts >= 0")
        if self.shared_gate and self.shared_hidden == 0:
            raise ValueError("moe.shared_gate=true needs a shared expert (n_shared_experts > 0 or d_shared > 0)")
        return self

    @property
    def shared_hidden(self) -> int:
        """Hidden size of the shared expert (0: none)."""
        return self.n_shared_experts * self.d_expert if self.d_shared is None else self.d_shared

    @property
    def renormalise_gate(self) -> bool:
        """Whether the top-k gate weights are rescaled to sum to 1 (see `gate`)."""
        return self.gate == "renormalised" or (self.gate == "auto" and self.top_k > 1)


class VisionConfig(Section):
    """Native-resolution ViT: patch embedding, 2D RoPE, per-image attention, 2x2 patch merge."""

    patch_size: int = Field(14, ge=1)  # debug recipes use 8
    d_vit: int = Field(256, ge=1)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(4, ge=1)
    merge: int = Field(2, ge=1)  # merge x merge neighbouring patches become one image token
    rope_theta: float = Field(10000.0, gt=0)
    # options that make the tower equal to pretrained ones (train/model/hf/vision.py: Qwen2-VL's, SigLIP2's ViT)
    pos_embed: Literal["rope2d", "learned"] = "rope2d"
    # "learned": a pos_grid x pos_grid table of position embeddings added after the patch embedding,
    # resized bilinearly (antialiased) to each image's patch grid, and no RoPE (SigLIP2 NaFlex)
    pos_grid: int = Field(16, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)  # block MLP hidden size = mlp_ratio * d_vit
    mlp_act: Literal["gelu", "quick_gelu", "gelu_tanh"] = "gelu"
    # quick_gelu: x * sigmoid(1.702 x) (CLIP, Qwen2-VL); gelu_tanh: the tanh approximation (SigLIP2)
    patch_bias: bool = True  # a bias on the patch embedding (Qwen2-VL's Conv3d has none)
    norm_eps: float | None = None  # LayerNorm eps of the tower; None = model.norm_eps
    merger: Literal["linear", "mlp"] = "linear"
    # "linear": the m*m concatenated patches -> Linear -> d_out; "mlp": Linear(m*m*V, m*m*V) -> GELU ->
    # Linear -> d_out (Qwen2-VL's PatchMerger; its LayerNorm ln_q is our final `norm`)
    d_out: int | None = Field(None, ge=1)  # width of the merged image tokens (the adapter's input); None = d_vit
    merge_with_adapter: bool = False
    # the merge is new and trains with the adapter (its "adapter" stage): a pretrained tower without a
    # merger of its own (SigLIP2), whose merge `--init-vision` leaves at its init

    @model_validator(mode="after")
    def _check(self) -> VisionConfig:
        if self.d_vit % self.n_heads or (self.d_vit // self.n_heads) % 4:
            raise ValueError(
                f"vision.d_vit={self.d_vit} / n_heads={self.n_heads} must be a multiple of 4 "
                "(2D RoPE rotates one half of each head by row, the other by column)"
            )
        return self

    @property
    def out_dim(self) -> int:
        """Width of the merged image tokens the tower hands to the adapter."""
        return self.d_vit if self.d_out is None else self.d_out


class ContrastiveConfig(Section):
    """Optional image-text InfoNCE: pooled image tokens vs the pooled states of the text that follows the
    image, run again as a document of its own (so it cannot see the image); CLIP's learned temperature."""

    weight: float = 0.0  # 0 disables the loss term, its projection heads and its logit scale
    d_proj: int = 128
    temperature: float = Field(0.07, gt=0.01)  # initial; learned as a logit scale 1/temperature, clamped to <= 100


class RopeScalingConfig(Section):
    """Frequency scaling of the decoder's RoPE. "none": inv_freq_i = theta^(-i/R); "llama3": Llama 3.1's
    rule, low frequencies (wavelength > original_max_position / low_freq_factor) divided by `factor`,
    high ones (wavelength < original_max_position / high_freq_factor) kept, smooth in between."""

    kind: Literal["none", "llama3"] = "none"
    factor: float = Field(8.0, gt=0)
    low_freq_factor: float = Field(1.0, gt=0)
    high_freq_factor: float = Field(4.0, gt=0)
    original_max_position: int = Field(8192, ge=1)

    @model_validator(mode="after")
    def _check(self) -> RopeScalingConfig:
        if self.kind == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"high_freq_factor={self.high_freq_factor} must exceed low_freq_factor={self.low_freq_factor}"
            )
        return self


class ModelConfig(Section):
    vocab_size: int = Field(32000, ge=1)
    d_model: int = Field(512, ge=1)
    n_layers: int = Field(8, ge=1)
    n_heads: int = Field(8, ge=1)
    n_kv_heads: int = Field(4, ge=1)
    d_ffn: int = Field(1024, ge=1)  # hidden size of dense SwiGLU layers (see moe.first_dense_layers / moe_every)
    rope_theta: float = Field(10000.0, gt=0)
    rope_scaling: RopeScalingConfig = RopeScalingConfig()
    norm_eps: float = Field(1e-5, gt=0)
    # options that make the decoder equal to pretrained families (train/model/hf/): an attention head
    # width other than d_model / n_heads (Qwen3), RMSNorm of each query/key head before RoPE (Qwen3),
    # biases on the q/k/v projections (Qwen2), an LM head that shares the token embedding matrix
    head_dim: int | None = Field(None, ge=1)  # None = d_model // n_heads
    qk_norm: bool = False
    qkv_bias: bool = False
    tie_embeddings: bool = False
    init_llm: str = ""  # a Hugging Face model folder whose decoder weights the run starts from (--init-llm)
    init_vision: str = ""  # a Hugging Face model folder whose vision tower the run starts from (--init-vision)
    init_upcycle: bool = False  # init_llm of a dense family: upcycle it into moe.n_experts experts, top-k moe.top_k
    # an interloom checkpoint or exported folder whose whole VLM the run starts from (--init-from; e.g. the
    # `pretrain` recipe after an `align` run)
    init_from: str = ""
    image_token_id: int = 4  # id of <|image|>; index in SPECIAL_TOKENS when specials are added first
    # attention within documents / images (train/model/attention.py): "auto" = flex on CUDA, varlen
    # elsewhere; "varlen" = per-segment SDPA, any device; "flex" = flex_attention block masks (CUDA to
    # train); "dense" = the N x N-mask reference
    attention: Literal["auto", "dense", "varlen", "flex"] = "auto"
    activation_checkpointing: bool = False  # recompute each decoder / vision block's activations in backward
    compile: Literal["off", "inductor", "aot_eager", "eager"] = "off"  # torch.compile backend per block
    moe: MoEConfig = MoEConfig()
    vision: VisionConfig = VisionConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if (self.head_dim is None and self.d_model % self.n_heads) or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"d_model={self.d_model} must divide by n_heads={self.n_heads} (unless head_dim "
                f"is set), and n_heads "
                f"by n_kv_heads={self.n_kv_heads}"
            )
        if self.d_head % 2:
            raise ValueError(f"head dim {self.d_head} (head_dim, or d_model/n_heads) must be even (RoPE)")
        if not 0 <= self.image_token_id < self.vocab_size:
            raise ValueError(f"image_token_id={self.image_token_id} outside vocab_size={self.vocab_size}")
        return self

    @property
    def d_head(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    def is_moe_layer(self, layer: int) -> bool:
        k = self.moe.first_dense_layers
        return layer >= k and (layer - k) % self.moe.moe_every == 0
