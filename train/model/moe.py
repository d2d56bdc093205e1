"""Mixture-of-experts SwiGLU feed-forward layer with dropless grouped dispatch.

What it does, in `MoE.forward` order:
  1. router: fp32 Linear on fp32 inputs (float64 for float64 models) -> softmax over E experts -> top-k
     (with `bias_update_rate` > 0, of the logits plus a per-expert balancing bias); gate weights are
     the selected experts' unbiased probabilities, renormalised to sum to 1 or not (`moe.gate`)
  2. dispatch (dropless): the S*K (token, expert) slots are sorted by expert id, so each expert's tokens
     are one contiguous slice delimited by `offs_E` (cumulative counts); no capacity, nothing dropped
  3. experts: SwiGLU with weights stacked in 3-D tensors (w1_EDF, w3_EDF, w2_EFD), applied with one
     grouped matmul per weight (`torch.nn.functional.grouped_mm`) or, where that kernel is not
     supported for the device/dtype/shape, a loop over experts on the same sorted slices. Operands are
     in the compute dtype: the autocast dtype under autocast (the kernel has no autocast rule of its
     own), else the weights' dtype (bf16 under FSDP2's MixedPrecisionPolicy(param_dtype=bf16))
  4. combine: outputs scaled by their gate weight and summed back per token (index_add, in the dtype
     of the layer's input, i.e. of the residual stream)
  5. shared expert: a dense SwiGLU every token always goes through, added to the routed output (scaled
     by sigmoid(shared_gate(x)) per token with `moe.shared_gate`, as in qwen2_moe)
  6. statistics: load-balance loss, router z-loss, token-slot counts per expert (for logging)

Load-balance loss (Switch Transformer / GShard form), over the S tokens that take part:
    f_e = (slots routed to e) / (S * K)        fraction of token-slots on expert e   (sum_e f_e = 1)
    P_e = mean_s softmax(logits_s)_e           mean router probability of e          (sum_e P_e = 1)
    aux = E * sum_e f_e * P_e
  f is not differentiable (counts); the gradient flows through P. Perfectly balanced routing
  (f_e = P_e = 1/E) gives aux = 1.0, the value the loss is pushed towards.
Router z-loss (ST-MoE): z = mean_s logsumexp(logits_s)^2, keeps router logits small.

Auxiliary-loss-free balancing (DeepSeek-V3, `moe.bias_update_rate` > 0): a per-expert bias b_E (a buffer,
not a parameter: no gradient) is added to the router logits for the top-k choice only (in logit space a
bias of b multiplies an expert's odds by e^b, whatever the scale of its probability). After each
optimizer step `update_expert_bias(load_E)` moves it by rate * sign(mean load - load_e) (centred), where
load_E is the step's global token-slot count per expert: overloaded experts become less attractive.

Backend choice is explicit: `grouped_mm_backend(...)` probes the kernel once per (device, dtype, D, F)
and logs what it chose; each layer records the backend it last used in `MoE.grouped_mm_backend`.

Shape legend:
  S  tokens (B*T flattened)   D  model dim       E  experts        K  top-k
  F  expert hidden dim        A  routed token-slots (S*K, minus masked tokens), sorted by expert
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from train.model.config import MoEConfig

log = logging.getLogger(__name__)

GROUPED_MM = "grouped_mm"
LOOP = "loop"


def _grouped_mm_fn():
    """torch's grouped matmul: public `F.grouped_mm` (torch >= 2.9) else private `torch._grouped_mm`."""
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


@functools.cache
def grouped_mm_backend(device_type: str, device_index: int | None, dtype: torch.dtype, d_in: int, d_hidden: int) -> str:
    """Which grouped-matmul backend runs on this device/dtype for (D, F) expert weights: probe, log once.

    The kernel's constraints (dtype, 16-byte aligned strides, CUDA compute capability) differ by version
    and device, so instead of guessing from version numbers we run a tiny forward+backward on the real
    shapes and compare with the loop. Cached, so each combination is probed and logged exactly once.
    """
    fn = _grouped_mm_fn()
    where = f"{device_type}{'' if device_index is None else f':{device_index}'} {dtype} D={d_in} F={d_hidden}"
    if fn is None:
        log.info("moe: grouped matmul backend = loop for %s (torch %s has no grouped_mm)", where, torch.__version__)
        return LOOP
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    try:  # probe with grad on and autocast off, whatever context the first forward runs in
        with torch.enable_grad(), torch.autocast(device_type=device_type, enabled=False):
            ok = _probe_grouped_mm(fn, device, dtype, d_in, d_hidden)
    except (RuntimeError, NotImplementedError, TypeError) as e:
        log.info(
            "moe: grouped matmul backend = loop for %s (grouped_mm unsupported: %s)",
            where,
            str(e).splitlines()[0][:200],
        )
        return LOOP
    if not ok:
        log.warning("moe: grouped matmul backend = loop for %s (grouped_mm gave wrong results)", where)
        return LOOP
    log.info("moe: grouped matmul backend = grouped_mm for %s", where)
    return GROUPED_MM


