"""Turns logits into the next token: greedy at temperature 0, else temperature, top-k and top-p
(nucleus) sampling from a seeded generator so that runs can be reproduced.

A server samples every sequence of every step on one thread between forward passes, so each
draw touches the 201k-entry vocabulary only a few times, in float32 (exp, block sums); sorting
and cumulative sums run over candidates or block sums only.
"""

from __future__ import annotations

import numbers

import numpy as np

BLOCK = 64  # entries per partial sum of the inverse-CDF draw
# Nucleus candidates: the ids whose probability is at least this fraction of the largest, tried
# in turn until their mass reaches top_p (then the nucleus lies among them); else all ids.
NUCLEUS_CUTS = (1e-3, 1e-6, 1e-9)


class Sampler:
    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed=None):
        for name, v in (("temperature", temperature), ("top_p", top_p)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"{name} must be a number, got {v!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
        if not (temperature >= 0 and np.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.temperature == 0:
            return int(np.argmax(logits))  # ties: lowest id
        z = np.asarray(logits, np.float32)
        ids = None  # with top_k: the candidates' ids (ascending), z and p indexed like them
        if self.top_k and self.top_k < z.size:
            ids = np.sort(top_ids(z, self.top_k))
            z = z[ids]
        p = self._weights(z)
        if self.top_p < 1:
            keep = self._nucleus_ids(p)
            pick = int(keep[self._draw(p[keep])])
        else:
            pick = self._draw(p)
        return pick if ids is None else int(ids[pick])

    def _weights(self, z: np.ndarray) -> np.ndarray:
        """exp((z - max z) / temperature) in float32: unnormalised probabilities, the largest 1."""
        p = np.subtract(z, z.max(), dtype=np.float32)
        p *= np.float32(1.0 / self.temperature)
        return np.exp(p, out=p)

    def _draw(self, w: np.ndarray) -> int:
        """Inverse-CDF draw of an index of the weights w (ids in ascending order, one uniform
        number). A long w goes by blocks of BLOCK entries: the block the draw falls in, from the
        blocks' sums, then the entry inside it (the same distribution, no cumsum over all)."""
        n = w.size
        if n <= 16 * BLOCK:
            cdf = np.cumsum(w, dtype=np.float64)
            return int(min(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"), n - 1))
        nb = -(-n // BLOCK)
        if nb * BLOCK != n:
            w = np.concatenate([w, np.zeros(nb * BLOCK - n, w.dtype)])
        sums = np.cumsum(w.reshape(nb, BLOCK).sum(axis=1), dtype=np.float64)
        target = self.rng.random() * sums[-1]
        b = int(np.searchsorted(sums, target, side="right"))
        if b >= nb:  # rounding put the target at the very end: the last block with any weight
            b = int(np.flatnonzero(np.diff(sums, prepend=0.0) > 0)[-1])
        inside = np.cumsum(w[b * BLOCK:(b + 1) * BLOCK], dtype=np.float64)
        # Where inside the block (clamped below its sum: the block sums' rounding differs).
        rest = min(max(target - (sums[b - 1] if b else 0.0), 0.0), np.nextafter(inside[-1], 0.0))
        return int(min(b * BLOCK + np.searchsorted(inside, rest, side="right"), n - 1))

    def _nucleus_ids(self, p: np.ndarray) -> np.ndarray:
        """The ids (ascending) of the most probable entries whose mass first reaches top_p of all
        (ties: lower id first). Every id left out of a candidate set is less probable than every
        id in it, so a set whose mass reaches top_p holds the whole nucleus."""
        total = float(p.sum(dtype=np.float64))
        top = float(p.max())
        for cut in (*NUCLEUS_CUTS, 0.0):
            cand = np.flatnonzero(p >= top * cut) if cut else np.arange(p.size)
            if cut == 0.0 or float(p[cand].sum(dtype=np.float64)) >= self.top_p * total:
                break
        order = cand[np.lexsort((cand, -p[cand]))]
        cum = np.cumsum(p[order], dtype=np.float64)
        return np.sort(order[: int(np.searchsorted(cum, self.top_p * total) + 1)])

    def _nucleus(self, p: np.ndarray) -> np.ndarray:
        """p restricted to its nucleus (_nucleus_ids) and renormalised."""
        keep = self._nucleus_ids(p)
        out = np.zeros_like(p)
        out[keep] = p[keep]
        return out / out.sum()


def top_ids(z: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest entries of z (k <= z.size), largest first, ties: lower id first.

    The k-th largest of the blocks' maxima bounds the k-th largest entry from below (k blocks
    each hold an entry at least that large), so only entries at or above it are sorted."""
    n = z.size
    nb = -(-n // BLOCK)
    if nb <= k:
        cand = np.arange(n)
    else:
        padded = z if nb * BLOCK == n else np.concatenate([z, np.full(nb * BLOCK - n, -np.inf, z.dtype)])
        maxima = padded.reshape(nb, BLOCK).max(axis=1)
        bound = np.partition(maxima, nb - k)[nb - k]
        cand = np.flatnonzero(z >= bound)
    order = cand[np.lexsort((cand, -z[cand]))]
    return order[:k]
