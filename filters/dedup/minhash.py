"""MinHash signatures and LSH band keys, vectorised with numpy (no per-shingle or per-permutation Python).

Pipeline for one document (all steps are numpy array ops over the whole document at once):

1. shingles: the normalised text (`text.normalize_codepoints`) is cut into word `ngram`-grams, or into
   character `ngram`-grams (spaces removed) for CJK text. A text with fewer tokens than `ngram` is one shingle;
   an empty text has none (no signature, never a near-duplicate).
2. shingle hash (64 bit): polynomial hash of the shingle's code points, sum_j cp_j * B^j mod 2^64, read off
   prefix sums of cp_j * B^j and re-based with B^-start (B is odd, so invertible mod 2^64), then the
   MurmurHash3 64-bit finaliser. Equal to hashing each shingle string separately (`shingle_hash_reference`).
3. permutations: `num_perm` universal hash functions h_i(x) = ((a_i * x + b_i) mod 2^64) >> 32 over the
   32-bit folded shingle hash x (multiply-add-shift, Dietzfelbinger 1996: 2-independent for 32-bit keys with
   64-bit a_i, b_i). The modulus is the uint64 wrap-around, so the whole shingles x permutations matrix is
   one multiply, one add and a column min; shifting after the min equals the min after shifting.
   (A prime modulus needs either a 122-bit product or few wrap-arounds; see docs/benchmarks.md.)
4. bands: the `bands` x `rows` signature is cut into bands; each band is hashed to 64 bits (band index mixed
   in) and two documents are LSH candidates when any band hash is equal.

Parameters come from a seeded `numpy.random.Generator`, so signatures are identical across processes/runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from filters.dedup.text import is_cjk_codepoints, normalize_codepoints

U64 = np.uint64
_BASE = U64(0x100000001B3)  # FNV-64 prime, odd -> invertible mod 2^64
_BASE_INV = U64(pow(int(_BASE), -1, 1 << 64))
_M1, _M2 = U64(0xFF51AFD7ED558CCD), U64(0xC4CEB9FE1A85EC53)
_MASK64 = (1 << 64) - 1
_SPACE = 32


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 64-bit finaliser (in place on a uint64 array, also returned)."""
    h ^= h >> U64(33)
    h *= _M1
    h ^= h >> U64(33)
    h *= _M2
    h ^= h >> U64(33)
    return h


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK64
    return h ^ (h >> 33)


def shingle_hash_reference(shingle: str) -> int:
    """Plain-Python hash of one shingle string; the vectorised path must give exactly this."""
    h, p = 0, 1
    for ch in shingle:
        h = (h + ord(ch) * p) & _MASK64
        p = (p * int(_BASE)) & _MASK64
    return _fmix64_int(h)


def shingles_reference(normalized: str, ngram: int, cjk: bool) -> list[str]:
    """Plain-Python shingles of a normalised text (the definition the vectorised path implements)."""
    if cjk:
        chars = normalized.replace(" ", "")
        if not chars:
            return []
        return [chars[i:i + ngram] for i in range(max(1, len(chars) - ngram + 1))]
    words = normalized.split(" ") if normalized else []
    if not words:
        return []
    return [" ".join(words[i:i + ngram]) for i in range(max(1, len(words) - ngram + 1))]


