"""Round-to-nearest quantizers for ggml's dense block formats (the blocks ggml-common.h defines),
so the model generator can write community-quant-shaped files: Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL
(32 elements per block) and Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (256 per super-block).

Each quantizer picks per-block (and per-sub-block) scales from the block's range and rounds
every element to the nearest level; ggml's search-based quantizers fit better, but any valid
block decodes the same way, which is what the files and tests need. Input: float32 values
whose count is a multiple of the block size; output: uint8 [blocks, block bytes].
"""

from __future__ import annotations

import numpy as np

IQ4_NL_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                         np.float32)


def _f16(v) -> np.ndarray:
    """Values as fp16 (finite: clipped to fp16's range), and their float32 value."""
    h = np.clip(np.asarray(v, np.float32), -65504, 65504).astype(np.float16)
    return h, h.astype(np.float32)


def _f16_bytes(h: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(h, "<f2").view(np.uint8).reshape(-1, 2)


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """Per row, the element of largest magnitude, with its sign."""
    idx = np.abs(x).argmax(axis=-1)
    return np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]


def _safe_inv(d: np.ndarray) -> np.ndarray:
    return np.where(d != 0, 1 / np.where(d != 0, d, 1), 0).astype(np.float32)


def _pack_nibbles32(q: np.ndarray) -> np.ndarray:
    """[n, 32] values 0..15 -> [n, 16] bytes: element j low nibble of byte j, j+16 high nibble."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def _pack_bits32(bits: np.ndarray) -> np.ndarray:
    """[n, 32] bits -> [n, 4] bytes of the little-endian 32-bit word with bit j = bits[:, j]."""
    word = (bits.astype(np.uint64) << np.arange(32, dtype=np.uint64)).sum(axis=1).astype("<u4")
    return word.view(np.uint8).reshape(-1, 4)


def _symmetric32(x, levels_below_zero):
    """d = signed max / -levels (as ggml), q = round(x / d) clipped to [-levels, levels - 1]."""
    h, d = _f16(_signed_absmax(x) / -levels_below_zero)
    q = np.clip(np.rint(x * _safe_inv(d)[:, None]), -levels_below_zero, levels_below_zero - 1)
    return h, q.astype(np.int64)


def _affine32(x, top):
    """d = (max - min) / top, m = min, q = round((x - m) / d) clipped to [0, top]."""
    lo, hi = x.min(axis=1), x.max(axis=1)
    hd, d = _f16((hi - lo) / top)
    hm, m = _f16(lo)
    q = np.clip(np.rint((x - m[:, None]) * _safe_inv(d)[:, None]), 0, top)
    return hd, hm, q.astype(np.int64)


def quantize_q4_0(x):
    x = x.reshape(-1, 32)
    h, q = _symmetric32(x, 8)
    return np.concatenate([_f16_bytes(h), _pack_nibbles32(q + 8)], axis=1)


def quantize_q4_1(x):
    x = x.reshape(-1, 32)
    hd, hm, q = _affine32(x, 15)
    return np.concatenate([_f16_bytes(hd), _f16_bytes(hm), _pack_nibbles32(q)], axis=1)


def quantize_q5_0(x):
    x = x.reshape(-1, 32)
    h, q = _symmetric32(x, 16)
    q = q + 16
    return np.concatenate([_f16_bytes(h), _pack_bits32(q >> 4), _pack_nibbles32(q & 15)], axis=1)


def quantize_q5_1(x):
    x = x.reshape(-1, 32)
    hd, hm, q = _affine32(x, 31)
    return np.concatenate(
        [_f16_bytes(hd), _f16_bytes(hm), _pack_bits32(q >> 4), _pack_nibbles32(q & 15)], axis=1
    )


def quantize_iq4_nl(x):
    x = x.reshape(-1, 32)
    h, d = _f16(_signed_absmax(x) / -127)  # the table's extreme level is -127
    scaled = x * _safe_inv(d)[:, None]
    idx = np.searchsorted((IQ4_NL_LEVELS[1:] + IQ4_NL_LEVELS[:-1]) / 2, scaled)  # nearest level
    return np.concatenate([_f16_bytes(h), _pack_nibbles32(idx)], axis=1)


# ---- K-quants: 256-element super-blocks with quantized sub-block scales -------------------


def _sub_scales(scale, top, signed):
    """Sub-block scales [n, S] -> (fp16 super scale, integer codes, their float value)."""
    if signed:  # codes in [-top-1, top], the super scale keeps the sign of the largest
        h, d = _f16(_signed_absmax(scale) / -(top + 1))
        codes = np.clip(np.rint(scale * _safe_inv(d)[:, None]), -(top + 1), top)
    else:
        h, d = _f16(scale.max(axis=1) / top)
        codes = np.clip(np.rint(scale * _safe_inv(d)[:, None]), 0, top)
    return h, codes.astype(np.int64), d[:, None] * codes


def _affine_k(x, sub, q_top, code_top):
    """Sub-blocks of `sub` with value = scale * q - min (min >= 0): returns the fp16 d, dmin, the
    scale and min codes, and q [n, 256]."""
    n = x.shape[0]
    xs = x.reshape(n, -1, sub)
    lo = np.minimum(xs.min(axis=2), 0)
    hd, sc, dl = _sub_scales((xs.max(axis=2) - lo) / q_top, code_top, signed=False)
    hm, mn, ml = _sub_scales(-lo, code_top, signed=False)
    q = np.rint((xs + ml[:, :, None]) * _safe_inv(dl)[:, :, None])
    return hd, hm, sc, mn, np.clip(q, 0, q_top).astype(np.int64).reshape(n, 256)


def _pack_crumbs256(q):
    """[n, 256] values 0..3 -> [n, 64]: element 128h + 32j + l in bits 2j.. of byte 32h + l."""
    q = q.reshape(-1, 2, 4, 32).astype(np.uint8)
    shifts = (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
    return (q << shifts).sum(axis=2, dtype=np.uint8).reshape(-1, 64)


def _pack_nibbles256(q):
    """[n, 256] values 0..15 -> [n, 128]: element 64c + 32hi + l is nibble hi of byte 32c + l."""
    q = q.reshape(-1, 4, 2, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _pack_k4_scales(sc, mn):
    """Eight 6-bit scales and mins -> the 12 bytes of ggml's get_scale_min_k4 layout."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 15) | ((mn[:, 4:8] & 15) << 4)
    return out


