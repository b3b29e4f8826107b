"""Float64 numpy dequantizers for ggml's dense quant blocks (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL,
Q2_K .. Q6_K), written from the block layouts of ggml-common.h, independently of the kernels
(csrc/cpu/kernels/quant_blocks.h) and of the generator's quantizers (python/ossrun/quantize.py).
Used by tests/test_quant_types.py and by reference.dequantize.
"""

from __future__ import annotations

import numpy as np

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


def dequantize(raw, name, cols):
    s, q, m = reference_parts(raw, name, cols)
    return s * q - m  # exact in float64; one rounding to float32 gives the decoded value



TYPE_NAMES = {type_id: name for name, (type_id, _, _) in FORMATS.items()}
