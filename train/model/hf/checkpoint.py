"""Reading and writing Hugging Face model folders (config.json + safetensors), and token-id logits.

A folder holds `config.json` and either `model.safetensors` or shards listed by
`model.safetensors.index.json` ({"weight_map": {key: file}}). Tensors are read lazily, one at a time, from
memory-mapped safetensors files. Nothing is downloaded: a path that is not such a folder is a ValueError.

  load_decoder_into(decoder, dir)  the weights of a folder copied straight into a built decoder, one shard
                                   open at a time, one tensor read at a time (peak memory: the model plus the
                                   open shard's pages, never a second copy of the weights); with the
                                   vocabulary resize and sparse upcycling of `--init-llm` applied per tensor.
                                   What `build_model`, `load_exported_vlm` use
  load_pretrained_decoder(dir)     (our config, a state dict, family): the whole state at once, for small
                                   models and tests
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from train.model.config import ModelConfig
from train.model.decoder import Decoder
from train.model.hf.convert import (
    FAMILIES,
    Family,
    config_from_hf,
    config_to_hf,
    infer_family,
    key_map,
    mismatch,
    state_from_hf,
    state_to_hf,
)

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_json_object(path: str | Path) -> dict:
    """The JSON object in the file `path`; a file that cannot be read, is not UTF-8 JSON or holds no object
    is one ValueError line naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise ValueError(f"{path}: not valid JSON (nested too deep)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a JSON {type(data).__name__}, not an object")
    return data


def read_hf_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{model_dir}: no config.json (expected a local Hugging Face model folder)")
    return read_json_object(path)


@contextmanager
def open_safetensors(path: Path) -> Iterator:
    """`safe_open(path)`; a missing, truncated or garbled file is a ValueError naming it."""
    try:
        handle = safe_open(path, "pt")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    with handle as f:
        yield f


def read_tensor(f, path: Path, key: str) -> torch.Tensor:
    """One tensor of an open safetensors file; a damaged one is a ValueError naming the file and key."""
    try:
        return f.get_tensor(key)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot read {key} ({e})") from None


def weight_files(model_dir: Path) -> dict[str, Path]:
    """HF key -> safetensors file that holds it. An index that is not JSON, lacks its weight_map, names a
    file outside the folder or one that is missing is a ValueError naming the index and the file."""
    index = model_dir / INDEX
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise ValueError(f"{index}: no weight_map object of tensor name -> file name")
        files = {}
        for name in sorted(set(weight_map.values())):
            if Path(name).name != name or name in (".", ".."):
                raise ValueError(f"{index}: weight_map names {name!r}, not a file of the folder")
            if not (model_dir / name).is_file():
                key = next(k for k, f in weight_map.items() if f == name)
                raise ValueError(f"{index}: weight_map lists {name} (for {key}, ...), which is missing")
            files[name] = model_dir / name
        return {k: files[f] for k, f in weight_map.items()}
    if (model_dir / SINGLE).is_file():
        with open_safetensors(model_dir / SINGLE) as f:
            return dict.fromkeys(f.keys(), model_dir / SINGLE)
    raise ValueError(f"{model_dir}: neither {SINGLE} nor {INDEX} (only safetensors checkpoints are read)")


def check_weight_files(model_dir: str | Path) -> None:
    """Every safetensors file of a folder opens (its header read, no tensor): a damaged folder is refused
    where its config is read, before a run starts, not in the middle of loading."""
    for path in sorted(set(weight_files(Path(model_dir)).values())):
        with open_safetensors(path):
            pass


