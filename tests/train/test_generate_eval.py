"""Inference and evaluation on a tiny VLM: KV-cached decoding equals the uncached forward's argmax, greedy
decoding is deterministic and seeded sampling reproducible, the image-conditioned held-out loss moves when
the pixels are replaced by noise while the plain text loss does not, retrieval recall is right on known
embeddings, and a saved checkpoint round-trips through `interloom eval` / `interloom generate`."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from train.data import DataConfig
from train.evaluate import eval_sums, image_conditioned_BT, metrics_of, retrieval_recall
from train.generate import Prompt, encode_prompt, full_logits, generate, prompt_embeddings

from .test_model import DOC_A, DOC_B, PATCH, build_batch, tiny_model


def _prompt(model, T_text=(5, 6, 7), grid=(2, 4), seed=0) -> Prompt:
    g = torch.Generator().manual_seed(seed)
    M = (grid[0] // 2) * (grid[1] // 2)
    img = model.cfg.image_token_id
    ids = [1, *T_text, 3, *([img] * M), 5, 9, 10]
    P = 3 * PATCH * PATCH
    return Prompt(torch.tensor(ids), torch.randn(grid[0] * grid[1], P, generator=g), torch.tensor([grid]))


@pytest.mark.parametrize("options", [{}, {"qk_norm": True, "qkv_bias": True, "n_kv_heads": 1}])
def test_cached_decoding_equals_uncached_argmax(options):
    model = tiny_model(dtype=torch.float32, **options).eval()
    prompt = _prompt(model)
    new = generate(model, prompt, max_new_tokens=8)
    assert len(new) == 8 and all(0 <= t < model.cfg.vocab_size for t in new)
    ids = prompt.ids_T.tolist()
    for t in new:  # each cached step's token is the argmax of a full forward over everything before it
        ref = full_logits(model, Prompt(torch.tensor(ids), prompt.pixel_values_NP, prompt.grid_hw_I2))
        assert int(ref[-1].argmax()) == t
        ids.append(t)
    # and the cached prefill's hidden states equal the full forward's logits
    from train.model.decoder import KVCache

    cache = KVCache.empty(len(model.decoder.layers))
    with torch.no_grad():
        h = model.decoder.forward_cached(prompt_embeddings(model, prompt), cache)
        torch.testing.assert_close(model.decoder.output(h[0]).float(), full_logits(model, prompt), atol=1e-5, rtol=1e-5)


def test_greedy_is_deterministic_and_sampling_is_seeded():
    model = tiny_model(dtype=torch.float32).eval()
    prompt = _prompt(model)
    assert generate(model, prompt, 6) == generate(model, prompt, 6)
    a = generate(model, prompt, 12, temperature=2.0, top_p=0.9, seed=1)
    assert a == generate(model, prompt, 12, temperature=2.0, top_p=0.9, seed=1)
    assert a != generate(model, prompt, 12, temperature=2.0, top_p=0.9, seed=2)
    assert generate(model, prompt, 6, temperature=1.0, top_p=1e-6, seed=3) == generate(model, prompt, 6)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, prompt, 2, top_p=0.0)


def test_eos_stops_generation():
    model = tiny_model(dtype=torch.float32).eval()
    prompt = _prompt(model)
    first = generate(model, prompt, 1)[0]
    assert generate(model, prompt, 10, eos_id=first) == [first]


def test_image_conditioned_positions():
    model = tiny_model()
    batch, _ = build_batch([[DOC_B, DOC_A, DOC_B], [DOC_A, DOC_B]], T=40)
    cond = image_conditioned_BT(batch, model.cfg.image_token_id)
    ids, seg = batch.input_ids_BT, batch.segment_ids_BT
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            same_doc = seg[b, : t + 1] == seg[b, t]
            expect = bool(((ids[b, : t + 1] == model.cfg.image_token_id) & same_doc).any()) and seg[b, t] >= 0
            assert bool(cond[b, t]) == expect, (b, t)
    assert cond.any() and (~cond & (seg >= 0)).any()


def test_image_text_loss_moves_with_noise_images_text_loss_does_not():
    model = tiny_model()
    batch, _ = build_batch([[DOC_A, DOC_B], [DOC_B, DOC_A]], T=40)
    sums, img, txt = eval_sums(model.eval(), batch, model.cfg.image_token_id)
    g = torch.Generator().manual_seed(5)
    noisy = batch.__class__(
        **{
            **batch.__dict__,
            "pixel_values_NP": torch.randn(batch.pixel_values_NP.shape, generator=g, dtype=batch.pixel_values_NP.dtype),
        }
    )
    noisy_sums, _, _ = eval_sums(model, noisy, model.cfg.image_token_id)
    m, n = metrics_of(sums), metrics_of(noisy_sums)
    assert m["val_image_text_tokens"] > 0 and m["val_tokens"] > m["val_image_text_tokens"]
    assert abs(m["val_image_text_loss"] - n["val_image_text_loss"]) > 1e-3
    assert m["val_text_loss"] == pytest.approx(n["val_text_loss"], abs=1e-9)
    assert img.shape == txt.shape and img.shape[0] == 2


def test_retrieval_recall():
    e = torch.eye(6)
    r = retrieval_recall(e, e)
    assert r["recall@1_image_to_text"] == r["recall@1_text_to_image"] == 1.0 and r["retrieval_pairs"] == 6
    r = retrieval_recall(e, e.roll(1, dims=0))  # each image's best text is its neighbour's: own one 2nd
    assert r["recall@1_image_to_text"] == r["recall@1_text_to_image"] == 0.0
    assert r["recall@5_image_to_text"] == r["recall@5_text_to_image"] == 1.0
    assert retrieval_recall(torch.zeros(0, 4), torch.zeros(0, 4)) == {}


def test_encode_prompt_places_images_at_marks(tmp_path):
    from train.tokenizer import train_tokenizer

    tok = train_tokenizer(["a photo of a cat on a mat", "the dog"] * 20, vocab_size=300, min_frequency=1)
    buf = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(buf, "PNG")
    data = DataConfig(min_pixels=32 * 32, max_pixels=64 * 64)
    p = encode_prompt("a cat <image> on a mat <image>", [buf.getvalue()] * 2, tok, data, PATCH)
    ids = p.ids_T.tolist()
    assert ids[0] == tok.bos_id and ids.count(tok.img_start_id) == 2 and ids.count(tok.img_end_id) == 2
    M = int(sum((h // 2) * (w // 2) for h, w in p.grid_hw_I2.tolist()))
    assert ids.count(tok.image_id) == M and p.pixel_values_NP.shape == (
        int(p.grid_hw_I2.prod(1).sum()),
        3 * PATCH * PATCH,
    )
    assert ids[-1] == tok.img_end_id  # the prompt ends with the second image
    with pytest.raises(ValueError, match="1 <image> mark"):
        encode_prompt("one <image>", [buf.getvalue()] * 2, tok, data, PATCH)


# --- damaged exported folders and --image files: one line naming the file ------------------------------


def _exported(out) -> None:
    """An `interloom export model` folder of a tiny dense VLM (the decoder as a qwen3 HF folder), written here."""
    from safetensors.torch import save_file

    from train.export import DATA_CONFIG, VLM_CONFIG, VLM_REST
    from train.model.hf import export_decoder
    from train.tokenizer import train_tokenizer

    model = tiny_model(torch.float32, vocab_size=320, moe=dict(first_dense_layers=3))  # dense, moe.* as default
    export_decoder(model.decoder, out)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("decoder.")}, out / VLM_REST
    )
    (out / VLM_CONFIG).write_text(model.cfg.model_dump_json())
    (out / DATA_CONFIG).write_text(DataConfig().model_dump_json())
    train_tokenizer(["a photo of a cat"] * 10, vocab_size=300, min_frequency=1).save(out / "tokenizer.json")


def _cut(name: str, n: int):
    return lambda d: (d / name).write_bytes((d / name).read_bytes()[:n])


EXPORT_DAMAGES = {
    "model config not JSON": (_cut("interloom_model.json", 10), r"interloom_model.json: Invalid JSON"),
    "model config field": (
        lambda d: (d / "interloom_model.json").write_text('{"d_model": "wide"}'),
        r"interloom_model.json: d_model: Input should be a valid integer.*\(got 'wide'\)",
    ),
    "rest missing": (lambda d: (d / "interloom_vlm.safetensors").unlink(), r"interloom_vlm.safetensors: no such file"),
    "rest truncated": (_cut("interloom_vlm.safetensors", 300), r"interloom_vlm.safetensors: not a readable safetens"),
    "data config a list": (
        lambda d: (d / "interloom_data.json").write_text("[]"),
        r"interloom_data.json: <root>: Input should be an object",
    ),
    "decoder config missing": (lambda d: (d / "config.json").unlink(), r"no config.json"),
    "decoder shard garbage": (
        lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 100),
        r"model.safetensors: not a readable safetensors file",
    ),
}


@pytest.mark.parametrize("name", list(EXPORT_DAMAGES))
def test_damaged_exported_folder_is_one_line_for_generate_and_init_from(tmp_path, name):
    import shutil

    from train.config import TrainConfig
    from train.export import init_from_config
    from train.generate import load_inference_model

    good = tmp_path / "good"
    good.mkdir()
    _exported(good)
    assert load_inference_model(good)[0] is not None  # a dense model with default moe.* settings reloads
    damage, message = EXPORT_DAMAGES[name]
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    damage(bad)
    for read in (load_inference_model, lambda p: init_from_config(TrainConfig(), p, tmp_path / "run")):
        with pytest.raises(ValueError, match=message) as e:
            read(bad)
        assert "\n" not in str(e.value)


def test_broken_image_files_are_refused_before_the_model_loads(tmp_path, capsys):
    from conftest import real_path

    from pipeline.cli import main

    edge = real_path("dev", "images", "edge_cases")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    photo = sorted(real_path("dev", "images", "photos").glob("*.jpg"))[0]
    (tmp_path / "cut.jpg").write_bytes(photo.read_bytes()[:300])
    buf = io.BytesIO()
    PILImage.new("RGB", (64, 48)).save(buf, "DDS")
    dds = buf.getvalue()
    (tmp_path / "odd.dds").write_bytes(dds[:80] + b"\x00\x00\x00\x00" + dds[84:])  # pixel format flags 0
    (tmp_path / "intact.dds").write_bytes(dds)
    cases = {
        tmp_path / "odd.dds": "not an image file; images are read in JPEG, PNG, GIF",
        tmp_path / "intact.dds": "a DDS file; images are read in JPEG, PNG, GIF",
        edge / "pillow__truncated_jpeg.jpg": "not an image that decodes (OSError: image file is truncated",
        edge / "skimage__truncated.jpg": "not an image that decodes (OSError",
        tmp_path / "cut.jpg": "not an image that decodes (OSError",
        tmp_path / "text.jpg": "not an image file; images are read in JPEG, PNG, GIF",
        tmp_path / "empty.png": "not an image file; images are read in JPEG, PNG, GIF",
        tmp_path: "not a file",
        tmp_path / "nowhere.jpg": "no such file",
    }
    for path, shown in cases.items():
        # no model at all: the image is refused before the checkpoint is even looked at
        assert main(["generate", str(tmp_path / "no-model"), "--prompt", "<image> a", "--image", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and f"--image {path}: {shown}" in err


def test_damaged_run_directory_is_one_line(tmp_path, capsys):
    from pipeline.cli import main
    from train.config import TrainConfig

    dcp_dir = tmp_path / "checkpoint_0000001" / "dcp"
    dcp_dir.mkdir(parents=True)
    cases = [
        ('{"optim": {"lr": "fast"}', None, r"config.json \(the run's config\): Invalid JSON"),
        ('{"optim": {"lr": "fast"}}', None, r"config.json \(the run's config\): optim.lr: Input should be a valid num"),
        (TrainConfig().model_dump_json(), None, r"dcp: no .metadata \(an incomplete or damaged checkpoint\)"),
        (
            TrainConfig().model_dump_json(),
            b"\x80\x04garbage",
            r"dcp/.metadata: not a checkpoint's metadata \(pickle data was truncated\)",
        ),
    ]
    for config, metadata, shown in cases:
        (tmp_path / "config.json").write_text(config)
        if metadata is not None:
            (dcp_dir / ".metadata").write_bytes(metadata)
        assert main(["generate", str(tmp_path), "--prompt", "a"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        line = next(ln for ln in err.splitlines() if ln.startswith("interloom generate: error: "))
        assert re.search(shown, line), line


class _Planted:
    """Unpickled, it creates the file `marker` (what any pickled global could do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_metadata_pickle_runs_no_code(tmp_path, capsys):
    """A checkpoint's dcp/.metadata is a pickle, which DCP read with pickle.load: a run directory from elsewhere
    given to generate, eval, export model or --init-from ran the code it named (here: builtins.open creating a
    file). Now only the classes DCP writes are unpickled; anything else is one line naming the file."""
    import pickle

    import torch.distributed.checkpoint as dcp

    from pipeline.cli import main
    from train.checkpoint import safe_reader
    from train.config import TrainConfig

    dcp_dir = tmp_path / "checkpoint_0000001" / "dcp"
    dcp_dir.mkdir(parents=True)
    (tmp_path / "config.json").write_text(TrainConfig().model_dump_json())
    marker = tmp_path / "ran"
    (dcp_dir / ".metadata").write_bytes(pickle.dumps(_Planted(str(marker))))
    for argv in (["generate", str(tmp_path), "--prompt", "a"], ["export", "model", str(tmp_path), str(tmp_path / "o")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and not marker.exists()
        assert re.search(r"dcp/.metadata: not a checkpoint's metadata \(names (io|builtins).open, which", err)
    # what DCP itself writes still loads through the safe reader
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16), "meta": {"step": 3}}
    dcp.save(state, checkpoint_id=str(tmp_path / "good"), no_dist=True)
    back = {"w": torch.zeros(2, 3), "b": torch.zeros(2, dtype=torch.bfloat16), "meta": {"step": 0}}
    dcp.load(back, storage_reader=safe_reader(tmp_path / "good"), no_dist=True)
    assert torch.equal(back["w"], state["w"]) and torch.equal(back["b"], state["b"]) and back["meta"] == {"step": 3}


def test_a_run_config_claiming_sizes_its_checkpoint_lacks_is_refused_before_allocating(tmp_path, capsys):
    """A run directory whose config.json claims a model its checkpoint does not hold (a vocabulary of 2**40
    rows): generate/eval/export built that VLM before reading the checkpoint (an allocator RuntimeError
    traceback; smaller claims simply allocate). Now the checkpoint's metadata is compared with a VLM on the
    meta device first, one line naming the tensor."""
    import torch.distributed.checkpoint as dcp

    from pipeline.cli import main
    from train.config import TrainConfig
    from train.export import init_from_config
    from train.model.config import ModelConfig
    from train.model.vlm import VLM

    small = {"vocab_size": 128, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ffn": 128}
    cfg = ModelConfig.model_validate(
        ModelConfig().model_dump() | small | {"vision": {"patch_size": 8, "d_vit": 32, "n_layers": 1, "n_heads": 2}}
    )
    dcp.save({"model": VLM(cfg).state_dict()}, checkpoint_id=str(tmp_path / "checkpoint_0000001" / "dcp"))
    (tmp_path / "config.json").write_text(TrainConfig(model=cfg).model_dump_json())
    for claim, shown in (
        ({"vocab_size": 2**40}, r"model.decoder.tok_embeddings.weight is \(128, 64\) in the checkpoint, the run's "),
        ({"n_layers": 3}, r"model.decoder.layers.2.\S+ is missing in the checkpoint"),
    ):
        data = TrainConfig(model=cfg).model_dump(mode="json")
        data["model"] |= claim
        (tmp_path / "config.json").write_text(json.dumps(data))
        assert main(["generate", str(tmp_path), "--prompt", "a"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1 and re.search(shown, err), err
        with pytest.raises(ValueError, match=shown):  # --init-from RUN: refused before the workers build it
            init_from_config(TrainConfig(), tmp_path, tmp_path / "new-run")


@pytest.mark.parametrize(
    "option,shown",
    [
        (["--temperature", "-1"], "--temperature=-1.0: must be >= 0"),
        (["--temperature", "nan"], "--temperature=nan: must be >= 0"),
        (["--top-p", "5"], "--top-p=5.0: must be in (0, 1]"),
        (["--top-p", "0"], "--top-p=0.0: must be in (0, 1]"),
    ],
)
def test_bad_sampling_options_are_refused_before_the_model_loads(tmp_path, capsys, option, shown):
    from pipeline.cli import main

    assert main(["generate", str(tmp_path / "no-model"), "--prompt", "a", *option]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and shown in err


@pytest.mark.parametrize(
    "device,shown",
    [("bogus", "--device 'bogus': not a torch device"), ("cuda:99", "--device 'cuda:99': this machine has")],
)
def test_a_device_this_machine_lacks_is_one_line_before_the_model_loads(tmp_path, capsys, device, shown):
    """A misspelt --device was a torch RuntimeError traceback after the model had loaded."""
    from pipeline.cli import main

    for argv in (
        ["generate", str(tmp_path / "no-model"), "--prompt", "a", "--device", device],
        ["eval", str(tmp_path / "no-model"), "--corpus", str(tmp_path), "--device", device],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and shown in err, err
