"""The VLM on hand-built batches: packing invariance, no attention across documents or images, 2D RoPE on
non-square grids, image-token placement, forward/backward, freezing stages, FLOPs, and the losses
(contrastive vs a manual InfoNCE; token-mean and gathered negatives across 2 real gloo ranks)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from _train_losses_dist import dist_worker, global_data, objective, shared_model

from train.batch import IGNORE_INDEX, Batch
from train.losses import contrastive_loss, next_token_loss, total_loss
from train.model import VLM, ModelConfig
from train.model.vision import VisionEncoder, merge_index, patch_coords

PAD, BOS, EOS, IMG_START, IMAGE, IMG_END = range(6)
SPECIAL = {PAD, BOS, EOS, IMG_START, IMAGE, IMG_END}
PATCH = 2
P = 3 * PATCH * PATCH


@dataclass(frozen=True)
class Img:
    name: str
    h: int
    w: int

    def pixels(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(sum(map(ord, self.name)) + 1000 * self.h + self.w)
        return torch.randn(self.h * self.w, P, generator=gen)


def build_batch(rows: list[list[list]], T: int, after: int = 3, pixels: dict[str, torch.Tensor] | None = None):
    """Batch from rows of documents; a document is a list of items: list[int] text ids or Img.
    Returns (batch, spans) with spans[(row, doc)] = (start, end) token positions."""
    B = len(rows)
    ids = torch.full((B, T), PAD, dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.int32)
    pos = torch.zeros((B, T), dtype=torch.long)
    after_BT = torch.full((B, T), -1, dtype=torch.long)
    patches, grids, spans, n_img = [], [], {}, 0
    for b, docs in enumerate(rows):
        t = 0
        for d, doc in enumerate(docs):
            toks, owner = [BOS], [-1]
            cur_img, left = -1, 0  # text right after an image belongs to it, for `after` tokens
            for item in doc:
                if isinstance(item, Img):
                    span = [IMG_START] + [IMAGE] * (item.h // 2) * (item.w // 2) + [IMG_END]
                    toks += span
                    owner += [-1] * len(span)
                    patches.append(pixels[item.name] if pixels and item.name in pixels else item.pixels())
                    grids.append((item.h, item.w))
                    cur_img, left, n_img = n_img, after, n_img + 1
                else:
                    for tok in item:
                        toks.append(tok)
                        owner.append(cur_img if left > 0 else -1)
                        left -= 1
            toks.append(EOS)
            owner.append(-1)
            n = len(toks)
            assert t + n <= T, "row too long"
            ids[b, t : t + n] = torch.tensor(toks)
            seg[b, t : t + n] = d
            pos[b, t : t + n] = torch.arange(n)
            after_BT[b, t : t + n] = torch.tensor(owner)
            spans[(b, d)] = (t, t + n)
            t += n
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for (b, _), (s, e) in spans.items():
        for t in range(s, e - 1):
            if int(ids[b, t + 1]) not in SPECIAL - {EOS}:  # <eos> is a target, as the loader labels it
                labels[b, t] = ids[b, t + 1]
    batch = Batch(
        input_ids_BT=ids,
        labels_BT=labels,
        position_ids_BT=pos,
        segment_ids_BT=seg,
        pixel_values_NP=torch.cat(patches) if patches else torch.zeros(0, P),
        grid_hw_I2=torch.tensor(grids, dtype=torch.long).view(-1, 2),
        text_after_image_BT=after_BT,
    )
    return batch, spans


def tiny_config(**over) -> ModelConfig:
    base = dict(
        vocab_size=40,
        d_model=32,
        n_layers=3,
        n_heads=4,
        n_kv_heads=2,
        d_ffn=48,
        moe=dict(n_experts=4, top_k=2, d_expert=16, first_dense_layers=1),
        vision=dict(patch_size=PATCH, d_vit=16, n_layers=2, n_heads=2),
        contrastive=dict(weight=0.1, d_proj=8),
    )
    base.update(over)
    return ModelConfig(**base)


def tiny_model(dtype=torch.float64, seed=0, **over) -> VLM:
    torch.manual_seed(seed)
    model = VLM(tiny_config(**over))
    model.init_weights(std=0.3)  # large weights: attention and routing really depend on the inputs
    return model.to(dtype)


DOC_A = [[7, 8, 9], Img("a", 2, 4), [10, 11, 12, 13]]
DOC_B = [[14, 15, 16, 17, 18, 19]]


def per_token_ce(logits_BTV: torch.Tensor, batch: Batch) -> torch.Tensor:
    labels = batch.labels_BT.clone()
    ce = F.cross_entropy(logits_BTV.flatten(0, 1), labels.flatten().clamp(min=0), reduction="none")
    return (ce * (labels.flatten() != IGNORE_INDEX)).view(labels.shape)


# --- packing and isolation -------------------------------------------------------------------------------


def test_packed_and_unpacked_documents_give_the_same_loss_float64():
    model = tiny_model()
    packed, spans = build_batch([[DOC_A, DOC_B]], T=24)
    alone_a, span_a = build_batch([[DOC_A]], T=24)
    alone_b, span_b = build_batch([[DOC_B]], T=12)
    out_p = model(packed, return_logits=True)
    out_a = model(alone_a, return_logits=True)
    out_b = model(alone_b, return_logits=True)
    ce_p, ce_a, ce_b = (
        per_token_ce(out_p.logits_BTV, packed),
        per_token_ce(out_a.logits_BTV, alone_a),
        per_token_ce(out_b.logits_BTV, alone_b),
    )
    (sa, ea), (sb, eb) = spans[(0, 0)], spans[(0, 1)]
    loss_a_packed, loss_b_packed = ce_p[0, sa:ea].sum(), ce_p[0, sb:eb].sum()
    torch.testing.assert_close(loss_a_packed, ce_a[0].sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss_b_packed, ce_b[0].sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_p.lm_loss_sum, out_a.lm_loss_sum + out_b.lm_loss_sum, rtol=1e-12, atol=1e-12)
    assert int(out_p.n_label_tokens) == int(out_a.n_label_tokens) + int(out_b.n_label_tokens) == 15
    # the per-document numbers are real, distinct losses (not e.g. all zero)
    assert loss_a_packed > 1.0 and loss_b_packed > 1.0 and abs(loss_a_packed - loss_b_packed) > 1e-6
    # contrastive embeddings of the image do not depend on packing either
    torch.testing.assert_close(out_p.image_emb_ID, out_a.image_emb_ID, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_p.text_emb_ID, out_a.text_emb_ID, rtol=1e-12, atol=1e-12)


def test_no_attention_across_documents():
    model = tiny_model()
    batch, spans = build_batch([[DOC_A, DOC_B]], T=24)
    doc_a2 = [[20, 21, 22], Img("a", 2, 4), [23, 24, 25, 26]]  # same length, other tokens
    batch2, _ = build_batch([[doc_a2, DOC_B]], T=24)
    lo1, lo2 = model(batch, return_logits=True).logits_BTV, model(batch2, return_logits=True).logits_BTV
    (sa, ea), (sb, eb) = spans[(0, 0)], spans[(0, 1)]
    assert (lo1[0, sa + 1 : ea] - lo2[0, sa + 1 : ea]).abs().max() > 1e-3  # doc A itself changed
    torch.testing.assert_close(lo1[0, sb:eb], lo2[0, sb:eb], rtol=0, atol=1e-12)  # doc B did not
    # control: with one segment id for the whole row, doc B would see doc A
    merged = replace(batch, segment_ids_BT=torch.where(batch.segment_ids_BT >= 0, 0, -1).int())
    merged2 = replace(batch2, segment_ids_BT=merged.segment_ids_BT)
    lm1, lm2 = model(merged, return_logits=True).logits_BTV, model(merged2, return_logits=True).logits_BTV
    assert (lm1[0, sb:eb] - lm2[0, sb:eb]).abs().max() > 1e-3


def test_vision_encoder_never_attends_across_images():
    torch.manual_seed(0)
    enc = VisionEncoder(tiny_config().vision).double()
    grid = torch.tensor([[2, 4], [4, 2]])
    px = torch.randn(16, P, dtype=torch.float64)
    px2 = px.clone()
    px2[:8] += torch.randn(8, P, dtype=torch.float64)  # perturb image 0 only
    y1, y2 = enc(px, grid), enc(px2, grid)
    assert y1.shape == (4, 16)  # (2/2)*(4/2) + (4/2)*(2/2) merged tokens
    assert (y1[:2] - y2[:2]).abs().max() > 1e-3
    torch.testing.assert_close(y1[2:], y2[2:], rtol=0, atol=1e-12)
    # control: without the block-diagonal mask the same perturbation would leak
    enc_one = enc(px, torch.tensor([[4, 4]])), enc(px2, torch.tensor([[4, 4]]))
    assert (enc_one[0] - enc_one[1]).abs().max() > 1e-3


# --- vision geometry ------------------------------------------------------------------------------------


def test_patch_coords_and_merge_index_on_non_square_grids():
    image_N, row_N, col_N = patch_coords(torch.tensor([[2, 4], [4, 2]]))
    assert image_N.tolist() == [0] * 8 + [1] * 8
    assert row_N.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] + [0, 0, 1, 1, 2, 2, 3, 3]
    assert col_N.tolist() == [0, 1, 2, 3, 0, 1, 2, 3] + [0, 1, 0, 1, 0, 1, 0, 1]
    idx_Mq, image_M = merge_index(torch.tensor([[4, 6], [2, 2]]), 2)
    assert image_M.tolist() == [0] * 6 + [1]
    assert idx_Mq[0].tolist() == [0, 1, 6, 7]
    assert idx_Mq[2].tolist() == [4, 5, 10, 11]
    assert idx_Mq[3].tolist() == [12, 13, 18, 19]  # second merged row
    assert idx_Mq[6].tolist() == [24, 25, 26, 27]  # second image starts after 24 patches


def test_2d_rope_is_relative_in_rows_and_columns_on_non_square_grid():
    torch.manual_seed(0)
    enc = VisionEncoder(tiny_config().vision).double()
    h, w = 3, 5
    cos_NR, sin_NR = enc.rope_2d(torch.tensor([[h, w]]), torch.float64)
    from train.model.decoder import apply_rotary

    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    qr, kr = apply_rotary(q.expand(h * w, 8), cos_NR, sin_NR), apply_rotary(k.expand(h * w, 8), cos_NR, sin_NR)

    def score(a, b):  # (row, col) of query a and key b
        return float(qr[a[0] * w + a[1]] @ kr[b[0] * w + b[1]])

    # the same offset anywhere on the grid gives the same score (depends on (dr, dc) only)
    assert score((0, 0), (1, 2)) == pytest.approx(score((1, 2), (2, 4)), abs=1e-12)
    assert score((0, 4), (2, 1)) == pytest.approx(score((0, 3), (2, 0)), abs=1e-12)
    # rows and columns are distinct axes: a step down is not a step right
    assert abs(score((0, 0), (1, 0)) - score((0, 0), (0, 1))) > 1e-4
    # and the encoder runs on both orientations of a non-square grid
    assert enc(torch.randn(24, P, dtype=torch.float64), torch.tensor([[2, 6], [6, 2]])).shape == (6, 16)


def test_bad_vision_inputs_are_value_errors():
    enc = VisionEncoder(tiny_config().vision)
    with pytest.raises(ValueError, match="multiples of merge"):
        enc(torch.randn(6, P), torch.tensor([[2, 3]]))
    with pytest.raises(ValueError, match="patches"):
        enc(torch.randn(7, P), torch.tensor([[2, 4]]))


# --- placement, forward/backward, freezing --------------------------------------------------------------


def test_image_tokens_replace_placeholders_in_order():
    model = tiny_model()
    batch, _ = build_batch([[DOC_A, [[30], Img("c", 2, 2), [31]]], [[[32], Img("d", 4, 2)]]], T=24)
    img_MD = model.encode_images(batch)
    assert img_MD.shape == (2 + 1 + 2, 32)
    x_BTD = model.embed(batch, img_MD)
    is_img = batch.input_ids_BT == IMAGE
    torch.testing.assert_close(x_BTD[is_img], img_MD)  # row-major over B then T == image order
    torch.testing.assert_close(x_BTD[~is_img], model.decoder.tok_embeddings(batch.input_ids_BT)[~is_img])
    bad = replace(batch, input_ids_BT=torch.where(batch.input_ids_BT == IMAGE, 30, batch.input_ids_BT))
    with pytest.raises(ValueError, match="<\\|image\\|> tokens"):
        model(bad)


def test_tiny_vlm_forward_backward_and_outputs():
    model = tiny_model(torch.float32, contrastive=dict(weight=0.5, d_proj=8))
    doc_c = [[30, 31], Img("c", 2, 2)]  # image at the end: no following text, excluded from contrastive
    batch, _ = build_batch([[DOC_A, doc_c], [[[32], Img("d", 4, 2), [33, 34]]]], T=26)
    out = model(batch)
    assert out.logits_BTV is None
    assert out.paired_I.tolist() == [True, False, True]
    assert out.image_emb_ID.shape == out.text_emb_ID.shape == (2, 8)
    n_moe = 2  # 3 layers, the first dense
    assert out.expert_load_LE.shape == (n_moe, 4)
    n_real = int((batch.segment_ids_BT >= 0).sum())
    n_caption = int((batch.text_after_image_BT >= 0).sum())  # the captions' own pass is routed too
    assert out.expert_load_LE.sum(1).tolist() == [(n_real + n_caption) * 2] * n_moe  # padding is not routed
    assert out.n_pairs == 2 and 0.0 <= out.dead_expert_fraction < 1.0
    terms = total_loss(out, model.cfg)
    for name in ("loss", "lm", "aux", "z", "contrastive"):
        assert torch.isfinite(terms[name]), name
    assert int(terms["n_pairs"]) == 2 and float(terms["logit_scale"]) == pytest.approx(1 / 0.07)
    expected = (
        out.lm_loss_sum / out.n_label_tokens
        + 0.01 * out.aux_loss
        + 0.001 * out.z_loss
        + 0.5 * contrastive_loss(out.image_emb_ID, out.text_emb_ID, logit_scale=1 / 0.07)
    )
    torch.testing.assert_close(terms["loss"], expected)
    assert terms["lm"] == pytest.approx(math.log(40), rel=0.5)
    terms["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.vision.patch_embed.weight.grad.abs().sum() > 0
    assert model.decoder.layers[1].ffn.w1_EDF.grad.abs().sum() > 0


def test_batch_without_images_still_touches_every_parameter():
    model = tiny_model(torch.float32)
    batch, _ = build_batch([[DOC_B, [[20, 21, 22]]]], T=16)
    out = model(batch)
    assert batch.n_images == 0 and out.image_emb_ID.shape == (0, 8) and out.paired_I.numel() == 0
    total_loss(out, model.cfg)["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name  # DDP requires the same parameters in every backward
    assert model.vision.patch_embed.weight.grad.abs().sum() == 0


@pytest.mark.parametrize(
    "stage,prefixes",
    [
        ("adapter", ("adapter.", "image_proj.", "text_proj.", "logit_scale")),
        ("adapter+vision", ("adapter.", "image_proj.", "text_proj.", "logit_scale", "vision.")),
        ("all", ("",)),
    ],
)
def test_set_trainable_freezes_as_named(stage, prefixes):
    model = tiny_model(torch.float32)
    n_trainable = model.set_trainable(stage)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
    assert n_trainable == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    grouped = [p for g in model.param_groups(0.1) for p in g["params"]]
    assert len(grouped) == len(trainable)
    batch, _ = build_batch([[DOC_A]], T=16)
    total_loss(model(batch), model.cfg)["loss"].backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    assert model.adapter.fc1.weight.grad.abs().sum() > 0


def test_set_trainable_rejects_unknown_stage():
    with pytest.raises(ValueError, match="unknown training stage"):
        tiny_model(torch.float32).set_trainable("decoder")


def test_param_groups_split_decay():
    model = tiny_model(torch.float32)
    decay, no_decay = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    emb = model.decoder.tok_embeddings.weight
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p is emb or p.ndim == 1 for p in no_decay["params"])
    assert any(p is emb for p in no_decay["params"]) and not any(p is emb for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert any(p is model.decoder.layers[1].ffn.w1_EDF for p in decay["params"])


def test_num_flops_per_token_counts_active_experts_only():
    model = tiny_model(torch.float32)
    dec = sum(p.numel() for p in model.decoder.parameters())
    emb = model.decoder.tok_embeddings.weight.numel()
    experts = sum(p.numel() for n, p in model.decoder.named_parameters() if n.endswith(("_EDF", "_EFD")))
    active = dec - emb - experts + experts * 2 // 4
    assert model.num_active_params() == active
    assert model.num_flops_per_token(64) == 6 * active + 12 * 3 * 32 * 64


# --- losses ---------------------------------------------------------------------------------------------


def manual_infonce(img, txt, tau):
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    n, total = img.shape[0], 0.0
    for i in range(n):
        s_it = torch.stack([img[i] @ txt[j] / tau for j in range(n)])
        s_ti = torch.stack([txt[i] @ img[j] / tau for j in range(n)])
        total = total - 0.5 * (s_it[i] - torch.logsumexp(s_it, 0)) - 0.5 * (s_ti[i] - torch.logsumexp(s_ti, 0))
    return total / n


def test_contrastive_loss_matches_manual_infonce():
    torch.manual_seed(0)
    img, txt = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    got = contrastive_loss(img, txt, logit_scale=10.0)
    torch.testing.assert_close(got, manual_infonce(img, txt, 0.1).float(), rtol=1e-6, atol=1e-6)
    aligned = contrastive_loss(img, img * 3.0, logit_scale=20.0)  # matching pairs: much lower loss
    assert aligned < got
    empty = torch.zeros(0, 8, requires_grad=True)
    zero = contrastive_loss(empty, empty)
    assert zero == 0 and zero.requires_grad


def test_next_token_loss_single_process_is_token_mean():
    loss = next_token_loss(torch.tensor(12.0), torch.tensor(4))
    assert float(loss) == 3.0


# Two real gloo ranks: rank-averaged gradients of our losses equal the gradient of the global objective
# (worker and data in tests/_train_losses_dist.py).
@pytest.mark.timeout(300)
def test_losses_across_two_gloo_ranks_match_the_global_objective(tmp_path):
    out_file = tmp_path / "rank0.pt"
    # spawn, not fork: forking a process whose torch thread pools already ran can deadlock the children
    mp.spawn(dist_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    got = torch.load(out_file, weights_only=True)
    m = shared_model()
    loss = objective(m, *global_data())  # one process, all data: token mean + all pairs
    loss.backward()
    torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-6, atol=1e-6)
    for g, p in zip(got["grads"], m.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


# --- attention backends, checkpointing, compile -----------------------------------------------------------


def _qkv(B, H, K, T, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, T, d, generator=gen, dtype=torch.float64, requires_grad=True) for h in (H, K, K)]


def _attend_with_grads(backend, ids_BT, causal, qkv):
    from train.model.attention import Segments, attend

    q, k, v = (x.detach().clone().requires_grad_() for x in qkv)
    o = attend(q, k, v, Segments.build(ids_BT, causal=causal, backend=backend))
    (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum().backward()
    return o.detach(), [q.grad, k.grad, v.grad]


def test_varlen_attention_matches_dense_on_packed_rows_outputs_and_gradients():
    # rows with several documents of equal and different lengths, padding, a one-token document
    ids_BT = torch.tensor(
        [
            [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, -1],
            [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, -1, -1],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=torch.int32,
    )
    qkv = _qkv(3, 4, 2, 12, 8)  # grouped-query: 4 query heads over 2 kv heads
    o_ref, g_ref = _attend_with_grads("dense", ids_BT, True, qkv)
    o, g = _attend_with_grads("varlen", ids_BT, True, qkv)
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # control: the reference does depend on the segmentation
    o_one, _ = _attend_with_grads("dense", torch.where(ids_BT >= 0, 0, -1).int(), True, qkv)
    assert (o_one - o_ref).abs().max() > 1e-3


def test_auto_attention_backend_is_chosen_by_device():
    from train.model.attention import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "varlen"
    assert resolve_backend("auto", torch.device("cuda")) == "flex"
    assert resolve_backend("dense", torch.device("cuda")) == "dense"  # an explicit choice is kept
    with pytest.raises(ValueError, match="model.attention"):
        resolve_backend("flash", torch.device("cpu"))


def test_flex_attention_block_mask_matches_dense_forward_on_cpu():
    from train.model.attention import Segments, attend

    ids_BT = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, -1, -1], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.int32)
    q, k, v = (x.detach() for x in _qkv(2, 4, 2, 10, 8))
    with torch.no_grad():  # torch's CPU flex_attention is forward-only; CUDA trains with it
        for causal in (True, False):
            ids = ids_BT if causal else ids_BT.clamp(min=0)
            o = attend(q, k, v, Segments.build(ids, causal=causal, backend="flex"))
            o_ref = attend(q, k, v, Segments.build(ids, causal=causal, backend="dense"))
            torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="flex_attention has no backward"):
        Segments.build(ids_BT, causal=True, backend="flex")  # grad enabled on CPU: a clear error


def test_vision_varlen_matches_dense_on_mixed_image_sizes():
    grid = torch.tensor([[2, 4], [4, 2], [2, 2], [2, 4], [6, 2]])  # equal and different sizes, both orientations
    n = int((grid[:, 0] * grid[:, 1]).sum())
    px = torch.randn(n, P, dtype=torch.float64)
    results = []
    for backend in ("dense", "varlen"):
        torch.manual_seed(0)
        enc = VisionEncoder(tiny_config().vision, attention=backend).double()
        x = px.clone().requires_grad_()
        y = enc(x, grid)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results.append((y.detach(), x.grad, [p.grad for p in enc.parameters()]))
    (y_ref, gx_ref, gp_ref), (y, gx, gp) = results
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(gp, gp_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _loss_and_grads(model, batch):
    model.zero_grad()
    out = model(batch, return_logits=True)
    total_loss(out, model.cfg)["loss"].backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_vlm_varlen_matches_dense_reference_float64():
    batch, _ = build_batch([[DOC_A, DOC_B], [[[32], Img("d", 4, 2), [33, 34]], [[20, 21]]]], T=26)
    ref, g_ref = _loss_and_grads(tiny_model(attention="dense"), batch)
    out, g = _loss_and_grads(tiny_model(attention="varlen"), batch)
    torch.testing.assert_close(out.logits_BTV, ref.logits_BTV, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.lm_loss_sum, ref.lm_loss_sum, rtol=1e-12, atol=1e-12)
    for name, grad in g_ref.items():
        torch.testing.assert_close(g[name], grad, rtol=1e-9, atol=1e-11, msg=name)


def test_training_path_never_builds_a_dense_mask(monkeypatch):
    import train.model.attention as attention

    def refuse(*_):
        raise AssertionError("dense N x N mask built in the training path")

    monkeypatch.setattr(attention, "document_mask", refuse)
    monkeypatch.setattr(attention, "image_mask", refuse)
    model = tiny_model(torch.float32)  # default config: attention "auto" -> varlen on CPU
    batch, _ = build_batch([[DOC_A, DOC_B], [[[32], Img("d", 4, 2), [33, 34]]]], T=26)
    total_loss(model(batch), model.cfg)["loss"].backward()
    assert model.decoder.layers[1].ffn.w1_EDF.grad.abs().sum() > 0
    with pytest.raises(AssertionError, match="dense"):  # control: the reference backend does call it
        tiny_model(torch.float32, attention="dense")(batch)


def test_activation_checkpointing_same_gradients_fewer_saved_tensors():
    batch, _ = build_batch([[DOC_A, DOC_B], [[[32], Img("d", 4, 2), [33, 34]]]], T=26)
    saved = Counter()
    results = {}
    for ac in (False, True):
        model = tiny_model(activation_checkpointing=ac)

        def pack(t, ac=ac):
            saved[ac] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.zero_grad()
            out = model(batch)
            loss = total_loss(out, model.cfg)["loss"]
        loss.backward()
        results[ac] = (loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()})
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-12, atol=1e-12)
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], grad, rtol=1e-10, atol=1e-12, msg=name)
    assert saved[True] < saved[False] / 2  # only block inputs are kept for backward


def test_compiled_blocks_compute_the_same():
    batch, _ = build_batch([[DOC_A, DOC_B]], T=24)
    # one dense and one MoE layer, one ViT block; the loop backend (torch's fake-tensor rule for grouped_mm
    # is bf16-only, while its CPU kernel also runs fp32: compiled bf16 grouped_mm is a GPU matter)
    small = dict(
        n_layers=2,
        moe=dict(n_experts=4, top_k=2, d_expert=16, first_dense_layers=1, grouped_mm="loop"),
        vision=dict(patch_size=PATCH, d_vit=16, n_layers=1, n_heads=2),
    )
    ref, g_ref = _loss_and_grads(tiny_model(torch.float32, **small), batch)
    model = tiny_model(torch.float32, compile="eager", **small)
    assert all(b._compiled is not None for b in list(model.decoder.layers) + list(model.vision.blocks))
    out, g = _loss_and_grads(model, batch)
    torch.testing.assert_close(out.lm_loss_sum, ref.lm_loss_sum, rtol=1e-5, atol=1e-5)
    for name, grad in g_ref.items():
        torch.testing.assert_close(g[name], grad, rtol=1e-4, atol=1e-6, msg=name)


# --- objectives -----------------------------------------------------------------------------------------


def test_contrastive_text_embedding_cannot_see_the_image():
    model = tiny_model()
    rows = [[DOC_A, DOC_B], [[[32], Img("d", 4, 2), [33, 34]]]]
    batch, _ = build_batch(rows, T=26)
    other, _ = build_batch(rows, T=26, pixels={"a": torch.randn(8, P), "d": torch.randn(8, P)})
    assert not torch.equal(batch.pixel_values_NP, other.pixel_values_NP)
    out, out2 = model(batch, return_logits=True), model(other, return_logits=True)
    assert out.n_pairs == 2
    torch.testing.assert_close(out2.text_emb_ID, out.text_emb_ID, rtol=0, atol=1e-12)  # text side: unchanged
    assert (out2.image_emb_ID - out.image_emb_ID).abs().max() > 1e-3  # image side: changed
    # control: in the main pass the caption tokens do attend to the image (the LM conditions on it),
    # so pooling their states there, as before, would have leaked the pixels into the text side
    caption_BT = batch.text_after_image_BT >= 0
    assert (out2.logits_BTV[caption_BT] - out.logits_BTV[caption_BT]).abs().max() > 1e-3


def test_contrastive_temperature_is_learned_and_clamped():
    model = tiny_model(torch.float32)
    assert isinstance(model.logit_scale, torch.nn.Parameter)
    assert any(p is model.logit_scale for g in model.param_groups(0.1) for p in g["params"])
    batch, _ = build_batch([[DOC_A, [[30, 31], Img("c", 2, 2), [35, 36]]]], T=30)
    out = model(batch)
    assert float(out.logit_scale) == pytest.approx(1 / 0.07, rel=1e-5)
    terms = total_loss(out, model.cfg)
    terms["loss"].backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs().sum() > 0
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) >> 100: clamped, as CLIP does
    assert float(model(batch).logit_scale) == 100.0
    # a batch without any pair still ties the scale into the graph (DDP: same parameters every step)
    model.zero_grad()
    no_pair, _ = build_batch([[DOC_B]], T=12)
    total_loss(model(no_pair), model.cfg)["loss"].backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs().sum() == 0


def test_eos_is_a_target_of_the_lm_loss():
    model = tiny_model(torch.float32)
    batch, spans = build_batch([[DOC_A, DOC_B]], T=24)
    for (b, _), (_, e) in spans.items():
        assert int(batch.input_ids_BT[b, e - 1]) == EOS and int(batch.labels_BT[b, e - 2]) == EOS
    assert model(batch).n_label_tokens == int((batch.labels_BT != IGNORE_INDEX).sum())


def test_vlm_update_expert_bias_per_layer():
    model = tiny_model(
        torch.float32, moe=dict(n_experts=4, top_k=1, d_expert=16, first_dense_layers=1, bias_update_rate=0.1)
    )
    batch, _ = build_batch([[DOC_A, DOC_B]], T=24)
    load_LE = model(batch).expert_load_LE
    assert load_LE.shape == (2, 4)
    model.update_expert_bias(torch.tensor([[10, 0, 0, 2], [3, 3, 3, 3]]))
    bias_1 = model.decoder.layers[1].ffn.expert_bias_E
    torch.testing.assert_close(bias_1, torch.tensor([-0.15, 0.05, 0.05, 0.05]))  # overloaded expert 0 down
    assert model.decoder.layers[2].ffn.expert_bias_E.abs().sum() == 0  # balanced layer: unchanged
    with pytest.raises(ValueError, match="expert_load_LE has shape"):
        model.update_expert_bias(load_LE.sum(0, keepdim=True))
    assert "decoder.layers.1.ffn.expert_bias_E" in model.state_dict()  # checkpointed with the model


def test_whole_vlm_under_fsdp2_bf16_policy_runs_bf16_experts(monkeypatch, tmp_path):
    """The VLM wrapped as the GPU trainer wraps it (per block, then the root) with MixedPrecisionPolicy(bf16)
    on one gloo rank: every MoE layer's expert matmuls get bf16 operands, the losses are finite fp32, and
    the fp32 master weights get gradients."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    import train.model.moe as moe_mod

    seen: list[tuple[torch.dtype, torch.dtype]] = []
    real = moe_mod.grouped_matmul

    def hooked(x_AD, w_EDF, offs_E, backend):  # dtype hook on every expert matmul
        seen.append((x_AD.dtype, w_EDF.dtype))
        return real(x_AD, w_EDF, offs_E, backend)

    monkeypatch.setattr(moe_mod, "grouped_matmul", hooked)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        model = tiny_model(torch.float32)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in list(model.vision.blocks) + list(model.decoder.layers):
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        batch, _ = build_batch([[DOC_A, DOC_B], [[[32], *DOC_A[1:]]]], T=26)
        terms = total_loss(model(batch), model.cfg)
        terms["loss"].backward()
    finally:
        dist.destroy_process_group()
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)} and len(seen) == 3 * 2  # 2 MoE layers
    assert all(torch.isfinite(terms[k]) and terms[k].dtype == torch.float32 for k in ("loss", "lm", "contrastive"))
    w1 = model.decoder.layers[1].ffn.w1_EDF
    assert w1.dtype == torch.float32 and w1.grad.full_tensor().abs().sum() > 0
