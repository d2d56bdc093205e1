"""Damaged Hugging Face model folders for --init-llm / --init-vision / load_decoder_into: each is one ValueError
line naming the file (and the field, shard or tensor), never a KeyError, a JSONDecodeError or a safetensors
traceback. Each test damages a copy of a tiny folder it writes itself (our own export_decoder)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _hf_tiny import bpe_tokenizer
from safetensors.torch import load_file, save_file

from train.config import TrainConfig
from train.model.config import ModelConfig
from train.model.decoder import Decoder
from train.model.hf import export_decoder, load_decoder_into
from train.model.hf.init import init_llm_config

SMALL = {"vocab_size": 128, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ffn": 128}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A sharded dense qwen3 folder (config.json, index, 17 shards) with its own tokenizer.json."""
    out = tmp_path_factory.mktemp("hf") / "good"
    base = TrainConfig().model
    cfg = ModelConfig.model_validate(
        base.model_dump() | SMALL | {"moe": base.moe.model_dump() | {"first_dense_layers": 2}}
    )
    torch.manual_seed(0)
    export_decoder(Decoder(cfg), out, max_shard_bytes=20_000)
    bpe_tokenizer(out, ["hello world, a tiny model folder"])
    return out


def _edit_json(name: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        data = json.loads((d / name).read_text())
        edit(data)
        (d / name).write_text(json.dumps(data))

    return damage


def _first_shard(d: Path) -> Path:
    return sorted(d.glob("model-0*.safetensors"))[0]


def _wrong_shape(d: Path, key: str) -> Path:
    shard = d / json.loads((d / "model.safetensors.index.json").read_text())["weight_map"][key]
    tensors = load_file(shard)
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, shard)
    return shard


def _llama3_rope(low_freq_factor: float, high_freq_factor: float):
    """A damage: config.json's rope_scaling made llama3 with these frequency factors."""
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": low_freq_factor,
        "high_freq_factor": high_freq_factor,
        "original_max_position_embeddings": 8192,
    }
    return _edit_json("config.json", lambda c: c.update(rope_scaling=scaling))