def read_hf_state(model_dir: str | Path, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """HF tensors of a folder (all, or `keys`), read from its safetensors file(s)."""
    files = weight_files(Path(model_dir))
    with ExitStack() as stack:
        handles = {p: stack.enter_context(open_safetensors(p)) for p in set(files.values())}
        return {k: read_tensor(handles[files[k]], files[k], k) for k in (keys or files)}


def load_pretrained_decoder(
    model_dir: str | Path, base: ModelConfig | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor], Family]:
    """(our config, our decoder state dict, the family) of a local HF model folder. `base` supplies what
    the folder does not say (vision tower, contrastive head, attention backend, MoE loss weights)."""
    model_dir = Path(model_dir)
    hf_cfg = read_hf_config(model_dir)
    cfg = config_from_hf(hf_cfg, base, where=str(model_dir / "config.json"))
    fam = FAMILIES[hf_cfg["model_type"]]
    files = weight_files(model_dir)
    with ExitStack() as stack:
        handles = {p: stack.enter_context(open_safetensors(p)) for p in set(files.values())}

        def get(key: str) -> torch.Tensor:
            if key not in files:
                raise ValueError(f"{model_dir}: checkpoint lacks {key} (needed by {fam.model_type})")
            return read_tensor(handles[files[key]], files[key], key)

        state = state_from_hf(get, cfg, fam)
    log.info(
        "loaded %s decoder from %s: %d layers, d_model %d, vocab %d",
        fam.model_type,
        model_dir,
        cfg.n_layers,
        cfg.d_model,
        cfg.vocab_size,
    )
    return cfg, state, fam


EMBEDDING_KEYS = ("tok_embeddings.weight", "output.weight")
ARCHITECTURE = ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "qk_norm", "qkv_bias", "tie_embeddings")


def _fill_rows(dest_VD: torch.Tensor, src_VD: torch.Tensor, new_ids: Sequence[int]) -> None:
    """Embedding rows: the pretrained ones where both have them; rows beyond them and the rows of `new_ids`
    (special tokens added to the tokenizer) the mean of the pretrained rows (Hewitt 2021: a new token starts
    as the average word, not as noise that dominates the softmax)."""
    mean_D = src_VD.float().mean(dim=0).to(dest_VD.dtype)
    keep = min(src_VD.shape[0], dest_VD.shape[0])
    dest_VD[:keep].copy_(src_VD[:keep])
    dest_VD[keep:] = mean_D
    dest_VD[[i for i in new_ids if i < dest_VD.shape[0]]] = mean_D


def header_tensor(f, path: Path, key: str) -> torch.Tensor:
    """A tensor of the shape the safetensors header gives `key`, on the meta device (nothing read)."""
    try:
        return torch.empty(f.get_slice(key).get_shape(), device="meta")
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot read {key} ({e})") from None


M = TypeVar("M", bound=torch.nn.Module)


def build_on_meta(build: Callable[[], M], where: str | Path, what: str) -> M:
    """`build()` on the meta device: the module's tensors have shapes and no memory. A config whose sizes are
    past what a tensor can hold is a ValueError naming `where` (`what`: the module, for the message)."""
    try:
        with torch.device("meta"):
            return build()
    except (RuntimeError, OverflowError) as e:
        raise ValueError(f"{where}: no {what} has these sizes ({' '.join(str(e).split())[:200]})") from None


def check_layer_count(n_layers: int, keys: Iterable[str], layer_key: re.Pattern[str], where: Path, what: str) -> None:
    """The weights `keys` hold layers 0..n_layers-1 by `layer_key` (group 1: the layer number), or a
    ValueError naming `where` and both counts (`what`: "decoder", "vision")."""
    layers = {int(m.group(1)) for k in keys if (m := layer_key.search(k))}
    held = max(layers) + 1 if layers else 0
    if n_layers != held:
        raise ValueError(f"{where}: the config says {n_layers} {what} layers, the weights hold {held}")


_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")
_EXPERT_KEY = re.compile(r"\.experts\.(\d+)\.")


def check_decoder_fits(cfg: ModelConfig, model_dir: str | Path, exact_vocab: bool = False) -> None:
    """The folder's weights have the shapes a decoder of `cfg` needs, checked from the safetensors headers
    against a decoder built on the meta device (no memory): a config that claims sizes its weights lack
    (hidden_size 2**40, 10**9 layers, 10**6 experts) is refused naming the tensor before a worker allocates
    a decoder of that size. `exact_vocab`: the embedding has exactly cfg.vocab_size rows (an exported
    folder; --init-llm resizes the vocabulary to the tokenizer's)."""
    model_dir = Path(model_dir)
    files = weight_files(model_dir)
    check_layer_count(cfg.n_layers, files, _LAYER_KEY, model_dir, "decoder")
    experts = {int(m.group(1)) for k in files if (m := _EXPERT_KEY.search(k))}
    if experts and cfg.moe.n_experts != max(experts) + 1:  # (a dense folder upcycled has none)
        raise ValueError(
            f"{model_dir}: the config says {cfg.moe.n_experts} experts, the weights hold {max(experts) + 1}"
        )
    if exact_vocab and "model.embed_tokens.weight" in files:
        path = files["model.embed_tokens.weight"]
        with open_safetensors(path) as f:
            rows = header_tensor(f, path, "model.embed_tokens.weight").shape[0]
        if rows != cfg.vocab_size:
            raise ValueError(f"{path}: model.embed_tokens.weight has {rows} rows, the config {cfg.vocab_size}")
    load_decoder_into(
        build_on_meta(lambda: Decoder(cfg), model_dir / "config.json", "decoder"), model_dir, shapes_only=True
    )


