"""Checks that tests/reference.py (the float64 numpy reference our kernels are tested against)
is right: both weight layouts decode identically, the forward pass matches OpenAI's golden
logits on the tiny fixtures, op-level spec examples (MODEL.md §7.4 item 4) hold, and classic
bugs move the logits far beyond the tolerance, so the comparison can fail.
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import reference as R
from gguf import GGMLQuantizationType, quants

FIXTURE_NAMES = ["tiny-w4", "tiny-w128"]
TOL = 2e-5  # max|a−b| / max|b|; the spec measured 5.8e-7 (tiny-w4) and 4.1e-6 (tiny-w128)


def rel_err(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


_MODELS: dict = {}


@pytest.fixture(params=FIXTURE_NAMES)
def model(request, fixtures_dir):
    """GGUF weights, golden.npz and the reference's forward (with residuals), once per fixture."""
    name = request.param
    if name not in _MODELS:
        d = fixtures_dir / name
        hparams, weights = R.load_gguf_weights(d / "tiny.gguf")
        golden = dict(np.load(d / "golden.npz"))
        collect: dict = {}
        logits = R.forward(hparams, weights, golden["tokens"], collect=collect)
        _MODELS[name] = SimpleNamespace(
            name=name, dir=d, hparams=hparams, weights=weights, golden=golden,
            logits=logits, collect=collect,
        )
    return _MODELS[name]


# --------------------------------------------------------------------------- fixtures vs golden


def test_gguf_weights_equal_safetensors(model):
    config, original = R.load_openai_safetensors(model.dir)
    hparams, mapped = R.openai_to_gguf(config, original)
    assert set(mapped) == set(model.weights)
    for name, w in model.weights.items():
        assert w.shape == mapped[name].shape, name
        assert np.array_equal(bits(w), bits(mapped[name])), name
    for key, value in hparams.items():
        if key in model.hparams:
            assert model.hparams[key] == pytest.approx(value), key


def test_logits_match_golden_fp32(model):
    err = rel_err(model.logits, model.golden["logits_ref_fp32"])
    print(f"{model.name}: reference vs golden fp32 {err:.2e}")
    assert err < TOL


def test_logits_match_spec_fp64(model):
    err = rel_err(model.logits, model.golden["logits_spec_fp64"])
    print(f"{model.name}: reference vs spec fp64 {err:.2e}")
    assert err < TOL


def test_block_residuals_match_golden(model):
    n_layers = model.hparams["block_count"]
    assert len(model.collect) == 2 * n_layers
    for key, x in model.collect.items():
        assert rel_err(x, model.golden[f"ref32_{key}"]) < TOL, key


# --------------------------------------------------------------------------- deliberate bugs


def _window(delta):
    def bug(m, monkeypatch):
        window = m.hparams["attention.sliding_window"] + delta
        return {**m.hparams, "attention.sliding_window": window}, m.weights
    return bug


def _no_sinks(m, monkeypatch):
    # exp(−inf) = 0 drops the sink from every denominator.
    sinks = {k: np.full_like(w, -np.inf) for k, w in m.weights.items() if "attn_sinks" in k}
    return m.hparams, {**m.weights, **sinks}


def _no_concentration(m, monkeypatch):
    monkeypatch.setattr(R, "yarn_concentration", lambda factor: 1.0)
    return m.hparams, m.weights


def _floored_yarn_range(m, monkeypatch):
    corr_range = R.yarn_corr_range
    monkeypatch.setattr(
        R, "yarn_corr_range",
        lambda *a: (math.floor(corr_range(*a)[0]), math.ceil(corr_range(*a)[1])),
    )
    monkeypatch.setattr(R, "rope_theta_table", R.yarn_theta_f32)
    return m.hparams, m.weights


def _softmax_over_all_experts(m, monkeypatch):
    def router(logits, k):
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        idx = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
        return idx, np.take_along_axis(p, idx, axis=-1)
    monkeypatch.setattr(R, "router_topk", router)
    return m.hparams, m.weights


