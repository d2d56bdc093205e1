"""Deduplication: URL, exact text, MinHash near-duplicates and image pHash, global and deterministic.

Build API:
- phase 1 (per unit): `InDocumentImageDedup(max_distance)` step "image_dedup";
- phase 2 (global): `run_dedup(staged_paths, work_dir, cfg, corpus_dir) -> DedupResult`;
- phase 3 (per unit): `ApplyDedup(result)` step "dedup".
"""

from filters.dedup.apply import ApplyDedup
from filters.dedup.config import DedupConfig
from filters.dedup.images import InDocumentImageDedup, image_phash
from filters.dedup.minhash import MinHasher, estimate_jaccard
from filters.dedup.passes import DedupResult, run_dedup
from filters.dedup.text import normalize_text, normalize_url

__all__ = [
    "ApplyDedup",
    "DedupConfig",
    "DedupResult",
    "InDocumentImageDedup",
    "MinHasher",
    "estimate_jaccard",
    "image_phash",
    "normalize_text",
    "normalize_url",
    "run_dedup",
]