DAMAGES = {
    "config missing": (lambda d: (d / "config.json").unlink(), r"good-config missing: no config.json"),
    "config not JSON": (lambda d: (d / "config.json").write_text("{oops"), r"config.json: not valid JSON"),
    "config not UTF-8": (lambda d: (d / "config.json").write_bytes(b"\xff\xfe{"), r"config.json: cannot read it"),
    "config a list": (lambda d: (d / "config.json").write_text("[1]"), r"config.json: holds a JSON list, not an"),
    "config nested deep": (
        lambda d: (d / "config.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000),
        r"config.json: not valid JSON \(nested too deep\)",
    ),
    "index nested deep": (
        lambda d: (d / "model.safetensors.index.json").write_text("[" * 100_000 + "]" * 100_000),
        r"model.safetensors.index.json: not valid JSON \(nested too deep\)",
    ),
    "hidden size the weights lack": (
        _edit_json("config.json", lambda c: c.update(hidden_size=2**40)),
        r"safetensors: (lm_head|model.embed_tokens).weight: shape \(128, 64\) is not \(vocabulary, 1099511627776\)",
    ),
    "layers the weights lack": (
        _edit_json("config.json", lambda c: c.update(num_hidden_layers=10**9)),
        r"good-layers the weights lack: the config says 1000000000 decoder layers, the weights hold 2",
    ),
    "ffn size the weights lack": (
        _edit_json("config.json", lambda c: c.update(intermediate_size=2**30)),
        r"safetensors: model.layers.0.mlp.\w+_proj.weight: shape \(\d+, \d+\) does not fit the decoder's \(\d+, \d+\)",
    ),
    "field missing": (_edit_json("config.json", lambda c: c.pop("hidden_size")), r"lacks the field 'hidden_size'"),
    "field a string": (
        _edit_json("config.json", lambda c: c.update(num_hidden_layers="two")),
        r"config.json: num_hidden_layers='two' is not a whole number >= 1",
    ),
    "rope not an object": (
        _edit_json("config.json", lambda c: c.update(rope_scaling="yes")),
        r"config.json: rope_scaling='yes' is not an object",
    ),
    "rope theta a string": (
        _edit_json("config.json", lambda c: c.update(rope_theta="big")),
        r"config.json: rope_theta='big' is not a number",
    ),
    "rope theta negative": (
        _edit_json("config.json", lambda c: c.update(rope_theta=-1.0)),
        r"config.json: rope_theta: Input should be greater than 0",
    ),
    "llama3 rope factor 0": (
        _llama3_rope(low_freq_factor=0.0, high_freq_factor=4.0),
        r"config.json: rope_scaling.low_freq_factor: Input should be greater than 0",
    ),
    "llama3 rope factors equal": (
        _llama3_rope(low_freq_factor=4.0, high_freq_factor=4.0),
        r"config.json: rope_scaling: .*high_freq_factor=4.0 must exceed low_freq_factor=4.0",
    ),
    "eps a string": (
        _edit_json("config.json", lambda c: c.update(rms_norm_eps="tiny")),
        r"config.json: norm_eps: Input should be a valid number.* \(got 'tiny'\)",
    ),
    "index not JSON": (
        lambda d: (d / "model.safetensors.index.json").write_text("{"),
        r"model.safetensors.index.json: not valid JSON",
    ),
    "index without weight_map": (
        lambda d: (d / "model.safetensors.index.json").write_text("{}"),
        r"model.safetensors.index.json: no weight_map object",
    ),
    "index points to a missing shard": (
        lambda d: _first_shard(d).unlink(),
        r"model.safetensors.index.json: weight_map lists model-00001-of-00017.safetensors \(for .*\), which is missing",
    ),
    "index points out of the folder": (
        _edit_json("model.safetensors.index.json", lambda i: i["weight_map"].update({"lm_head.weight": "../x"})),
        r"weight_map names '\.\./x', not a file of the folder",
    ),
    "shard truncated": (
        lambda d: _first_shard(d).write_bytes(_first_shard(d).read_bytes()[:-40]),
        r"model-00001-of-00017.safetensors: not a readable safetensors file",
    ),
    "shard garbage": (
        lambda d: _first_shard(d).write_bytes(b"\x00" * 64),
        r"model-00001-of-00017.safetensors: not a readable safetensors file",
    ),
    "tokenizer not JSON": (
        lambda d: (d / "tokenizer.json").write_text('{"model": '),
        r"tokenizer.json: not a valid tokenizer.json",
    ),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_damaged_folder_is_one_line_naming_file_and_field(folder, tmp_path, name):
    damage, message = DAMAGES[name]
    bad = tmp_path / f"good-{name}"
    shutil.copytree(folder, bad)
    damage(bad)
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ValueError, match=message) as e:
        init_llm_config(TrainConfig(), bad, run)  # what `interloom train --init-llm` reads before Ray starts
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "key,problem",
    [
        ("lm_head.weight", r"shape \(3, 3\) is not \(vocabulary, 64\)"),
        ("model.norm.weight", r"shape \(3, 3\) does not fit"),
    ],
)
def test_wrong_shape_tensor_names_shard_and_key(folder, tmp_path, key, problem):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    cfg = init_llm_config(TrainConfig(), bad, tmp_path)  # the header is whole: only loading sees the shape
    shard = _wrong_shape(bad, key)
    with pytest.raises(ValueError, match=rf"{shard}: {key}: {problem}"):
        load_decoder_into(Decoder(cfg.model), bad)


