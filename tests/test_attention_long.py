"""Long-context attention: the 16-bit KV cache (kv_type), the tiled online softmax and the
flash-decoding split, for every ISA variant, against the float64 reference on fresh random inputs
at odd lengths (tests/reference.py); and the model's sessions at depths where decode splits.

Bounds: float32 arithmetic as in test_kernels.py's attention test, plus what the tiles and the
split add (one rounding per rescale, per part when merged); a 16-bit cache adds the rounding of
each K and V element, u = 2^-11 (f16) or 2^-8 (bf16) relative, to every logit and value.
"""

from __future__ import annotations

import math

import numpy as np
import ossrun
import pytest
import reference as R
from gguf_factory import f32_to_bf16_bits
from ossrun._core import ops

ISAS = ops.available_isas()
KV_TYPES = ["f32", "f16", "bf16"]
U = 2.0**-24
U16 = {"f32": 0.0, "f16": 2.0**-11, "bf16": 2.0**-8}
TILE = 256  # kAttentionTile (csrc/kernels.h)
CHUNK = ops.attention_split_chunk()


@pytest.fixture(params=ISAS)
def isa(request):
    return request.param


# --------------------------------------------------------------------------- rounding to 16 bits


def test_f16_rounding_is_numpys(rng):
    # Nearest even, subnormals, overflow to inf: numpy's float32 -> float16 is the reference.
    x = np.concatenate([
        rng.standard_normal(3001) * 10.0 ** rng.integers(-9, 6, 3001),
        [0.0, -0.0, 65504.0, 65519.99, 65520.0, -7e4, np.inf, -np.inf, 6.1e-5, 5.96e-8, 2.9e-8, 3e-8],
    ]).astype(np.float32)
    # Exact halfway points between neighbouring halves (normal and subnormal): ties go to even.
    h = rng.standard_normal(2000).astype(np.float16)
    h = np.concatenate([h, (rng.integers(0, 1024, 500) * 2.0**-24).astype(np.float16)])
    nxt = np.nextafter(h, np.float16(np.inf))
    x = np.concatenate([x, ((h.astype(np.float64) + nxt.astype(np.float64)) / 2).astype(np.float32)])
    got = ops.kv_round(x, "f16")
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.isnan(ops.kv_round(np.array([np.nan], np.float32), "f16")[0])


def test_bf16_rounding_is_nearest_even(rng):
    x = (rng.standard_normal(5000) * 10.0 ** rng.integers(-30, 30, 5000)).astype(np.float32)
    # Halfway cases: the low 16 bits exactly 0x8000 on odd and even bf16 values.
    half = (rng.integers(0x3000, 0x5000, 500).astype(np.uint32) << 16 | 0x8000).view(np.float32)
    x = np.concatenate([x, half, half * -3, [3.4e38, -3.4e38]]).astype(np.float32)
    got = ops.kv_round(x, "bf16")
    want = (f32_to_bf16_bits(x).astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.isnan(ops.kv_round(np.array([np.nan], np.float32), "bf16")[0])
    assert np.array_equal(ops.kv_round(x, "f32"), x)


def test_bad_kv_type_is_a_value_error():
    with pytest.raises(ValueError, match="kv_type"):
        ops.kv_round(np.zeros(3, np.float32), "f8")
    kv = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="kv_type"):
        ops.attention(np.zeros((1, 8), np.float32), kv, kv, 0, 3, np.zeros(1, np.float32), 1.0,
                      "scalar", "int8")


# --------------------------------------------------------------------------- the kernel


CASES = {
    # name: (cap, j_lo, j_hi): key ranges of odd lengths, one tile and many, wrapped rings
    "one_tile_odd": (300, 0, 200),
    "tiles_odd": (701, 0, 612),
    "exact_tiles": (512, 0, 511),
    "ring_wrapped_tiles": (601, 1000, 1599),  # 1000 % 601 = 399: wraps inside a tile
    "window_ring_128": (128, 72, 199),  # a sliding layer's full ring, wrapped
    "split_three_chunks": (4500, 0, 4300),
    "split_odd_edges": (5000, 1999, 4097),  # chunks of 49, 2048 and 2 keys
    "split_ring_wrapped": (3001, 5000, 7999),
}