def _probe_grouped_mm(fn, device: torch.device, dtype: torch.dtype, d_in: int, d_hidden: int) -> bool:
    """Forward+backward of grouped_mm on 3 groups (one empty) agrees with per-group matmuls."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(24, d_in, generator=gen).to(device, dtype).requires_grad_()
    w = (torch.randn(3, d_in, d_hidden, generator=gen) / d_in**0.5).to(device, dtype).requires_grad_()
    offs = torch.tensor([8, 8, 24], dtype=torch.int32, device=device)  # includes an empty group
    y = fn(x, w, offs=offs)
    y.backward(torch.ones_like(y))
    ref = torch.cat([x[:8] @ w[0], x[8:24] @ w[2]])
    tol = 5e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    return (
        torch.allclose(y.float(), ref.float(), rtol=tol, atol=tol)
        and w.grad is not None
        and bool(w.grad[1].abs().sum() == 0)
    )


def _contiguous_grad(g: torch.Tensor) -> torch.Tensor:
    return g.contiguous()


def grouped_matmul(x_AD: torch.Tensor, w_EDF: torch.Tensor, offs_E: torch.Tensor, backend: str) -> torch.Tensor:
    """out[offs[e-1]:offs[e]] = x[offs[e-1]:offs[e]] @ w[e] for every expert e (dropless grouped GEMM)."""
    if backend == GROUPED_MM:
        out_AF = _grouped_mm_fn()(x_AD, w_EDF, offs=offs_E.to(torch.int32))
        if out_AF.requires_grad:  # the kernel's backward needs dense grads (a sum() upstream gives stride 0)
            out_AF.register_hook(_contiguous_grad)
        return out_AF
    assert backend == LOOP, backend
    ends = offs_E.tolist()
    starts = [0] + ends[:-1]
    return torch.cat([x_AD[s:e] @ w_EDF[i] for i, (s, e) in enumerate(zip(starts, ends))], dim=0)


class SwiGLU(nn.Module):
    """Dense SwiGLU FFN: w2(silu(w1 x) * w3 x). Used for the shared expert and dense layers."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_hidden, bias=False)
        self.w3 = nn.Linear(d_model, d_hidden, bias=False)
        self.w2 = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x_SD: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x_SD)) * self.w3(x_SD))


@dataclass
class MoEStats:
    aux_loss: torch.Tensor  # scalar (router dtype, >= fp32), E * sum_e f_e * P_e
    z_loss: torch.Tensor  # scalar (router dtype, >= fp32), mean logsumexp(logits)^2
    load_E: torch.Tensor  # int64 token-slot counts per expert (detached)


