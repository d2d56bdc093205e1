"""Pretrained decoders in and out (train/model/hf/): tiny random models made with transformers' own config
classes, saved with save_pretrained, loaded into our decoder; logits compared in float32."""

from __future__ import annotations

import json

import pytest
import torch
from _hf_tiny import bpe_tokenizer

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
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    max_position_embeddings=256,
    initializer_range=0.1,
)  # larger than real inits: logits of order 1, so 1e-4 is a tight bound


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
            assert ref.std() > 0.3  # the bound is meaningful: logits are not near zero
        ids_BT, mask_BT = _batch()
        ref = hf_model(
            input_ids=ids_BT, attention_mask=mask_BT, position_ids=(mask_BT.cumsum(1) - 1).clamp(min=0)
        ).logits
        ours = decoder_logits(dec, ids_BT, mask_BT)
        real = mask_BT.bool()
        assert (ours[real] - ref[real]).abs().max() <= TOL


def qwen3_moe_config(**kw):
    return transformers.Qwen3MoeConfig(
        **SMALL,
        head_dim=24,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        rope_theta=1e6,
        **kw,
    )


def test_qwen3_moe_logits_match_transformers(tmp_path):
    hf = _hf_model(qwen3_moe_config(), tmp_path)
    dec = _ours(tmp_path)
    cfg = dec.cfg
    assert (cfg.moe.n_experts, cfg.moe.top_k, cfg.moe.gate, cfg.d_head, cfg.qk_norm) == (8, 2, "renormalised", 24, True)
    assert cfg.moe.shared_hidden == 0 and cfg.rope_theta == 1e6
    _assert_same_logits(hf, dec)


def test_qwen2_moe_with_gated_shared_expert_and_dense_first_layer(tmp_path):
    config = transformers.Qwen2MoeConfig(
        **SMALL | {"num_hidden_layers": 3},
        intermediate_size=80,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        num_experts=6,
        num_experts_per_tok=3,
        norm_topk_prob=False,
        mlp_only_layers=[0],
    )
    hf = _hf_model(config, tmp_path)
    dec = _ours(tmp_path)
    m = dec.cfg.moe
    assert (m.gate, m.shared_hidden, m.shared_gate, m.first_dense_layers, dec.cfg.qkv_bias) == (
        "softmax",
        48,
        True,
        1,
        True,
    )
    assert [layer.is_moe for layer in dec.layers] == [False, True, True]
    _assert_same_logits(hf, dec)


def test_sharded_checkpoint_with_tied_embeddings(tmp_path):
    """A checkpoint split over several files (model.safetensors.index.json), LM head tied to the embedding."""
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(qwen3_moe_config(tie_word_embeddings=True)).eval()
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    dec = _ours(tmp_path)
    assert dec.cfg.tie_embeddings and dec.output.weight is dec.tok_embeddings.weight
    _assert_same_logits(hf, dec)


