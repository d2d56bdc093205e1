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
    logits_SE = torch.tensor([[2.0, 1.0, 0.0, -1.0],
                              [0.5, 3.0, 0.1, 0.0],
                              [2.5, 0.0, 2.0, -3.0],
                              [0.0, 0.2, 0.1, 1.5],
                              [1.0, 0.9, -1.0, 0.0]])
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
