"""Every CPU kernel of `ossrun._core.ops`, for every ISA variant this machine runs, against the
float64 numpy reference (tests/reference.py) on fresh random inputs and named edge shapes.
Formats are bit-exact (MODEL.md §3, §4.3); float32 arithmetic is judged against a worst-case
rounding bound stated next to each test. Spec: MODEL.md §2.2-§2.6, §7.4 item 4.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import reference as R
from gguf_factory import BF16, F16, F32, MXFP4, Q8_0, f32_to_bf16_bits, mxfp4_block_bytes
from ossrun._core import ops

ISAS = ops.available_isas()
U = 2.0**-24  # float32 unit roundoff: one rounding errs by at most U relative
TYPE_NAMES = {F32: "F32", F16: "F16", Q8_0: "Q8_0", BF16: "BF16", MXFP4: "MXFP4"}


@pytest.fixture(params=ISAS)
def isa(request):
    return request.param


def test_isas_include_scalar_and_reject_unknown():
    assert "scalar" in ISAS and len(set(ISAS)) == len(ISAS)
    with pytest.raises(ValueError, match="sse9"):
        ops.rmsnorm(np.ones((1, 4), np.float32), np.ones(4, np.float32), 1e-5, "sse9")


def f32_bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_same_floats(out, ref_f64, what):
    """Bitwise float32 equality (±0 distinguished); NaN only has to be NaN."""
    ref = np.asarray(ref_f64).astype(np.float32)  # exact: every reference value fits float32
    out = np.asarray(out, dtype=np.float32)
    assert out.shape == ref.shape, what
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(out), nan), what
    bad = np.nonzero(f32_bits(out)[~nan] != f32_bits(ref)[~nan])[0]
    assert bad.size == 0, (
        f"{what}: {bad.size} values differ, first {out[~nan][bad[0]]!r} != {ref[~nan][bad[0]]!r}"
    )


# --------------------------------------------------------------------------- raw weight bytes


def raw_dense(rng, ggml_type, rows, cols, values=None) -> np.ndarray:
    """F32/F16/BF16 bytes [rows, row_bytes] of `values` (default standard normal)."""
    v = rng.standard_normal((rows, cols)).astype(np.float32) if values is None else values
    if ggml_type == F32:
        return np.asarray(v, "<f4").view(np.uint8).reshape(rows, -1)
    if ggml_type == F16:
        return np.asarray(v, "<f2").view(np.uint8).reshape(rows, -1)
    return f32_to_bf16_bits(v).view(np.uint8).reshape(rows, -1)


def raw_q8_0(rng, rows, cols, d=None, q=None) -> np.ndarray:
    nb = cols // 32
    if d is None:  # mostly ordinary scales, one in eight subnormal (real files have them, §6.9)
        d = rng.uniform(1e-3, 5e-2, (rows, nb)).astype(np.float16)
        tiny = rng.random((rows, nb)) < 1 / 8
        d[tiny] = (rng.integers(1, 1024, tiny.sum()).astype(np.uint16)).view(np.float16)
    if q is None:
        q = rng.integers(-128, 128, (rows, nb, 32))
    out = np.empty((rows, nb, 34), np.uint8)
    out[:, :, :2] = np.asarray(d, "<f2").reshape(rows, nb, 1).view(np.uint8)
    out[:, :, 2:] = np.asarray(q, np.int8).view(np.uint8)
    return out.reshape(rows, -1)


def raw_mxfp4(rng, rows, cols, scale_lo=118, scale_hi=128, codes=None, scales=None) -> np.ndarray:
    nb = cols // 32
    if codes is None:
        codes = rng.integers(0, 16, (rows, nb, 32))
    if scales is None:
        scales = rng.integers(scale_lo, scale_hi + 1, (rows, nb))
    return mxfp4_block_bytes(codes, scales)


def raw_random(rng, ggml_type, rows, cols) -> np.ndarray:
    if ggml_type == Q8_0:
        return raw_q8_0(rng, rows, cols)
    if ggml_type == MXFP4:
        return raw_mxfp4(rng, rows, cols)
    return raw_dense(rng, ggml_type, rows, cols)


# --------------------------------------------------------------------------- decode_rows: bit-exact


def _all_16bit_patterns(rng, cols):
    """Every 16-bit pattern once, at random places (so some land in vector tails), padded to
    whole rows of `cols` with random patterns -> uint16 [rows, cols]."""
    pats = rng.permutation(65536).astype(np.uint16)
    rows = -(-pats.size // cols)
    pad = rng.integers(0, 65536, rows * cols - pats.size).astype(np.uint16)
    return np.concatenate([pats, pad]).reshape(rows, cols)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # NaN patterns
@pytest.mark.parametrize("cols", [37, 100, 4096])  # cols_not_multiple_of_vector, and a wide row
@pytest.mark.parametrize("ggml_type", [F16, BF16])
def test_decode_half_types_every_pattern(isa, rng, ggml_type, cols):
    # F16 includes all 1023·2 subnormals (must not be flushed), ±inf and NaNs.
    bits = _all_16bit_patterns(rng, cols)
    rows = bits.shape[0]
    out = ops.decode_rows(bits.view(np.uint8), ggml_type, rows, cols, isa)
    ref = (R.dequant_f16 if ggml_type == F16 else R.dequant_bf16)(bits, (rows, cols))
    assert_same_floats(out, ref, TYPE_NAMES[ggml_type])


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 37), (5, 100), (3, 257)])  # one_row, odd widths
def test_decode_f32_bitwise(isa, rng, rows, cols):
    bits = rng.integers(0, 2**32, (rows, cols), dtype=np.uint64).astype(np.uint32)
    bits[(bits & 0x7F800000) == 0x7F800000] &= (
        0xFF7FFFFF  # no inf/NaN: any other pattern, subnormals too
    )
    out = ops.decode_rows(bits.view(np.uint8), F32, rows, cols, isa)
    assert np.array_equal(f32_bits(out), bits)


@pytest.mark.parametrize("rows,cols", [(1, 32), (7, 96), (3, 2880)])  # one block, odd block counts
def test_decode_q8_0_bitwise(isa, rng, rows, cols):
    nb = cols // 32
    # Every finite fp16 scale is fair game, including ±0 and all subnormals; q covers -128..127.
    d_bits = rng.integers(0, 65536, (rows, nb)).astype(np.uint16)
    d_bits[(d_bits & 0x7C00) == 0x7C00] &= 0x83FF  # inf/NaN scales -> a subnormal instead
    d_bits.reshape(-1)[:4] = [0x0001, 0x8001, 0x03FF, 0x0000][
        : d_bits.size
    ]  # smallest, largest subnormal, 0
    raw = raw_q8_0(rng, rows, cols, d=d_bits.view(np.float16))
    out = ops.decode_rows(raw, Q8_0, rows, cols, isa)
    assert_same_floats(out, R.dequant_q8_0(raw, rows, cols), "Q8_0")


@pytest.mark.parametrize("rows,cols", [(1, 32), (7, 96), (3, 2880)])
def test_decode_mxfp4_bitwise(isa, rng, rows, cols):
    nb = cols // 32
    scales = rng.integers(0, 253, (rows, nb))
    # The E8M0 special values of §7.4: 2^-127 and 2^-126 are float32 subnormal/tiny, 252 the top.
    special = np.array([0, 1, 2, 127, 252])
    scales.reshape(-1)[: min(special.size, scales.size)] = special[: scales.size]
    raw = raw_mxfp4(rng, rows, cols, scales=scales)
    out = ops.decode_rows(raw, MXFP4, rows, cols, isa)
    assert_same_floats(out, R.dequant_mxfp4_gguf(raw, rows, cols), "MXFP4")


@pytest.mark.parametrize("e", [0, 1, 2, 127, 252])
def test_decode_mxfp4_e8m0_special_values(isa, e):
    # Code 1 (0.5) and code 15 (-6) under each special scale byte: 0.5·2^(e-127), -6·2^(e-127).
    codes = np.full((1, 1, 32), 1)
    codes[0, 0, 16:] = 15
    out = ops.decode_rows(mxfp4_block_bytes(codes, np.array([[e]])), MXFP4, 1, 32, isa)[0]
    assert out[0] == math.ldexp(0.5, e - 127) and out[16] == math.ldexp(-6.0, e - 127)
    assert np.all(out[:16] == out[0]) and np.all(out[16:] == out[16])


def test_decode_mxfp4_worked_example(isa):
    # MODEL.md §3.5: codes 0..15, 15..0 with scale byte 0x7E, as a GGUF block.
    block = bytes.fromhex("7E F0 E1 D2 C3 B4 A5 96 87 78 69 5A 4B 3C 2D 1E 0F")
    want = [
        0,
        0.25,
        0.5,
        0.75,
        1,
        1.5,
        2,
        3,
        -0.0,
        -0.25,
        -0.5,
        -0.75,
        -1,
        -1.5,
        -2,
        -3,
        -3,
        -2,
        -1.5,
        -1,
        -0.75,
        -0.5,
        -0.25,
        -0.0,
        3,
        2,
        1.5,
        1,
        0.75,
        0.5,
        0.25,
        0,
    ]
    out = ops.decode_rows(np.frombuffer(block, np.uint8), MXFP4, 1, 32, isa)[0]
    assert_same_floats(out, np.array(want), "worked example")


def test_decode_rejects_bad_buffers():
    with pytest.raises(ValueError, match="bytes"):
        ops.decode_rows(np.zeros(33, np.uint8), Q8_0, 1, 32)
    with pytest.raises(ValueError, match="shape"):
        ops.decode_rows(np.zeros(34, np.uint8), Q8_0, 1, 33)  # not whole blocks
    with pytest.raises(ValueError, match="type"):
        ops.decode_rows(np.zeros(36, np.uint8), 12, 1, 32)  # Q4_K


# --------------------------------------------------------------------------- matmul

MATMUL_SHAPES = [  # (type, cols): dense widths that are no multiple of any vector, odd block counts
    (F32, 37),
    (F32, 100),
    (F16, 37),
    (F16, 100),
    (BF16, 37),
    (BF16, 100),
    (Q8_0, 96),
    (Q8_0, 2880),
    (MXFP4, 96),
    (MXFP4, 2880),
]
# 1 token, 3 (< one 4-token micro-kernel), 4, 5 (one + tail), 33 (one 32-token tile + 1), 70.
TOKENS = [1, 3, 4, 5, 33, 70]


def _shape_id(p):
    ggml_type, cols = p
    if ggml_type in (Q8_0, MXFP4):
        tag = "odd_block_count" if cols // 32 % 2 else "blocks"
        return f"{TYPE_NAMES[ggml_type]}-{tag}-{cols // 32}"
    return f"{TYPE_NAMES[ggml_type]}-cols_not_multiple_of_vector-{cols}"


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("rows", [1, 19], ids=["one_row", "rows19"])
@pytest.mark.parametrize("shape", MATMUL_SHAPES, ids=_shape_id)
def test_matmul_random_within_rounding_bound(isa, rng, shape, rows, bias):
    ggml_type, cols = shape
    raw = raw_random(rng, ggml_type, rows, cols)
    W = R.dequantize(raw, ggml_type, (rows, cols))  # the exact float32 weights, in float64
    b = rng.standard_normal(rows).astype(np.float32) if bias else None
    for T in TOKENS:
        x = rng.standard_normal((T, cols)).astype(np.float32)
        y = ops.matmul(raw, ggml_type, rows, cols, x, b, isa)
        ref = R.matmul(x.astype(np.float64), W, None if b is None else b.astype(np.float64))
        # Decoding is exact, so only float32 products and sums err: any summation order of K
        # terms is within (K-1)·U·Σ|w||x| (Higham, γ_K), plus U·|y| each for the bias add and
        # a final rounding. A wrong element, nibble or row moves y by ~|w||x| per element.
        mag = np.abs(x.astype(np.float64)) @ np.abs(W).T + (0 if b is None else np.abs(b))
        tol = (cols + 2) * U * mag
        err = np.abs(y - ref)
        assert y.shape == (T, rows)
        assert np.all(err <= tol), (
            f"T={T}: max err {err.max():.3g}, bound there {tol.flat[err.argmax()]:.3g}"
        )


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("shape", MATMUL_SHAPES, ids=_shape_id)
def test_matmul_exact_when_arithmetic_is_exact(isa, rng, shape, bias):
    """Small-integer activations against weights on a coarse grid: every product and partial
    sum is exact in float32 (magnitudes < 2^22 at granularity ≥ 1/4), so any correct kernel
    returns the exact answer bit for bit, whatever its summation order. Catches a single
    misplaced element that the rounding bound above could hide on wide rows."""
    ggml_type, cols = shape
    rows = 13
    if ggml_type == Q8_0:
        raw = raw_q8_0(
            rng,
            rows,
            cols,
            d=rng.choice([0.5, 1.0], (rows, cols // 32)).astype(np.float16),
            q=rng.integers(-127, 128, (rows, cols // 32, 32)),
        )
    elif ggml_type == MXFP4:
        raw = raw_mxfp4(rng, rows, cols, scale_lo=126, scale_hi=128)  # elements k/4, |k| <= 48
    else:
        raw = raw_dense(
            rng, ggml_type, rows, cols, rng.integers(-8, 9, (rows, cols)).astype(np.float32)
        )
    W = R.dequantize(raw, ggml_type, (rows, cols))
    b = rng.integers(-100, 101, rows).astype(np.float32) if bias else None
    for T in TOKENS:
        x = rng.integers(-8, 9, (T, cols)).astype(np.float32)
        y = ops.matmul(raw, ggml_type, rows, cols, x, b, isa)
        ref = R.matmul(x.astype(np.float64), W, None if b is None else b.astype(np.float64))
        assert np.array_equal(y, ref), f"T={T}: {np.argwhere(y != ref)[:3].tolist()}"


# --------------------------------------------------------------------------- fast precision

def _has_i16(isa_name):
    try:
        ops.quantize_i16(np.zeros((1, 32), np.float32), isa_name)
        return True
    except ValueError:
        return False


FAST_ISAS = [i for i in ISAS if _has_i16(i)]


def quantize_i16_ref(x):
    """The int16 blocks the fast precision makes, in numpy: scale = max|block| / 32767 and
    q = round-half-even(x · (32767 / max)), both in float32 as the kernel computes them."""
    T, K = x.shape
    blocks = x.reshape(T, K // 32, 32).astype(np.float32)
    m = np.abs(blocks).max(axis=2)
    scale = m / np.float32(32767)
    inv = np.where(m > 0, np.float32(32767) / np.where(m > 0, m, 1), 0).astype(np.float32)
    q = np.rint(blocks * inv[:, :, None]).astype(np.int16)
    return q.reshape(T, K), scale


@pytest.mark.parametrize("isa_name", FAST_ISAS or ["none"])
def test_quantize_i16(isa_name, rng):
    if isa_name == "none":
        pytest.skip("no kernel variant with int16 dot products on this CPU")
    x = (rng.standard_normal((7, 32 * 9)) * rng.uniform(1e-3, 1e3, (7, 1))).astype(np.float32)
    x[2, 32:64] = 0  # an all-zero block: scale 0, codes 0
    x[3, 5] = 1e30  # one huge element: the rest of its block rounds to 0
    q, scale = ops.quantize_i16(x, isa_name)
    q_ref, scale_ref = quantize_i16_ref(x)
    assert np.array_equal(scale, scale_ref)
    assert np.array_equal(q, q_ref)
    # What it promises: every element within half a step of its block, plus the rounding of
    # x · (32767 / max) in float32 (≤ 2 U relative at |q| ≤ 32767: < 0.004 steps).
    step = np.repeat(scale, 32, axis=1).astype(np.float64)
    assert np.all(np.abs(q * step - x) <= 0.51 * step)


@pytest.mark.parametrize("isa_name", FAST_ISAS or ["none"])
# 50 rows: a whole 32-row GEMM panel, then one whose second 16-row half has 2 rows.
@pytest.mark.parametrize("rows", [1, 19, 37, 50], ids=["one_row", "rows19", "rows37", "rows50"])
# MXFP4 block counts 1, 3, 4, 5, 7, 90: every remainder of the 2- and 4-block layouts of the
# AVX-512 GEMVs (avx512 pairs blocks, avx512vbmi lays four into a vector), with and without whole ones.
# Q8_0 at 1, 3, 5, 89, 90, 91 and 128 blocks: its AVX-512 GEMVs take blocks in quads (every remainder).
@pytest.mark.parametrize("shape", [(Q8_0, 32), (Q8_0, 96), (Q8_0, 160), (Q8_0, 2848), (Q8_0, 2880),
                                   (Q8_0, 2912), (Q8_0, 4096), (MXFP4, 32), (MXFP4, 96), (MXFP4, 128),
                                   (MXFP4, 160), (MXFP4, 224), (MXFP4, 2880)],
                         ids=_shape_id)
def test_matmul_fast_int16_activations(isa_name, rng, shape, rows):
    """The fast precision's matmuls: int16 activations in blocks of 32 (checked above) times the
    exact weights, in the GEMM and the GEMVs (decode, decode batches) alike. Given the quantized
    activations, each block's dot product is exact in int32; the rest is float32 rounding: one
    conversion, one scale product and one accumulation per block, ≤ (blocks + 4)·U·Σ|w||x| (+ the
    bias add). A misplaced row, pair or scale errs by ~|w||x|."""
    if isa_name == "none":
        pytest.skip("no kernel variant with int16 dot products on this CPU")
    ggml_type, cols = shape
    raw = raw_random(rng, ggml_type, rows, cols)
    W = R.dequantize(raw, ggml_type, (rows, cols))
    b = rng.standard_normal(rows).astype(np.float32)
    for T in TOKENS + [2, 6, 7, 8, 9, 10, 11, 15, 17]:  # every tail of the 8-token tile and GEMV group
        x = (rng.standard_normal((T, cols)) * rng.uniform(0.1, 10, (T, 1))).astype(np.float32)
        y = ops.matmul(raw, ggml_type, rows, cols, x, b, isa_name, "fast")
        assert y.shape == (T, rows)
        exact = R.matmul(x.astype(np.float64), W, b.astype(np.float64))
        q, scale = quantize_i16_ref(x)
        step = np.repeat(scale, 32, axis=1).astype(np.float64)
        xq = q.astype(np.float64) * step
        ref = R.matmul(xq, W, b.astype(np.float64))
        tol = (cols // 32 + 4) * U * (np.abs(xq) @ np.abs(W).T + np.abs(b))
        err = np.abs(y - ref)
        assert np.all(err <= tol), f"T={T}: max err {err.max():.3g}, bound {tol.flat[err.argmax()]:.3g}"
        # Against the activations before quantization: also within half a step per element.
        assert np.all(np.abs(y - exact) <= tol + 0.51 * step @ np.abs(W).T), f"T={T}"


@pytest.mark.parametrize("isa_name", FAST_ISAS or ["none"])
@pytest.mark.parametrize("scales, x_scale", [((0, 1, 2, 3), 1e30), ((252, 253, 254), 1e-30)],
                         ids=["e0_to_3", "e252_to_254"])
def test_matmul_fast_mxfp4_extreme_scales(isa_name, rng, scales, x_scale):
    """E8M0's ends: 2^-127 (e = 0, a float32 subnormal) up to 2^127, each block's float step
    exact as in test_matmul_fast_int16_activations. The activations are scaled so that the
    products stay normal floats (a subnormal product would round more than the bound allows)."""
    if isa_name == "none":
        pytest.skip("no kernel variant with int16 dot products on this CPU")
    rows, cols = 13, 32 * 11
    raw = raw_mxfp4(rng, rows, cols, scales=rng.choice(scales, (rows, cols // 32)))
    W = R.dequantize(raw, MXFP4, (rows, cols))
    for T in (1, 2, 3, 4, 5):
        x = (rng.standard_normal((T, cols)) * x_scale).astype(np.float32)
        y = ops.matmul(raw, MXFP4, rows, cols, x, None, isa_name, "fast")
        q, scale = quantize_i16_ref(x)
        xq = q.astype(np.float64) * np.repeat(scale, 32, axis=1).astype(np.float64)
        ref = R.matmul(xq, W)
        tol = (cols // 32 + 4) * U * (np.abs(xq) @ np.abs(W).T)
        assert np.all(np.isfinite(y)) and np.all(np.abs(y - ref) <= tol), f"T={T}"


@pytest.mark.parametrize("isa_name", FAST_ISAS or ["none"])
def test_matmul_fast_mxfp4_nan_scale_is_not_finite(isa_name, rng):
    """E8M0 byte 255 is NaN: a row with one such block must not come out finite (the model
    reports non-finite logits, tests/test_bad_input.py), whatever the block's place in the row."""
    if isa_name == "none":
        pytest.skip("no kernel variant with int16 dot products on this CPU")
    rows, cols = 12, 32 * 7
    scales = rng.integers(118, 129, (rows, cols // 32))
    bad = np.arange(rows) % 2 == 0
    scales[bad, np.arange(rows)[bad] % (cols // 32)] = 255
    raw = raw_mxfp4(rng, rows, cols, scales=scales)
    for T in (1, 2, 4, 5):
        y = ops.matmul(raw, MXFP4, rows, cols, rng.standard_normal((T, cols)).astype(np.float32), None,
                       isa_name, "fast")
        assert np.all(~np.isfinite(y[:, bad])) and np.all(np.isfinite(y[:, ~bad])), f"T={T}"


@pytest.mark.parametrize("isa_name", FAST_ISAS or ["none"])
@pytest.mark.parametrize("shape", [(Q8_0, 96), (Q8_0, 2880), (MXFP4, 32), (MXFP4, 224), (MXFP4, 2880)],
                         ids=_shape_id)
def test_matmul_fast_decode_tokens_do_not_interact(isa_name, rng, shape):
    """A decode batch (one token per sequence) gives every token the bits it gets alone: the
    GEMVs run each token's arithmetic the same way whatever shares the pass, so a batched step's
    logits can equal each sequence's own (tests/test_batch.py). AVX-512 runs up to 8 tokens
    through them, AVX2 up to 3 (4 and more take the GEMM)."""
    if isa_name == "none":
        pytest.skip("no kernel variant with int16 dot products on this CPU")
    ggml_type, cols = shape
    rows = 37
    raw = raw_random(rng, ggml_type, rows, cols)
    b = rng.standard_normal(rows).astype(np.float32)
    for T in range(2, (8 if isa_name.startswith("avx512") else 3) + 1):
        x = (rng.standard_normal((T, cols)) * rng.uniform(0.1, 10, (T, 1))).astype(np.float32)
        y = ops.matmul(raw, ggml_type, rows, cols, x, b, isa_name, "fast")
        for t in range(T):
            alone = ops.matmul(raw, ggml_type, rows, cols, x[t:t + 1], b, isa_name, "fast")
            assert np.array_equal(y[t], alone[0]), f"T={T}, token {t}"


@pytest.mark.parametrize("isa_name", FAST_ISAS or ["none"])
@pytest.mark.parametrize("shape", [(Q8_0, 96), (Q8_0, 160), (MXFP4, 32), (MXFP4, 96), (MXFP4, 128),
                                   (MXFP4, 160), (MXFP4, 224), (MXFP4, 2880)],
                         ids=_shape_id)
def test_matmul_fast_decode_rows_do_not_interact(isa_name, rng, shape):
    """The AVX-512 GEMVs take two rows per pass at some token counts (Q8_0 from 3, MXFP4 from 2
    tokens) and one otherwise, and an odd last row alone; the one-token MXFP4 GEMVs sum
    four rows' accumulators together (rows 0-3 here) and the rest alone: every row must come out
    with the bits it gets as a one-row matrix, for 1..8 tokens and every remainder of blocks past
    the quads.
    (Their accuracy against float64 is test_matmul_fast_int16_activations'.)"""
    if isa_name == "none":
        pytest.skip("no kernel variant with int16 dot products on this CPU")
    ggml_type, cols = shape
    rows = 7
    raw = raw_random(rng, ggml_type, rows, cols)
    b = rng.standard_normal(rows).astype(np.float32)
    x = (rng.standard_normal((8, cols)) * rng.uniform(0.1, 10, (8, 1))).astype(np.float32)
    for T in range(1, 9):
        y = ops.matmul(raw, ggml_type, rows, cols, x[:T], b, isa_name, "fast")
        for r in range(rows):
            alone = ops.matmul(raw[r:r + 1], ggml_type, 1, cols, x[:T], b[r:r + 1], isa_name, "fast")
            assert np.array_equal(y[:, r], alone[:, 0]), f"T={T}, row {r}"


@pytest.mark.skipif(not {"avx512", "avx512vbmi"} <= set(FAST_ISAS),
                    reason="needs AVX-512 with and without VBMI")
def test_matmul_fast_q8_0_same_bits_with_and_without_vbmi(rng):
    """The avx512vbmi variant's Q8_0 GEMV builds its weight vectors with one byte permute each,
    the avx512 variant's with unpacks and lane permutes: the same vectors, so the same bits, for
    every token count 1..8, row pairs and odd rows, and every remainder of blocks past the quads."""
    for rows, nb in [(1, 1), (19, 3), (50, 5), (37, 89), (19, 90), (50, 91), (19, 128)]:
        cols = 32 * nb
        raw = raw_q8_0(rng, rows, cols)
        x = (rng.standard_normal((8, cols)) * rng.uniform(0.1, 10, (8, 1))).astype(np.float32)
        for T in range(1, 9):
            y = [ops.matmul(raw, Q8_0, rows, cols, x[:T], None, isa, "fast")
                 for isa in ("avx512", "avx512vbmi")]
            assert np.array_equal(y[0], y[1]), f"{rows} rows, {nb} blocks, T={T}"


def test_matmul_fast_rejects_bad_precision():
    raw = np.zeros((2, 34), np.uint8)
    with pytest.raises(ValueError, match="precision"):
        ops.matmul(raw, Q8_0, 2, 32, np.zeros((1, 32), np.float32), None, "auto", "int4")


def test_matmul_rejects_bad_shapes():
    raw = np.zeros((2, 37 * 4), np.uint8)
    with pytest.raises(ValueError, match="x must be"):
        ops.matmul(raw, F32, 2, 37, np.zeros((1, 36), np.float32), None)
    with pytest.raises(ValueError, match="bias"):
        ops.matmul(raw, F32, 2, 37, np.zeros((1, 37), np.float32), np.zeros(3, np.float32))


# --------------------------------------------------------------------------- rmsnorm


@pytest.mark.parametrize("n", [1, 7, 37, 64, 100, 2880])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])  # 1e-3: mean(x²) ≈ ε, so ε's place matters
def test_rmsnorm(isa, rng, n, scale):
    T = 3
    x = (rng.standard_normal((T, n)) * scale).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    y = ops.rmsnorm(x, g, 1e-5, isa)
    ref = R.rmsnorm(x.astype(np.float64), g.astype(np.float64), float(np.float32(1e-5)))
    # A sum of n squares (positive terms) errs ≤ (n-1)·U relative; mean, +ε, sqrt, divide and
    # two multiplies add a few U. Each output element carries that same relative error.
    tol = (n + 8) * U * np.abs(ref)
    assert np.all(np.abs(y - ref) <= tol), np.max(np.abs(y - ref) / np.maximum(np.abs(ref), 1e-30))


def test_rmsnorm_one_row_zero_input(isa):
    # An all-zero row: mean 0, the norm is ε alone and the output is exactly 0 (no NaN).
    y = ops.rmsnorm(np.zeros((1, 37), np.float32), np.ones(37, np.float32), 1e-5, isa)
    assert np.array_equal(y, np.zeros((1, 37), np.float32))


# --------------------------------------------------------------------------- attention_row

ATTENTION_CASES = {
    # name: (cap, j_lo, j_hi, sink)
    "one_key": (8, 5, 5, 0.3),
    "full_causal": (200, 0, 150, -0.7),
    "window_exactly_full": (128, 0, 127, 0.1),  # every slot of a 128 ring in use
    "window_exactly_full_wrapped": (128, 72, 199, 0.1),  # the same, starting mid-ring
    "kv_ring_wrapped": (131, 1000, 1100, 1.2),  # 1000 % 131 = 83 > 1100 % 131 = 52
    "sink_dominates": (16, 3, 12, 40.0),  # weights ~e^-40: output tiny but still right relatively
    "sink_negligible": (16, 3, 12, -60.0),
    "long_row": (1500, 0, 1400, 0.0),
}


def attention_row(q, k_cache, v_cache, j_lo, j_hi, sink, scale, isa):
    """One query head through the group kernel (a group of one)."""
    return ops.attention(q[None, :], k_cache, v_cache, j_lo, j_hi, np.array([sink], np.float32),
                         scale, isa)[0]


def attention_row_ref(q, k_cache, v_cache, j_lo, j_hi, sink):
    js = np.arange(j_lo, j_hi + 1)
    cap = k_cache.shape[0]
    k = k_cache[js % cap].astype(np.float64)[:, None, :]
    v = v_cache[js % cap].astype(np.float64)[:, None, :]
    out = R.attention(
        q.astype(np.float64)[None, None, :], k, v, np.array([float(sink)]), [j_hi], js, window=None
    )
    return out[0, 0], k[:, 0, :], v[:, 0, :]


@pytest.mark.parametrize("d", [64, 36])
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention_row(isa, rng, case, d):
    cap, j_lo, j_hi, sink = ATTENTION_CASES[case]
    q = rng.standard_normal(d).astype(np.float32)
    k_cache = rng.standard_normal((cap, d)).astype(np.float32)
    v_cache = rng.standard_normal((cap, d)).astype(np.float32)
    if case == "sink_dominates":
        q *= 0.1
    scale = np.float32(1 / math.sqrt(d))
    out = attention_row(q, k_cache, v_cache, j_lo, j_hi, sink, scale, isa)
    ref, k, v = attention_row_ref(q, k_cache, v_cache, j_lo, j_hi, sink)
    # Each logit z_j = scale·q·k_j errs ≤ (d+2)·U·S_j with S_j = scale·Σ|q||k_j|; the exp
    # arguments z_j − m add U·(|z_j|+|m|); a weight's relative error is at most twice the worst
    # argument error, and the weighted sum of n values adds (n+8)·U. Bound ×2 for slack.
    z = (k @ q.astype(np.float64)) / math.sqrt(d)
    S = (np.abs(k) @ np.abs(q.astype(np.float64))) / math.sqrt(d)
    m = max(z.max(), sink)
    arg_err = np.max((d + 2) * U * S + U * (np.abs(z) + abs(m)))
    w = np.exp(z - m) / (np.exp(sink - m) + np.exp(z - m).sum())
    n = j_hi - j_lo + 1
    tol = 2 * (2 * arg_err + (n + 8) * U) * (w @ np.abs(v))
    assert np.all(np.abs(out - ref) <= tol), np.max(np.abs(out - ref) / tol)


def test_attention_row_empty_range_is_zero(isa, rng):
    # No visible key (j_hi = j_lo - 1): only the sink is in the softmax, and it has no value.
    q = rng.standard_normal(64).astype(np.float32)
    kv = rng.standard_normal((4, 64)).astype(np.float32)
    out = attention_row(q, kv, kv, 3, 2, 0.5, 0.125, isa)
    assert np.array_equal(out, np.zeros(64, np.float32))


def test_attention_row_rejects_range_longer_than_cache():
    kv = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="key range"):
        attention_row(np.zeros(8, np.float32), kv, kv, 0, 4, 0.0, 1.0, "scalar")


@pytest.mark.parametrize("heads", [8, 11, 3])  # a full register block, a block plus a tail, tail only
@pytest.mark.parametrize("case", ["full_causal", "kv_ring_wrapped", "sink_dominates"])
def test_attention_group_equals_each_head_alone(isa, rng, heads, case):
    # Heads of one GQA group share the key and value loads; each must get exactly what it would
    # get alone (same arithmetic per head), with its own sink.
    cap, j_lo, j_hi, _ = ATTENTION_CASES[case]
    d = 64
    q = rng.standard_normal((heads, d)).astype(np.float32)
    k_cache = rng.standard_normal((cap, d)).astype(np.float32)
    v_cache = rng.standard_normal((cap, d)).astype(np.float32)
    sinks = rng.normal(0, 2, heads).astype(np.float32)
    scale = np.float32(0.125)
    out = ops.attention(q, k_cache, v_cache, j_lo, j_hi, sinks, scale, isa)
    for h in range(heads):
        alone = attention_row(q[h], k_cache, v_cache, j_lo, j_hi, sinks[h], scale, isa)
        np.testing.assert_array_equal(out[h], alone)
        ref, _, _ = attention_row_ref(q[h], k_cache, v_cache, j_lo, j_hi, sinks[h])
        assert np.max(np.abs(out[h] - ref)) <= 1e-5 * np.max(np.abs(ref)) + 1e-7


# --------------------------------------------------------------------------- rope

GPT_OSS_ROPE_CFG = {
    "key_length": 64,
    "rope_freq_base": 150000.0,
    "rope_scaling_factor": 32.0,
    "rope_original_context": 4096.0,
}


def test_rope_theta_gpt_oss_bit_exact():
    # MODEL.md §2.4 table (tests/reference.py holds it as bits), and C = 0x3FAC5C86 in float32.
    theta, C = ops.rope_theta(GPT_OSS_ROPE_CFG)
    assert theta.dtype == np.float32 and theta.shape == (32,)
    assert [hex(b) for b in f32_bits(theta)] == [hex(b) for b in R.GPT_OSS_THETA_BITS]
    assert f32_bits(np.float32(C)) == 0x3FAC5C86


@pytest.mark.parametrize(
    "cfg",
    [
        {
            "key_length": 16,
            "rope_freq_base": 150000.0,
            "rope_scaling_factor": 32.0,
            "rope_original_context": 4096.0,
        },
        {
            "key_length": 64,
            "rope_freq_base": 10000.0,
            "rope_scaling_factor": 8.0,
            "rope_original_context": 2048.0,
        },
        {
            "key_length": 128,
            "rope_freq_base": 500000.0,
            "rope_scaling_factor": 4.0,
            "rope_original_context": 8192.0,
        },
        {
            "key_length": 64,
            "rope_freq_base": 150000.0,
            "rope_scaling_factor": 32.0,
            "rope_original_context": 4096.0,
            "yarn_beta_fast": 16.0,
            "yarn_beta_slow": 2.0,
        },
        {
            "key_length": 64,
            "rope_freq_base": 150000.0,
            "rope_scaling_factor": 1.0,
            "rope_original_context": 4096.0,
        },
    ],
    ids=["d16", "base1e4", "d128", "betas", "no_yarn"],
)
def test_rope_theta_other_configs(cfg):
    # Other shapes follow the same float32 steps (reference.yarn_theta_f32), low/high unrounded.
    theta, C = ops.rope_theta(cfg)
    ref = R.yarn_theta_f32(
        cfg["key_length"],
        cfg["rope_freq_base"],
        cfg["rope_scaling_factor"],
        cfg["rope_original_context"],
        cfg.get("yarn_beta_fast", 32.0),
        cfg.get("yarn_beta_slow", 1.0),
    )
    assert np.array_equal(f32_bits(theta), f32_bits(ref))
    assert np.float32(C) == np.float32(R.yarn_concentration(cfg["rope_scaling_factor"]))


def test_rope_theta_rejects_degenerate_yarn_range():
    # d = 4: high = 2·ln(4096/2π)/ln(b) ≈ 1.1 > d/2 - 1 = 1.
    with pytest.raises(ValueError, match="YaRN"):
        ops.rope_theta(dict(GPT_OSS_ROPE_CFG, key_length=4))


@pytest.mark.parametrize("d,heads", [(64, 3), (16, 1)])
def test_apply_rope(rng, d, heads):
    cfg = dict(GPT_OSS_ROPE_CFG, key_length=d)
    theta, C = ops.rope_theta(cfg)
    # Edge positions (0, the YaRN original context, the last of 131072) plus random ones.
    positions = np.concatenate(
        [[0, 1, 127, 128, 4095, 4096, 65535, 131071], rng.integers(0, 131072, 24)]
    ).astype(np.int64)
    x = rng.standard_normal((positions.size, heads, d)).astype(np.float32)
    out = ops.apply_rope(x, positions, theta, C)
    cos, sin = R.rope_cos_sin(positions, theta, C)  # float32 angle p·θ, as the reference
    ref = R.apply_rope(x.astype(np.float64), cos, sin)
    # cos/sin are float32 values (a 1-ulp difference in libm's cos is allowed: U each); the
    # rotation is two products and one add in float32: 2U more, relative to |a·c| + |b·s|.
    # A float64 angle differs by ~1e-2 rad at p ≈ 1e5, far outside this.
    half = d // 2
    a, b = np.abs(x[..., :half]).astype(np.float64), np.abs(x[..., half:]).astype(np.float64)
    c, s = np.abs(cos)[:, None, :], np.abs(sin)[:, None, :]
    mag = np.concatenate([a * c + b * s, b * c + a * s], axis=-1)
    assert np.all(np.abs(out - ref) <= 4 * U * mag + 1e-30)


# --------------------------------------------------------------------------- router top-k


@pytest.mark.parametrize("E,k", [(4, 1), (4, 2), (8, 4), (32, 4), (128, 4), (5, 5)])
def test_router_topk_random(rng, E, k):
    logits = (rng.standard_normal((9, E)) * 3).astype(np.float32)
    idx, w = ops.router_topk(logits, k)
    ref_idx, ref_w = R.router_topk(logits.astype(np.float64), k)
    assert np.array_equal(idx, ref_idx)
    # Softmax over k values in float32: a few U relative per weight, plus the exp argument's
    # rounding (U·|l − max|).
    spread = np.ptp(np.take_along_axis(logits, ref_idx, axis=1), axis=1, keepdims=True)
    assert np.all(np.abs(w - ref_w) <= (k + 8 + 2 * spread) * U * ref_w)


def test_router_topk_ties_take_lower_index(rng):
    # Integer logits from a small set: many exact ties; the lower expert index must win (§6.10).
    logits = rng.integers(-2, 3, (50, 8)).astype(np.float32)
    idx, w = ops.router_topk(logits, 4)
    ref_idx, ref_w = R.router_topk(logits.astype(np.float64), 4)
    assert np.array_equal(idx, ref_idx)
    np.testing.assert_allclose(w, ref_w, rtol=16 * U)
    idx, w = ops.router_topk(np.zeros((1, 6), np.float32), 3)  # all tied
    assert idx.tolist() == [[0, 1, 2]] and np.allclose(w, 1 / 3, rtol=4 * U, atol=0)


def test_router_topk_softmax_over_selected_only():
    # One dominant expert: the selected weights sum to 1 (renormalised over k, not over all E).
    logits = np.array([[0.0, 5.0, 1.0, 1.0, 1.0, 1.0]], np.float32)
    idx, w = ops.router_topk(logits, 2)
    assert idx.tolist() == [[1, 2]]
    assert w[0, 0] == pytest.approx(1 / (1 + math.exp(-4)), rel=4 * U)
    assert w.sum() == pytest.approx(1.0, rel=4 * U)


# --------------------------------------------------------------------------- swiglu

ALPHA32 = float(np.float32(1.702))  # the kernel's α is float32; feed the reference the same value


def swiglu_tol(gate, lin):
    """Relative bound: σ(αĝ) errs by (α|ĝ|+6)·U (the exp argument's rounding grows with |ĝ|),
    (l̂+1) by U·(|l̂|+1) absolute, products 2U. Scaled by |ĝ·σ|, so tiny outputs of very
    negative gates are still checked relatively. Plus FLT_MIN absolute: below it float32 has
    underflowed (exp(−α·g) overflows for g < −52 and h becomes ±0 where the exact value is
    a subnormal like 1e-42), which is harmless."""
    g = np.minimum(gate.astype(np.float64), 7.0)
    lin_c = np.clip(lin.astype(np.float64), -7, 7)
    gs = np.abs(g / (1 + np.exp(-ALPHA32 * g)))
    rel = (ALPHA32 * np.abs(g) + 8) * U * np.abs(lin_c + 1) + 2 * U * (np.abs(lin_c) + 1)
    return gs * rel + np.finfo(np.float32).tiny


@pytest.mark.parametrize("n", [4097, 1, 15, 33])  # vector tails of every width
def test_swiglu_random(isa, rng, n):
    gate = (rng.standard_normal(n) * 6).astype(np.float32)
    lin = (rng.standard_normal(n) * 6).astype(np.float32)
    h = ops.swiglu(gate, lin, isa=isa)
    ref = R.swiglu_oai(gate.astype(np.float64), lin.astype(np.float64), alpha=ALPHA32)
    assert np.all(np.abs(h - ref) <= swiglu_tol(gate, lin))


def test_swiglu_an_element_does_not_depend_on_its_place(isa, rng):
    # The forward runs a step's experts in one call over all their rows: a row's result must not
    # depend on where it starts (the tail goes through the vector code too).
    gate = (rng.standard_normal(200) * 6).astype(np.float32)
    lin = (rng.standard_normal(200) * 6).astype(np.float32)
    whole = ops.swiglu(gate, lin, isa=isa)
    for start in (1, 3, 7, 13):
        np.testing.assert_array_equal(ops.swiglu(gate[start:], lin[start:], isa=isa), whole[start:])


def test_swiglu_clamp_boundaries(isa):
    seven = np.float32(7)
    above, below = np.nextafter(seven, np.float32(8)), np.nextafter(seven, np.float32(6))
    g = np.array([seven, above, below, 100, 1e30, 3, 3, 3, 3, 3, 3, -7, -8], np.float32)
    lin = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 7, -7, above, -above, 1e30, -1e30, 2, 2], np.float32)
    h = ops.swiglu(g, lin, isa=isa)
    ref = R.swiglu_oai(g.astype(np.float64), lin.astype(np.float64), alpha=ALPHA32)
    assert np.all(np.abs(h - ref) <= swiglu_tol(g, lin))
    # Gates above 7 act like 7 exactly, linear values beyond ±7 like ±7; no lower clamp on the gate.
    assert h[1] == h[0] == h[3] == h[4]
    assert h[7] == h[5] and h[8] == h[6] and h[9] == h[5] and h[10] == h[6]
    assert h[12] != h[11]


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # float64 reference, g = -1e30
@pytest.mark.parametrize("gate", [-20.0, -60.0, -1000.0, -1e30])
def test_swiglu_large_negative_gate(isa, gate):
    # σ(α·g) underflows towards 0: h must go to (signed) zero, never NaN (exp overflows to inf).
    g = np.full(5, gate, np.float32)
    lin = np.array([-7, -1, 0, 3, 7], np.float32)
    h = ops.swiglu(g, lin, isa=isa)
    ref = R.swiglu_oai(g.astype(np.float64), lin.astype(np.float64), alpha=ALPHA32)
    assert np.all(np.isfinite(h))
    assert np.all(np.abs(h - ref) <= swiglu_tol(g, lin))


