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
from quant_reference import FORMATS, dequantize, random_blocks, reference_parts

ISAS = ops.available_isas()
U = 2.0**-24  # float32 unit roundoff


# --------------------------------------------------------------------------- random blocks


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


# Blocks per row: one (no pair of blocks, the tail alone), odd, and gpt-oss's own widths (2880
# = 90 blocks of 32; 4096 = 16 super-blocks of 256: attn_output's input). 15 = 8 + 4 + 2 + 1:
# every step of the AVX-512 32-element GEMV (eight blocks, a quad, a pair, a single) in one row.
# The wide rows take few rows and tokens (the GEMM's tiles are covered by the narrow ones).
BLOCKS = {32: [1, 5, 15, 90], 256: [1, 3, 16]}
SHAPES = [(name, nb, rows) for name in FORMATS for nb in BLOCKS[FORMATS[name][1]]
          for rows in ([19, 37] if nb < 16 else [5])]
WIDE_TOKENS = [1, 2, 3, 5]


@pytest.mark.parametrize(("name", "nb", "rows"), SHAPES)
def test_matmul_f32_within_rounding_bound(isa, rng, name, nb, rows):
    """Decoding is exact, so only float32 products and sums err: within (K-1)·U·Σ|w||x| for any
    summation order, plus U·|y| for the bias add and the final rounding. A wrong element,
    nibble, scale or row moves y by ~|w||x|."""
    type_id, elems, _ = FORMATS[name]
    cols = elems * nb
    raw = random_blocks(rng, name, rows, cols, scales="normal")
    W = dequantize(raw, name, cols).astype(np.float32).astype(np.float64)
    b = rng.standard_normal(rows).astype(np.float32)
    for T in TOKENS if nb < 16 else WIDE_TOKENS:
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
@pytest.mark.parametrize(("name", "nb", "rows"), SHAPES)
def test_matmul_fast_within_rounding_bound(isa_name, rng, name, nb, rows):
    """Fast precision: the GEMV (1-3 tokens) takes int16 activations and widens the codes in
    registers. Given the activations, every 32 elements' integer dot is exact in int32 (the
    16-element integer scales of Q2_K/Q3_K/Q6_K are multiplied in first, exactly in int16); what
    rounds is its conversion to float, the product of the scales, one FMA per 32 elements, and for
    the offset formats the activation sums per offset group (one rounding) and their dot with the
    offsets: at most K/16 + 4 roundings of any term, so within (K/16 + 4)·U·Σ(|s·q| + |m|)·|x| of
    float64 on the quantized activations (cancellation between s·q and m makes Σ|w||x| too small
    a scale). The GEMM (more tokens) keeps float32: the f32 bound. A misplaced element, bit or
    scale errs by ~|w||x|."""
    if isa_name == "none":
        pytest.skip("no kernel variant with int16 dot products on this CPU")
    type_id, elems, _ = FORMATS[name]
    cols = elems * nb
    raw = random_blocks(rng, name, rows, cols, scales="normal")
    s, q, m = reference_parts(raw, name, cols)
    W = (s * q - m).astype(np.float32).astype(np.float64)
    mag_w = np.abs(s * q) + np.abs(m)
    b = rng.standard_normal(rows).astype(np.float32)
    for T in TOKENS if nb < 16 else WIDE_TOKENS:
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


# --------------------------------------------------------------------------- the generator's quantizers


@pytest.mark.parametrize("name", FORMATS)
def test_generator_quantizers_write_valid_nearby_blocks(rng, name):
    """python/ossrun/quantize.py rounds to the nearest level of scales it picks per block: the
    blocks decode (by the reference above) to within a few percent of the input — RTN error,
    largest for 2-bit Q2_K — and exact zeros and constant blocks stay exact where the format has
    the level. What matters is that the bytes are valid blocks; the bound only catches garbage."""
    from ossrun.quantize import quantize

    _, elems, nbytes = FORMATS[name]
    x = (rng.standard_normal(elems * 40) * rng.uniform(0.01, 2)).astype(np.float32)
    raw = quantize(x, name)
    assert raw.shape == (40, nbytes) and raw.dtype == np.uint8
    w = dequantize(raw.reshape(1, -1), name, x.size)[0]
    rel = np.sqrt(np.mean((w - x) ** 2)) / x.std()
    assert rel < {"Q2_K": 0.45, "Q3_K": 0.25}.get(name, 0.12), rel
    zeros = dequantize(quantize(np.zeros(elems, np.float32), name).reshape(1, -1), name, elems)
    assert np.all(zeros == 0)


# --------------------------------------------------------------------------- whole models

mm = pytest.importorskip("ossrun.model_maker")
import reference as R  # noqa: E402

MODELS = {
    # name: (preset overrides, per-role types): every format in some role, 16- and 32-wide
    # K-quant sub-blocks, the router quantized too.
    "legacy": ({}, {"embd": "q4_0", "output": "q5_1", "attn_qkv": "q5_0", "attn_output": "q4_1",
                    "router": "iq4_nl"}),
    "k_quants": ({"hidden": 256}, {"embd": "q6_k", "output": "q4_k", "attn_qkv": "q2_k",
                                   "attn_output": "q3_k", "router": "q5_k"}),
    # As community files are: attention/embedding/output Q5_0 (2880-wide rows), attn_output Q4_K.
    "community": ({"layers": 3}, {"embd": "q5_0", "output": "q5_0", "attn_qkv": "q5_0",
                                  "attn_output": "q4_k", "router": "f32"}),
}


