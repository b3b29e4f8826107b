"""Q8_0 rows interleaved 16 at a time (csrc/q8_0_interleave.h), the layout the model repacks its
dense Q8_0 matrices into at load for the fast precision's AVX-512 decode GEMV: the layout itself
against a numpy reordering, every reader of it (decode GEMV, prefill GEMM, exact row decoding,
the other variants' fallback) against the float64 reference, and the whole model: logits equal
to the GGUF layout's within the fast precision's error, decode == prefill, RSS not grown by the
copies, and no repack for a model a device will copy."""

from __future__ import annotations

import numpy as np
import psutil
import pytest
from gguf_factory import Q8_0
from ossrun import model_maker
from ossrun._core import ops
from ossrun.model import Model
from row_groups import AVX512, check_f32_matmul, check_fast_matmul, needs_avx512
from test_kernels import ISAS, raw_q8_0


def interleave_ref(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Group g, block b: the 16 rows' fp16 scales, then chunk k = (element 2k, 2k + 1) of rows 0..15."""
    nb, G = cols // 32, rows // 16
    blocks = raw.reshape(G, 16, nb, 34)  # group, row j, block, byte
    out = np.empty((G, nb, 544), np.uint8)
    out[:, :, :32] = blocks[:, :, :, :2].transpose(0, 2, 1, 3).reshape(G, nb, 32)
    pairs = blocks[:, :, :, 2:].reshape(G, 16, nb, 16, 2)  # group, row j, block, pair k, element
    out[:, :, 32:] = pairs.transpose(0, 2, 3, 1, 4).reshape(G, nb, 512)  # group, block, k, j, e
    return out.reshape(-1)


@pytest.mark.parametrize("rows, cols", [(16, 32), (48, 96), (32, 2912)])
def test_layout_is_the_documented_one_and_decodes_exactly(rng, rows, cols):
    raw = raw_q8_0(rng, rows, cols)
    il = ops.interleave_q8_0(raw, rows, cols)
    assert np.array_equal(il, interleave_ref(raw, rows, cols))
    for isa in ISAS:  # decode_row of every variant reads the layout (the f32 path, references, tools)
        assert np.array_equal(ops.decode_rows(il, Q8_0, rows, cols, isa, "q8_0x16"),
                              ops.decode_rows(raw, Q8_0, rows, cols, isa)), isa


def test_layout_rejects_what_it_cannot_hold():
    with pytest.raises(ValueError, match="multiple of 16"):
        ops.interleave_q8_0(np.zeros((8, 34), np.uint8), 8, 32)
    with pytest.raises(ValueError, match="multiple of 16"):
        ops.matmul(np.zeros((20, 34), np.uint8), Q8_0, 20, 32, np.zeros((1, 32), np.float32),
                   layout="q8_0x16")
    with pytest.raises(ValueError, match="layout must be"):
        ops.matmul(np.zeros((16, 34), np.uint8), Q8_0, 16, 32, np.zeros((1, 32), np.float32), layout="cols")
    with pytest.raises(ValueError, match="r0 <= r1"):
        ops.matmul(np.zeros((16, 34), np.uint8), Q8_0, 16, 32, np.zeros((1, 32), np.float32), r0=5, r1=17)


@needs_avx512
@pytest.mark.parametrize("isa", AVX512)
@pytest.mark.parametrize("rows, nb", [(16, 1), (48, 3), (80, 5), (32, 91), (64, 7)],
                         ids=lambda v: str(v))
def test_matmul_interleaved_against_reference(isa, rng, rows, nb):
    """row_groups.check_fast_matmul: decode GEMV and prefill GEMM against the float64 reference."""
    cols = 32 * nb
    raw = raw_q8_0(rng, rows, cols)
    check_fast_matmul(isa, rng, raw, ops.interleave_q8_0(raw, rows, cols), Q8_0, "q8_0x16", rows, cols)


@pytest.mark.skipif(not {"avx512", "avx512vbmi"} <= set(AVX512), reason="needs both AVX-512 variants")
def test_interleaved_gemv_tokens_alone_and_both_variants_same_bits(rng):
    """A decode batch gives each token the bits it gets alone (batched == alone, tests/test_batch.py),
    and the avx512 and avx512vbmi variants run the same code on this layout."""
    rows, cols = 48, 32 * 9
    il = ops.interleave_q8_0(raw_q8_0(rng, rows, cols), rows, cols)
    x = (rng.standard_normal((8, cols)) * rng.uniform(0.1, 10, (8, 1))).astype(np.float32)
    for T in range(1, 9):
        y = [ops.matmul(il, Q8_0, rows, cols, x[:T], None, isa, "fast", layout="q8_0x16")
             for isa in ("avx512", "avx512vbmi")]
        assert np.array_equal(y[0], y[1]), f"T={T}"
        for t in range(T):
            alone = ops.matmul(il, Q8_0, rows, cols, x[t:t + 1], None, "avx512", "fast", layout="q8_0x16")
            assert np.array_equal(y[0][t], alone[0]), f"T={T}, token {t}"


@pytest.mark.parametrize("isa", ISAS)
def test_every_variant_reads_the_layout_at_f32(isa, rng):
    """row_groups.check_f32_matmul: every variant's float32 path reads the layout right."""
    rows, cols = 32, 32 * 5
    raw = raw_q8_0(rng, rows, cols)
    check_f32_matmul(isa, rng, raw, ops.interleave_q8_0(raw, rows, cols), Q8_0, "q8_0x16", rows, cols)


# ---- the whole model --------------------------------------------------------------------------

VOCAB = 1000  # not a multiple of 16: the output head stays in the GGUF layout, the rest is repacked


@pytest.fixture(scope="module", params=[VOCAB, 1024], ids=["head_in_rows", "head_interleaved"])
def q8_model(tmp_path_factory, request):
    # hidden 160: 5 blocks a row (odd); q 256 rows, k/v 128, attn_output 160, all whole groups.
    return model_maker.make_model(tmp_path_factory.mktemp("q8x16") / "m.gguf", "tiny", seed=7,
                                  vocab=request.param, use_byte_vocab=True, hidden=160, intermediate=64)


def load_pair(path, monkeypatch, **kw):
    with monkeypatch.context() as m:
        m.setenv("OSSRUN_INTERLEAVE_Q8_0", "0")
        rows = Model(path, n_ctx=128, device="cpu", **kw)
    return rows, Model(path, n_ctx=128, device="cpu", **kw)


@needs_avx512
def test_model_logits_equal_the_gguf_layouts(q8_model, monkeypatch, rng):
    """Both layouts quantize the same int16 activations and form the same exact int32 block dot
    products; only the order of the float32 block sums differs (four blocks a vector and a
    horizontal sum vs one block at a time per lane), ~nb·U of each output. Those differences can
    flip the rounding of one int16 activation downstream (2^-16 of its block's largest), so the
    logits are compared at 1e-3 of their largest magnitude: a wrong row or scale errs by O(1)."""
    rows, il = load_pair(q8_model, monkeypatch)
    def q8(rows, cols):  # bytes of one repacked matrix, 64-byte aligned
        return -(-rows * cols // 32 * 34 // 64) * 64

    per_layer = q8(256, 160) + 2 * q8(128, 160) + q8(160, 256)  # attn_q, k, v, output
    head = q8(rows.n_vocab, 160) if rows.n_vocab % 16 == 0 else 0
    assert rows._core.interleaved_q8_0_bytes == 0
    assert il._core.interleaved_q8_0_bytes == 2 * per_layer + head
    prompt = rng.integers(0, VOCAB, 40)
    want = rows.logits(prompt)  # prefill: the GEMM
    got = il.logits(prompt)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-3 * scale
    # Decode (the GEMV, 1 token) == prefill of the same positions, within the same bound.
    s = il.session()
    s.prefill(prompt[:30])
    for i in range(30, 40):
        assert np.abs(s.decode(int(prompt[i])) - got[i]).max() <= 1e-3 * scale, f"position {i}"


@needs_avx512
def test_f32_precision_keeps_the_gguf_layout(q8_model):
    m = Model(q8_model, n_ctx=64, device="cpu", precision="f32")
    assert m._core.interleaved_q8_0_bytes == 0


def test_device_model_sees_the_gguf_bytes(q8_model, monkeypatch):
    """The CUDA device model copies weights from the CPU model's views: they must be the GGUF's
    bytes when it is built, and a model that falls back to the CPU is repacked after all."""
    import ossrun.device
    import ossrun.device_load

    seen = []
    monkeypatch.setattr(ossrun.device, "resolve_device", lambda device: ("cuda", "test: a GPU"))
    monkeypatch.setattr(ossrun.device_load, "plan_on_gpu",
                        lambda model, explicit: (ossrun.device_load.device_plan(model, 1 << 40), ""))

    def place_on_gpu(model, plan, explicit):
        seen.append(model._core.interleaved_q8_0_bytes)
        return None, "test: no placement"

    monkeypatch.setattr(ossrun.device_load, "place_on_gpu", place_on_gpu)
    m = Model(q8_model, n_ctx=64)
    assert seen == [0]
    assert m.device == "cpu"
    assert (m._core.interleaved_q8_0_bytes > 0) == (m.isa in AVX512 and m._core.uses_i16)


def test_a_repacked_model_is_refused_by_the_device_path(q8_model):
    from ossrun.device_load import check_plan, device_plan, has_device_model

    if not has_device_model():
        pytest.skip("this build has no CUDA device model (built without nvcc)")
    m = Model(q8_model, n_ctx=64, device="cpu")
    if not m._core.interleaved_q8_0_bytes:
        pytest.skip("this CPU's kernels take the GGUF layout")
    assert "repacked" in check_plan(m, device_plan(m, 1 << 40))


def vm_rss() -> int:
    return psutil.Process().memory_info().rss


@needs_avx512
@pytest.mark.parametrize("release", [True, False], ids=["released", "not_released"])
def test_repack_does_not_hold_the_weights_twice(tmp_path_factory, monkeypatch, release):
    """After a forward has read every dense matrix from the map, repacking them with the mapped
    pages released leaves RSS where it was (the copies replace the pages); not released, RSS grows
    by the copies' bytes (the check can fail)."""
    path = tmp_path_factory.mktemp("q8rss") / "m.gguf"
    if not path.exists():  # 18 MB of Q8_0 output head (16384 x 1024), 1.6 MB of attention
        model_maker.make_model(path, "tiny", seed=3, vocab=16384, use_byte_vocab=True, layers=1, hidden=1024,
                               intermediate=64, heads=8, kv_heads=2)
    monkeypatch.setenv("OSSRUN_INTERLEAVE_Q8_0", "0")
    m = Model(path, n_ctx=32, device="cpu", threads=1)
    m.logits([1, 2, 3])
    before = vm_rss()
    n = m._core.interleave_q8_0(release)
    grown = vm_rss() - before
    assert n > 15e6
    if release:
        assert grown < 0.2 * n, f"RSS grew by {grown / 1e6:.1f} MB for {n / 1e6:.1f} MB repacked"
    else:
        assert grown > 0.8 * n, f"RSS grew by {grown / 1e6:.1f} MB for {n / 1e6:.1f} MB repacked"
    m.logits([1, 2, 3])
    assert vm_rss() - before < (0.2 if release else 1.2) * n  # the originals stay unread
