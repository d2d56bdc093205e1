"""MoE layer: dropless grouped dispatch equals a plain per-token loop (outputs and gradients), zero-token
experts, padding mask, the load-balance loss and router z-loss against their formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train.model.config import MoEConfig
from train.model.moe import GROUPED_MM, LOOP, MoE, grouped_mm_backend


def make_moe(D=8, E=4, K=2, Fh=12, shared=1, dtype=torch.float64, mode="auto", seed=0) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(D, MoEConfig(n_experts=E, top_k=K, d_expert=Fh, n_shared_experts=shared, grouped_mm=mode))
    moe.reset_parameters(std=0.5)  # large enough that routing differs between tokens
    return moe.to(dtype)


def per_token_reference(moe: MoE, x_SD: torch.Tensor) -> torch.Tensor:
    """The obvious implementation: for each token, softmax router, top-k, renormalise, sum experts."""
    outs = []
    for x_D in x_SD:
        probs_E = F.linear(x_D, moe.router.weight).softmax(-1)
        w_K, i_K = probs_E.topk(moe.top_k)
        w_K = w_K / w_K.sum()
        y_D = torch.zeros_like(x_D)
        for w, e in zip(w_K, i_K.tolist()):
            h = F.silu(x_D @ moe.w1_EDF[e]) * (x_D @ moe.w3_EDF[e])
            y_D = y_D + w.to(x_D.dtype) * (h @ moe.w2_EFD[e])
        if moe.shared is not None:
            y_D = y_D + moe.shared(x_D[None])[0]
        outs.append(y_D)
    return torch.stack(outs)


def grads_of(moe: MoE, x_SD: torch.Tensor, fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x_SD.clone().requires_grad_()
    moe.zero_grad()
    y = fn(x)
    proj = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)  # non-uniform upstream gradient
    (y * proj).sum().backward()
    return x.grad, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in moe.parameters()]


def test_grouped_dispatch_matches_per_token_loop_float64():
    moe = make_moe()
    x_SD = torch.randn(37, 8, dtype=torch.float64)
    y_SD, stats = moe(x_SD)
    assert moe.grouped_mm_backend == LOOP  # float64 has no grouped_mm kernel: recorded, not silent
    torch.testing.assert_close(y_SD, per_token_reference(moe, x_SD), rtol=1e-12, atol=1e-12)
    assert int(stats.load_E.sum()) == 37 * 2
    gx, gp = grads_of(moe, x_SD, lambda x: moe(x)[0])
    rx, rp = grads_of(moe, x_SD, lambda x: per_token_reference(moe, x))
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-12)
    for (name, _), a, b in zip(moe.named_parameters(), gp, rp):
        assert b.abs().sum() > 0, name  # every parameter, router included, gets a gradient
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"grad of {name}")


def test_grouped_mm_backend_matches_loop_float32():
    backend = grouped_mm_backend("cpu", None, torch.float32, 8, 16)
    if backend != GROUPED_MM:
        pytest.skip(f"torch {torch.__version__} has no CPU grouped_mm for float32 (backend={backend})")
    grouped, loop = make_moe(Fh=16, dtype=torch.float32), make_moe(Fh=16, dtype=torch.float32, mode="loop")
    x_SD = torch.randn(50, 8)
    y1, s1 = grouped(x_SD)
    y2, s2 = loop(x_SD)
    assert grouped.grouped_mm_backend == GROUPED_MM and loop.grouped_mm_backend == LOOP
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)
    assert torch.equal(s1.load_E, s2.load_E)
    g1, p1 = grads_of(grouped, x_SD, lambda x: grouped(x)[0])
    g2, p2 = grads_of(loop, x_SD, lambda x: loop(x)[0])
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_backend_probe_is_independent_of_the_calling_context():
    grouped_mm_backend.cache_clear()  # the first call of a combination probes; here under no_grad
    with torch.no_grad():
        first = grouped_mm_backend("cpu", None, torch.float32, 8, 16)
    grouped_mm_backend.cache_clear()
    assert first == grouped_mm_backend("cpu", None, torch.float32, 8, 16)


def test_required_grouped_mm_on_unsupported_dtype_is_an_error():
    moe = make_moe(mode="grouped_mm")  # float64: no kernel
    with pytest.raises(ValueError, match="grouped_mm"):
        moe(torch.randn(4, 8, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["loop", "auto"])
def test_expert_with_zero_tokens(mode):
    dtype = torch.float64 if mode == "loop" else torch.float32
    moe = make_moe(Fh=16, dtype=dtype, mode=mode)
    with torch.no_grad():
        moe.router.weight[3] = -10.0  # with positive inputs, expert 3's logit is far below the others
    x_SD = torch.rand(20, 8, dtype=dtype) + 0.1
    y_SD, stats = moe(x_SD)
    assert stats.load_E[3] == 0 and int(stats.load_E.sum()) == 40
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(y_SD, per_token_reference(moe, x_SD).to(dtype), rtol=tol, atol=tol)
    _, grads = grads_of(moe, x_SD, lambda x: moe(x)[0])
    names = [n for n, _ in moe.named_parameters()]
    for n, g in zip(names, grads):
        assert torch.isfinite(g).all(), n
        if n in ("w1_EDF", "w3_EDF", "w2_EFD"):
            assert g[3].abs().sum() == 0 and g[:3].abs().sum() > 0, n


def test_padding_mask_skips_routed_experts_and_statistics():
    moe = make_moe()
    x_SD = torch.randn(10, 8, dtype=torch.float64)
    mask_S = torch.tensor([True] * 6 + [False] * 4)
    y_SD, stats = moe(x_SD, mask_S)
    y_ref, stats_ref = moe(x_SD[:6])
    torch.testing.assert_close(y_SD[:6], y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y_SD[6:], moe.shared(x_SD[6:]))  # only the shared expert
    assert torch.equal(stats.load_E, stats_ref.load_E)
    torch.testing.assert_close(stats.aux_loss, stats_ref.aux_loss)
    torch.testing.assert_close(stats.z_loss, stats_ref.z_loss)


def router_with_logits(logits_SE: torch.Tensor, K: int) -> tuple[MoE, torch.Tensor]:
    """A MoE whose router produces exactly `logits_SE` for the returned inputs (x = logits, W = I)."""
    S, E = logits_SE.shape
    moe = make_moe(D=E, E=E, K=K, dtype=torch.float32)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(E))
    return moe, logits_SE.float()


def test_aux_loss_equals_its_formula_on_crafted_logits():
    logits_SE = torch.tensor(
        [
            [2.0, 1.0, 0.0, -1.0],
            [0.5, 3.0, 0.1, 0.0],
            [2.5, 0.0, 2.0, -3.0],
            [0.0, 0.2, 0.1, 1.5],
            [1.0, 0.9, -1.0, 0.0],
        ]
    )
    moe, x = router_with_logits(logits_SE, K=2)
    _, stats = moe(x)
    # top-2 per row: {0,1}, {1,0}, {0,2}, {3,1}, {0,1} -> counts e0:4 e1:4 e2:1 e3:1 over 10 slots
    f = torch.tensor([4, 4, 1, 1]) / 10.0
    P = logits_SE.softmax(-1).mean(0)
    assert stats.load_E.tolist() == [4, 4, 1, 1]
    torch.testing.assert_close(stats.aux_loss, 4 * (f * P).sum())
    torch.testing.assert_close(stats.z_loss, torch.logsumexp(logits_SE, -1).pow(2).mean())


@pytest.mark.parametrize("K", [1, 2])
def test_balanced_routing_gives_minimum_one(K):
    E = 4
    logits_SE = torch.zeros(8, E)
    for s in range(8):  # token s prefers experts s, s+1 (mod E) equally: symmetric, so f_e = P_e = 1/E
        logits_SE[s, s % E] = 5.0
        if K == 2:
            logits_SE[s, (s + 1) % E] = 5.0
    moe, x = router_with_logits(logits_SE, K=K)
    _, stats = moe(x)
    assert stats.load_E.tolist() == [8 * K // E] * E
    torch.testing.assert_close(stats.aux_loss, torch.tensor(1.0))
    # all tokens on one expert: strictly above the minimum
    moe, x = router_with_logits(torch.tensor([[5.0, 0.0, 0.0, 0.0]] * 8), K=1)
    assert moe(x)[1].aux_loss > 1.5


def test_router_runs_in_fp32_under_bf16():
    moe = make_moe(Fh=16, dtype=torch.bfloat16)
    y_SD, stats = moe(torch.randn(12, 8, dtype=torch.bfloat16))
    assert y_SD.dtype == torch.bfloat16 and stats.aux_loss.dtype == torch.float32
    assert torch.isfinite(y_SD.float()).all()


# --- dtype policies ---------------------------------------------------------------------------------------


def record_expert_operands(monkeypatch) -> list[tuple[torch.dtype, torch.dtype]]:
    """Dtype hook on every expert matmul: (activation dtype, weight dtype) per call."""
    import train.model.moe as moe_mod

    seen: list[tuple[torch.dtype, torch.dtype]] = []
    real = moe_mod.grouped_matmul

    def hooked(x_AD, w_EDF, offs_E, backend):
        seen.append((x_AD.dtype, w_EDF.dtype))
        return real(x_AD, w_EDF, offs_E, backend)

    monkeypatch.setattr(moe_mod, "grouped_matmul", hooked)
    return seen


@pytest.mark.parametrize("mode", ["loop", "auto"])
def test_experts_get_bf16_operands_under_fsdp2_mixed_precision(monkeypatch, tmp_path, mode):
    """FSDP2's MixedPrecisionPolicy(param_dtype=bf16) (the GPU policy) on one gloo rank: fp32 master weights,
    bf16 unsharded parameters in forward -> the experts' matmuls see bf16 activations AND weights."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    seen = record_expert_operands(monkeypatch)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        moe = make_moe(Fh=16, dtype=torch.float32, mode=mode)
        fully_shard(moe, mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
        y_SD, stats = moe(torch.randn(20, 8))
        y_SD.float().sum().backward()
    finally:
        dist.destroy_process_group()
    assert seen == [(torch.bfloat16, torch.bfloat16)] * 3  # w1, w3, w2
    assert y_SD.dtype == torch.bfloat16 and stats.aux_loss.dtype == torch.float32
    assert moe.w1_EDF.dtype == torch.float32 and moe.w1_EDF.grad.dtype == torch.float32  # master weights
    assert moe.w1_EDF.grad.full_tensor().abs().sum() > 0 and moe.router.weight.grad.full_tensor().abs().sum() > 0


@pytest.mark.parametrize("mode", ["loop", "auto"])
def test_moe_under_autocast_runs_bf16_experts_and_keeps_the_residual_dtype(monkeypatch, mode):
    seen = record_expert_operands(monkeypatch)
    moe = make_moe(Fh=16, dtype=torch.float32, mode=mode)
    x_SD = torch.randn(20, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_SD, _ = moe(x_SD)
    y_SD.sum().backward()
    assert seen == [(torch.bfloat16, torch.bfloat16)] * 3
    assert y_SD.dtype == torch.float32 and x_SD.grad is not None and torch.isfinite(x_SD.grad).all()
    torch.testing.assert_close(y_SD, moe(x_SD)[0], rtol=5e-2, atol=5e-2)  # bf16 compute, same function


def test_loop_agrees_with_grouped_in_bf16_and_fp32():
    if grouped_mm_backend("cpu", None, torch.bfloat16, 8, 16) != GROUPED_MM:
        pytest.skip(f"torch {torch.__version__} has no CPU grouped_mm for bf16")
    x_SD = torch.randn(64, 8)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        grouped, loop = make_moe(Fh=16, dtype=dtype), make_moe(Fh=16, dtype=dtype, mode="loop")
        y1, s1 = grouped(x_SD.to(dtype))
        y2, s2 = loop(x_SD.to(dtype))
        assert grouped.grouped_mm_backend == GROUPED_MM and loop.grouped_mm_backend == LOOP
        assert torch.equal(s1.load_E, s2.load_E)
        torch.testing.assert_close(y1.float(), y2.float(), rtol=tol, atol=tol)
        g1, p1 = grads_of(grouped, x_SD.to(dtype), lambda x, m=grouped: m(x)[0])
        g2, p2 = grads_of(loop, x_SD.to(dtype), lambda x, m=loop: m(x)[0])
        torch.testing.assert_close(g1.float(), g2.float(), rtol=tol, atol=tol)
        for a, b in zip(p1, p2):
            torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * 5)


# --- gate and balancing options -------------------------------------------------------------------------


def test_top1_router_gets_gradient_from_the_output():
    moe = make_moe(K=1)  # gate "auto": softmax for top_k = 1 (Switch)
    x_SD = torch.randn(16, 8, dtype=torch.float64)
    y_SD, _ = moe(x_SD)
    (y_SD * torch.linspace(-1, 1, y_SD.numel(), dtype=y_SD.dtype).view_as(y_SD)).sum().backward()
    assert moe.router.weight.grad.abs().sum() > 1e-6
    # the output's gate is the router probability of the chosen expert, not 1
    torch.testing.assert_close(y_SD, softmax_gate_reference(moe, x_SD), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="no gradient"):
        MoEConfig(n_experts=4, top_k=1, gate="renormalised")


def softmax_gate_reference(moe: MoE, x_SD: torch.Tensor) -> torch.Tensor:
    probs_SE = F.linear(x_SD, moe.router.weight).softmax(-1)
    w_S, e_S = probs_SE.max(-1)
    out = []
    for x_D, w, e in zip(x_SD, w_S, e_S.tolist()):
        h = F.silu(x_D @ moe.w1_EDF[e]) * (x_D @ moe.w3_EDF[e])
        out.append(w * (h @ moe.w2_EFD[e]) + moe.shared(x_D[None])[0])
    return torch.stack(out)


def test_softmax_gate_with_top2_is_not_renormalised():
    ref = make_moe()  # renormalised gate (auto, top_k = 2)
    moe = MoE(8, MoEConfig(n_experts=4, top_k=2, d_expert=12, gate="softmax")).double()
    moe.load_state_dict(ref.state_dict())
    x_SD = torch.randn(10, 8, dtype=torch.float64)
    probs_SE = F.linear(x_SD, moe.router.weight).softmax(-1)
    top2_S = probs_SE.topk(2, -1).values.sum(-1)
    shared = moe.shared(x_SD)
    # softmax-gated routed output = renormalised routed output scaled by the top-2 mass
    torch.testing.assert_close(moe(x_SD)[0] - shared, (ref(x_SD)[0] - shared) * top2_S[:, None], rtol=1e-10, atol=1e-12)


def test_balancing_bias_moves_load_towards_balance_without_gradient():
    torch.manual_seed(0)
    moe = MoE(8, MoEConfig(n_experts=4, top_k=1, d_expert=12, bias_update_rate=0.05)).double()
    with torch.no_grad():
        moe.router.weight.normal_(std=1.0)
        moe.router.weight[0, 0] += 3.0  # feature 0 is positive: expert 0 is most tokens' favourite
    x_SD = torch.randn(400, 8, dtype=torch.float64)
    x_SD[:, 0] = x_SD[:, 0].abs() + 0.5
    assert "expert_bias_E" in moe.state_dict() and "expert_bias_E" not in dict(moe.named_parameters())
    imbalance = []  # max / mean token-slots per expert
    with torch.no_grad():
        for _ in range(100):
            _, stats = moe(x_SD)
            imbalance.append(float(stats.load_E.max()) / float(stats.load_E.float().mean()))
            moe.update_expert_bias(stats.load_E)
    assert imbalance[0] > 2.5
    assert max(imbalance[-10:]) < 1.15  # balanced, and stays so
    assert abs(float(moe.expert_bias_E.sum())) < 1e-5  # centred
    assert float(moe.expert_bias_E[0]) == float(moe.expert_bias_E.min())  # the overloaded one lost most
    # the bias changes the choice only: the gate is the unbiased probability of the chosen expert
    y_SD, _ = moe(x_SD)
    logits_SE = F.linear(x_SD, moe.router.weight)
    chosen_S = (logits_SE + moe.expert_bias_E).argmax(-1)
    assert (chosen_S != logits_SE.argmax(-1)).any()
    probs_SE = logits_SE.softmax(-1)
    ref = []
    for s, (x_D, e) in enumerate(zip(x_SD, chosen_S.tolist())):
        h = F.silu(x_D @ moe.w1_EDF[e]) * (x_D @ moe.w3_EDF[e])
        ref.append(probs_SE[s, e] * (h @ moe.w2_EFD[e]) + moe.shared(x_D[None])[0])
    torch.testing.assert_close(y_SD, torch.stack(ref), rtol=1e-10, atol=1e-12)