class MinHasher:
    """Signatures (`num_perm` = bands x rows values, uint32) and band hashes (uint64) of texts."""

    def __init__(self, bands: int = 14, rows: int = 8, ngram: int = 5, seed: int = 1):
        if bands < 1 or rows < 1 or ngram < 1:
            raise ValueError(f"MinHasher: bands, rows and ngram must be >= 1 (got {bands}, {rows}, {ngram})")
        self.bands, self.rows, self.ngram, self.seed = bands, rows, ngram, seed
        self.num_perm = bands * rows
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 1 << 64, self.num_perm, dtype=np.uint64, endpoint=False) | U64(1)
        self.b = rng.integers(0, 1 << 64, self.num_perm, dtype=np.uint64, endpoint=False)
        self._band_salt = rng.integers(0, 1 << 64, self.bands, dtype=np.uint64, endpoint=False)
        self._row_mult = rng.integers(0, 1 << 64, self.rows, dtype=np.uint64, endpoint=False) | U64(1)
        self._pow = np.ones(1, dtype=np.uint64)
        self._inv = np.ones(1, dtype=np.uint64)

    # ---- shingles -------------------------------------------------------------------------------------
    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._pow) < n:
            size = max(n, 2 * len(self._pow), 1 << 14)
            with np.errstate(over="ignore"):
                self._pow = np.concatenate(([U64(1)], np.cumprod(np.full(size - 1, _BASE, np.uint64))))
                self._inv = np.concatenate(([U64(1)], np.cumprod(np.full(size - 1, _BASE_INV, np.uint64))))
        return self._pow[:n], self._inv[:n]

    def shingle_hashes(self, cp: np.ndarray, cjk: bool) -> np.ndarray:
        """Unique 64-bit hashes of the shingles of normalised code points `cp` (sorted, uint64)."""
        if cjk:
            cp = cp[cp != _SPACE]
        n_cp = len(cp)
        if n_cp == 0:
            return np.empty(0, dtype=np.uint64)
        if cjk:
            starts = np.arange(max(1, n_cp - self.ngram + 1))
            ends = np.minimum(starts + self.ngram, n_cp)
        else:
            spaces = np.flatnonzero(cp == _SPACE)
            word_starts = np.concatenate(([0], spaces + 1))
            word_ends = np.concatenate((spaces, [n_cp]))
            n_shingles = max(1, len(word_starts) - self.ngram + 1)
            starts = word_starts[:n_shingles]
            ends = word_ends[min(self.ngram, len(word_ends)) - 1:][:n_shingles]
        pw, inv = self._powers(n_cp)
        prefix = np.zeros(n_cp + 1, dtype=np.uint64)  # array arithmetic wraps mod 2^64 silently
        np.cumsum(cp.astype(np.uint64) * pw, out=prefix[1:])
        h = fmix64((prefix[ends] - prefix[starts]) * inv[starts])
        h.sort()
        return h[np.concatenate(([True], h[1:] != h[:-1]))]

    def shingle_hashes_of_text(self, text: str, lang: str = "") -> np.ndarray:
        cp = normalize_codepoints(text)
        return self.shingle_hashes(cp, is_cjk_codepoints(cp, lang))

    # ---- signatures -----------------------------------------------------------------------------------
    def signatures(self, shingle_sets: Sequence[np.ndarray], block: int = 64) -> np.ndarray:
        """(n_docs, num_perm) uint32 signatures of many shingle-hash arrays at once. Documents are
        concatenated and processed in blocks of ~`block` shingles (cache-sized), then min-reduced per
        document with `np.minimum.reduceat`. A document without shingles gets all 0xFFFFFFFF."""
        n_docs = len(shingle_sets)
        out = np.full((n_docs, self.num_perm), np.uint32(0xFFFFFFFF), dtype=np.uint32)
        nonempty = [i for i, s in enumerate(shingle_sets) if len(s)]
        if not nonempty:
            return out
        lengths = np.array([len(shingle_sets[i]) for i in nonempty])
        x_all = np.concatenate([shingle_sets[i] for i in nonempty]) >> U64(32)  # fold to 32-bit keys
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        # process whole documents per block: cut points at document boundaries
        cuts = [0]
        for k in range(1, len(nonempty) + 1):
            if offsets[k] - offsets[cuts[-1]] >= block or k == len(nonempty):
                cuts.append(k)
        rows = np.array(nonempty)
        a, b = self.a[None, :], self.b[None, :]
        for d0, d1 in zip(cuts[:-1], cuts[1:]):
            lo, hi = offsets[d0], offsets[d1]
            h = x_all[lo:hi, None] * a  # uint64 wrap-around is the "mod 2^64"
            h += b
            mins = np.minimum.reduceat(h, offsets[d0:d1] - lo, axis=0)
            out[rows[d0:d1]] = (mins >> U64(32)).astype(np.uint32)
        return out

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        return self.signatures([shingles])[0]

    def signatures_of_texts(self, texts: Sequence[str], langs: Sequence[str] | None = None) -> np.ndarray:
        langs = langs if langs is not None else [""] * len(texts)
        return self.signatures([self.shingle_hashes_of_text(t, lg) for t, lg in zip(texts, langs)])

    def signature_reference(self, shingles: Sequence[str]) -> np.ndarray:
        """Straightforward Python MinHash of shingle strings (for tests): per permutation, per shingle."""
        xs = {shingle_hash_reference(s) >> 32 for s in shingles}
        out = []
        for a, b in zip(self.a.tolist(), self.b.tolist()):
            out.append(min(((a * x + b) & _MASK64) >> 32 for x in xs) if xs else 0xFFFFFFFF)
        return np.array(out, dtype=np.uint32)

    # ---- LSH bands ------------------------------------------------------------------------------------
    def band_hashes(self, signatures: np.ndarray) -> np.ndarray:
        """(n_docs, bands) uint64 band keys; row values mixed with per-row odd multipliers, band salt and
        the MurmurHash3 finaliser. Empty documents' rows are all-0xFFFFFFFF: callers skip them."""
        sig = signatures.reshape(len(signatures), self.bands, self.rows).astype(np.uint64)
        mixed = (sig * self._row_mult[None, None, :]).sum(axis=2, dtype=np.uint64)
        mixed ^= self._band_salt[None, :]
        return fmix64(mixed)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Fraction of equal signature values (rows: pairs). Works on (num_perm,) or (n, num_perm)."""
    return (np.asarray(sig_a) == np.asarray(sig_b)).mean(axis=-1)
