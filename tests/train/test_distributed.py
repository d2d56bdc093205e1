"""The trainer's step on 2 real processes (torch.distributed, gloo on CPU) against one process.

- FSDP2 runs the same collectives on every rank whatever its batch holds: a rank without any image, and a
  rank whose batch holds only images (no text after them, so no contrastive pair), train 3 steps without a
  collective mismatch, and the gradients of every step equal those of the global objective computed in a
  single process on both ranks' batches.
- The bf16 MixedPrecisionPolicy gives the experts bf16 operands while master weights and gradients stay fp32.
- The auxiliary-loss-free balancing bias moves after every optimizer step by the global expert load (all
  micro-batches of all ranks) and stays identical on every rank.
- The logged loss is the global one: equal to the objective computed independently in one process over
  every rank, micro-batch and step of the window.
"""

from __future__ import annotations

import math

import pytest
import torch
from _dist_train import batches_of, spawn, tiny_config

from train.losses import total_loss
from train.model import VLM
from train.parallel import TrainState
from train.synthetic import concat_batches

WORLD = 2


def reference_model(spec):
    """The unsharded model and state of the spec's config (same seed), trained in one process."""
    cfg = tiny_config(*[o for o in spec["overrides"] if not o.startswith("parallel.")])
    torch.manual_seed(cfg.run.seed)
    model = VLM(cfg.model)
    return cfg, model, TrainState(model, cfg, 0)


def global_objective(model, cfg, rank_batches):
    """What the ranks optimise together: next-token and contrastive losses over the union of their batches,
    plus the mean of the ranks' own load-balance and z losses."""
    out = model(concat_batches(rank_batches))
    moe = cfg.model.moe.model_copy(update={"aux_loss_weight": 0.0, "z_loss_weight": 0.0})
    terms = total_loss(out, cfg.model.model_copy(update={"moe": moe}))
    loss = terms["loss"]
    for b in rank_batches:
        o = model(b)
        loss = loss + (cfg.model.moe.aux_loss_weight * o.aux_loss + cfg.model.moe.z_loss_weight * o.z_loss) / len(
            rank_batches
        )
    return loss, terms, out


@pytest.mark.parametrize(
    "kinds", [("mixed", "text"), ("text", "images")], ids=["one-rank-without-images", "no-images-vs-only-images"]
)
def test_fsdp2_uneven_image_batches_match_single_process_gradients(kinds, tmp_path):
    spec = {"kinds": kinds, "steps": 3, "lr": 1e-3, "overrides": ["parallel.data_parallel=fsdp"]}
    got = spawn(spec, tmp_path)  # a collective mismatch raises in the workers (and fails spawn)

    cfg, model, _ = reference_model(spec)
    assert len(got["grads"]) == spec["steps"]
    for step in range(spec["steps"]):
        # the reference takes the weights the ranks had at this step (AdamW's first steps would amplify
        # rounding-level gradient differences into weight differences), then computes its own gradients
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(got["weights"][step][name])
        model.zero_grad(set_to_none=True)
        per_rank = [batches_of(spec, r, step) for r in range(WORLD)]
        for micro in range(cfg.optim.grad_accum):
            loss, _, _ = global_objective(model, cfg, [per_rank[r][micro] for r in range(WORLD)])
            (loss / cfg.optim.grad_accum).backward()
        ref = {n: p.grad for n, p in model.named_parameters()}
        assert set(got["grads"][step]) == set(ref)  # every parameter got a gradient on the FSDP2 ranks
        for name, g in got["grads"][step].items():
            torch.testing.assert_close(g, ref[name], rtol=1e-4, atol=1e-6, msg=f"step {step} {name}")
    assert not torch.equal(got["weights"][0]["decoder.output.weight"], got["weights"][-1]["decoder.output.weight"])
    vision_grads = [g for n, g in got["grads"][0].items() if n.startswith("vision.")]
    assert any(bool(g.abs().sum() > 0) for g in vision_grads)  # the ranks with images did train the tower