def test_mixtral_logits_match_transformers(tmp_path):
    config = transformers.MixtralConfig(**SMALL, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2)
    hf = _hf_model(config, tmp_path)
    _assert_same_logits(hf, _ours(tmp_path))


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_dense_family_loads_dense_and_matches(tmp_path, family):
    if family == "qwen3":
        config = transformers.Qwen3Config(**SMALL, head_dim=16, intermediate_size=96, tie_word_embeddings=True)
    else:  # Llama 3.1's frequency scaling, short original context so that all three bands occur
        config = transformers.LlamaConfig(
            **SMALL,
            intermediate_size=96,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
    hf = _hf_model(config, tmp_path)
    dec = _ours(tmp_path)
    assert not any(layer.is_moe for layer in dec.layers)
    assert dec.cfg.rope_scaling.kind == ("llama3" if family == "llama" else "none")
    _assert_same_logits(hf, dec)


def test_upcycled_dense_model_first_forward_equals_dense(tmp_path):
    """Sparse upcycling: experts are copies of the dense FFN and the renormalised top-k weights sum to 1,
    so whatever the (random) router picks, the MoE decoder computes the dense model's logits."""
    config = transformers.Qwen3Config(**SMALL, head_dim=16, intermediate_size=96)
    hf = _hf_model(config, tmp_path)
    cfg, state, _ = load_pretrained_decoder(tmp_path)
    up_cfg, up_state = upcycle(cfg, state, n_experts=8, top_k=2, router_std=0.5)
    moe = Decoder(up_cfg).eval()
    moe.load_state_dict(up_state, strict=True)
    assert all(layer.is_moe for layer in moe.layers) and up_cfg.moe.d_expert == 96
    assert moe.layers[0].ffn.w1_EDF.shape == (8, 64, 96)
    ids_BT, mask_BT = _batch()
    with torch.no_grad():
        dense_logits = hf(
            input_ids=ids_BT, attention_mask=mask_BT, position_ids=(mask_BT.cumsum(1) - 1).clamp(min=0)
        ).logits
        moe_logits = decoder_logits(moe, ids_BT, mask_BT)
        # the router really spreads tokens over experts (not one fixed pair)
        h_SD = torch.randn(200, 64)
        _, stats = moe.layers[0].ffn(h_SD)
    real = mask_BT.bool()
    assert (moe_logits[real] - dense_logits[real]).abs().max() <= 1e-5
    assert int((stats.load_E > 0).sum()) >= 6
    with pytest.raises(ValueError, match="top_k"):
        upcycle(cfg, state, n_experts=8, top_k=1)


def _roundtrip(tmp_path, config) -> None:
    """HF folder -> our decoder -> perturbed (so we export trained weights, not the loaded ones) ->
    export -> transformers reloads it -> same logits."""
    _hf_model(config, tmp_path / "src")
    dec = _ours(tmp_path / "src")
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.01 * torch.randn_like(p))
    export_decoder(dec, tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    assert read_hf_config(tmp_path / "out")["model_type"] == config.model_type
    _assert_same_logits(reloaded, dec)


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen2_moe"])
def test_export_reloads_in_transformers_with_equal_logits(tmp_path, family):
    if family == "qwen3_moe":
        config = qwen3_moe_config()
    else:
        config = transformers.Qwen2MoeConfig(
            **SMALL,
            intermediate_size=80,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            num_experts=4,
            num_experts_per_tok=2,
            mlp_only_layers=[1],
        )
    _roundtrip(tmp_path, config)


def test_upcycled_llama_exports_as_mixtral(tmp_path):
    """An upcycled Llama is exactly a Mixtral (renormalised top-k, no shared expert): export it as one."""
    _hf_model(transformers.LlamaConfig(**SMALL, intermediate_size=48), tmp_path / "dense")
    cfg, state, _ = load_pretrained_decoder(tmp_path / "dense")
    up_cfg, up_state = upcycle(cfg, state, n_experts=4, top_k=2)
    dec = Decoder(up_cfg).eval()
    dec.load_state_dict(up_state)
    with torch.no_grad():  # make the experts differ, as training would
        for p in dec.parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert export_decoder(dec, tmp_path / "out").model_type == "mixtral"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    _assert_same_logits(reloaded, dec)


def test_export_sharded_and_bad_inputs(tmp_path):
    _hf_model(qwen3_moe_config(), tmp_path / "src")
    dec = _ours(tmp_path / "src")
    export_decoder(dec, tmp_path / "out", max_shard_bytes=50_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    _assert_same_logits(reloaded, dec)
    with pytest.raises(ValueError, match="qk_norm"):
        export_decoder(dec, tmp_path / "bad", family="llama")
    with pytest.raises(ValueError, match="no config.json"):
        load_pretrained_decoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="not supported"):
        config_from_hf({"model_type": "gpt2"})
    bad = read_hf_config(tmp_path / "src") | {"hidden_act": "gelu"}
    with pytest.raises(ValueError, match="silu"):
        config_from_hf(bad)


def test_export_model_cli_from_a_dcp_checkpoint(tmp_path):
    """`interloom export model RUN OUT`: a run directory laid out as training leaves it (config.json +
    checkpoint_*/dcp written by torch.distributed.checkpoint) -> an HF folder transformers loads."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from pipeline.cli import main
    from train.config import TrainConfig
    from train.model.vlm import VLM

    _hf_model(qwen3_moe_config(), tmp_path / "src")
    base = ModelConfig(vision={"patch_size": 8, "d_vit": 32, "n_layers": 1, "n_heads": 2})
    cfg, state, _ = load_pretrained_decoder(tmp_path / "src", base)
    model = VLM(cfg)
    model.decoder.load_state_dict(state)
    with torch.no_grad():
        for p in model.parameters():  # as if trained
            p.add_(0.01 * torch.randn_like(p))
    run = tmp_path / "run"
    model_sd, optim_sd = get_state_dict(model, torch.optim.AdamW(model.parameters()))
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(run / "checkpoint_0000020" / "dcp"))
    (run / "config.json").write_text(TrainConfig(model=cfg).model_dump_json())

    assert main(["export", "model", str(run), str(tmp_path / "out")]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    _assert_same_logits(reloaded, model.decoder.eval())
    # the whole VLM (vision tower, adapter, decoder) comes back in interloom tensor for tensor
    from train.export import load_exported_vlm

    again = load_exported_vlm(tmp_path / "out").state_dict()
    original = model.state_dict()
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in original)
    assert main(["export", "model", str(tmp_path / "src"), str(tmp_path / "out2")]) == 2  # not a checkpoint


def _word_tokenizer(path, n_words: int) -> None:
    """A model's own tokenizer.json (word level), without interloom's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(n_words - 1)} | {"[UNK]": n_words - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))