@pytest.mark.skipif("avx512vbmi" not in FAST_ISAS, reason="needs AVX512-VBMI")
def test_matmul_fast_mxfp4_same_bits_whatever_the_cpu_tuning(rng):
    """The VBMI MXFP4 GEMV prefetches into L1 or L2 and reads one or two rows per pass by the CPU
    (cpu_tuning.h): only the order the bytes are fetched and read in differs, so the bits are the
    same under all four, for every token count 1..8, row pairs and odd rows, whole quads and every
    remainder of blocks."""
    tunings = ["l1:1", "l1:2", "l2:1", "l2:2"]
    try:
        for rows, nb in [(1, 1), (19, 3), (50, 5), (37, 90), (19, 91), (50, 128)]:
            cols = 32 * nb
            raw = raw_random(rng, MXFP4, rows, cols)
            x = (rng.standard_normal((8, cols)) * rng.uniform(0.1, 10, (8, 1))).astype(np.float32)
            for T in range(1, 9):
                y = []
                for tuning in tunings:
                    ops.set_mxfp4_tuning(tuning)
                    assert ops.mxfp4_tuning() == tuning
                    y.append(ops.matmul(raw, MXFP4, rows, cols, x[:T], None, "avx512vbmi", "fast"))
                for tuning, other in zip(tunings[1:], y[1:]):
                    assert np.array_equal(y[0], other), f"{rows} rows, {nb} blocks, T={T}, {tuning}"
    finally:
        ops.set_mxfp4_tuning("auto")