def quantize_q2_k(x):
    x = x.reshape(-1, 256)
    hd, hm, sc, mn, q = _affine_k(x, 16, 3, 15)
    scales = (sc | (mn << 4)).astype(np.uint8)
    return np.concatenate([scales, _pack_crumbs256(q), _f16_bytes(hd), _f16_bytes(hm)], axis=1)


def quantize_q3_k(x):
    x = x.reshape(-1, 256)
    n = x.shape[0]
    xs = x.reshape(n, 16, 16)
    h, codes, dl = _sub_scales(_signed_absmax(xs) / -4, 31, signed=True)  # codes -32..31
    q = np.clip(np.rint(xs * _safe_inv(dl)[:, :, None]), -4, 3).astype(np.int64).reshape(n, 256) + 4
    hbits = (q >> 2).reshape(n, 2, 4, 32).astype(np.uint8)  # bit 4h + j of hmask byte l
    shifts = (4 * np.arange(2, dtype=np.uint8)[:, None] + np.arange(4, dtype=np.uint8))[None, :, :, None]
    hmask = (hbits << shifts).sum(axis=(1, 2), dtype=np.uint8)
    s = (codes + 32).astype(np.uint8)  # 6-bit, biased
    packed = np.empty((n, 12), np.uint8)
    packed[:, 0:8] = (s[:, 0:8] & 15) | ((s[:, 8:16] & 15) << 4)
    high = s >> 4  # 2 bits each; scale g's go to bits 2(g // 4) of byte 8 + g % 4
    packed[:, 8:12] = high[:, 0:4] | (high[:, 4:8] << 2) | (high[:, 8:12] << 4) | (high[:, 12:16] << 6)
    return np.concatenate([hmask, _pack_crumbs256(q & 3), packed, _f16_bytes(h)], axis=1)


def quantize_q4_k(x):
    x = x.reshape(-1, 256)
    hd, hm, sc, mn, q = _affine_k(x, 32, 15, 63)
    parts = [_f16_bytes(hd), _f16_bytes(hm), _pack_k4_scales(sc, mn), _pack_nibbles256(q)]
    return np.concatenate(parts, axis=1)


def quantize_q5_k(x):
    x = x.reshape(-1, 256)
    n = x.shape[0]
    hd, hm, sc, mn, q = _affine_k(x, 32, 31, 63)
    # bit 4 of element e is bit e // 32 of byte e % 32
    hb = (q >> 4).reshape(n, 8, 32).astype(np.uint8)
    qh = (hb << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    return np.concatenate(
        [_f16_bytes(hd), _f16_bytes(hm), _pack_k4_scales(sc, mn), qh, _pack_nibbles256(q & 15)], axis=1
    )


def quantize_q6_k(x):
    x = x.reshape(-1, 256)
    n = x.shape[0]
    xs = x.reshape(n, 16, 16)
    h, codes, dl = _sub_scales(_signed_absmax(xs) / -32, 127, signed=True)  # int8 codes
    q = np.clip(np.rint(xs * _safe_inv(dl)[:, :, None]), -32, 31).astype(np.int64).reshape(n, 2, 4, 32) + 32
    low, high = (q & 15).astype(np.uint8), (q >> 4).astype(np.uint8)  # [n, h, p, l]
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
    qh = (high << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]).sum(axis=2, dtype=np.uint8)
    return np.concatenate(
        [ql.reshape(n, 128), qh.reshape(n, 64), codes.astype(np.int8).view(np.uint8), _f16_bytes(h)], axis=1
    )


# ggml type name -> (quantizer, elements per block)
QUANTIZERS = {
    "Q4_0": (quantize_q4_0, 32),
    "Q4_1": (quantize_q4_1, 32),
    "Q5_0": (quantize_q5_0, 32),
    "Q5_1": (quantize_q5_1, 32),
    "IQ4_NL": (quantize_iq4_nl, 32),
    "Q2_K": (quantize_q2_k, 256),
    "Q3_K": (quantize_q3_k, 256),
    "Q4_K": (quantize_q4_k, 256),
    "Q5_K": (quantize_q5_k, 256),
    "Q6_K": (quantize_q6_k, 256),
}


def quantize(values: np.ndarray, type_name: str) -> np.ndarray:
    """float values (count a multiple of the block size) -> uint8 blocks [n, block bytes]."""
    fn, elems = QUANTIZERS[type_name]
    x = np.ascontiguousarray(values, np.float32).reshape(-1)
    if x.size % elems:
        raise ValueError(f"{x.size} values are not whole {type_name} blocks of {elems}")
    return fn(x.reshape(-1, elems))