@pytest.fixture(scope="module")
def quant_models(tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("quant_models"), {}

    def get(name):
        if name not in cache:
            over, roles = MODELS[name]
            hp = mm.preset("tiny", **over)
            path = mm.write_model(out / f"{name}.gguf", hp, seed=5, matrix_type="q8_0", role_types=roles)
            rh, rw = R.load_gguf_weights(path)
            toks = np.random.default_rng(4).integers(0, hp.vocab, 24).astype(np.int32)
            cache[name] = (path, toks, R.forward(rh, rw, toks))
        return cache[name]

    return get


def _rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name", MODELS)
def test_quantized_model_matches_reference(quant_models, name):
    """f32 precision: logits within 1e-4 of the float64 reference on the dequantized weights,
    in prefill (GEMMs) and in decode (GEMVs, embedding row lookups)."""
    import ossrun

    path, toks, ref = quant_models(name)
    over, roles = MODELS[name]
    info = ossrun.load(path, precision="f32")
    types = info._file.tensor_types
    assert types["blk.0.attn_output.weight"] == roles["attn_output"].upper()
    assert _rel_err(info.logits(toks), ref) < 1e-4
    s = info.session()
    s.prefill(toks[:5])
    rows = [s.decode(int(t)) for t in toks[5:]]
    assert _rel_err(np.stack(rows), ref[5:]) < 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_quantized_model_fast_precision(quant_models, name):
    """Fast precision: the dense quants' decode GEMVs take int16 activations (2^-16 of each
    32-block's largest value lost), so logits stay within 1e-3 of the float64 reference, as the
    Q8_0 fast test in test_model.py; a wrong scale or element order is off by O(1)."""
    import ossrun

    path, toks, ref = quant_models(name)
    m = ossrun.load(path, precision="fast")
    s = m.session()
    err = _rel_err(np.stack([s.decode(int(t)) for t in toks]), ref)
    assert err < 1e-3, err


# --------------------------------------------------------------------------- loader errors


def _patch_tensor_type(path, tensor, new_type):
    """Rewrite the ggml type of `tensor` in the GGUF header (name, n_dims, ne..., type)."""
    data = bytearray(path.read_bytes())
    key = len(tensor).to_bytes(8, "little") + tensor.encode()
    at = data.index(key) + len(key)
    n_dims = int.from_bytes(data[at : at + 4], "little")
    at += 4 + 8 * n_dims
    data[at : at + 4] = new_type.to_bytes(4, "little")
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def wide_q5_0_model(tmp_path_factory):
    """A model 2880 wide (gpt-oss's width) with Q5_0 attention and embeddings."""
    path = tmp_path_factory.mktemp("wide") / "wide.gguf"
    hp = mm.preset("tiny", hidden=2880, intermediate=32, layers=1, vocab=300)
    mm.write_model(path, hp, role_types={"embd": "q5_0", "output": "q5_0", "attn_qkv": "q5_0"})
    return path


def test_wide_q5_0_model_loads(wide_q5_0_model):
    import ossrun

    m = ossrun.load(wide_q5_0_model, precision="f32")
    assert m._file.tensor_types["blk.0.attn_q.weight"] == "Q5_0"


def test_k_quant_row_of_2880_is_a_model_error(tmp_path, wide_q5_0_model):
    import ossrun
    from ossrun.errors import ModelError

    path = tmp_path / "bad.gguf"
    path.write_bytes(wide_q5_0_model.read_bytes())
    _patch_tensor_type(path, "blk.0.attn_q.weight", 12)  # Q4_K
    with pytest.raises(ModelError, match=r"blk\.0\.attn_q\.weight.*2880.*Q4_K blocks of 256"):
        ossrun.load(path)


def test_unknown_and_unaccepted_types_are_model_errors(tmp_path, wide_q5_0_model):
    import ossrun
    from ossrun.errors import ModelError

    path = tmp_path / "bad.gguf"
    for type_id, pattern in [(99, "type 99"), (16, "IQ2_XXS")]:
        path.write_bytes(wide_q5_0_model.read_bytes())
        _patch_tensor_type(path, "blk.0.attn_k.weight", type_id)
        with pytest.raises(ModelError, match=rf"blk\.0\.attn_k\.weight.*{pattern}"):
            ossrun.load(path)


def test_truncated_quant_tensor_is_a_model_error(tmp_path, wide_q5_0_model):
    import ossrun
    from ossrun.errors import ModelError
    from ossrun.gguf_reader import GgufFile

    embd = GgufFile(wide_q5_0_model).tensors["token_embd.weight"]  # the first tensor: Q5_0
    path = tmp_path / "short.gguf"
    path.write_bytes(wide_q5_0_model.read_bytes()[: embd.offset + embd.n_bytes - 1])
    with pytest.raises(ModelError, match=r"token_embd\.weight.*truncated"):
        ossrun.load(path)