def load_decoder_into(
    decoder: Decoder,
    model_dir: str | Path,
    new_token_ids: Sequence[int] = (),
    router_seed: int = 0,
    shapes_only: bool = False,
) -> Family:
    """Copy a local HF folder's weights into `decoder` (built from a config of the folder's architecture),
    shard by shard and tensor by tensor, so that no second copy of the weights is ever held.

    - the vocabulary may differ (our tokenizer adds special tokens, padded to a multiple of 64): embedding
      and LM-head rows as `_fill_rows`
    - a dense folder into an MoE decoder is sparse upcycling (`convert.upcycle`, Komatsuzaki et al. 2022):
      each dense FFN tensor is copied into every expert, routers drawn N(0, 0.02) from `router_seed`, as
      `upcycle` does, so the first forward equals the dense model's
    Every tensor of the decoder is written exactly once, or the folder is refused (ValueError).
    `shapes_only` (a decoder on the meta device): only the headers are read, to check every shape."""
    model_dir = Path(model_dir)
    where = str(model_dir / "config.json")
    hf_cfg = read_hf_config(model_dir)
    src = config_from_hf(hf_cfg, decoder.cfg, where=where)
    fam, dst = FAMILIES[hf_cfg["model_type"]], decoder.cfg
    if diff := [f for f in ARCHITECTURE if getattr(src, f) != getattr(dst, f)]:
        raise ValueError(f"{model_dir}: its {', '.join(diff)} differ from the run's decoder (model.*)")
    src_moe = [src.is_moe_layer(i) for i in range(src.n_layers)]
    dst_moe = [dst.is_moe_layer(i) for i in range(dst.n_layers)]
    upcycling = not any(src_moe) and any(dst_moe)
    experts = ("n_experts", "d_expert", "shared_hidden", "shared_gate")
    experts_differ = any(dst_moe) and any(getattr(src.moe, f) != getattr(dst.moe, f) for f in experts)
    if not upcycling and (src_moe != dst_moe or experts_differ):  # a dense model's moe.* fields are unused
        raise ValueError(f"{model_dir}: its MoE layers or experts differ from the run's model.moe")
    targets = dict(decoder.named_parameters()) | dict(decoder.named_buffers())
    origin: dict[str, tuple[str, int | None]] = {}  # HF key -> (our key, expert index or None)
    for ours, hf in key_map(src, fam).items():
        for e, key in enumerate([hf] if isinstance(hf, str) else hf):
            origin[key] = (ours, None if isinstance(hf, str) else e)
    files = weight_files(model_dir)
    if missing := sorted(set(origin) - set(files)):
        raise ValueError(f"{model_dir}: checkpoint lacks {missing[0]} (needed by {fam.model_type})")
    by_file: dict[Path, list[str]] = {}
    for key in origin:
        by_file.setdefault(files[key], []).append(key)
    written: set[str] = set()
    with torch.no_grad():
        for path in sorted(by_file):  # one shard mapped at a time; its pages go when it closes
            with open_safetensors(path) as f:
                for key in by_file[path]:
                    ours, expert = origin[key]
                    t = header_tensor(f, path, key) if shapes_only else read_tensor(f, path, key)
                    written.add(_assign(targets, ours, expert, t, upcycling, new_token_ids, f"{path}: {key}"))
        if upcycling:  # the routers upcycle() draws, in the same order
            gen = torch.Generator().manual_seed(router_seed)
            for i in range(dst.n_layers):
                router = targets[f"layers.{i}.ffn.router.weight"]
                if not shapes_only:
                    router.copy_(torch.randn(router.shape, generator=gen) * 0.02)
                written.add(f"layers.{i}.ffn.router.weight")
        for key, t in targets.items():  # no HF family has the expert-selection bias: it starts at 0
            if key.endswith("expert_bias_E"):
                t.zero_()
                written.add(key)
    if left := sorted(set(targets) - written):
        raise ValueError(f"{model_dir}: nothing in the checkpoint for {left[0]} ({len(left)} tensors)")
    if not shapes_only:
        log.info("loaded %s decoder from %s (%d files, one at a time)", fam.model_type, model_dir, len(by_file))
    return fam