def group_inputs(rng, cap, d, heads):
    q = rng.standard_normal((heads, d)).astype(np.float32)
    k = rng.standard_normal((cap, d)).astype(np.float32)
    v = rng.standard_normal((cap, d)).astype(np.float32)
    sinks = rng.normal(0, 2, heads).astype(np.float32)
    return q, k, v, sinks


def reference_and_bound(q, k_cache, v_cache, j_lo, j_hi, sinks, kv_type, parts=1, rounded=True):
    """float64 attention of each head over the keys (rounded to kv_type when `rounded`, else the
    float32 originals), and a bound on |kernel - reference| per head and component [heads, d]."""
    d = q.shape[1]
    js = np.arange(j_lo, j_hi + 1)
    cap = k_cache.shape[0]
    kf, vf = k_cache[js % cap], v_cache[js % cap]
    if rounded:
        kf = ops.kv_round(kf.ravel(), kv_type).reshape(kf.shape)
        vf = ops.kv_round(vf.ravel(), kv_type).reshape(vf.shape)
    k, v = kf.astype(np.float64), vf.astype(np.float64)
    u16 = 0.0 if rounded else U16[kv_type]
    n = len(js)
    tiles = j_hi // TILE - j_lo // TILE + 1  # tiles start at multiples of TILE
    ref = R.attention(q.astype(np.float64)[None], k[:, None, :], v[:, None, :],
                      sinks.astype(np.float64), [j_hi], js)[0]
    bounds = []
    for h in range(q.shape[0]):
        qh = q[h].astype(np.float64)
        z = (k @ qh) / math.sqrt(d)
        S = (np.abs(k) @ np.abs(qh)) / math.sqrt(d)
        m = max(z.max(), sinks[h])
        # A logit errs by (d+2)U·S in float32 and u16·S from the rounded keys; exp arguments add
        # U(|z|+|m|). Sums of n exps and values: (2n + 8)U, one rounding per tile rescale and per
        # merged part; the values' own rounding u16. Twice that for slack.
        arg_err = np.max((d + 2) * U * S + U * (np.abs(z) + abs(m)) + u16 * S)
        w = np.exp(z - m) / (np.exp(sinks[h] - m) + np.exp(z - m).sum())
        rel = 2 * arg_err + (2 * n + 8 + 4 * tiles + 4 * parts) * U + u16
        bounds.append(2 * rel * (w @ np.abs(v)))
    return ref, np.array(bounds)