def test_mxfp4_tuning_rejects_unknown_values():
    for bad in ("l3:1", "l1:3", "l1", "l1:", "l2:12", "L1:1"):
        with pytest.raises(ValueError, match="l1:1, l1:2, l2:1, l2:2 or auto"):
            ops.set_mxfp4_tuning(bad)


@pytest.mark.parametrize("name, value, expect", [
    ("OSSRUN_MXFP4_PREFETCH", "l1", "l1:2"), ("OSSRUN_MXFP4_PREFETCH", "l2", "l2:2"),
    ("OSSRUN_MXFP4_PREFETCH", "l3", "must be l2, l1 or auto"),
    ("OSSRUN_MXFP4_ROWS_PER_PASS", "1", ":1"), ("OSSRUN_MXFP4_ROWS_PER_PASS", "2", ":2"),
    ("OSSRUN_MXFP4_ROWS_PER_PASS", "4", "must be 1, 2 or auto")])
def test_mxfp4_tuning_from_the_environment(name, value, expect):
    """The environment forces a tuning for a process; a bad value is a clear error."""
    code = ("from ossrun._core import ops\ntry:\n print(ops.mxfp4_tuning())\n"
            "except ValueError as e:\n print(e)")
    env = {**os.environ, name: value}
    if name == "OSSRUN_MXFP4_PREFETCH":
        env["OSSRUN_MXFP4_ROWS_PER_PASS"] = "2"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert expect in run.stdout, run.stdout