_UPCYCLED = {"w1.weight": "w1_EDF", "w3.weight": "w3_EDF", "w2.weight": "w2_EFD"}  # dense FFN -> experts


def _assign(
    targets: dict[str, torch.Tensor],
    ours: str,
    e: int | None,
    t: torch.Tensor,
    upcycling: bool,
    new_token_ids: Sequence[int],
    hf_key: str,
) -> str:
    """Write one HF tensor into its place in the decoder; returns the decoder key written."""
    prefix, _, leaf = ours.rpartition(".ffn.")
    if upcycling and leaf in _UPCYCLED:  # a dense FFN matrix -> the same matrix in every expert
        ours = f"{prefix}.ffn.{_UPCYCLED[leaf]}"
        _check_shape(hf_key, t.T.shape, targets[ours].shape[1:])
        targets[ours].copy_(t.T.expand_as(targets[ours]))
    elif ours in EMBEDDING_KEYS:  # any number of rows (resized), the decoder's width
        if t.dim() != 2 or t.shape[1] != targets[ours].shape[1]:
            raise ValueError(f"{hf_key}: shape {tuple(t.shape)} is not (vocabulary, {targets[ours].shape[1]})")
        _fill_rows(targets[ours], t, new_token_ids)
    elif e is not None:  # one expert's matrix of a stacked (E, ...) weight, transposed
        _check_shape(hf_key, t.T.shape, targets[ours].shape[1:])
        targets[ours][e].copy_(t.T)
    else:
        _check_shape(hf_key, t.shape, targets[ours].shape)
        targets[ours].copy_(t)
    return ours


def _check_shape(hf_key: str, got: torch.Size, want: torch.Size) -> None:
    if got != want:
        raise ValueError(f"{hf_key}: shape {tuple(got)} does not fit the decoder's {tuple(want)}")


def export_decoder(
    decoder: Decoder,
    out_dir: str | Path,
    family: str | None = None,
    max_shard_bytes: int = 5 * 2**30,
    max_position_embeddings: int = 32768,
) -> Family:
    """Write our decoder as an HF folder (config.json + safetensors, sharded with an index above
    `max_shard_bytes`) of `family` (default: the one whose architecture equals ours)."""
    cfg = decoder.cfg
    fam = infer_family(cfg) if family is None else FAMILIES.get(family)
    if fam is None:
        raise ValueError(f"export: unknown family {family!r}; supported: {sorted(FAMILIES)}")
    if why := mismatch(cfg, fam):
        raise ValueError(f"export: the decoder cannot be written as {fam.model_type}: {why}")
    tensors = state_to_hf(decoder.state_dict(), cfg, fam)
    dtype = next(iter(tensors.values())).dtype
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], out / SINGLE, metadata={"format": "pt"})
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, shard in zip(names, shards, strict=True):
            save_file(shard, out / name, metadata={"format": "pt"})
        weight_map = {k: name for name, shard in zip(names, shards, strict=True) for k in shard}
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    hf_cfg = config_to_hf(cfg, fam, max_position_embeddings, dtype)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    log.info("exported %s decoder (%d tensors, %d shard(s)) to %s", fam.model_type, len(tensors), len(shards), out)
    return fam


def decoder_logits(
    decoder: Decoder, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits (B, T, V) of token ids, one document per row; padding (attention_mask 0, left or right) is its
    own segment and its logits are meaningless. Positions count the row's real tokens from 0."""
    valid_BT = (
        torch.ones_like(input_ids_BT, dtype=torch.bool) if attention_mask_BT is None else attention_mask_BT.bool()
    )
    position_ids_BT = (valid_BT.long().cumsum(dim=1) - 1).clamp(min=0)
    segment_ids_BT = torch.where(valid_BT, 0, -1)
    h_BTD, _ = decoder(decoder.tok_embeddings(input_ids_BT), position_ids_BT, segment_ids_BT)
    return decoder.output(h_BTD).float()
