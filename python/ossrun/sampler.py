"""Turns logits into the next token: greedy at temperature 0, else temperature, top-k and top-p
(nucleus) sampling from a seeded generator so that runs can be reproduced."""

from __future__ import annotations

import numbers

import numpy as np


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
        z = logits.astype(np.float64) / self.temperature
        if self.top_k and self.top_k < z.size:
            cutoff = np.partition(z, -self.top_k)[-self.top_k]
            z = np.where(z >= cutoff, z, -np.inf)
        p = np.exp(z - z.max())
        p /= p.sum()
        if self.top_p < 1:
            p = self._nucleus(p)
        # Inverse-CDF draw: one uniform number, no per-call validation of a 201k-entry array.
        cdf = np.cumsum(p)
        return int(min(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"), p.size - 1))

    def _nucleus(self, p: np.ndarray) -> np.ndarray:
        """Keep the most probable ids whose mass first reaches top_p (ties: lower id first)."""
        n = p.size
        # The nucleus is almost always small: sort only the top candidates unless they fall short.
        for m in (min(n, 1024), n):
            cand = np.argpartition(-p, m - 1)[:m] if m < n else np.arange(n)
            order = cand[np.lexsort((cand, -p[cand]))]
            cum = np.cumsum(p[order])
            if cum[-1] >= self.top_p or m == n:
                keep = order[: int(np.searchsorted(cum, self.top_p) + 1)]
                break
        out = np.zeros_like(p)
        out[keep] = p[keep]
        return out / out.sum()
