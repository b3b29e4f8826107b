"""The checks both 16-row layouts (tests/test_q8_0_interleave.py, tests/test_mxfp4_interleave.py)
must pass: a repacked matrix `il` of the GGUF rows `raw` read by the fast precision's GEMV and GEMM,
and by every variant's float32 path, against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import reference as R
from ossrun._core import ops
from test_kernels import ISAS, U, quantize_i16_ref

AVX512 = [i for i in ISAS if i in ("avx512", "avx512vbmi")]
needs_avx512 = pytest.mark.skipif(not AVX512, reason="the interleaved GEMV is AVX-512's")

# Tokens: every count of the decode GEMV (1..8) and prefill sizes through the GEMM (tiles of 6).
TOKENS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 40]


def check_fast_matmul(isa, rng, raw, il, ggml_type, layout, rows, cols):
    """Given the int16 activations, each block's dot product is exact in int32; the rest is float32
    rounding (one conversion, one scale product, one accumulation per block): within
    (blocks + 4)·U·Σ|w||x| (+ the bias add), as the GGUF layout's kernels. Row ranges that start
    and end inside a group write their rows only; a misplaced row, pair or scale errs by ~|w||x|.
    Past 8 tokens the GEMM reads a group as its panel half: the GGUF layout's panel, bit for bit."""
    nb = cols // 32
    W = R.dequantize(raw, ggml_type, (rows, cols))
    b = rng.standard_normal(rows).astype(np.float32)
    r0 = int(rng.integers(1, 16))
    ranges = [(0, rows), (r0, max(r0, rows - int(rng.integers(1, 16)))), (3, 13),
              (int(rng.integers(0, rows)), rows)]
    for T in TOKENS:
        x = (rng.standard_normal((T, cols)) * rng.uniform(0.1, 10, (T, 1))).astype(np.float32)
        q, scale = quantize_i16_ref(x)
        xq = q.astype(np.float64) * np.repeat(scale, 32, axis=1).astype(np.float64)
        ref = R.matmul(xq, W, b.astype(np.float64))
        tol = (nb + 4) * U * (np.abs(xq) @ np.abs(W).T + np.abs(b))
        for r0, r1 in ranges:
            y = ops.matmul(il, ggml_type, rows, cols, x, b, isa, "fast", r0, r1, layout)
            err = np.abs(y[:, r0:r1] - ref[:, r0:r1])
            assert np.all(err <= tol[:, r0:r1]), f"T={T} rows [{r0}, {r1}): max err {err.max():.3g}"
            assert not y[:, :r0].any() and not y[:, r1:].any(), f"T={T}: wrote outside [{r0}, {r1})"
        if T > 8:
            assert np.array_equal(ops.matmul(il, ggml_type, rows, cols, x, b, isa, "fast", layout=layout),
                                  ops.matmul(raw, ggml_type, rows, cols, x, b, isa, "fast")), f"T={T}"


def check_f32_matmul(isa, rng, raw, il, ggml_type, layout, rows, cols):
    """The model repacks only for AVX-512's fast precision, but a matrix in the layout is still read
    right by every variant's float32 path (row by row, decoded exactly): float32 dot products,
    ≤ cols·U·Σ|w||x| (+ bias), rows 5..27 only."""
    W = R.dequantize(raw, ggml_type, (rows, cols))
    b = rng.standard_normal(rows).astype(np.float32)
    for T in (1, 3, 9):
        x = rng.standard_normal((T, cols)).astype(np.float32)
        y = ops.matmul(il, ggml_type, rows, cols, x, b, isa, "f32", 5, 27, layout)
        ref = R.matmul(x.astype(np.float64), W, b.astype(np.float64))
        tol = (cols + 2) * U * (np.abs(x.astype(np.float64)) @ np.abs(W).T + np.abs(b))
        assert np.all(np.abs(y[:, 5:27] - ref[:, 5:27]) <= tol[:, 5:27]), f"T={T}"
        assert not y[:, :5].any() and not y[:, 27:].any()
