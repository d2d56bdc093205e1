"""Tiny stand-ins for a pretrained model folder's own files, shared by the Hugging Face interop tests."""

from __future__ import annotations

from pathlib import Path


def bpe_tokenizer(path: Path, texts: list[str]) -> None:
    """A model's own byte-level BPE tokenizer.json (without interloom's special tokens), trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts * 20,
        trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    tok.save(str(path / "tokenizer.json"))
