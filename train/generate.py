"""Text generation from a trained VLM (`interloom generate`): a prompt with images -> continuation.

  load_inference_model   a run directory / checkpoint (DCP) or an `interloom export model` folder ->
                         (VLM in eval mode, Tokenizer, DataConfig for image sizing)
  encode_prompt          "<bos> text <img_start> <image> x M <img_end> text ..." exactly as the loader lays a
                         document out (train/data/encode.py), one image per `<image>` in the prompt text
  prompt_embeddings      token embeddings with the image tokens scattered in (VLM.embed's rule)
  generate               prefill the KV cache with the prompt, then one token per step from the cache
                         (decoder.py `forward_cached`): greedy (temperature 0) or sampling with temperature
                         and nucleus (top-p), seeded; stops at <eos> or after max_new_tokens
  full_logits            the uncached reference: one ordinary decoder forward over the whole sequence

Shape legend: T tokens   D model dim   V vocab   N patches   P values per patch   I images   M image tokens
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image as PILImage

from corpus.config import load_json_model
from corpus.imagefile import WEB_FORMATS, open_image, unsupported_format
from train.data import DataConfig
from train.data.collate import normalise
from train.data.encode import DocumentEncoder
from train.model.decoder import KVCache
from train.model.vlm import VLM
from train.tokenizer import Tokenizer

IMAGE_MARK = "<image>"


@dataclass
class Prompt:
    ids_T: torch.Tensor  # int64 token ids, <bos> first
    pixel_values_NP: torch.Tensor  # float32 normalised patches of all images, in prompt order
    grid_hw_I2: torch.Tensor  # int64 (h, w) in patches per image


def load_inference_model(path: str | Path) -> tuple[VLM, Path, DataConfig]:
    """A run directory or checkpoint directory (train/export.py `find_checkpoint`), or an exported folder
    (has interloom_model.json): the model in eval mode (float32), its tokenizer.json, and the data config
    (the run's; from an exported folder its interloom_data.json, or the defaults when it has none)."""
    from train.export import DATA_CONFIG, VLM_CONFIG, load_exported_vlm, load_trained_model

    p = Path(path)
    if (p / VLM_CONFIG).is_file():
        model = load_exported_vlm(p).float()
        if not (p / "tokenizer.json").is_file():
            raise ValueError(f"{p}: exported model has no tokenizer.json")
        data = load_json_model(DataConfig, p / DATA_CONFIG) if (p / DATA_CONFIG).is_file() else DataConfig()
        return model, p / "tokenizer.json", data
    model, cfg, _ = load_trained_model(p)
    return model.float(), Path(cfg.data.tokenizer), cfg.data


def torch_device(name: str) -> torch.device:
    """`--device NAME` as a torch device this machine has; otherwise one ValueError line (torch raises a
    RuntimeError for a misspelt name and fails only when the model moves for a missing CUDA)."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r}: not a torch device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: this machine has no CUDA device (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def read_image_file(path: str | Path) -> bytes:
    """The bytes of an --image file, checked to decode (before a model is loaded): a missing, truncated or
    non-image file, or a decompression bomb, is one ValueError line naming it."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--image {p}: {'not a file' if p.exists() else 'no such file'}")
    data = p.read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with open_image(data) as im:
                im.draft("RGB", (512, 512))  # JPEG: a reduced decode still reads every byte of the file
                im.load()
    except PILImage.UnidentifiedImageError:
        fmt = unsupported_format(data)
        known = f"a {fmt} file" if fmt else "not an image file"
        raise ValueError(f"--image {p}: {known}; images are read in {', '.join(WEB_FORMATS)}") from None
    except Exception as e:  # noqa: BLE001 - OSError, bombs, and what Pillow's decoders raise untyped
        raise ValueError(f"--image {p}: not an image that decodes ({type(e).__name__}: {e})") from None
    return data