def test_cli_init_llm_of_a_damaged_folder_is_one_line(folder, tmp_path, capsys):
    from pipeline.cli import main

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    _first_shard(bad).unlink()
    argv = ["train", "debug-cpu", "--init-llm", str(bad), "--corpus", str(tmp_path), "--output", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert "model.safetensors.index.json: weight_map lists model-00001-of-00017.safetensors" in err


@pytest.fixture(scope="module")
def tower(tmp_path_factory) -> Path:
    """A tiny Qwen2-VL vision tower in 3+ shards, with its image processor's preprocessor_config.json."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    out = tmp_path_factory.mktemp("tower") / "good"
    torch.manual_seed(0)
    cfg = transformers.Qwen2VLVisionConfig(depth=2, embed_dim=64, hidden_size=48, num_heads=4, patch_size=4)
    Qwen2VisionTransformerPretrainedModel._from_config(cfg).save_pretrained(out, max_shard_size="100KB")
    (out / "preprocessor_config.json").write_text(json.dumps({"image_mean": 0.5, "image_std": [0.2, 0.3, 0.4]}))
    return out


TOWER_DAMAGES = {
    "depth the weights lack": (
        _edit_json("config.json", lambda c: c.update(depth=10**9)),
        r"tower: the config says 1000000000 vision layers, the weights hold 2",
    ),
    "width the weights lack": (
        _edit_json("config.json", lambda c: c.update(embed_dim=2**20, num_heads=4)),
        r"safetensors: \S+ of shape \(.*\) does not fit: ",
    ),
    "field missing": (_edit_json("config.json", lambda c: c.pop("depth")), r"config.json: lacks the field 'depth'"),
    "field a float": (
        _edit_json("config.json", lambda c: c.update(patch_size=4.5)),
        r"config.json: patch_size=4.5 is not a whole number >= 1",
    ),
    "preprocessor not JSON": (
        lambda d: (d / "preprocessor_config.json").write_text("image_mean: 0.5"),
        r"preprocessor_config.json: not valid JSON",
    ),
    "preprocessor bad mean": (
        _edit_json("preprocessor_config.json", lambda c: c.update(image_mean="grey")),
        r"preprocessor_config.json: image_mean='grey' is not one number or three",
    ),
    "index points to a missing shard": (
        lambda d: _first_shard(d).unlink(),
        r"model.safetensors.index.json: weight_map lists model-00001-of-0000\d.safetensors .* which is missing",
    ),
}


@pytest.mark.parametrize("name", list(TOWER_DAMAGES))
def test_damaged_vision_tower_is_one_line_naming_file_and_field(tower, tmp_path, name):
    from train.model.hf.vision import init_vision_config

    damage, message = TOWER_DAMAGES[name]
    bad = tmp_path / "tower"
    shutil.copytree(tower, bad)
    damage(bad)
    with pytest.raises(ValueError, match=message) as e:
        init_vision_config(TrainConfig(), bad)  # what `interloom train --init-vision` reads before Ray starts
    assert "\n" not in str(e.value)


def test_wrong_shape_tower_tensor_names_shard_and_key(tower, tmp_path):
    from train.model.hf.vision import init_vision, init_vision_config
    from train.model.vision import VisionEncoder

    bad = tmp_path / "tower"
    shutil.copytree(tower, bad)
    cfg = init_vision_config(TrainConfig(), bad)
    shard = _wrong_shape(bad, "blocks.1.mlp.fc2.weight")
    with pytest.raises(ValueError, match=rf"{shard}: blocks.1.mlp.fc2.weight of shape \(3, 3\) does not fit"):
        init_vision(VisionEncoder(cfg.model.vision), bad)


@pytest.mark.parametrize(
    "edit,shown",
    [
        ({"vocab_size": 2**40}, r"model.embed_tokens.weight has 128 rows, the config 1099511627776"),
        ({"vision": {"d_vit": 2**20}}, r"interloom_vlm.safetensors: \S+ is \(.*\), interloom_model.json needs"),
        ({"vision": {"d_vit": 2**30}}, r"interloom_model.json: no model has these sizes \(Storage size calculation"),
    ],
)
def test_an_exported_config_claiming_sizes_its_weights_lack_is_refused_before_allocating(folder, tmp_path, edit, shown):
    """eval / generate / --init-from of an `export model` folder build the VLM of interloom_model.json, then
    read the weights: a config claiming a vocabulary or tower its weights lack had a VLM of that size
    allocated first (2**40 rows: a RuntimeError from the allocator). Now the headers are checked against a
    VLM on the meta device and the folder is refused naming the tensor."""
    from safetensors.torch import save_file as save

    from train.export import VLM_CONFIG, VLM_REST, load_exported_vlm
    from train.model.vlm import VLM

    out = tmp_path / "exported"
    shutil.copytree(folder, out)
    cfg = ModelConfig.model_validate(TrainConfig().model.model_dump() | SMALL | {"vision": {"d_vit": 32, "n_heads": 2}})
    cfg = cfg.model_copy(update={"moe": cfg.moe.model_copy(update={"first_dense_layers": 2})})
    rest = {k: v.contiguous() for k, v in VLM(cfg).state_dict().items() if not k.startswith("decoder.")}
    save(rest, out / VLM_REST)
    data = cfg.model_dump()
    (out / VLM_CONFIG).write_text(json.dumps(data))
    load_exported_vlm(out)  # the folder as written loads
    for key, value in edit.items():
        data[key] = data[key] | value if isinstance(value, dict) else value
    (out / VLM_CONFIG).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=shown):
        load_exported_vlm(out)


def test_a_moe_config_claiming_experts_its_weights_lack_is_refused_at_once(tmp_path):
    """An MoE folder (mixtral, 4 experts) whose config.json claims 10**7 experts: the checks listed an HF key
    per expert and layer (10**5 took a second, 10**7 gigabytes of strings) before finding the first one
    missing. The expert count is now read from the weights' names first."""
    import time

    base = TrainConfig().model
    moe = base.moe.model_dump() | {"first_dense_layers": 0, "n_experts": 4, "top_k": 2, "d_expert": 32}
    moe |= {"n_shared_experts": 0, "d_shared": 0, "shared_gate": False}
    good = tmp_path / "good"
    export_decoder(Decoder(ModelConfig.model_validate(base.model_dump() | SMALL | {"moe": moe})), good)
    bpe_tokenizer(good, ["hello world, a tiny model folder"])
    init_llm_config(TrainConfig(), good, tmp_path)  # the folder as written is taken
    _edit_json("config.json", lambda c: c.update(num_local_experts=10**7))(good)
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"good: the config says 10000000 experts, the weights hold 4"):
        init_llm_config(TrainConfig(), good, tmp_path)
    assert time.monotonic() - started < 2