@pytest.mark.parametrize("upcycled", [False, True])
def test_init_llm_extends_tokenizer_and_starts_from_the_pretrained_decoder(tmp_path, upcycled):
    """--init-llm DIR [--upcycle]: the run takes the folder's architecture and tokenizer (our 6 special tokens
    appended, vocabulary padded to a multiple of 64), and build_model starts its decoder from the folder's
    weights (upcycled into the recipe's 4 experts, top-2): ordinary tokens get the pretrained logits, the
    added tokens' embedding rows the mean row."""
    from train.config import TrainConfig
    from train.model.hf.init import init_llm_config, pretrained_tokenizer
    from train.parallel import build_model
    from train.tokenizer import Tokenizer
    from train.trainer import prepare_run

    src = tmp_path / "src"
    hf = _hf_model(transformers.Qwen3Config(**SMALL, head_dim=16, intermediate_size=96), src)
    _word_tokenizer(src, 90)
    tok, added = pretrained_tokenizer(src)
    assert added == list(range(90, 96)) and tok.encode("w3 w7 <|image|>")[:2] == [3, 7]
    assert 94 not in tok.encode("w3 <|image|>")  # crawled text never yields the placeholder id

    base = TrainConfig(
        model=ModelConfig(
            vision={"patch_size": 8, "d_vit": 32, "n_layers": 1, "n_heads": 2},
            moe={"n_experts": 4, "top_k": 2},
            init_upcycle=upcycled,
        ),
        run={"output": str(tmp_path / "run")},
        data={"corpus": str(tmp_path / "corpus")},
    )
    cfg = prepare_run(init_llm_config(base, src, tmp_path / "run"))
    assert cfg.model.init_llm == str(src.resolve()) and cfg.model.d_head == 16 and cfg.model.qk_norm
    assert (cfg.model.vocab_size, cfg.model.image_token_id) == (128, Tokenizer.load(cfg.data.tokenizer).image_id)

    model = build_model(cfg, torch.device("cpu")).eval()
    assert [layer.is_moe for layer in model.decoder.layers] == [upcycled] * 2
    emb_VD = model.decoder.tok_embeddings.weight
    pretrained_VD = hf.model.embed_tokens.weight
    mean_D = pretrained_VD.mean(0)
    assert torch.equal(emb_VD[:90], pretrained_VD[:90]) and torch.equal(emb_VD[96], pretrained_VD[96])
    for rows in (emb_VD[90:96], emb_VD[97:]):  # the 6 added special tokens; the rows padded to 128
        assert torch.allclose(rows, mean_D.expand_as(rows), atol=1e-6)
    ids_BT = torch.randint(0, 90, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = decoder_logits(model.decoder, ids_BT)[..., :90]
        ref = hf(input_ids=ids_BT).logits[..., :90]
    assert (ours - ref).abs().max() <= TOL
    with pytest.raises(ValueError, match="tokenizer.json"):
        pretrained_tokenizer(tmp_path)
    if upcycled:  # an MoE folder is not upcycled again
        _hf_model(qwen3_moe_config(), tmp_path / "moe")
        _word_tokenizer(tmp_path / "moe", 90)
        with pytest.raises(ValueError, match="already an MoE"):
            init_llm_config(base, tmp_path / "moe", tmp_path / "run2")


@pytest.mark.slow
def test_train_from_pretrained_then_export_reloads_in_transformers(ray_local, dev_corpus, tmp_path):
    """The real path: a qwen3_moe folder -> `interloom train --init-llm` (Ray Train, the dev corpus, 12 steps)
    -> `interloom export model RUN OUT` -> transformers loads OUT and its logits equal the checkpoint's."""
    from corpus.config import load_config
    from pipeline.cli import main
    from train.config import TrainConfig, resolve_recipe
    from train.export import load_trained_model
    from train.model.hf.init import init_llm_config
    from train.trainer import run_training

    src, run = tmp_path / "src", tmp_path / "run"
    _hf_model(
        transformers.Qwen3MoeConfig(
            **SMALL | {"vocab_size": 320},
            head_dim=16,
            intermediate_size=96,
            moe_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=True,
        ),
        src,
    )
    bpe_tokenizer(
        src, ["Interleaved image-text documents from the web.", "A decoder that starts from pretrained weights."]
    )
    cfg = load_config(
        TrainConfig,
        resolve_recipe("debug-cpu"),
        [
            f"data.corpus={dev_corpus[0]}",
            f"run.output={run}",
            "run.num_workers=1",
            "run.checkpoint_every=6",
            'stages=[{"trainable": "all", "steps": 12}]',
        ],
    )
    run.mkdir(parents=True)
    run_training(init_llm_config(cfg, src, run))

    model, trained_cfg, ckpt = load_trained_model(run)
    assert ckpt.name == "checkpoint_0000012" and trained_cfg.model.init_llm == str(src.resolve())
    start = _ours(src)
    assert not torch.equal(model.decoder.layers[0].ffn.w1_EDF, start.layers[0].ffn.w1_EDF)  # it trained
    assert main(["export", "model", str(run), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    ids_BT = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (decoder_logits(model.decoder, ids_BT) - reloaded(input_ids=ids_BT).logits).abs().max() <= TOL


# Run in a fresh process: build the decoder, reset the peak RSS (VmHWM, /proc/self/clear_refs), load, and
# report how far the peak rose above the RSS before the load.
_PEAK_RSS = """
import json, sys
from train.model.decoder import Decoder
from train.model.hf import config_from_hf, load_decoder_into, load_pretrained_decoder, read_hf_config

def kib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))

how, folder = sys.argv[1], sys.argv[2]
decoder = Decoder(config_from_hf(read_hf_config(folder)))
open("/proc/self/clear_refs", "w").write("5")
before = kib("VmRSS")
if how == "stream":
    load_decoder_into(decoder, folder)
else:  # the whole state dict first, then into the model: a second copy of the weights
    decoder.load_state_dict(load_pretrained_decoder(folder)[1])
print(json.dumps({"growth": (kib("VmHWM") - before) * 1024}))
"""


def test_sharded_checkpoint_loads_one_shard_at_a_time(tmp_path):
    """A checkpoint in several shards (save_pretrained(max_shard_size=...)) loads into a built decoder with
    `load_decoder_into` equal to the unsharded load, and its peak memory stays near one shard: the peak
    RSS of a fresh process rises by less than twice the largest shard plus 8 MB during the load (the
    shard's mapped pages and one tensor), far below the model's size, which the whole-state-dict load
    (`load_pretrained_decoder` + `load_state_dict`) exceeds in the same measurement."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from train.model.hf import load_decoder_into

    config = transformers.Qwen3MoeConfig(
        vocab_size=8192,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=512,
        moe_intermediate_size=256,
        num_experts=16,
        num_experts_per_tok=2,
        norm_topk_prob=True,
    )
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).float()
    hf.save_pretrained(tmp_path / "whole")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="8MB")
    shards = sorted((tmp_path / "sharded").glob("*.safetensors"))
    model_bytes = sum(p.numel() * 4 for p in hf.parameters())
    largest = max(p.stat().st_size for p in shards)
    assert len(shards) >= 6 and model_bytes > 60e6 and largest < 10e6

    cfg, state, _ = load_pretrained_decoder(tmp_path / "whole")
    streamed = Decoder(cfg)
    load_decoder_into(streamed, tmp_path / "sharded")
    got = streamed.state_dict()
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)

    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), *sys.path])}

    def growth(how: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, how, str(tmp_path / "sharded")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout.splitlines()[-1])["growth"]

    bound = 2 * largest + 8 * 2**20
    assert growth("stream") < bound < model_bytes
    assert growth("state_dict") > model_bytes  # the measurement sees a second copy when there is one
