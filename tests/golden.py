"""The tiny fixtures' golden logits (../shared/spec/fixtures: OpenAI's float32 and bf16 reference
runs) and ossrun models loaded once per (path, options), shared by the CPU and CUDA model tests."""

from __future__ import annotations

import json

import numpy as np
import ossrun

FIXTURES = ["tiny-w4", "tiny-w128"]
# MODEL.md §7.4's exact-mode bound on max|a−b| / max|b|; we measure 6e-7..4e-6 (float32 vs the
# float32 golden or the float64 reference). Every classic bug in §7.3 moves logits by ≥ 2.5e-4.
TOL = 1e-4


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


_MODELS: dict = {}


def load(path, **kw):
    """ossrun.load, cached per (path, options): loading is cheap but not free."""
    key = (str(path), tuple(sorted(kw.items())))
    if key not in _MODELS:
        _MODELS[key] = ossrun.load(path, **kw)
    return _MODELS[key]


def golden_case(fixtures_dir, name: str) -> dict:
    """One fixture: its GGUF, prompt tokens, float32 and bf16 golden logits and config."""
    d = fixtures_dir / name
    g = np.load(d / "golden.npz")
    return {
        "name": name,
        "dir": d,
        "gguf": d / "tiny.gguf",
        "tokens": g["tokens"],
        "gold": g["logits_ref_fp32"],
        "bf16": g["logits_ref_bf16"],
        "config": json.loads((d / "config.json").read_text()),
    }
