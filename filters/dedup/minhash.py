"""MinHash signatures and LSH band keys: one-permutation hashing, vectorised with numpy.

Pipeline for one document (array ops over the whole document, no per-shingle Python):

1. shingles: the normalised text (`text.normalize_codepoints`) is cut into word `ngram`-grams, or into
   character `ngram`-grams (spaces removed) for CJK text. A text with fewer tokens than `ngram` is one shingle;
   an empty text has none (no signature, never a near-duplicate).
2. shingle hash (64 bit): polynomial hash of the shingle's code points, sum_j cp_j * B^j mod 2^64, read off
   prefix sums of cp_j * B^j and re-based with B^-start (B is odd, so invertible mod 2^64), xor a seeded salt,
   then the MurmurHash3 64-bit finaliser. Equal to hashing each shingle string separately
   (`shingle_hash_reference`). The hashes come back sorted and unique.
3. signature: one-permutation hashing (Li, Owen, Zhang 2012) with optimal densification (Shrivastava 2017).
   The hash is the one random permutation: its range is cut into `num_perm` equal bins (bin of x =
   ((x >> 32) * num_perm) >> 32), and value i of the signature is the smallest hash in bin i (its low 32
   bits). Since the hashes are sorted, that is the first hash of each bin: O(shingles) for all `num_perm`
   values instead of a shingles x permutations matrix. An empty bin i borrows the value of the first
   non-empty bin in its own seeded sequence of donor bins d(i, 0), d(i, 1), ... (the same sequence for every
   document), which keeps P[values equal] = Jaccard for every position, so `estimate_jaccard` stays unbiased
   and banding works as with `num_perm` independent permutations.
4. bands: the `bands` x `rows` signature is cut into bands; each band is hashed to 64 bits (band index mixed
   in) and two documents are LSH candidates when any band hash is equal.

Parameters come from a seeded `numpy.random.Generator`, so signatures are identical across processes/runs.
`signature_reference` is the plain-Python definition the vectorised path must equal (tested).
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


def shingle_hash_reference(shingle: str, salt: int = 0) -> int:
    """Plain-Python hash of one shingle string; the vectorised path must give exactly this."""
    h, p = 0, 1
    for ch in shingle:
        h = (h + ord(ch) * p) & _MASK64
        p = (p * int(_BASE)) & _MASK64
    return _fmix64_int(h ^ salt)


def shingles_reference(normalized: str, ngram: int, cjk: bool) -> list[str]:
    """Plain-Python shingles of a normalised text (the definition the vectorised path implements)."""
    if cjk:
        chars = normalized.replace(" ", "")
        if not chars:
            return []
        return [chars[i : i + ngram] for i in range(max(1, len(chars) - ngram + 1))]
    words = normalized.split(" ") if normalized else []
    if not words:
        return []
    return [" ".join(words[i : i + ngram]) for i in range(max(1, len(words) - ngram + 1))]


EMPTY = np.uint32(0xFFFFFFFF)  # every value of the signature of a document without shingles
_DONOR_CHUNK = 16  # donor attempts tried at once per empty bin


class MinHasher:
    """Signatures (`num_perm` = bands x rows values, uint32) and band hashes (uint64) of texts."""

    def __init__(self, bands: int = 14, rows: int = 8, ngram: int = 5, seed: int = 1):
        if bands < 1 or rows < 1 or ngram < 1:
            raise ValueError(f"MinHasher: bands, rows and ngram must be >= 1 (got {bands}, {rows}, {ngram})")
        self.bands, self.rows, self.ngram, self.seed = bands, rows, ngram, seed
        self.num_perm = bands * rows
        rng = np.random.default_rng(seed)
        self.salt = int(rng.integers(0, 1 << 64, dtype=np.uint64, endpoint=False))
        self._donor_salt = int(rng.integers(0, 1 << 64, dtype=np.uint64, endpoint=False))
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
            ends = word_ends[min(self.ngram, len(word_ends)) - 1 :][:n_shingles]
        pw, inv = self._powers(n_cp)
        prefix = np.zeros(n_cp + 1, dtype=np.uint64)  # array arithmetic wraps mod 2^64 silently
        np.cumsum(cp.astype(np.uint64) * pw, out=prefix[1:])
        h = (prefix[ends] - prefix[starts]) * inv[starts]
        h ^= U64(self.salt)
        h = fmix64(h)
        h.sort()
        return h[np.concatenate(([True], h[1:] != h[:-1]))]

    def shingle_hashes_of_text(self, text: str, lang: str = "") -> np.ndarray:
        cp = normalize_codepoints(text)
        return self.shingle_hashes(cp, is_cjk_codepoints(cp, lang))

    # ---- signatures -----------------------------------------------------------------------------------
    def _bins(self, h: np.ndarray) -> np.ndarray:
        """Bin of each 64-bit hash: ((h >> 32) * num_perm) >> 32, non-decreasing in h."""
        return ((h >> U64(32)) * U64(self.num_perm)) >> U64(32)

    def _donors(self, bins: np.ndarray, attempts: np.ndarray) -> np.ndarray:
        """Donor bin d(bin, attempt) of the densification sequence (broadcasts; int64)."""
        x = (bins.astype(np.uint64) << U64(32)) | attempts.astype(np.uint64)
        x ^= U64(self._donor_salt)
        return self._bins(fmix64(x)).astype(np.int64)

    def _donor_reference(self, b: int, attempt: int) -> int:
        x = _fmix64_int(((b << 32) | attempt) ^ self._donor_salt)
        return ((x >> 32) * self.num_perm) >> 32

    def signatures(self, shingle_sets: Sequence[np.ndarray]) -> np.ndarray:
        """(n_docs, num_perm) uint32 signatures of many shingle-hash arrays (each sorted and unique, as
        `shingle_hashes` returns them). A document without shingles gets all `EMPTY`."""
        k = self.num_perm
        n_docs = len(shingle_sets)
        out = np.full((n_docs, k), EMPTY, dtype=np.uint32)
        lengths = np.array([len(s) for s in shingle_sets], dtype=np.int64)
        if not lengths.any():
            return out
        h = np.concatenate([np.asarray(s, dtype=np.uint64) for s in shingle_sets])
        doc = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
        key = doc * k + self._bins(h).astype(np.int64)  # flat (doc, bin) index
        if len(h) > 1 and not np.all((key[1:] > key[:-1]) | ((key[1:] == key[:-1]) & (h[1:] > h[:-1]))):
            raise ValueError(
                "MinHasher.signatures: shingle hashes must be sorted and unique per document "
                "(as shingle_hashes returns them)"
            )
        first = np.concatenate(([True], key[1:] != key[:-1]))  # the smallest hash of each (doc, bin)
        flat = out.reshape(-1)
        flat[key[first]] = (h[first] & U64(0xFFFFFFFF)).astype(np.uint32)
        filled = np.zeros(n_docs * k, dtype=bool)
        filled[key[first]] = True
        filled = filled.reshape(n_docs, k)
        # optimal densification: empty bins of non-empty documents borrow from their donor sequence
        rows, cols = np.nonzero(~filled & (lengths > 0)[:, None])
        attempt = 0
        while len(rows):
            tries = np.arange(attempt, attempt + _DONOR_CHUNK)
            donors = self._donors(cols[:, None], tries[None, :])  # (empty bins, attempts)
            ok = filled[rows[:, None], donors]
            hit = ok.argmax(axis=1)
            found = ok[np.arange(len(rows)), hit]
            src = donors[found, hit[found]]
            out[rows[found], cols[found]] = out[rows[found], src]
            rows, cols = rows[~found], cols[~found]
            attempt += _DONOR_CHUNK
        return out

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        return self.signatures([shingles])[0]

    def signatures_of_texts(self, texts: Sequence[str], langs: Sequence[str] | None = None) -> np.ndarray:
        langs = langs if langs is not None else [""] * len(texts)
        return self.signatures([self.shingle_hashes_of_text(t, lg) for t, lg in zip(texts, langs)])

    def signature_reference(self, shingles: Sequence[str]) -> np.ndarray:
        """Straightforward Python definition of the signature of shingle strings (for tests): per bin, the
        smallest hash falling into it; empty bins walk their donor sequence to the first non-empty bin."""
        xs = {shingle_hash_reference(s, self.salt) for s in shingles}
        k = self.num_perm
        if not xs:
            return np.full(k, EMPTY, dtype=np.uint32)
        smallest: list[int | None] = []
        for b in range(k):
            in_bin = [x for x in xs if ((x >> 32) * k) >> 32 == b]
            smallest.append(min(in_bin) & 0xFFFFFFFF if in_bin else None)
        out = []
        for b in range(k):
            attempt, value = 0, smallest[b]
            while value is None:
                value = smallest[self._donor_reference(b, attempt)]
                attempt += 1
            out.append(value)
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
