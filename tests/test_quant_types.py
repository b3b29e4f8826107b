"""The dense quant types of community gpt-oss files: Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL (32-element
blocks) and Q2_K .. Q6_K (256-element super-blocks). A float64 numpy dequantizer per format,
written here from ggml's block layouts, is the reference: the kernels' row decoding must equal it
bit for bit on random blocks in every ISA variant, and every matmul must stay within a stated
rounding bound of float64 on the weights it decodes. The reference itself is checked against
the `gguf` package's dequantizers (llama.cpp's own Python reading of these blocks).
"""

from __future__ import annotations

import numpy as np
import pytest
from ossrun._core import ops

ISAS = ops.available_isas()
U = 2.0**-24  # float32 unit roundoff

# name -> (ggml type id, elements per block, bytes per block)
FORMATS = {
    "Q4_0": (2, 32, 18),
    "Q4_1": (3, 32, 20),
    "Q5_0": (6, 32, 22),
    "Q5_1": (7, 32, 24),
    "IQ4_NL": (20, 32, 18),
    "Q2_K": (10, 256, 84),
    "Q3_K": (11, 256, 110),
    "Q4_K": (12, 256, 144),
    "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210),
}
# Where each format keeps its fp16 fields (byte offsets in the block).
HALF_FIELDS = {
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "IQ4_NL": (0,),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}
IQ4_NL_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113])


# --------------------------------------------------------------------------- float64 reference


def _half(blocks, off):
    return blocks[:, off : off + 2].copy().view("<f2")[:, 0].astype(np.float64)


def _nibbles32(qs):
    """[n, 16] bytes -> [n, 32]: low nibbles are elements 0-15, high nibbles 16-31."""
    return np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int64)


def _bits32(qh_bytes):
    """[n, 4] little-endian bytes -> [n, 32] bits, bit j for element j."""
    qh = qh_bytes.copy().view("<u4")[:, 0].astype(np.int64)
    return (qh[:, None] >> np.arange(32)) & 1


def _crumbs256(qs):
    """[n, 64] bytes -> [n, 256] 2-bit fields: element 128h + 32j + l is bits 2j.. of byte 32h + l."""
    qs = qs.reshape(-1, 2, 1, 32).astype(np.int64)
    return ((qs >> (2 * np.arange(4))[None, None, :, None]) & 3).reshape(-1, 256)


def _k4_scale_min(sc):
    """[n, 12] packed bytes -> 8 six-bit scales and 8 mins per super-block."""
    sc = sc.astype(np.int64)
    scale = np.concatenate([sc[:, 0:4] & 63, (sc[:, 8:12] & 15) | ((sc[:, 0:4] >> 6) << 4)], axis=1)
    mins = np.concatenate([sc[:, 4:8] & 63, (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)], axis=1)
    return scale, mins


def _nibbles256(qs):
    """[n, 128] -> [n, 256]: element 64c + 32hi + l is nibble hi of byte 32c + l."""
    qs = qs.reshape(-1, 4, 1, 32).astype(np.int64)
    return np.concatenate([qs & 15, qs >> 4], axis=2).reshape(-1, 256)


