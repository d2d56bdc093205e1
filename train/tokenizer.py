"""Byte-level BPE tokenizer for interloom: trained with Hugging Face `tokenizers` on a corpus's text blocks,
with the special tokens of `train/batch.py` (`SPECIAL_TOKENS`) first, so their ids are 0..5 in that order.

Text from the web is encoded with `encode_special_tokens=True`: a page that literally contains `<|image|>`
gets ordinary byte tokens for it, never the image placeholder id (no placeholder injection from crawled text).
"""

from __future__ import annotations

import itertools
import logging
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from corpus.format import Corpus
from train.batch import SPECIAL_TOKENS

log = logging.getLogger(__name__)


class Tokenizer:
    """A loaded tokenizer.json plus the ids of the special tokens the loader needs."""

    def __init__(self, hf: HFTokenizer, where: str = "<memory>"):
        self.hf = hf
        self.hf.encode_special_tokens = True
        ids = [hf.token_to_id(t) for t in SPECIAL_TOKENS]
        missing = [t for t, i in zip(SPECIAL_TOKENS, ids) if i is None]
        if missing:
            raise ValueError(
                f"tokenizer {where} lacks special token(s) {missing}; train one with "
                "`interloom tokenizer train CORPUS --output tokenizer.json`"
            )
        self.pad_id, self.bos_id, self.eos_id, self.img_start_id, self.image_id, self.img_end_id = ids
        self.special_ids = frozenset(ids)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"tokenizer file not found: {p}")
        try:
            hf = HFTokenizer.from_file(str(p))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"tokenizer file {p} is not a valid tokenizer.json: {e}") from None
        return cls(hf, str(p))

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)


MAX_VOCAB = 2**31 - 1


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on `texts`. The 256 byte symbols are always in the vocabulary, so any text
    encodes (no unknown token); vocab_size counts them, the special tokens and the merges."""
    n_min = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= n_min:
        raise ValueError(
            f"vocab_size={vocab_size} must exceed {n_min} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    if vocab_size > MAX_VOCAB:  # tokenizers' trainer raised OverflowError past its integer type
        raise ValueError(f"vocab_size={vocab_size} is over {MAX_VOCAB:,} (token ids are 32-bit)")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)


def corpus_texts(
    corpus: str | Path, max_documents: int | None = None, skipped: list[str] | None = None
) -> Iterator[str]:
    """Text blocks of a corpus, in manifest order (images are not read). A damaged shard (not a tar, cut
    short, a sample that does not decode, or missing) is skipped from where it breaks, logged, and named in
    `skipped` as "path: why", as the training loader does; the documents before the damage are read."""
    c = Corpus(corpus)
    bar = tqdm(desc="tokenizer: reading text", unit="doc", leave=False)
    n = 0
    try:
        for shard in c.shards():
            path = c.shard_path(shard)
            try:
                for doc in c.iter_shard(shard, with_images=False):
                    if max_documents is not None and n >= max_documents:
                        return
                    n += 1
                    bar.update()
                    yield from doc.text_blocks
            except (ValueError, OSError, tarfile.TarError) as e:
                log.warning("tokenizer: skipping the rest of %s: %s", path, e)
                if skipped is not None:
                    skipped.append(f"{path}: {e}")
    finally:
        bar.close()


def train_from_corpus(
    corpus: str | Path, output: str | Path, vocab_size: int = 2048, max_documents: int | None = None
) -> tuple[Tokenizer, list[str]]:
    """Train on `corpus` and save to `output`; returns the tokenizer and the damaged shards skipped."""
    skipped: list[str] = []
    texts = corpus_texts(corpus, max_documents, skipped)
    first = next(texts, None)
    if first is None:
        raise ValueError(
            f"{corpus}: no text to train a tokenizer on"
            + (f" ({len(skipped)} damaged shard(s) skipped: {skipped[0]})" if skipped else "")
        )
    tok = train_tokenizer(itertools.chain([first], texts), vocab_size=vocab_size)
    tok.save(output)
    return tok, skipped