def test_bf16_policy_gives_experts_bf16_operands_and_keeps_fp32_master_weights(tmp_path):
    spec = {
        "kinds": ("mixed", "text"),
        "steps": 1,
        "lr": 0.0,
        "overrides": ["parallel.data_parallel=fsdp", "parallel.param_dtype=bfloat16"],
    }
    got = spawn(spec, tmp_path)
    assert got["dtypes"] == {("torch.bfloat16", "torch.bfloat16", "torch.bfloat16")}  # input, w1, w2 of every MoE
    assert got["param_dtypes"] == {"torch.float32"} and got["grad_dtypes"] == {"torch.float32"}
    cfg, model, _ = reference_model(spec)
    with torch.no_grad():
        loss, terms, _ = global_objective(model, cfg, [batches_of(spec, r, 0)[0] for r in range(WORLD)])
    assert math.isclose(got["row"]["lm_loss"], float(terms["lm"]), rel_tol=2e-2)


def test_logged_loss_is_the_global_window_mean(tmp_path):
    # lr 0: the weights stay as initialised, so one process can recompute every micro-batch of the window
    spec = {
        "kinds": ("mixed", "images"),
        "steps": 2,
        "lr": 0.0,
        "overrides": ["parallel.data_parallel=fsdp", "optim.grad_accum=2"],
    }
    row = spawn(spec, tmp_path)["row"]

    cfg, model, _ = reference_model(spec)
    lm_sum = n_label = aux = z = con_weighted = pairs = 0.0
    n_outputs = 0
    with torch.no_grad():
        for step in range(spec["steps"]):
            per_rank = [batches_of(spec, r, step) for r in range(WORLD)]
            for micro in range(cfg.optim.grad_accum):
                rank_batches = [per_rank[r][micro] for r in range(WORLD)]
                _, terms, out = global_objective(model, cfg, rank_batches)
                lm_sum, n_label = lm_sum + float(out.lm_loss_sum), n_label + float(out.n_label_tokens)
                con_weighted += float(terms["contrastive"]) * out.image_emb_ID.shape[0]
                pairs += out.image_emb_ID.shape[0]
                for b in rank_batches:
                    o = model(b)
                    aux, z, n_outputs = aux + float(o.aux_loss), z + float(o.z_loss), n_outputs + 1
    lm, aux, z, con = lm_sum / n_label, aux / n_outputs, z / n_outputs, con_weighted / pairs
    expected = (
        lm + cfg.model.moe.aux_loss_weight * aux + cfg.model.moe.z_loss_weight * z + cfg.model.contrastive.weight * con
    )
    assert pairs > 0 and row["contrastive_pairs"] == pairs / spec["steps"]
    assert math.isclose(row["logit_scale"], 1 / cfg.model.contrastive.temperature, rel_tol=1e-5)  # lr 0
    assert math.isclose(row["lm_loss"], lm, rel_tol=1e-5)
    assert math.isclose(row["loss"], expected, rel_tol=1e-5), (row["loss"], expected)
    assert row["label_tokens"] == n_label
    assert len(row["expert_load"]) == cfg.model.n_layers and all(
        math.isclose(sum(layer), 1.0, rel_tol=1e-9) for layer in row["expert_load"]
    )
    assert all(v >= 1.0 for v in row["expert_load_max_over_mean"]) and 0.0 <= row["expert_dead_frac"] <= 1.0


def test_expert_bias_moves_by_the_global_load_and_is_identical_on_every_rank(tmp_path):
    rate = 0.01
    spec = {
        "kinds": ("mixed", "text"),
        "steps": 2,
        "lr": 1e-3,
        "overrides": ["parallel.data_parallel=fsdp", "optim.grad_accum=2", f"model.moe.bias_update_rate={rate}"],
    }
    got = spawn(spec, tmp_path)
    bias = got["expert_bias"]  # per step: (ranks, MoE layers, experts)
    assert len(bias) == spec["steps"]
    for step_bias_WLE in bias:
        assert torch.equal(step_bias_WLE[0], step_bias_WLE[1])  # the same on every rank
    assert bool(bias[0].abs().sum() > 0) and not torch.equal(bias[0], bias[1])  # it moves, every step

    # step 0 in one process: the weights the ranks started from, zero bias, the load of every micro-batch
    # of both ranks summed -> rate * sign(mean - load), centred
    cfg, model, _ = reference_model(spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(got["weights"][0][name])
        load_LE = sum(model(b).expert_load_LE for r in range(WORLD) for b in batches_of(spec, r, 0))
    delta_LE = rate * torch.sign(load_LE.float().mean(dim=1, keepdim=True) - load_LE.float())
    torch.testing.assert_close(bias[0][0], delta_LE - delta_LE.mean(dim=1, keepdim=True))