def _gate_up_swapped(m, monkeypatch):
    w = dict(m.weights)
    for n in range(m.hparams["block_count"]):
        for part in ("weight", "bias"):
            g, u = f"blk.{n}.ffn_gate_exps.{part}", f"blk.{n}.ffn_up_exps.{part}"
            w[g], w[u] = w[u], w[g]
    return m.hparams, w


BUGS = {
    "window+1": _window(+1),
    "window-1": _window(-1),
    "no sinks": _no_sinks,
    "no concentration C": _no_concentration,
    "YaRN low/high floored/ceiled": _floored_yarn_range,
    "softmax over all experts": _softmax_over_all_experts,
    "gate/up swapped": _gate_up_swapped,
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_deliberate_bug_fails_golden(model, bug, monkeypatch):
    hparams, weights = BUGS[bug](model, monkeypatch)
    err = rel_err(R.forward(hparams, weights, model.golden["tokens"]),
                  model.golden["logits_ref_fp32"])
    print(f"{model.name}: {bug} -> {err:.2e}")
    assert err > 10 * TOL


# --------------------------------------------------------------------------- RoPE (§2.4)


def _spec_theta_rows(fixtures_dir):
    """(i, ramp, float32 bits, decimal) rows of the §2.4 table, parsed from MODEL.md itself."""
    text = (fixtures_dir.parent / "MODEL.md").read_text()
    row = re.compile(r"^\| *(\d+) *\| *([0-9.]+) *\| *0x([0-9A-F]{8}) *\| *([0-9.e+-]+) *\|$")
    rows = [m.groups() for m in map(row.match, text.splitlines()) if m]
    assert [int(r[0]) for r in rows] == list(range(32))
    return [(int(i), float(ramp), int(hx, 16), float(dec)) for i, ramp, hx, dec in rows]


def test_theta_table_bit_exact(fixtures_dir):
    rows = _spec_theta_rows(fixtures_dir)
    spec_bits = np.array([r[2] for r in rows], dtype=np.uint32)
    # The hex column agrees with the decimal column, and the reference's table with both.
    decimal = np.array([r[3] for r in rows], dtype=np.float32)
    assert np.array_equal(decimal.view(np.uint32), spec_bits)
    assert np.array_equal(R.rope_theta_table().view(np.uint32), spec_bits)
    # The float32-step evaluation is that table up to torch's pow rounding at i = 6, 10.
    ours = R.yarn_theta_f32().view(np.uint32).astype(np.int64)
    diff = ours - spec_bits.astype(np.int64)
    assert set(np.nonzero(diff)[0]) == {6, 10} and np.all(np.abs(diff) <= 1)

    low, high = R.yarn_corr_range(64, 150000.0, 4096, 32.0, 1.0)
    assert low == pytest.approx(8.092779115512402, abs=1e-12)
    assert high == pytest.approx(17.39802450158856, abs=1e-12)
    ramp = np.clip((np.arange(32) - low) / (high - low), 0, 1)
    assert np.allclose(ramp, [r[1] for r in rows], atol=1e-6)


def test_concentration_and_angle_rounding():
    c = R.yarn_concentration(32.0)
    assert c == pytest.approx(1.3465735902799727, abs=1e-15)
    assert np.float32(c).view(np.uint32) == 0x3FAC5C86
    theta = R.rope_theta_table()
    cos, sin = R.rope_cos_sin(np.array([0, 100_000]), theta, c)
    assert np.all(cos[0] == np.float32(c)) and np.all(sin[0] == 0.0)
    # At p = 1e5 the float32 angle p·θ_0 = 1e5 exactly, but p·θ_1 is rounded: the reference's
    # angle, not the float64 one, must be used.
    f32_angle = np.float64(np.float32(100_000) * theta[1])
    assert f32_angle != 100_000 * np.float64(theta[1])
    assert cos[1, 1] == np.float32(np.float32(np.cos(f32_angle)) * np.float32(c))


def test_rope_half_split_pairs():
    x = np.zeros((1, 1, 64))
    x[0, 0, 3] = 1.0  # only element 3: it must rotate into element 3 + 32
    cos, sin = np.full((1, 32), 0.6), np.full((1, 32), 0.8)
    y = R.apply_rope(x, cos, sin)[0, 0]
    assert y[3] == 0.6 and y[35] == 0.8 and np.count_nonzero(y) == 2


# --------------------------------------------------------------------------- formats (§3, §4.3)


def test_e8m0_special_values():
    got = R.e8m0_value(np.array([0, 1, 2, 127, 252], dtype=np.uint8))
    assert list(got) == [2.0**-127, 2.0**-126, 2.0**-125, 1.0, 2.0**125]
    with pytest.raises(ValueError):
        R.e8m0_value(255)


def test_e2m1_table():
    assert list(R.e2m1_value(np.arange(8))) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert np.array_equal(R.e2m1_value(np.arange(8, 16)), -R.e2m1_value(np.arange(8)))
    assert math.copysign(1.0, R.e2m1_value(8)) == -1.0


MXFP4_EXAMPLE = np.array(
    [0, .25, .5, .75, 1, 1.5, 2, 3, -0., -.25, -.5, -.75, -1, -1.5, -2, -3,
     -3, -2, -1.5, -1, -.75, -.5, -.25, -0., 3, 2, 1.5, 1, .75, .5, .25, 0]
)


def test_mxfp4_worked_example_both_layouts():
    pair = bytes.fromhex("10 32 54 76 98 BA DC FE EF CD AB 89 67 45 23 01")
    # One row holding one block: blocks [1, 16], scales [1] -> 32 values.
    openai = R.dequant_mxfp4_openai(np.frombuffer(pair, np.uint8)[None], np.array([0x7E], np.uint8))
    gguf_block = bytes.fromhex("7E F0 E1 D2 C3 B4 A5 96 87 78 69 5A 4B 3C 2D 1E 0F")
    ggml = R.dequantize(gguf_block, R.GGML_MXFP4, (1, 32))
    assert np.array_equal(bits(openai), bits(MXFP4_EXAMPLE))  # signs of −0 included
    assert np.array_equal(bits(ggml[0]), bits(MXFP4_EXAMPLE))


def test_mxfp4_gguf_matches_ggml_int_decoder():
    """Our E2M1·2^(e−127) decoder vs gguf-py's doubled-int table with a halved scale."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(300, 17), dtype=np.uint8)
    blocks[:, 0] = np.arange(300) % 253  # every scale byte 0..252, subnormal halves included
    ours = R.dequant_mxfp4_gguf(blocks, 30, 320)
    theirs = quants.dequantize(blocks.reshape(30, 170), GGMLQuantizationType.MXFP4)
    assert np.array_equal(ours, theirs.astype(np.float64))


def test_q8_0_subnormal_scale():
    block = np.zeros(34, np.uint8)
    block[:2] = [0x01, 0x00]  # fp16 0x0001 = 2^−24, the smallest subnormal
    block[2:] = np.arange(-16, 16, dtype=np.int8).view(np.uint8)
    assert np.array_equal(R.dequant_q8_0(block, 1, 32)[0], np.arange(-16, 16) * 2.0**-24)

    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=(40, 34), dtype=np.uint8)
    raw[:, 1] &= 0x3F  # scale exponents below inf/NaN, many of them subnormal
    ours = R.dequantize(raw, R.GGML_Q8_0, (5, 256))
    theirs = quants.dequantize(raw.reshape(5, 272), GGMLQuantizationType.Q8_0)
    assert np.array_equal(ours, theirs.astype(np.float64))


def test_float_decoders():
    x = np.array([1.5, -2.0, 2.0**-133, 3.0e38], dtype=np.float32)
    assert np.array_equal(R.dequantize(x, R.GGML_F32, (2, 2)), x.astype(np.float64).reshape(2, 2))
    h = np.array([1.0, -0.5, 6.0e-8, 65504.0], dtype=np.float16)
    assert np.array_equal(R.dequantize(h.view(np.uint8), R.GGML_F16, (4,)), h.astype(np.float64))
    bf16 = np.array([0x3F80, 0xC040, 0x0001], dtype=np.uint16)  # 1, −3, smallest subnormal
    assert list(R.dequantize(bf16, R.GGML_BF16, (3,))) == [1.0, -3.0, 2.0**-133]


# --------------------------------------------------------------------------- attention (§2.5)


def test_sink_dominates_softmax():
    # All z = 0 (q = 0) and v = 1: the output is the weight sum n / (e^S + n) < 1.
    q, k, v = np.zeros((1, 1, 64)), np.ones((3, 1, 64)), np.ones((3, 1, 64))
    attend = lambda sink: R.attention(q, k, v, np.array([sink]), [2], [0, 1, 2])  # noqa: E731
    for sink in (0.0, 20.0):
        assert np.allclose(attend(sink), 3 / (math.exp(sink) + 3), rtol=1e-12, atol=0)
    assert np.array_equal(attend(1000.0), np.zeros((1, 1, 64)))  # stable: no inf/inf
    assert np.allclose(attend(-np.inf), 1.0, rtol=1e-15)  # no sink: plain softmax


def test_window_causality_and_gqa_groups():
    # v[j] = one-hot(j) so each output row is the attention weights over keys.
    T, nq, nkv = 6, 4, 2
    q = np.zeros((T, nq, 64))
    k = np.zeros((T, nkv, 64))
    v = np.zeros((T, nkv, 64))
    v[np.arange(T), :, np.arange(T)] = 1.0
    v[:, 1, :] *= 2.0  # kv head 1 is told apart by its scale
    sinks = np.full(nq, -np.inf)
    out = R.attention(q, k, v, sinks, np.arange(T), np.arange(T), window=3)
    for p in range(T):
        visible = [j for j in range(T) if 0 <= p - j < 3]
        assert np.allclose(out[p, 0, :T][visible], 1 / len(visible))
        assert np.count_nonzero(out[p, 0, :T]) == len(visible)
    # Contiguous groups: heads 0, 1 read kv 0; heads 2, 3 read kv 1 (not h mod 2).
    assert np.allclose(out[:, 1], out[:, 0]) and np.allclose(out[:, 2], 2 * out[:, 0])


# --------------------------------------------------------------------------- MoE (§2.6)


def test_swiglu_boundaries():
    s = lambda t: 1 / (1 + math.exp(-1.702 * t))  # noqa: E731
    g = np.array([7.0, 8.0, -8.0, 0.0, 1.0, 1.0, 1.0])
    lin = np.array([0.0, 0.0, 0.0, 0.0, 7.0, 8.0, -8.0])
    got = R.swiglu_oai(g, lin)
    expected = [7 * s(7), 7 * s(7), -8 * s(-8), 0.0, 1 * s(1) * 8, 1 * s(1) * 8, 1 * s(1) * -6]
    assert np.allclose(got, expected, rtol=1e-15, atol=0)


def test_topk_ties_lower_index_wins():
    logits = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]])
    idx, w = R.router_topk(logits, 2)
    assert idx.tolist() == [[1, 2]] and np.allclose(w, 0.5)
    idx, w = R.router_topk(logits, 4)
    assert idx.tolist() == [[1, 2, 4, 3]]
    e = np.exp([3.0, 3.0, 3.0, 2.0])
    assert np.allclose(w, e / e.sum(), rtol=1e-15)  # softmax over the selected k only