def encode_prompt(
    prompt: str, images: list[bytes], tok: Tokenizer, data: DataConfig, patch_size: int, merge: int = 2
) -> Prompt:
    """Token ids and pixels of a prompt whose `<image>` marks are replaced, in order, by `images`."""
    parts = prompt.split(IMAGE_MARK)
    if len(parts) - 1 != len(images):
        raise ValueError(f"prompt has {len(parts) - 1} {IMAGE_MARK} mark(s) but {len(images)} image(s) were given")
    encoder, counters = DocumentEncoder(tok, data, patch_size, merge), Counter[str]()
    ids, patches, grids = [tok.bos_id], [], []
    for i, text in enumerate(parts):
        ids.extend(tok.encode(text) if text else [])
        if i == len(images):
            break
        got = encoder.image(images[i], counters)
        if got is None:
            why = ", ".join(k.split(":", 1)[-1] for k in counters)
            raise ValueError(f"image {i + 1} of the prompt cannot be used: {why}")
        patches_NP, (gh, gw) = got
        ids.extend([tok.img_start_id] + [tok.image_id] * ((gh // merge) * (gw // merge)) + [tok.img_end_id])
        patches.append(torch.from_numpy(normalise(patches_NP, data.image_mean, data.image_std)))
        grids.append((gh, gw))
    P = 3 * patch_size * patch_size
    pixels_NP = torch.cat(patches) if patches else torch.zeros(0, P)
    return Prompt(torch.tensor(ids, dtype=torch.long), pixels_NP, torch.tensor(grids, dtype=torch.long).view(-1, 2))


def prompt_embeddings(model: VLM, prompt: Prompt) -> torch.Tensor:
    """x_1TD: token embeddings, the `<|image|>` positions replaced in order by the image tokens."""
    device = model.decoder.tok_embeddings.weight.device
    ids_1T = prompt.ids_T[None].to(device)
    x_1TD = model.decoder.tok_embeddings(ids_1T)
    is_image_1T = ids_1T == model.cfg.image_token_id
    if prompt.grid_hw_I2.shape[0] == 0:
        return x_1TD
    img_MD = model.adapter(model.vision(prompt.pixel_values_NP.to(device, x_1TD.dtype), prompt.grid_hw_I2.to(device)))
    assert int(is_image_1T.sum()) == img_MD.shape[0], "image token count differs from the image grids"
    return x_1TD.masked_scatter(is_image_1T[..., None], img_MD.to(x_1TD.dtype))


@torch.no_grad()
def full_logits(model: VLM, prompt: Prompt) -> torch.Tensor:
    """Uncached reference: logits_TV of one ordinary decoder forward over the prompt's tokens."""
    x_1TD = prompt_embeddings(model, prompt)
    T = x_1TD.shape[1]
    h_1TD, _ = model.decoder(
        x_1TD, torch.arange(T, device=x_1TD.device)[None], torch.zeros(1, T, dtype=torch.int32, device=x_1TD.device)
    )
    return model.decoder.output(h_1TD[0]).float()


def _sample(logits_V: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """Greedy at temperature 0; otherwise softmax(logits / temperature) cut to the smallest set of tokens
    whose probability reaches top_p (nucleus), renormalised, and sampled with `gen`."""
    if temperature <= 0:
        return int(logits_V.argmax())
    probs_V = torch.softmax(logits_V.float() / temperature, dim=-1)
    sorted_V, order_V = probs_V.sort(descending=True)
    keep_V = sorted_V.cumsum(0) - sorted_V < top_p  # the top token is always kept
    sorted_V = sorted_V * keep_V
    choice = torch.multinomial(sorted_V / sorted_V.sum(), 1, generator=gen)
    return int(order_V[choice])


@torch.no_grad()
def generate(
    model: VLM,
    prompt: Prompt,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
) -> list[int]:
    """New token ids after the prompt (the <eos> that stops it included), decoded with the KV cache."""
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p}: must be in (0, 1]")
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: must be >= 0 (0 = greedy)")
    gen = torch.Generator().manual_seed(seed)
    cache = KVCache.empty(len(model.decoder.layers))
    h_1TD = model.decoder.forward_cached(prompt_embeddings(model, prompt), cache)
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = _sample(model.decoder.output(h_1TD[0, -1]).float().cpu(), temperature, top_p, gen)
        out.append(token)
        if token == eos_id:
            break
        x_11D = model.decoder.tok_embeddings(torch.tensor([[token]], device=h_1TD.device))
        h_1TD = model.decoder.forward_cached(x_11D, cache)
    return out
