"""MXFP4 rows interleaved 16 at a time (csrc/mxfp4_interleave.h), the layout the model repacks its
experts into, in place, when it holds them in its own memory (mmap=False or "auto") for the fast
precision's AVX-512 decode GEMV: the layout itself against a numpy reordering, every reader of it
(decode GEMV, prefill GEMM, exact row decoding, the other variants' fallback) against the float64
reference, and the whole model: logits equal to the GGUF layout's within the fast precision's
error, decode == prefill, no repack of the file's map, and no memory grown by the repack."""

from __future__ import annotations

import numpy as np
import psutil
import pytest
import reference as R
from gguf_factory import MXFP4
from ossrun import model_maker
from ossrun._core import ops
from ossrun.model import Model
from row_groups import AVX512, check_f32_matmul, check_fast_matmul, needs_avx512
from test_kernels import ISAS, U, raw_mxfp4


def interleave_ref(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Group g, block b: the 16 rows' scale bytes, then chunk k = code bytes (2k, 2k + 1) of rows 0..15."""
    nb, G = cols // 32, rows // 16
    blocks = raw.reshape(G, 16, nb, 17)  # group, row j, block, byte
    out = np.empty((G, nb, 272), np.uint8)
    out[:, :, :16] = blocks[:, :, :, 0].transpose(0, 2, 1)
    pairs = blocks[:, :, :, 1:].reshape(G, 16, nb, 8, 2)  # group, row j, block, chunk k, byte
    out[:, :, 16:] = pairs.transpose(0, 2, 3, 1, 4).reshape(G, nb, 256)  # group, block, k, j, byte
    return out.reshape(-1)


@pytest.mark.parametrize("rows, cols", [(16, 32), (48, 96), (32, 2912)])
def test_layout_is_the_documented_one_and_decodes_exactly(rng, rows, cols):
    raw = raw_mxfp4(rng, rows, cols, scale_lo=0, scale_hi=255)
    il = ops.interleave_mxfp4(raw, rows, cols)
    assert np.array_equal(il, interleave_ref(raw, rows, cols))
    for isa in ISAS:  # decode_row of every variant reads the layout (the f32 path, references, tools)
        a = ops.decode_rows(il, MXFP4, rows, cols, isa, "mxfp4x16")
        b = ops.decode_rows(raw, MXFP4, rows, cols, isa)
        assert np.array_equal(a, b, equal_nan=True), isa


def test_layout_rejects_what_it_cannot_hold():
    with pytest.raises(ValueError, match="multiple of 16"):
        ops.interleave_mxfp4(np.zeros((8, 17), np.uint8), 8, 32)
    with pytest.raises(ValueError, match="multiple of 16"):
        ops.matmul(np.zeros((20, 17), np.uint8), MXFP4, 20, 32, np.zeros((1, 32), np.float32),
                   layout="mxfp4x16")
    with pytest.raises(ValueError, match="needs an MXFP4 matrix"):  # a Q8_0 matrix's bytes
        ops.matmul(np.zeros((16, 34), np.uint8), 8, 16, 32, np.zeros((1, 32), np.float32), layout="mxfp4x16")


@needs_avx512
@pytest.mark.parametrize("isa", AVX512)
@pytest.mark.parametrize("rows, nb", [(16, 1), (48, 3), (80, 5), (32, 91), (64, 7)],
                         ids=lambda v: str(v))
def test_matmul_interleaved_against_reference(isa, rng, rows, nb):
    """row_groups.check_fast_matmul: decode GEMV and prefill GEMM against the float64 reference."""
    cols = 32 * nb
    raw = raw_mxfp4(rng, rows, cols)
    check_fast_matmul(isa, rng, raw, ops.interleave_mxfp4(raw, rows, cols), MXFP4, "mxfp4x16", rows, cols)


@needs_avx512
@pytest.mark.parametrize("isa", AVX512)
def test_largest_block_sums_stay_exact(isa, rng):
    """Every weight ±6 (doubled: ±12) against activations at the int16 maximum with the same
    signs: a block's dot product reaches 32·12·32767, which the int32 lanes must hold exactly
    (a layout that shifted the weights into the high byte would overflow here)."""
    rows, cols = 16, 32 * 4
    codes = np.where(rng.random((rows, cols // 32, 32)) < 0.5, 7, 15)  # e2m1 6.0 and -6.0
    raw = raw_mxfp4(rng, rows, cols, codes=codes, scales=np.full((rows, cols // 32), 127))
    il = ops.interleave_mxfp4(raw, rows, cols)
    W = R.dequantize(raw, MXFP4, (rows, cols))
    x = np.sign(W[:1]).astype(np.float32)  # row 0's signs: its sums are the largest possible
    for T in (1, 2, 9):
        xt = np.repeat(x, T, axis=0)
        y = ops.matmul(il, MXFP4, rows, cols, xt, None, isa, "fast", layout="mxfp4x16")
        ref = R.matmul(xt.astype(np.float64), W)
        assert y[0, 0] == 6.0 * cols, f"T={T}: {y[0, 0]}"
        assert np.all(np.abs(y - ref) <= (cols // 32 + 4) * U * (np.abs(xt) @ np.abs(W).T)), f"T={T}"


@needs_avx512
def test_interleaved_gemv_tokens_alone_batched_and_prefill_same_bits(rng):
    """A decode batch gives each token the bits it gets alone (batched == alone, tests/test_batch.py),
    the avx512 and avx512vbmi variants run the same code on this layout, and the GEMV's sums are
    the GEMM's (one float step per block, blocks in order): decode == prefill, bit for bit."""
    rows, cols = 48, 32 * 9
    il = ops.interleave_mxfp4(raw_mxfp4(rng, rows, cols), rows, cols)
    x = (rng.standard_normal((12, cols)) * rng.uniform(0.1, 10, (12, 1))).astype(np.float32)
    prefill = ops.matmul(il, MXFP4, rows, cols, x, None, AVX512[0], "fast", layout="mxfp4x16")
    for T in range(1, 9):
        y = [ops.matmul(il, MXFP4, rows, cols, x[:T], None, isa, "fast", layout="mxfp4x16") for isa in AVX512]
        assert all(np.array_equal(y[0], v) for v in y[1:]), f"T={T}"
        assert np.array_equal(y[0], prefill[:T]), f"T={T}"
        for t in range(T):
            alone = ops.matmul(il, MXFP4, rows, cols, x[t:t + 1], None, AVX512[0], "fast", layout="mxfp4x16")
            assert np.array_equal(y[0][t], alone[0]), f"T={T}, token {t}"


@needs_avx512
def test_same_bits_whatever_the_cpu_tuning(rng):
    """The GEMV takes the prefetch cpu_tuning.h chooses for MXFP4 (into L1 or L2): only the order
    the bytes are fetched in differs, so the bits are the same under both."""
    rows, cols = 48, 32 * 90
    il = ops.interleave_mxfp4(raw_mxfp4(rng, rows, cols), rows, cols)
    x = (rng.standard_normal((8, cols)) * rng.uniform(0.1, 10, (8, 1))).astype(np.float32)
    try:
        for T in range(1, 9):
            y = []
            for tuning in ("l1:1", "l2:2"):
                ops.set_mxfp4_tuning(tuning)
                y.append(ops.matmul(il, MXFP4, rows, cols, x[:T], None, AVX512[-1], "fast",
                                    layout="mxfp4x16"))
            assert np.array_equal(y[0], y[1]), f"T={T}"
    finally:
        ops.set_mxfp4_tuning("auto")


@pytest.mark.parametrize("isa", ISAS)
def test_every_variant_reads_the_layout_at_f32(isa, rng):
    """row_groups.check_f32_matmul: every variant's float32 path reads the layout right."""
    rows, cols = 32, 32 * 5
    raw = raw_mxfp4(rng, rows, cols)
    check_f32_matmul(isa, rng, raw, ops.interleave_mxfp4(raw, rows, cols), MXFP4, "mxfp4x16", rows, cols)


# ---- the whole model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mx_model(tmp_path_factory):
    # Experts [8][160, 96] and [8][96, 160]: whole groups, 3 and 5 blocks a row (odd).
    return model_maker.make_model(tmp_path_factory.mktemp("mx16") / "m.gguf", "tiny", seed=5,
                                  use_byte_vocab=True, hidden=96, intermediate=160, experts=8)


def expert_bytes(m: Model) -> int:
    c = m.config
    nb_h, nb_i = c.embedding_length // 32, c.expert_feed_forward_length // 32
    per_layer = c.expert_count * c.expert_feed_forward_length * nb_h * 17 * 2  # gate, up
    per_layer += c.expert_count * c.embedding_length * nb_i * 17  # down
    return c.block_count * per_layer


@needs_avx512
def test_model_logits_equal_the_gguf_layouts(mx_model, monkeypatch, rng):
    """Both layouts quantize the same int16 activations and form the same exact int32 block dot
    products; only the order of the GEMVs' float32 block sums differs (four blocks a vector and a
    horizontal sum vs one block at a time per lane), ~nb·U of each output. Those differences can
    flip the rounding of one int16 activation downstream (2^-16 of its block's largest), so the
    logits are compared at 1e-3 of their largest magnitude: a wrong row or scale errs by O(1)."""
    with monkeypatch.context() as m:
        m.setenv("OSSRUN_INTERLEAVE_MXFP4", "0")
        rows = Model(mx_model, n_ctx=128, device="cpu", mmap=False)
    il = Model(mx_model, n_ctx=128, device="cpu", mmap=False)
    assert rows._core.interleaved_mxfp4_bytes == 0
    assert il._core.interleaved_mxfp4_bytes == expert_bytes(il)
    assert "16-row groups" in il.mmap_reason and "16-row" not in rows.mmap_reason  # serve's start line
    prompt = rng.integers(0, il.n_vocab, 40)
    for n in (40, 6):  # prefill through the GEMM, and a batch of 6 tokens through the GEMV
        want, got = rows.logits(prompt[:n]), il.logits(prompt[:n])
        assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max(), f"{n} tokens"
    # Decode (the GEMV, 1 token) == prefill of the same positions, within the same bound (the
    # experts' GEMV and GEMM agree bit for bit; attention and the dense matrices do not).
    got = il.logits(prompt)
    scale = np.abs(got).max()
    s = il.session()
    s.prefill(prompt[:30])
    for i in range(30, 40):
        assert np.abs(s.decode(int(prompt[i])) - got[i]).max() <= 1e-3 * scale, f"position {i}"


@needs_avx512
def test_the_copy_holds_the_files_experts_interleaved(mx_model):
    from ossrun.gguf_loader import open_gguf
    from ossrun.weights_in_ram import EXPERT_WEIGHTS

    m = Model(mx_model, n_ctx=64, device="cpu", mmap=False)
    file = open_gguf(mx_model)
    names = [n for n in file.tensors if n.endswith(EXPERT_WEIGHTS)]
    assert len(names) == 3 * m.config.block_count
    for name in names:
        raw = np.ascontiguousarray(file.tensors[name][0]).reshape(-1)
        cols = m.config.embedding_length if "down" not in name else m.config.expert_feed_forward_length
        rows = raw.size // (cols // 32 * 17)  # every expert's rows, one stack
        copied = np.asarray(m._file.tensors[name][0]).reshape(-1)
        assert np.array_equal(copied, ops.interleave_mxfp4(raw, rows, cols)), name


@needs_avx512
def test_the_file_map_and_f32_keep_the_gguf_layout(mx_model):
    assert Model(mx_model, n_ctx=64, device="cpu")._core.interleaved_mxfp4_bytes == 0  # mmap=True
    assert Model(mx_model, n_ctx=64, device="cpu", mmap=False,
                 precision="f32")._core.interleaved_mxfp4_bytes == 0


@needs_avx512
def test_experts_in_the_file_map_are_left_alone(mx_model, rng):
    """Asked to repack experts that lie in the file's read-only map, the core repacks nothing
    (writing there would crash the process) and the model reads them as before."""
    m = Model(mx_model, n_ctx=64, device="cpu")
    ids = rng.integers(0, m.n_vocab, 9)
    before = m.logits(ids)
    assert m._core.interleave_mxfp4_experts_in_place() == 0
    assert m._core.interleaved_mxfp4_bytes == 0
    assert np.array_equal(m.logits(ids), before)


@needs_avx512
def test_a_second_repack_does_nothing(mx_model, rng):
    m = Model(mx_model, n_ctx=64, device="cpu", mmap=False)
    ids = rng.integers(0, m.n_vocab, 9)
    before = m.logits(ids)
    assert m._core.interleave_mxfp4_experts_in_place() == 0
    assert np.array_equal(m.logits(ids), before)


@needs_avx512
def test_the_repack_is_in_place(tmp_path_factory, monkeypatch):
    """RSS stays where it was when the copied experts are repacked (no second copy is made)."""
    path = tmp_path_factory.mktemp("mx16rss") / "m.gguf"  # ~20 MB of experts
    model_maker.make_model(path, "tiny", seed=3, use_byte_vocab=True, layers=1, hidden=1024,
                           intermediate=1024, experts=32)
    monkeypatch.setenv("OSSRUN_INTERLEAVE_MXFP4", "0")
    m = Model(path, n_ctx=32, device="cpu", threads=2, mmap=False)
    m.logits([1, 2, 3])
    before = psutil.Process().memory_info().rss
    n = m._core.interleave_mxfp4_experts_in_place()
    assert n == expert_bytes(m) > 15e6
    assert psutil.Process().memory_info().rss - before < 0.1 * n
    assert np.isfinite(m.logits([1, 2, 3])).all()