def reference_parts(raw: np.ndarray, name: str, cols: int):
    """Each element as (scale, integer, offset) in float64, element = scale * integer - offset,
    as arrays [rows, cols]."""
    _, elems, nbytes = FORMATS[name]
    rows = raw.shape[0]
    b = np.ascontiguousarray(raw).reshape(-1, nbytes)
    n = b.shape[0]
    zero = np.zeros((n, elems))

    def per(v, width):  # a per-sub-block value repeated over its elements
        return np.repeat(np.asarray(v, np.float64).reshape(n, -1), width, axis=1)

    if name == "Q4_0":
        s, q, m = per(_half(b, 0), 32), _nibbles32(b[:, 2:18]) - 8, zero
    elif name == "Q4_1":
        s, q, m = per(_half(b, 0), 32), _nibbles32(b[:, 4:20]), -per(_half(b, 2), 32)
    elif name == "Q5_0":
        s, q, m = per(_half(b, 0), 32), _nibbles32(b[:, 6:22]) + 16 * _bits32(b[:, 2:6]) - 16, zero
    elif name == "Q5_1":
        s, q = per(_half(b, 0), 32), _nibbles32(b[:, 8:24]) + 16 * _bits32(b[:, 4:8])
        m = -per(_half(b, 2), 32)
    elif name == "IQ4_NL":
        s, q, m = per(_half(b, 0), 32), IQ4_NL_LEVELS[_nibbles32(b[:, 2:18])], zero
    elif name == "Q2_K":
        sc = b[:, 0:16].astype(np.int64)
        s = per(_half(b, 80)[:, None] * (sc & 15), 16)
        m = per(_half(b, 82)[:, None] * (sc >> 4), 16)
        q = _crumbs256(b[:, 16:80])
    elif name == "Q3_K":
        sc = b[:, 96:108].astype(np.int64)
        low = np.concatenate([sc[:, 0:8] & 15, sc[:, 0:8] >> 4], axis=1)
        g = np.arange(16)
        high = (sc[:, 8 + g % 4] >> (2 * (g // 4))) & 3
        s = per(_half(b, 108)[:, None] * ((low | (high << 4)) - 32), 16)
        hm = b[:, 0:32].reshape(-1, 1, 1, 32).astype(np.int64)
        bit = (hm >> (4 * np.arange(2)[:, None] + np.arange(4))[None, :, :, None]) & 1
        q, m = _crumbs256(b[:, 32:96]) - 4 * (1 - bit.reshape(-1, 256)), zero
    elif name in ("Q4_K", "Q5_K"):
        scale, mins = _k4_scale_min(b[:, 4:16])
        s = per(_half(b, 0)[:, None] * scale, 32)
        m = per(_half(b, 2)[:, None] * mins, 32)
        if name == "Q4_K":
            q = _nibbles256(b[:, 16:144])
        else:
            qh = b[:, 16:48].astype(np.int64)  # bit e // 32 of byte e % 32
            e = np.arange(256)
            q = _nibbles256(b[:, 48:176]) + 16 * ((qh[:, e % 32] >> (e // 32)) & 1)
    elif name == "Q6_K":
        ql = b[:, 0:128].reshape(-1, 2, 2, 32).astype(np.int64)  # [h, half of 64, l]
        low = np.concatenate([ql & 15, ql >> 4], axis=2).reshape(-1, 2, 4, 32)  # p = 0, 1, 2, 3
        qh = b[:, 128:192].reshape(-1, 2, 1, 32).astype(np.int64)
        high = (qh >> (2 * np.arange(4))[None, None, :, None]) & 3
        q = (low | (high << 4)).reshape(-1, 256) - 32
        s = per(_half(b, 208)[:, None] * b[:, 192:208].view(np.int8), 16)
        m = zero
    else:
        raise AssertionError(name)
    shape = (rows, cols)
    return s.reshape(shape), q.astype(np.float64).reshape(shape), m.reshape(shape)


def dequantize(raw, name, cols):
    s, q, m = reference_parts(raw, name, cols)
    return s * q - m  # exact in float64; one rounding to float32 gives the decoded value


# --------------------------------------------------------------------------- random blocks


def random_blocks(rng, name, rows, cols, scales="any"):
    """Random bytes [rows, row_bytes] with finite fp16 fields: `any` bit pattern (subnormals
    included) or `normal` magnitudes (1e-3 .. 0.1, one in eight subnormal) for matmuls."""
    _, elems, nbytes = FORMATS[name]
    nb = rows * cols // elems
    raw = rng.integers(0, 256, (nb, nbytes), dtype=np.uint8)
    for off in HALF_FIELDS[name]:
        if scales == "any":
            bits = rng.integers(0, 0x10000, nb).astype(np.uint16)
            bits[(bits & 0x7C00) == 0x7C00] &= 0x83FF  # inf/NaN exponents -> subnormal patterns
            h = bits.view(np.float16)
        else:
            h = (rng.uniform(1e-3, 0.1, nb) * rng.choice([-1, 1], nb)).astype(np.float16)
            tiny = rng.random(nb) < 1 / 8
            h[tiny] = rng.integers(1, 1024, tiny.sum()).astype(np.uint16).view(np.float16)
            if name in ("Q4_1", "Q5_1") and off == 2:  # the min: of the size of d * 8
                h = (h.astype(np.float32) * 8).astype(np.float16)
        raw[:, off : off + 2] = h.astype("<f2").view(np.uint8).reshape(nb, 2)
    return raw.reshape(rows, -1)


def f32_bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# --------------------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("name", FORMATS)
def test_reference_agrees_with_gguf_package(rng, name):
    """Our layout reading equals llama.cpp's gguf-py dequantizer (float32 arithmetic there, so
    within one rounding of each part)."""
    quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType

    elems = FORMATS[name][1]
    raw = random_blocks(rng, name, 4, elems * 3, scales="normal")
    s, q, m = reference_parts(raw, name, elems * 3)
    theirs = quants.dequantize(raw, GGMLQuantizationType[name]).astype(np.float64)
    assert theirs.shape == (4, elems * 3)
    tol = 4 * U * (np.abs(s * q) + np.abs(m)) + 1e-45
    assert np.all(np.abs(theirs - (s * q - m)) <= tol)


# --------------------------------------------------------------------------- decode: bit-exact


@pytest.fixture(params=ISAS)
def isa(request):
    return request.param


@pytest.mark.parametrize("name", FORMATS)
def test_decode_rows_bit_exact(isa, rng, name):
    type_id, elems, _ = FORMATS[name]
    rows, cols = 5, elems * (3 if elems == 256 else 7)  # odd block counts
    raw = random_blocks(rng, name, rows, cols)
    out = ops.decode_rows(raw, type_id, rows, cols, isa)
    ref = dequantize(raw, name, cols).astype(np.float32)
    bad = np.nonzero(f32_bits(out) != f32_bits(ref))
    assert bad[0].size == 0, f"{bad[0].size} values differ, first at {bad[0][0]},{bad[1][0]}"


@pytest.mark.parametrize("name", [n for n in FORMATS if FORMATS[n][1] == 256])
def test_k_quant_rows_must_be_whole_super_blocks(name):
    type_id, _, nbytes = FORMATS[name]
    with pytest.raises(ValueError, match="shape"):
        ops.decode_rows(np.zeros((1, nbytes * 12), np.uint8), type_id, 1, 2880)  # 2880 = 11.25 x 256


def test_decode_rejects_wrong_byte_count():
    with pytest.raises(ValueError, match="bytes"):
        ops.decode_rows(np.zeros((1, 143), np.uint8), 12, 1, 256)


# --------------------------------------------------------------------------- matmul

TOKENS = [1, 2, 3, 5, 17, 67]  # GEMV 1..3; GEMM with tile tails


@pytest.mark.parametrize("rows", [19, 37])
@pytest.mark.parametrize("name", FORMATS)
def test_matmul_f32_within_rounding_bound(isa, rng, name, rows):
    """Decoding is exact, so only float32 products and sums err: within (K-1)·U·Σ|w||x| for any
    summation order, plus U·|y| for the bias add and the final rounding. A wrong element,
    nibble, scale or row moves y by ~|w||x|."""
    type_id, elems, _ = FORMATS[name]
    cols = elems * (3 if elems == 256 else 5)
    raw = random_blocks(rng, name, rows, cols, scales="normal")
    W = dequantize(raw, name, cols).astype(np.float32).astype(np.float64)
    b = rng.standard_normal(rows).astype(np.float32)
    for T in TOKENS:
        x = rng.standard_normal((T, cols)).astype(np.float32)
        y = ops.matmul(raw, type_id, rows, cols, x, b, isa, "f32")
        x64 = x.astype(np.float64)
        ref = x64 @ W.T + b
        tol = (cols + 2) * U * (np.abs(x64) @ np.abs(W).T + np.abs(b))
        err = np.abs(y - ref)
        assert y.shape == (T, rows)
        assert np.all(err <= tol), f"T={T}: max err {err.max():.3g}, bound {tol.flat[err.argmax()]:.3g}"


def _has_i16(isa_name):
    try:
        ops.quantize_i16(np.zeros((1, 32), np.float32), isa_name)
        return True
    except ValueError:
        return False


FAST_ISAS = [i for i in ISAS if _has_i16(i)]


def quantize_i16_ref(x):
    """The fast precision's int16 activation blocks (checked bit for bit in test_kernels.py)."""
    T, K = x.shape
    blocks = x.reshape(T, K // 32, 32).astype(np.float32)
    mx = np.abs(blocks).max(axis=2)
    scale = mx / np.float32(32767)
    inv = np.where(mx > 0, np.float32(32767) / np.where(mx > 0, mx, 1), 0).astype(np.float32)
    q = np.rint(blocks * inv[:, :, None]).astype(np.int16)
    return q.reshape(T, K), scale


@pytest.mark.parametrize("isa_name", FAST_ISAS or ["none"])
@pytest.mark.parametrize("rows", [19, 37])
@pytest.mark.parametrize("name", FORMATS)
def test_matmul_fast_within_rounding_bound(isa_name, rng, name, rows):
    """Fast precision: the GEMV (1-3 tokens) takes int16 activations. Given them, every 16
    elements' integer dot is exact in int32; what rounds is its conversion, the product of the
    two scales, one FMA per 32 elements, and for the offset formats the per-16 activation sums
    (one rounding), their product with the offset and its accumulation: within
    (K/16 + 4)·U·Σ(|s·q| + |m|)·|x| of float64 on the quantized activations (cancellation between
    s·q and m makes Σ|w||x| too small a scale). The GEMM (more tokens) keeps float32: the f32
    bound. A misplaced element or scale errs by ~|w||x|."""
    if isa_name == "none":
        pytest.skip("no kernel variant with int16 dot products on this CPU")
    type_id, elems, _ = FORMATS[name]
    cols = elems * (3 if elems == 256 else 5)
    raw = random_blocks(rng, name, rows, cols, scales="normal")
    s, q, m = reference_parts(raw, name, cols)
    W = (s * q - m).astype(np.float32).astype(np.float64)
    mag_w = np.abs(s * q) + np.abs(m)
    b = rng.standard_normal(rows).astype(np.float32)
    for T in TOKENS:
        x = (rng.standard_normal((T, cols)) * rng.uniform(0.1, 10, (T, 1))).astype(np.float32)
        y = ops.matmul(raw, type_id, rows, cols, x, b, isa_name, "fast")
        assert y.shape == (T, rows)
        if T >= 4:
            x64 = x.astype(np.float64)
            tol = (cols + 2) * U * (np.abs(x64) @ np.abs(W).T + np.abs(b))
            assert np.all(np.abs(y - (x64 @ W.T + b)) <= tol), f"T={T}"
            continue
        xi, xs = quantize_i16_ref(x)
        xq = xi.astype(np.float64) * np.repeat(xs, 32, axis=1).astype(np.float64)
        ref = xq @ (s * q - m).T + b
        tol = (cols // 16 + 4) * U * (np.abs(xq) @ mag_w.T + np.abs(b))
        err = np.abs(y - ref)
        assert np.all(err <= tol), f"T={T}: max err {err.max():.3g}, bound {tol.flat[err.argmax()]:.3g}"