class MoE(nn.Module):
    expert_bias_E: torch.Tensor  # buffer, registered when bias_update_rate > 0

    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__()
        E, D, Fh = cfg.n_experts, d_model, cfg.d_expert
        self.n_experts, self.top_k, self.mode = E, cfg.top_k, cfg.grouped_mm
        self.renormalise, self.bias_update_rate = cfg.renormalise_gate, cfg.bias_update_rate
        self.router = nn.Linear(D, E, bias=False)  # applied in fp32, see forward
        self.w1_EDF = nn.Parameter(torch.empty(E, D, Fh))
        self.w3_EDF = nn.Parameter(torch.empty(E, D, Fh))
        self.w2_EFD = nn.Parameter(torch.empty(E, Fh, D))
        self.shared = SwiGLU(D, cfg.shared_hidden) if cfg.shared_hidden > 0 else None
        self.shared_gate = nn.Linear(D, 1, bias=False) if cfg.shared_gate else None
        if self.bias_update_rate > 0:  # checkpointed with the model (a buffer: no gradient, no optimizer)
            self.register_buffer("expert_bias_E", torch.zeros(E, dtype=torch.float32))
        self.grouped_mm_backend: str | None = None  # set on first forward: "grouped_mm" or "loop"
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02, out_std: float | None = None) -> None:
        nn.init.normal_(self.router.weight, std=std)
        nn.init.normal_(self.w1_EDF, std=std)
        nn.init.normal_(self.w3_EDF, std=std)
        nn.init.normal_(self.w2_EFD, std=out_std or std)
        if self.bias_update_rate > 0:
            self.expert_bias_E.zero_()

    def select_backend(self, device: torch.device, dtype: torch.dtype) -> str:
        if self.mode == LOOP:
            return LOOP
        D, Fh = self.w1_EDF.shape[1:]
        backend = grouped_mm_backend(device.type, device.index, dtype, D, Fh)
        if self.mode == GROUPED_MM and backend != GROUPED_MM:
            raise ValueError(
                f"moe.grouped_mm=grouped_mm but torch's grouped_mm does not run on {device} "
                f"{dtype} with D={D}, F={Fh} (see log); use moe.grouped_mm=auto or loop"
            )
        return backend

    def compute_dtype(self, device_type: str) -> torch.dtype:
        """The experts' operand dtype: autocast's under autocast, else the weights' (bf16 under FSDP2's
        MixedPrecisionPolicy, whose unsharded parameters are bf16)."""
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return self.w1_EDF.dtype

    def forward(self, x_SD: torch.Tensor, mask_S: torch.Tensor | None = None) -> tuple[torch.Tensor, MoEStats]:
        """x_SD: tokens; mask_S: bool, False for tokens that skip the routed experts (padding) and are
        left out of the statistics. Returns (y_SD, stats)."""
        S, D = x_SD.shape
        E, K = self.n_experts, self.top_k
        dev = x_SD.device.type
        if mask_S is None:
            mask_S = torch.ones(S, dtype=torch.bool, device=x_SD.device)

        # 1. router in fp32 (or wider: float64 models route in float64); the balancing bias (if any) only
        # changes which experts are chosen, the gate weights are the unbiased probabilities
        router_dtype = torch.promote_types(x_SD.dtype, torch.float32)
        with torch.autocast(device_type=dev, enabled=False):
            logits_SE = F.linear(x_SD.to(router_dtype), self.router.weight.to(router_dtype))
        probs_SE = logits_SE.softmax(dim=-1)
        if self.bias_update_rate > 0:
            topi_SK = (logits_SE.detach() + self.expert_bias_E.to(router_dtype)).topk(K, dim=-1).indices
            topw_SK = probs_SE.gather(1, topi_SK)
        else:
            topw_SK, topi_SK = probs_SE.topk(K, dim=-1)
        if self.renormalise:
            topw_SK = topw_SK / topw_SK.sum(dim=-1, keepdim=True)

        # 2. dropless dispatch: sort token-slots by expert; masked tokens go to sentinel expert E (last)
        expert_SK = torch.where(mask_S[:, None], topi_SK, E)
        order_SK = expert_SK.flatten().argsort(stable=True)
        counts_E = torch.bincount(expert_SK.flatten(), minlength=E + 1)[:E]
        offs_E = counts_E.cumsum(0)
        n_routed = int(offs_E[-1])  # slots of real tokens (host sync; the loop backend needs offsets anyway)
        order_A = order_SK[:n_routed]
        token_A = order_A // K

        # 3. experts: grouped SwiGLU over contiguous per-expert slices, operands in the compute dtype
        cdt = self.compute_dtype(dev)
        backend = self.grouped_mm_backend = self.select_backend(x_SD.device, cdt)
        x_AD = x_SD[token_A].to(cdt)
        w1_EDF, w3_EDF, w2_EFD = self.w1_EDF.to(cdt), self.w3_EDF.to(cdt), self.w2_EFD.to(cdt)
        with torch.autocast(device_type=dev, enabled=False):  # operands are already cast
            h_AF = F.silu(grouped_matmul(x_AD, w1_EDF, offs_E, backend)) * grouped_matmul(x_AD, w3_EDF, offs_E, backend)
            y_AD = grouped_matmul(h_AF, w2_EFD, offs_E, backend)

        # 4. combine: weight each slot by its gate weight, sum back per token in the input's dtype
        w_A = topw_SK.flatten()[order_A].to(cdt)
        y_SD = torch.zeros_like(x_SD).index_add_(0, token_A, (y_AD * w_A[:, None]).to(x_SD.dtype))

        # 5. shared expert(s), always on (padding too: cheap, dense, and keeps shapes static), optionally
        # scaled per token by a sigmoid gate
        if self.shared is not None:
            shared_SD = self.shared(x_SD)
            if self.shared_gate is not None:
                shared_SD = torch.sigmoid(self.shared_gate(x_SD)) * shared_SD
            y_SD = y_SD + shared_SD.to(x_SD.dtype)

        # 6. statistics over the tokens that took part
        n_tok = mask_S.sum().clamp(min=1)
        f_E = counts_E.to(router_dtype) / (n_tok * K)
        P_E = (probs_SE * mask_S[:, None]).sum(dim=0) / n_tok
        aux_loss = E * (f_E * P_E).sum()
        z_loss = (torch.logsumexp(logits_SE, dim=-1).pow(2) * mask_S).sum() / n_tok
        return y_SD, MoEStats(aux_loss=aux_loss, z_loss=z_loss, load_E=counts_E.detach())

    @torch.no_grad()
    def update_expert_bias(self, load_E: torch.Tensor) -> None:
        """Aux-loss-free balancing step: bias_e += rate * sign(mean(load) - load_e), centred to mean 0.
        `load_E` is the step's token-slot count per expert, summed over micro-batches and ranks (every rank
        passes the same counts, so the bias stays identical across ranks)."""
        assert self.bias_update_rate > 0, "update_expert_bias needs moe.bias_update_rate > 0"
        load_E = load_E.to(self.expert_bias_E.device, torch.float32)
        delta_E = self.bias_update_rate * torch.sign(load_E.mean() - load_E)
        self.expert_bias_E.add_(delta_E - delta_E.mean())
