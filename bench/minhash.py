"""MinHash signatures/s: interloom's vectorised MinHasher vs datasketch.MinHash, same documents, same run.

Documents: the real article texts of the dev set (scrapinghub ground truth), repeated to --docs documents.
Both sides start from the same normalised text and the same word 5-gram shingles with the same num_perm:
- ours: `MinHasher.shingle_hashes` (code-point polynomial hash, numpy, sorted) + `MinHasher.signatures`
  (one-permutation hashing: the first hash of each of num_perm hash-range bins, optimal densification of
  empty bins; no shingles x permutations matrix);
- datasketch: shingle strings -> `MinHash(num_perm, permutations=shared).update_batch(...)` + `digest()`
  (its fastest documented CPU path: permutations generated once and shared), and the plain
  `MinHash(num_perm)` constructor as most code calls it.
Normalisation (shared by both) is timed separately. Run: .venv/bin/python -m bench.minhash
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from filters.dedup.minhash import MinHasher
from filters.dedup.text import char_classes, codepoints_to_str, normalize_codepoints

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
GROUND_TRUTH = REAL / "dev" / "html" / "scrapinghub" / "ground-truth.json"


def load_texts(n_docs: int) -> list[str]:
    if not GROUND_TRUTH.is_file():
        raise SystemExit(f"../shared/data/real not present: {GROUND_TRUTH} is needed")
    gt = json.loads(GROUND_TRUTH.read_text(encoding="utf-8"))
    base = [v["articleBody"] for _, v in sorted(gt.items())]
    return [base[i % len(base)] for i in range(n_docs)]


def word_shingles(normalized: str, ngram: int) -> list[bytes]:
    words = normalized.split(" ")
    return [" ".join(words[i : i + ngram]).encode("utf-8") for i in range(max(1, len(words) - ngram + 1))]


def best_of(repeats: int, *fns) -> list[float]:
    """Best wall time of each function over `repeats` rounds; the functions alternate inside a round so that
    background load on a shared machine hits all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--bands", type=int, default=14)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from datasketch import MinHash

    num_perm = args.bands * args.rows
    texts = load_texts(args.docs)
    char_classes()  # build the lookup table outside the timings
    (t_norm,) = best_of(1, lambda: [normalize_codepoints(t) for t in texts])
    cps = [normalize_codepoints(t) for t in texts]
    normalized = [codepoints_to_str(c) for c in cps]
    n_shingles = sum(len(set(word_shingles(t, args.ngram))) for t in normalized)
    hasher = MinHasher(args.bands, args.rows, args.ngram, seed=1)

    def ours() -> None:
        hasher.signatures([hasher.shingle_hashes(c, False) for c in cps])

    proto = MinHash(num_perm=num_perm, seed=1)

    def datasketch_shared() -> None:
        for t in normalized:
            m = MinHash(num_perm=num_perm, seed=1, permutations=proto.permutations, scheme=proto.scheme)
            m.update_batch(word_shingles(t, args.ngram))
            m.digest()

    n_plain = max(1, args.docs // 5)

    def datasketch_plain() -> None:
        for t in normalized[:n_plain]:
            m = MinHash(num_perm=num_perm, seed=1)
            m.update_batch(word_shingles(t, args.ngram))
            m.digest()

    t_ours, t_ds, t_plain = best_of(args.repeats, ours, datasketch_shared, datasketch_plain)
    t_plain *= args.docs / n_plain
    rate = {
        name: args.docs / t
        for name, t in [("ours", t_ours), ("datasketch_shared", t_ds), ("datasketch_plain", t_plain)]
    }
    print(
        f"documents: {args.docs} (mean {n_shingles / args.docs:.0f} distinct shingles), num_perm {num_perm} "
        f"({args.bands}x{args.rows}), word {args.ngram}-grams"
    )
    print(f"normalisation (shared, not in the rates): {args.docs / t_norm:,.0f} docs/s")
    print(f"{'implementation':<44}{'signatures/s':>14}{'ours is':>10}")
    print(f"{'interloom MinHasher (one-permutation, numpy)':<44}{rate['ours']:>14,.0f}{'1.0x':>10}")
    print(
        f"{'datasketch MinHash, shared permutations':<44}{rate['datasketch_shared']:>14,.0f}"
        f"{rate['ours'] / rate['datasketch_shared']:>9.1f}x"
    )
    print(
        f"{'datasketch MinHash(num_perm) per document':<44}{rate['datasketch_plain']:>14,.0f}"
        f"{rate['ours'] / rate['datasketch_plain']:>9.1f}x"
    )
    sig = hasher.signatures([hasher.shingle_hashes(cps[0], False)])
    assert sig.shape == (1, num_perm) and np.all(sig[0] < np.uint32(0xFFFFFFFF))


if __name__ == "__main__":
    main()
