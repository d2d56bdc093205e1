"""Config of the dedup stage (one `Section`, defaults in code)."""

from __future__ import annotations

from pydantic import Field, model_validator

from corpus.config import Section


class DedupConfig(Section):
    """Which dedup passes run and their parameters.

    `num_perm` must equal `bands * rows` (FineWeb's 14 x 8 = 112 by default: pairs with Jaccard ~0.75 are
    found with probability 1/2, >= 0.85 with > 0.95).
    """

    url: bool = True  # same normalised URL: keep the latest fetch
    exact: bool = True  # same normalised text: keep the best quality
    minhash: bool = True  # near-duplicate text (MinHash LSH + union-find)
    num_perm: int = Field(112, ge=1)
    bands: int = Field(14, ge=1)
    rows: int = Field(8, ge=1)
    ngram: int = Field(5, ge=1)  # words per shingle (characters for CJK)
    seed: int = 1  # of the MinHash permutations
    verify: bool = True  # keep an LSH candidate pair only when its estimated Jaccard >= jaccard_threshold
    jaccard_threshold: float = Field(0.8, ge=0.0, le=1.0)
    max_bucket_pairs: int = Field(32, ge=2)  # buckets up to this size emit all pairs, larger ones a star
    images: bool = True  # drop images that appear in too many documents
    image_hamming: int = Field(4, ge=0, le=16)  # pHash Hamming distance that counts as the same image
    image_max_docs: int = Field(10, ge=1)  # an image in more documents than this is dropped everywhere
    partitions: int = Field(8, ge=1)  # hash partitions of the LSH band keys (one Ray task each)

    @model_validator(mode="after")
    def _check_bands(self) -> DedupConfig:
        if self.bands * self.rows != self.num_perm:
            raise ValueError(f"dedup: num_perm ({self.num_perm}) must equal bands x rows ({self.bands} x {self.rows})")
        return self
