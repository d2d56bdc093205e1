"""Parity of interloom's ViT with transformers' Qwen2-VL vision tower (tiny random tower, no download)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _hf_tiny import bpe_tokenizer
from conftest import real_path

transformers = pytest.importorskip("transformers")

from transformers import Qwen2VLVisionConfig  # noqa: E402
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel  # noqa: E402

from train.model.hf.vision import load_pretrained_vision  # noqa: E402
from train.model.vision import VisionEncoder  # noqa: E402

P = 4  # patch size


def to_hf_patches(patches_NCpp: torch.Tensor, h: int, w: int, m: int, p: int = P) -> torch.Tensor:
    """Our raster-order patches of one image -> Qwen2-VL's pixel_values: grouped by m x m block, the
    frame repeated over temporal_patch_size=2, each patch flattened (C, T, p, p)."""
    x = patches_NCpp.view(h // m, m, w // m, m, 3, p, p).permute(0, 2, 1, 3, 4, 5, 6).reshape(h * w, 3, 1, p, p)
    return x.expand(-1, -1, 2, -1, -1).reshape(h * w, -1)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_qwen2_vl_tower_parity(tmp_path, act):
    torch.manual_seed(0)
    hf_cfg = Qwen2VLVisionConfig(
        depth=2,
        embed_dim=32,
        hidden_size=48,
        hidden_act=act,
        mlp_ratio=4,
        num_heads=4,
        in_channels=3,
        patch_size=P,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
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


def test_unsupported_or_incomplete_tower_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "siglip_vision_model"}')
    with pytest.raises(ValueError, match="not a supported vision tower"):
        load_pretrained_vision(tmp_path)
    cfg = Qwen2VLVisionConfig(depth=1, embed_dim=32, hidden_size=48, num_heads=4, patch_size=P)
    Qwen2VisionTransformerPretrainedModel._from_config(cfg).save_pretrained(tmp_path)
    assert load_pretrained_vision(tmp_path)[0].n_layers == 1
    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / "model.safetensors")
    save_file({k: t for k, t in tensors.items() if "mlp.fc2" not in k}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="lacks blocks.0.mlp.fc2.weight"):
        load_pretrained_vision(tmp_path)


# the CPU stand-ins for the recipes' GPU settings: one CPU worker in float32 (DDP), no loader processes, a
# smaller batch (rows per micro-batch and micro-batches per step). Nothing here changes what the recipes
# train: their stages (trainable sets, steps, learning rates, warmup, pixel budgets) are untouched, and
# `--max-steps 20` stops each run after 20 of its steps.
CPU = [
    "run.use_gpu=false",
    "run.num_workers=1",
    "run.cpus_per_worker=1",
    "run.threads_per_worker=2",
    "parallel.data_parallel=ddp",
    "parallel.param_dtype=float32",
    "data.num_workers=0",
    "data.pixel_threads=1",
    "data.batch_size=1",
    "optim.grad_accum=1",
]


@pytest.mark.slow
def test_align_then_pretrain_on_the_demo_corpus_export_eval_generate(ray_local, demo_corpus, tmp_path, capsys):
    """The round trip of issue 13 from tiny random HF folders (a qwen3_moe decoder with its tokenizer, a
    Qwen2-VL tower of patch 14 with its preprocessor_config.json): 20 steps of the `align` recipe (adapter
    only, 224x224 budget) on the demo corpus, then 20 of `pretrain` started from that run (`--init-from`;
    its first stage: adapter + vision tower at 448x448) -> `interloom export model` -> transformers loads
    the decoder, logits equal ours to <= 1e-4; interloom reloads the VLM bit-identically, with the
    tower's pixel statistics -> `interloom eval` (the image-conditioned loss moves when images become
    noise) and `interloom generate` (greedy is deterministic, its tokens those of the trained model)."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from pipeline.cli import build_parser, main
    from pipeline.cli.train import resolve_config
    from train.export import DATA_CONFIG, load_exported_vlm, load_trained_model
    from train.model.hf import decoder_logits
    from train.parallel import build_model
    from train.trainer import run_training

    llm, tower, align, pretrain, out = (tmp_path / n for n in ("llm", "tower", "align", "pretrain", "out"))
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(
        transformers.Qwen3MoeConfig(
            vocab_size=320,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=64,
            moe_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            initializer_range=0.1,
        )
    ).save_pretrained(llm)
    bpe_tokenizer(llm, ["Interleaved image-text documents from the web.", "The Python documentation, with photos."])
    Qwen2VisionTransformerPretrainedModel._from_config(
        Qwen2VLVisionConfig(depth=1, embed_dim=16, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2)
    ).save_pretrained(tower)
    Qwen2VLImageProcessorPil().save_pretrained(tower)  # CLIP's per-channel mean/std

    parse = build_parser().parse_args
    common = ["--corpus", str(demo_corpus), "--max-steps", "20", *(a for kv in CPU for a in ("--set", kv))]
    cfg = resolve_config(
        parse(["train", "align", "--output", str(align), "--init-llm", str(llm), "--init-vision", str(tower), *common])
    )
    assert [(s.trainable, s.steps) for s in cfg.stages] == [("adapter", 2000)] and cfg.last_step == 20
    assert cfg.stage_data(0).max_pixels == 224 * 224 and cfg.data.seq_len == 2048
    assert list(cfg.data.image_mean) == [0.48145466, 0.4578275, 0.40821073]
    run_training(cfg)
    start = build_model(load_trained_model(align)[1], torch.device("cpu")).state_dict()
    aligned_model, _, ckpt = load_trained_model(align)
    aligned = aligned_model.state_dict()
    assert ckpt.name == "checkpoint_0000020"
    for key, t in start.items():  # align: the adapter moved, nothing else did
        assert torch.equal(aligned[key], t) != key.startswith("adapter."), key

    cfg = resolve_config(parse(["train", "pretrain", "--output", str(pretrain), "--init-from", str(align), *common]))
    assert [s.trainable for s in cfg.stages] == ["adapter+vision", "all"] and cfg.last_step == 20
    assert cfg.stage_data(0).max_pixels == 448 * 448 and cfg.data.seq_len == 4096
    assert cfg.data.image_mean == load_trained_model(align)[1].data.image_mean
    run_training(cfg)
    model, _, ckpt = load_trained_model(pretrain)
    final = model.state_dict()
    assert ckpt.name == "checkpoint_0000020"
    for key, t in aligned.items():  # pretrain starts from align's weights; its first stage moves tower + adapter
        assert torch.equal(final[key], t) != key.startswith(("adapter.", "vision.")), key
    metrics = [json.loads(line) for line in (pretrain / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 20 and metrics[-1]["images_per_s"] > 0

    assert main(["export", "model", str(pretrain), str(out)]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    ids_BT = torch.randint(0, 320, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (decoder_logits(model.decoder, ids_BT) - reloaded(input_ids=ids_BT).logits).abs().max() <= 1e-4
    again = load_exported_vlm(out).state_dict()
    assert again.keys() == final.keys() and all(torch.equal(again[k], final[k]) for k in final)
    assert json.loads((out / DATA_CONFIG).read_text())["image_std"] == [0.26862954, 0.26130258, 0.27577711]

    capsys.readouterr()
    assert main(["eval", str(out), "--corpus", str(demo_corpus), "--batches", "2"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["val_image_text_tokens"] > 0 and math.isfinite(row["val_image_text_loss"])
    assert row["val_image_text_loss_noise_images"] != row["val_image_text_loss"]

    photo = tmp_path / "photo.png"
    Image.open(real_path("dev", "images", "photos", "pillow__flower.jpg")).save(photo)
    runs = []
    for where in (out, pretrain, out):
        assert (
            main(
                [
                    "generate",
                    str(where),
                    "--image",
                    str(photo),
                    "--prompt",
                    "<image> A photo of",
                    "--max-new-tokens",
                    "8",
                    "--json",
                ]
            )
            == 0
        )
        runs.append(json.loads(capsys.readouterr().out))
    assert 1 <= len(runs[0]["token_ids"]) <= 8 and all(0 <= i < model.cfg.vocab_size for i in runs[0]["token_ids"])
    assert runs[0] == runs[1] == runs[2]  # greedy: deterministic, and the export decodes as the run does


@pytest.mark.parametrize("whole", [False, True])
def test_siglip2_naflex_tower_parity(tmp_path, whole):
    """SigLIP2 NaFlex (learned position table resized per image, no RoPE, gelu_tanh, biases, post-LN):
    our `features` equal its last_hidden_state on a square, a wide and a tall image in one padded batch;
    a whole Siglip2Model folder gives the same tower as its vision model saved alone."""
    from transformers import Siglip2Config, Siglip2Model, Siglip2VisionConfig, Siglip2VisionModel

    torch.manual_seed(0)
    vcfg = Siglip2VisionConfig(
        hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4, patch_size=P, num_patches=16
    )
    if whole:
        full = Siglip2Model(
            Siglip2Config(
                vision_config=vcfg.to_dict(),
                text_config={
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 4,
                    "vocab_size": 100,
                },
            )
        ).eval()
        for p in full.parameters():
            torch.nn.init.normal_(p, std=0.2)
        full.save_pretrained(tmp_path)
        hf = full.vision_model
    else:
        model = Siglip2VisionModel._from_config(vcfg, attn_implementation="eager").eval()
        for p in model.parameters():  # random, not the init's zeros/ones, so every mapping is exercised
            torch.nn.init.normal_(p, std=0.2)
        model.save_pretrained(tmp_path)
        hf = model

    cfg, state = load_pretrained_vision(tmp_path)
    assert (cfg.pos_embed, cfg.pos_grid, cfg.mlp_act, cfg.mlp_ratio) == ("learned", 4, "gelu_tanh", 2.5)
    ours = VisionEncoder(cfg, attention="dense").eval()
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert sorted(missing) == ["merge.bias", "merge.weight"] and not unexpected

    grids = [(4, 4), (2, 6), (8, 4)]  # square, wide, tall (in patches); 2x6 and 8x4 resize the 4x4 table
    n_max = max(h * w for h, w in grids)
    ours_in, hf_in, mask = (
        [],
        torch.zeros(len(grids), n_max, 3 * P * P),
        torch.zeros(len(grids), n_max, dtype=torch.long),
    )
    for i, (h, w) in enumerate(grids):
        patches = torch.randn(h * w, 3, P, P)  # ours: (C, p, p); SigLIP2's processor: (p, p, C)
        ours_in.append(patches.reshape(h * w, -1))
        hf_in[i, : h * w] = patches.permute(0, 2, 3, 1).reshape(h * w, -1)
        mask[i, : h * w] = 1
    with torch.no_grad():
        want = hf(hf_in, pixel_attention_mask=mask, spatial_shapes=torch.tensor(grids)).last_hidden_state
        got = ours.features(torch.cat(ours_in), torch.tensor(grids))
    want = torch.cat([want[i, : h * w] for i, (h, w) in enumerate(grids)])
    assert got.shape == want.shape == (sum(h * w for h, w in grids), 32)
    assert (got - want).abs().max().item() <= 1e-4
    with torch.no_grad():  # then our new 2x2 merge: a quarter as many tokens, of width d_vit
        assert ours(torch.cat(ours_in), torch.tensor(grids)).shape == (got.shape[0] // 4, 32)


def test_init_vision_from_siglip2_folder(tmp_path):
    """`--init-vision DIR` with a SigLIP2 folder: the run's model.vision becomes the tower's (learned
    positions, no RoPE), build_model loads its weights, and the new merge trains in the adapter stage."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    from corpus.config import load_config
    from train.config import TrainConfig, resolve_recipe
    from train.model.hf.vision import init_vision_config
    from train.parallel import build_model

    tower = Siglip2VisionModel(
        Siglip2VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            patch_size=8,
            num_patches=9,
        )
    )
    tower.save_pretrained(tmp_path / "siglip2")
    cfg = load_config(TrainConfig, resolve_recipe("debug-cpu"), [f"run.output={tmp_path / 'run'}"])
    cfg = init_vision_config(cfg, tmp_path / "siglip2")
    v = cfg.model.vision
    assert (v.pos_embed, v.pos_grid, v.d_vit, v.merge_with_adapter, v.out_dim) == ("learned", 3, 32, True, 32)
    model = build_model(cfg, torch.device("cpu"))
    want = tower.state_dict()["embeddings.position_embedding.weight"]
    assert torch.equal(model.vision.pos_embed.weight, want)
    model.set_trainable("adapter")
    assert all(p.requires_grad for p in model.vision.merge.parameters())
    assert not any(p.requires_grad for p in model.vision.blocks.parameters())


def _tokenizer(tmp_path):
    from train.model.hf.init import pretrained_tokenizer

    bpe_tokenizer(tmp_path, ["a photo"])
    return pretrained_tokenizer(tmp_path)[0]


@pytest.mark.parametrize("kind", ["qwen2_vl", "siglip2"])
def test_pixels_are_normalised_as_the_towers_image_processor(tmp_path, kind):
    """`--init-vision` takes the tower's per-channel mean/std from its preprocessor_config.json (Qwen2-VL:
    CLIP's; SigLIP2: 0.5), and our preprocessing of a real photo then equals the tower's own HF image
    processor (transformers' PIL backend) on the NORMALISATION part, to 1e-5: on an input already at the
    size both resize policies keep, our patches (rearranged to the processor's patch layout) equal its
    `pixel_values`. The resize differs by design: ours is torch's antialiased bicubic on uint8 (Pillow's
    filter within +-2 of 255, with JPEG draft decoding), the processors call Pillow (SigLIP2 bilinear to
    its own patch-count policy); for Qwen2-VL, whose size policy (smart resize) is ours, the test also
    checks the same patch grid on the raw photo and pixels within that resize tolerance."""
    import io
    from collections import Counter

    from PIL import Image

    from corpus.config import load_config
    from train.config import TrainConfig, resolve_recipe
    from train.data.collate import normalise
    from train.data.encode import DocumentEncoder
    from train.model.hf.vision import init_vision_config

    photo = real_path("dev", "images", "photos", "pillow__flower.jpg")
    tower = tmp_path / "tower"
    if kind == "qwen2_vl":
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        Qwen2VisionTransformerPretrainedModel._from_config(
            Qwen2VLVisionConfig(depth=1, embed_dim=32, hidden_size=48, num_heads=4, patch_size=14)
        ).save_pretrained(tower)
        Qwen2VLImageProcessorPil().save_pretrained(tower)
        p, size = 14, (28 * 9, 28 * 13)  # (H, W) kept by both: multiples of 28 within the budget
    else:
        from transformers import Siglip2VisionConfig, Siglip2VisionModel
        from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

        Siglip2VisionModel(
            Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
        ).save_pretrained(tower)
        Siglip2ImageProcessorPil(max_num_patches=16 * 24).save_pretrained(tower)
        p, size = 16, (256, 384)  # 16 x 24 patches: the processor keeps it at max_num_patches=384
    want_mean, want_std = (
        ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
        if kind == "qwen2_vl"
        else ([0.5] * 3, [0.5] * 3)
    )
    cfg = load_config(TrainConfig, resolve_recipe("debug-cpu"), [f"run.output={tmp_path / 'run'}"])
    cfg = init_vision_config(cfg, tower)
    assert list(cfg.data.image_mean) == want_mean and list(cfg.data.image_std) == want_std
    assert cfg.model.vision.patch_size == p
    processor = transformers.AutoImageProcessor.from_pretrained(tower)  # the saved preprocessor_config.json

    H, W = size
    sized = Image.open(photo).convert("RGB").resize((W, H), Image.Resampling.BICUBIC)
    png = io.BytesIO()
    sized.save(png, format="PNG")
    data = cfg.data.model_copy(update={"min_pixels": H * W, "max_pixels": H * W})
    enc = DocumentEncoder(_tokenizer(tmp_path), data, p)
    patches_NP, (gh, gw) = enc.image(png.getvalue(), Counter())
    assert (gh * p, gw * p) == (H, W)
    ours_NP = torch.from_numpy(normalise(patches_NP, cfg.data.image_mean, cfg.data.image_std))
    if kind == "qwen2_vl":
        out = processor(images=[sized], size={"shortest_edge": H * W, "longest_edge": H * W}, return_tensors="pt")
        assert out["image_grid_thw"].tolist() == [[1, gh, gw]]
        got, want = to_hf_patches(ours_NP.view(-1, 3, p, p), gh, gw, 2, p), out["pixel_values"]
    else:
        out = processor(images=[sized], return_tensors="pt")
        assert out["spatial_shapes"].tolist() == [[gh, gw]]
        got = ours_NP.view(-1, 3, p, p).permute(0, 2, 3, 1).reshape(gh * gw, -1)  # SigLIP2: (p, p, C)
        want = out["pixel_values"][0, : gh * gw]
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-5
    # the same code path with the wrong (scalar 0.5) statistics would not match: the check can fail
    if kind == "qwen2_vl":
        wrong = to_hf_patches(
            torch.from_numpy(normalise(patches_NP, [0.5] * 3, [0.5] * 3)).view(-1, 3, p, p), gh, gw, 2, p
        )
        assert (wrong - want).abs().max().item() > 0.1

        # the raw photo: same smart-resize grid as the processor, pixels within the resize tolerance
        raw = photo.read_bytes()
        budget = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 64}
        patches_NP, (gh, gw) = DocumentEncoder(_tokenizer(tmp_path), cfg.data.model_copy(update=budget), p).image(
            raw, Counter()
        )
        size = {"shortest_edge": budget["min_pixels"], "longest_edge": budget["max_pixels"]}
        out = processor(images=[Image.open(io.BytesIO(raw)).convert("RGB")], size=size, return_tensors="pt")
        assert out["image_grid_thw"].tolist() == [[1, gh, gw]]
        ours_NP = torch.from_numpy(normalise(patches_NP, cfg.data.image_mean, cfg.data.image_std))
        diff = (to_hf_patches(ours_NP.view(-1, 3, p, p), gh, gw, 2, p) - out["pixel_values"]).abs()
        assert diff.max().item() <= 2 / 255 / min(want_std) and diff.mean().item() < 0.01  # +-2 of 255, rarely


@pytest.mark.parametrize("kind", ["qwen2_vl", "siglip2"])
def test_sharded_tower_loads_into_the_encoder_tensor_by_tensor(tmp_path, kind):
    """`init_vision` (what `--init-vision` runs) writes a tower saved in several shards straight into the
    encoder, one tensor at a time (SigLIP2's q, k, v into the row blocks of our wqkv), equal to the whole
    state that the parity tests check against transformers."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    from train.model.hf.vision import init_vision

    torch.manual_seed(0)
    if kind == "qwen2_vl":
        hf = Qwen2VisionTransformerPretrainedModel._from_config(
            Qwen2VLVisionConfig(depth=3, embed_dim=64, hidden_size=48, num_heads=4, patch_size=P)
        )
    else:
        hf = Siglip2VisionModel(
            Siglip2VisionConfig(
                hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, patch_size=P
            )
        )
    for p in hf.parameters():
        torch.nn.init.normal_(p, std=0.2)
    hf.save_pretrained(tmp_path / "whole")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) >= 3
    cfg, state = load_pretrained_vision(tmp_path / "whole")
    encoder = VisionEncoder(cfg)
    init_vision(encoder, tmp_path / "sharded")
    got = encoder.state_dict()
    assert all(torch.equal(got[k], t) for k, t in state.items())
    assert set(got) - set(state) == ({"merge.weight", "merge.bias"} if kind == "siglip2" else set())
