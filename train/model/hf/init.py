"""Starting a training run from a pretrained decoder (`interloom train --init-llm DIR`).

- `pretrained_tokenizer(dir)`: the model's own tokenizer.json with our special tokens (train/batch.py
  SPECIAL_TOKENS) added where it lacks them (appended after its vocabulary), and the ids so added
- `init_llm_config(cfg, dir, run_dir)`: the TrainConfig whose decoder is the folder's architecture and
  whose tokenizer is that extended tokenizer (written to RUN_DIR/tokenizer.json); the trainer then sizes
  the vocabulary from it as for any tokenizer (a multiple of 64)
- `init_decoder(decoder, dir)`: the folder's weights into a built decoder (`build_model`), shard by shard
  (checkpoint.load_decoder_into): embedding (and untied LM head) rows cut or grown to the run's
  vocabulary, grown rows and the rows of the added special tokens starting at the mean of the pretrained
  rows (Hewitt 2021: the new tokens start as the average word, not as noise that dominates the softmax),
  so the model's predictions for ordinary text do not change; with `model.init_upcycle` a dense folder
  becomes an MoE of the recipe's moe.n_experts / moe.top_k by sparse upcycling (as convert.upcycle), its
  first forward equal to the dense model's
"""

from __future__ import annotations

import logging
from pathlib import Path

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from train.batch import SPECIAL_TOKENS
from train.model.decoder import Decoder
from train.model.hf.checkpoint import check_decoder_fits, check_weight_files, load_decoder_into, read_hf_config
from train.model.hf.convert import FAMILIES, config_from_hf, upcycle_config
from train.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def pretrained_tokenizer(model_dir: str | Path) -> tuple[Tokenizer, list[int]]:
    """(the folder's tokenizer.json with our special tokens, the ids of the special tokens added)."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{model_dir}: no tokenizer.json (the model's own tokenizer is needed for --init-llm)")
    try:
        hf = HFTokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception on a damaged file
        raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None
    missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    added = [i for i in map(hf.token_to_id, missing) if i is not None]
    assert len(added) == len(missing), "tokenizers gave no id to an added special token"
    return Tokenizer(hf, str(path)), added


def init_llm_config(cfg, model_dir: str | Path, run_dir: str | Path):
    """`cfg` (a TrainConfig) with the decoder architecture of `model_dir`, model.init_llm set, and the
    model's extended tokenizer written to RUN_DIR/tokenizer.json as data.tokenizer."""
    model_dir = Path(model_dir).resolve()
    tok, added = pretrained_tokenizer(model_dir)
    tok_path = Path(run_dir).resolve() / "tokenizer.json"
    tok.save(tok_path)
    hf_cfg = read_hf_config(model_dir)
    model = config_from_hf(hf_cfg, cfg.model, where=str(model_dir / "config.json"))
    check_weight_files(model_dir)  # a damaged folder is refused here, before Ray starts, not in the workers
    if cfg.model.init_upcycle:
        if FAMILIES[hf_cfg["model_type"]].moe:
            raise ValueError(f"model.init_upcycle: {model_dir} is already an MoE ({hf_cfg['model_type']})")
        model = upcycle_config(model, cfg.model.moe.n_experts, cfg.model.moe.top_k)
    check_decoder_fits(model, model_dir)  # every weight's shape from the headers, before a worker allocates
    data = cfg.model_dump()
    data["model"] = model.model_dump() | {"init_llm": str(model_dir)}
    data["data"]["tokenizer"] = str(tok_path)
    log.info("init-llm %s: %d tokens, %d special tokens added", model_dir, tok.vocab_size, len(added))
    return type(cfg).model_validate(data)


def init_decoder(decoder: Decoder, model_dir: str | Path) -> None:
    """Load a pretrained folder into a decoder built from `init_llm_config`'s config (vocabulary sized from
    the extended tokenizer), shard by shard (`load_decoder_into`): weights copied, vocabulary rows resized
    and initialised as above, upcycled if the run's decoder is an MoE and the folder dense."""
    _, added = pretrained_tokenizer(model_dir)
    fam = load_decoder_into(decoder, model_dir, new_token_ids=added)
    log.info("decoder initialised from %s (%s), vocabulary %d", model_dir, fam.model_type, decoder.cfg.vocab_size)