@pytest.mark.parametrize("d", [64, 36])
@pytest.mark.parametrize("kv_type", KV_TYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_attention_tiled_and_split_match_reference(isa, rng, case, kv_type, d):
    cap, j_lo, j_hi = CASES[case]
    heads = 11  # a register block of 8 and a tail of 3
    q, k, v, sinks = group_inputs(rng, cap, d, heads)
    scale = np.float32(1 / math.sqrt(d))
    whole = ops.attention(q, k, v, j_lo, j_hi, sinks, scale, isa, kv_type)
    split = ops.attention(q, k, v, j_lo, j_hi, sinks, scale, isa, kv_type, True)
    parts = j_hi // CHUNK - j_lo // CHUNK + 1
    ref, bound = reference_and_bound(q, k, v, j_lo, j_hi, sinks, kv_type, parts)
    for name, out in (("whole", whole), ("split", split)):
        err = np.abs(out - ref)
        assert np.all(err <= bound), f"{name}: worst err/bound {np.max(err / bound):.3g}"
    if parts == 1:  # nothing to split: the same kernel call, bit for bit
        assert np.array_equal(whole, split)


@pytest.mark.parametrize("kv_type", ["f16", "bf16"])
@pytest.mark.parametrize("case", ["tiles_odd", "split_odd_edges"])
def test_16bit_cache_against_float32_keys_and_values(isa, rng, case, kv_type):
    # The stated bound for a 16-bit cache: against float64 on the float32 K and V the cache was
    # given, each logit may move by u·Σ|q||k|/√d and each value by u, u = 2^-11 (f16), 2^-8 (bf16).
    cap, j_lo, j_hi = CASES[case]
    q, k, v, sinks = group_inputs(rng, cap, 64, 8)
    for split in (False, True):
        out = ops.attention(q, k, v, j_lo, j_hi, sinks, np.float32(0.125), isa, kv_type, split)
        ref, bound = reference_and_bound(q, k, v, j_lo, j_hi, sinks, kv_type, 3, rounded=False)
        err = np.abs(out - ref)
        assert np.all(err <= bound), np.max(err / bound)
        # And not vacuous: the rounding is visible (f32 keys would do much better).
        assert np.max(err) > 1e-3 * U16[kv_type] * np.max(np.abs(ref))


def test_split_of_an_empty_range_and_a_lone_key(isa, rng):
    q, k, v, sinks = group_inputs(rng, 8, 64, 3)
    for kv_type in KV_TYPES:
        empty = ops.attention(q, k, v, 5, 4, sinks, np.float32(0.125), isa, kv_type, True)
        assert np.array_equal(empty, np.zeros_like(empty))
    # One key on each side of a chunk boundary: two parts of one key each.
    q, k, v, sinks = group_inputs(rng, 2 * CHUNK + 1, 64, 3)
    out = ops.attention(q, k, v, CHUNK - 1, CHUNK, sinks, np.float32(0.125), isa, "f32", True)
    ref, bound = reference_and_bound(q, k, v, CHUNK - 1, CHUNK, sinks, "f32", 2)
    assert np.all(np.abs(out - ref) <= bound)


ROW_CASES = {
    # name: (cap, j_lo, j_hi of row 0, rows, window): prefill's blocks of rows at consecutive positions
    "full_from_zero": (700, 0, 300, 16, 0),  # rows end inside and across tile boundaries
    "full_odd_rows": (900, 0, 508, 5, 0),
    "window_ring": (128 + 16 + 9, 1900, 2027, 16, 128),  # a sliding layer's ring, wrapped, window moving
    "window_start": (300, 0, 3, 13, 128),  # first rows of a prompt: the window not yet full
}


@pytest.mark.parametrize("kv_type", KV_TYPES)
@pytest.mark.parametrize("case", list(ROW_CASES))
def test_rows_share_tiles_and_match_one_row_each(isa, rng, case, kv_type):
    # Several rows in one call (prefill) give each row's single-row result bit for bit (tiles start
    # at absolute positions, so a row's arithmetic does not depend on its neighbours), and that
    # agrees with the float64 reference within the bound above.
    cap, j_lo, j_hi, rows, window = ROW_CASES[case]
    heads, d = 9, 64
    q = rng.standard_normal((rows, heads, d)).astype(np.float32)
    _, k, v, sinks = group_inputs(rng, cap, d, heads)
    scale = np.float32(0.125)
    out = ops.attention(q, k, v, j_lo, j_hi, sinks, scale, isa, kv_type, window=window)
    assert out.shape == q.shape
    for r in range(rows):
        hi = j_hi + r
        lo = max(j_lo, hi - window + 1) if window else j_lo
        one = ops.attention(q[r], k, v, lo, hi, sinks, scale, isa, kv_type)
        assert np.array_equal(out[r], one), f"row {r}"
        ref, bound = reference_and_bound(q[r], k, v, lo, hi, sinks, kv_type)
        assert np.all(np.abs(out[r] - ref) <= bound), f"row {r}: {np.max(np.abs(out[r] - ref) / bound):.3g}"


def test_rows_bad_arguments_are_value_errors(rng):
    q, k, v, sinks = group_inputs(rng, 64, 16, 2)
    with pytest.raises(ValueError, match="split"):
        ops.attention(np.stack([q, q]), k, v, 0, 10, sinks, 0.25, "auto", "f32", True)
    with pytest.raises(ValueError, match="fit"):  # rows 0..9 end at 60..69: past the 64 slots
        ops.attention(np.stack([q] * 10), k, v, 0, 60, sinks, 0.25)


# --------------------------------------------------------------------------- sessions


@pytest.fixture(scope="module")
def w4(fixtures_dir):
    return fixtures_dir / "tiny-w4" / "tiny.gguf"


@pytest.fixture(scope="module")
def deep_w4(w4):
    """2100 tokens on tiny-w4 (2 kv heads, full layers 1 and 3): decode past position 2048
    splits the full layers' rows into two chunks; the float64 reference's logits."""
    hp, weights = R.load_gguf_weights(w4)
    n_vocab = weights["token_embd.weight"].shape[0]
    toks = np.random.default_rng(5).integers(0, n_vocab, 2100).astype(np.int32)
    return toks, R.forward(hp, weights, toks)


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


# Measured (max|a - b| / max|b| of the logits over these 2100 tokens): f32 5e-7, f16 5.8e-4,
# bf16 7.0e-3 (about 2^-11 and 2^-8 times a small factor, as the elements' rounding predicts).
# The bounds leave 5x room while a wrong chunk, merge or element order moves logits by O(1).
KV_TOL = {"f32": 1e-4, "f16": 3e-3, "bf16": 3.5e-2}


@pytest.mark.parametrize("kv_type", KV_TYPES)
def test_deep_decode_matches_reference(w4, deep_w4, kv_type):
    toks, ref = deep_w4
    m = ossrun.load(w4, precision="f32", n_ctx=2200, kv_type=kv_type)
    s = m.session()
    assert s.kv_type == kv_type
    # The last prefill chunk (2040 = 7·256 + 248 rows) is unsplit; the decodes below split.
    s.prefill(toks[:2040])
    decoded = np.stack([s.decode(int(t)) for t in toks[2040:]])
    assert rel_err(decoded, ref[2040:]) < KV_TOL[kv_type]
    # One prefill of everything (chunks of 256 and a short last one of 52 rows, which splits).
    assert rel_err(m.logits(toks)[2040:], ref[2040:]) < KV_TOL[kv_type]


def test_kv_type_defaults_and_validation(w4):
    fast, exact = ossrun.load(w4, n_ctx=64), ossrun.load(w4, precision="f32", n_ctx=64)
    assert fast.kv_type == "f16" and fast.session().kv_type == "f16"
    assert exact.kv_type == "f32" and exact.session().kv_type == "f32"
    assert exact.session(kv_type="bf16").kv_type == "bf16"
    # 16 bits halve the cache.
    assert fast.session()._core.kv_bytes * 2 == exact.session()._core.kv_bytes
    with pytest.raises(ValueError, match="kv_type"):
        ossrun.load(w4, kv_type="fp8")
    with pytest.raises(ValueError, match="kv_type"):
        exact.session(kv_type="F16")


def test_exact_mode_is_float32_kv_bit_for_bit(w4, deep_w4):
    # precision="f32" keeps the float32 cache: the same logits as asking for it by name.
    toks, _ = deep_w4
    a = ossrun.load(w4, precision="f32", n_ctx=300).logits(toks[:300])
    b = ossrun.load(w4, precision="f32", n_ctx=300, kv_type="f32").logits(toks[:300])
    assert np.array_equal(a, b)


def test_commit_kv_makes_the_cache_resident_and_changes_nothing(w4, deep_w4):
    psutil = pytest.importorskip("psutil")
    toks, _ = deep_w4
    m = ossrun.load(w4, precision="f32", n_ctx=4096)
    fresh = m.session().prefill(toks[:40])
    s = m.session(n_ctx=m.config.context_length)
    before = psutil.Process().memory_info().rss
    s._core.commit_kv()
    grown = psutil.Process().memory_info().rss - before
    assert grown >= 0.9 * s._core.kv_bytes
    assert np.array_equal(s.prefill(toks[:40]), fresh)


def test_fill_synthetic_stands_in_for_a_prefill(w4):
    # The bench's --synthetic-depth: n positions held, decode continues after them (finite logits).
    m = ossrun.load(w4, n_ctx=3000)
    s = m.session()
    s._core.fill_synthetic(2500)
    assert s.n_past == 2500
    assert np.isfinite(s.decode(3)).all() and s.n_past == 2501
    with pytest.raises(Exception, match="fill_synthetic"):
        s._core.fill_synthetic(3001)
