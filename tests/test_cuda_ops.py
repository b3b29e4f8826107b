"""Every CUDA kernel of `ossrun._cuda.ops` against float64 numpy (tests/reference.py) and the CPU
op of `ossrun._core.ops` on fresh random inputs and named edge shapes (ggml's test-backend-ops
habit). The shared format decoding (csrc/weight_element.h) and the argument checks run on the
host. The kernels run on a device where there is one (tools/device_check.sh on a GPU machine),
else on the CPU emulator (cuda/emulator, ossrun._cuda_emu: the same sources and entry points),
else skip. Self-contained beside numpy and tests/reference.py: the GPU machine has no `gguf`
package.
Tolerances: the worst-case float32 rounding bounds of tests/test_kernels.py, stated per test.
"""

from __future__ import annotations

import importlib
import math
import os

import numpy as np
import pytest
import reference as R
from ossrun._core import ops as cpu
from ossrun.device import cuda_status, status_from_report
from quant_reference import FORMATS, dequantize, random_blocks

STATUS = cuda_status()
if os.environ.get("OSSRUN_REQUIRE_CUDA") and not STATUS.available:  # tools/device_check.sh
    raise RuntimeError(f"OSSRUN_REQUIRE_CUDA is set and CUDA is unavailable: {STATUS.reason}")


def _kernel_module():
    """(module, where) the tests run the kernels on: the CUDA build on a device; else the same
    kernels and entry points on the CPU emulator (cuda/emulator, ossrun._cuda_emu); else the
    CUDA build for its host-only tests, the kernel tests skipping."""
    try:
        real = importlib.import_module("ossrun._cuda")
    except ImportError:
        real = None
    if real is not None and STATUS.available:
        return real, "device"
    if not os.environ.get("OSSRUN_REQUIRE_CUDA"):
        try:
            return importlib.import_module("ossrun._cuda_emu"), "emulator"
        except ImportError:
            pass
    return real, None


cuda, RUNS_ON = _kernel_module()
if cuda is None:
    pytest.skip("ossrun was built without CUDA and without the CUDA emulator", allow_module_level=True)
gpu = cuda.ops
needs_device = pytest.mark.skipif(RUNS_ON is None, reason=f"no CUDA device: {STATUS.reason}")
EMULATED = RUNS_ON == "emulator"


# On the emulator every test runs in three thread orders (cuda/emulator/emulator.cpp): a block's
# threads resumed first to last, last to first, and shuffled afresh each round (a new seed per
# run, printed; OSSRUN_EMU_SHUFFLE_SEED repeats one). A kernel that reads shared memory another
# thread writes with no barrier between passes in at most one of the first two (the self-test
# below), which is how the emulator stands in for the races a device would show.
SHUFFLE_SEED = int(os.environ.get("OSSRUN_EMU_SHUFFLE_SEED", np.random.SeedSequence().entropy % 2**63))
SCHEDULES = ["forward", "reverse", f"shuffle:{SHUFFLE_SEED}"] if EMULATED else ["device"]


@pytest.fixture(scope="module", autouse=True, params=SCHEDULES, ids=lambda s: s.split(":")[0])
def thread_order(request):
    if not EMULATED:
        yield request.param
        return
    print(f"emulator schedule {request.param} (OSSRUN_EMU_SHUFFLE_SEED={SHUFFLE_SEED})")
    cuda.set_schedule(request.param)
    yield request.param
    cuda.set_schedule("forward")


def test_the_schedules_find_a_race_the_forward_order_hides(rng, thread_order):
    """y[i] = x[i] + x[i-1] through shared memory: with the barrier between the writes and the reads,
    exact in every order; without it, thread i may read x[i-1]'s slot before thread i-1 wrote it.
    Resumed first to last the race stays hidden (each thread runs to its end before the next
    starts); last to first, every i > 0 reads a slot not yet written (poisoned, 0xCD bytes)."""
    if not EMULATED:
        pytest.skip("the kernels run on a device")
    x = rng.standard_normal(int(rng.integers(64, 1025))).astype(np.float32)
    want = x + np.concatenate([[0.0], x[:-1]]).astype(np.float32)
    np.testing.assert_array_equal(cuda.neighbor_sum_selftest(x.tolist(), True), want)
    racy = np.asarray(cuda.neighbor_sum_selftest(x.tolist(), False), dtype=np.float32)
    if thread_order == "forward":
        np.testing.assert_array_equal(racy, want)
    else:
        assert not np.array_equal(racy, want)
        if thread_order == "reverse":
            assert (racy[1:] != want[1:]).all()
    with pytest.raises(ValueError, match="not forward, reverse or shuffle"):
        cuda.set_schedule("sideways")
    assert cuda.schedule() == thread_order


def test_the_emulator_says_what_it_is():
    if not EMULATED:
        pytest.skip("the kernels run on a device")
    st = status_from_report(cuda.status())
    assert st.available and "emulator" in st.device and st.architectures == "emulated"


F32, F16, Q8_0, BF16, MXFP4 = 0, 1, 8, 30, 39
TYPE_NAMES = {F32: "F32", F16: "F16", Q8_0: "Q8_0", BF16: "BF16", MXFP4: "MXFP4"}
U = 2.0**-24  # float32 unit roundoff


def f32_bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# --------------------------------------------------------------------------- raw weight bytes


def raw_weights(rng, ggml_type, rows, cols, small_ints=False) -> np.ndarray:
    """Random bytes [rows, row_bytes] of a matrix; small_ints: values on a coarse grid so that
    every product and partial sum of a matmul with small-integer x is exact in float32."""
    if ggml_type in (F32, F16, BF16):
        v = (rng.integers(-8, 9, (rows, cols)) if small_ints else rng.standard_normal((rows, cols)))
        v = v.astype(np.float32)
        if ggml_type == F32:
            return v.view(np.uint8).reshape(rows, -1)
        if ggml_type == F16:
            return v.astype("<f2").view(np.uint8).reshape(rows, -1)
        return (f32_bits(v) >> 16).astype("<u2").view(np.uint8).reshape(rows, -1)  # bf16: top half
    nb = cols // 32
    if ggml_type == Q8_0:
        if small_ints:
            d = rng.choice([0.5, 1.0], (rows, nb)).astype(np.float16)
        else:  # ordinary scales, one in eight subnormal (real files have them, MODEL.md §6.9)
            d = rng.uniform(1e-3, 5e-2, (rows, nb)).astype(np.float16)
            tiny = rng.random((rows, nb)) < 1 / 8
            d[tiny] = rng.integers(1, 1024, tiny.sum()).astype(np.uint16).view(np.float16)
        out = np.empty((rows, nb, 34), np.uint8)
        out[:, :, :2] = d.astype("<f2").reshape(rows, nb, 1).view(np.uint8)
        out[:, :, 2:] = rng.integers(-127, 128, (rows, nb, 32)).astype(np.int8).view(np.uint8)
        return out.reshape(rows, -1)
    scales = rng.integers(126, 129, (rows, nb)) if small_ints else rng.integers(118, 129, (rows, nb))
    return mxfp4_bytes(rng.integers(0, 16, (rows, nb, 32)), scales)


def mxfp4_bytes(codes, scales) -> np.ndarray:
    """GGUF MXFP4 blocks of codes [rows, nb, 32] and scale bytes [rows, nb] -> [rows, nb * 17]:
    the scale, then byte j = element j (low nibble) | element j + 16 (high nibble)."""
    codes = np.asarray(codes, np.uint8)
    rows, nb, _ = codes.shape
    out = np.empty((rows, nb, 17), np.uint8)
    out[:, :, 0] = scales
    out[:, :, 1:] = codes[:, :, :16] | (codes[:, :, 16:] << 4)
    return out.reshape(rows, -1)


# --------------------------------------------------------------------------- formats (host, no GPU)


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    nan = np.isnan(a)
    return a.shape == b.shape and np.array_equal(nan, np.isnan(b)) and \
        np.array_equal(f32_bits(a)[~nan], f32_bits(b)[~nan])


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # NaN patterns
@pytest.mark.parametrize("ggml_type", [F16, BF16])
def test_shared_decoding_half_types_every_pattern(rng, ggml_type):
    # All 65536 patterns (subnormals, ±inf, NaNs) at random places: the device's decoding, run on
    # the host, equals the reference and the CPU kernels bit for bit.
    bits = rng.permutation(65536).astype(np.uint16).reshape(-1, 256)
    raw = bits.view(np.uint8)
    out = gpu.decode_rows_host(raw, ggml_type, bits.shape[0], 256)
    ref = (R.dequant_f16 if ggml_type == F16 else R.dequant_bf16)(bits, bits.shape)
    assert _same_bits(out, ref)
    assert _same_bits(out, cpu.decode_rows(raw, ggml_type, bits.shape[0], 256, "scalar"))


def test_shared_decoding_f32_bitwise(rng):
    bits = rng.integers(0, 2**32, (5, 37), dtype=np.uint64).astype(np.uint32)
    bits[(bits & 0x7F800000) == 0x7F800000] &= 0xFF7FFFFF  # no inf/NaN
    assert np.array_equal(f32_bits(gpu.decode_rows_host(bits.view(np.uint8), F32, 5, 37)), bits)


def test_shared_decoding_q8_0_bitwise(rng):
    rows, cols = 7, 96
    raw = raw_weights(rng, Q8_0, rows, cols)
    d = raw.reshape(rows, 3, 34)
    d[0, :, :2] = np.array([[1, 0], [0xFF, 0x83], [0, 0]], np.uint8)  # subnormal ±, zero scales
    out = gpu.decode_rows_host(raw, Q8_0, rows, cols)
    assert _same_bits(out, R.dequant_q8_0(raw, rows, cols))
    assert _same_bits(out, cpu.decode_rows(raw, Q8_0, rows, cols, "scalar"))


@pytest.mark.parametrize("name", list(FORMATS))
def test_shared_decoding_dense_quants_bitwise(rng, name):
    # csrc/quant_element.h, one element at a time, against the float64 reference (rounded once)
    # and every CPU variant's vector unpacking: the same bits, any fp16 scale pattern.
    type_id, elems, _ = FORMATS[name]
    rows, cols = 5, 2 * max(elems, 256)
    raw = random_blocks(rng, name, rows, cols)
    out = gpu.decode_rows_host(raw, type_id, rows, cols)
    assert _same_bits(out, dequantize(raw, name, cols).astype(np.float32))
    for isa in cpu.available_isas():
        assert _same_bits(out, cpu.decode_rows(raw, type_id, rows, cols, isa)), isa


def test_shared_decoding_mxfp4_every_code_and_special_scale(rng):
    # Every E2M1 code in both nibble halves under every scale byte 0..252 (253 and up overflow
    # 6 x 2^(e-127), 255 is NaN and rejected at load): e2m1_to_float's arithmetic equals the
    # table, the split order is right.
    scales = np.repeat(np.arange(253), 2).reshape(-1, 1)
    codes = np.tile(np.concatenate([np.arange(16), np.arange(16)[::-1]]), (scales.shape[0], 1, 1))
    codes[1::2] = codes[1::2, :, ::-1]  # each code in the other half too
    raw = mxfp4_bytes(codes, scales)
    out = gpu.decode_rows_host(raw, MXFP4, scales.shape[0], 32)
    assert _same_bits(out, R.dequant_mxfp4_gguf(raw, scales.shape[0], 32))
    assert _same_bits(out, cpu.decode_rows(raw, MXFP4, scales.shape[0], 32, "scalar"))
    wide = raw_weights(rng, MXFP4, 3, 2880)
    assert _same_bits(gpu.decode_rows_host(wide, MXFP4, 3, 2880), R.dequant_mxfp4_gguf(wide, 3, 2880))


def test_whole_block_decoding_equals_the_element_decoding(rng):
    # The decode GEMVs' block decoding (csrc/block_values.h: E2M1 pairs as half bits times 2^-14,
    # int8 values, then the unit and the scale): the element decoding bit for bit, for every E2M1
    # code in both halves under scales 0..252, Q8_0 with subnormal, negative and zero scales, and
    # a wide random row of each.
    scales = np.repeat(np.arange(253), 2).reshape(-1, 1)
    codes = np.tile(np.concatenate([np.arange(16), np.arange(16)[::-1]]), (scales.shape[0], 1, 1))
    codes[1::2] = codes[1::2, :, ::-1]
    raw = mxfp4_bytes(codes, scales)
    n = scales.shape[0]
    assert _same_bits(gpu.decode_blocks_host(raw, MXFP4, n, 32), gpu.decode_rows_host(raw, MXFP4, n, 32))
    q8 = raw_weights(rng, Q8_0, 4, 96)
    q8.reshape(4, 3, 34)[0, :, :2] = np.array([[1, 0], [0xFF, 0x83], [0, 0]], np.uint8)
    assert _same_bits(gpu.decode_blocks_host(q8, Q8_0, 4, 96), gpu.decode_rows_host(q8, Q8_0, 4, 96))
    for t in (MXFP4, Q8_0, F16, BF16, F32):
        wide = raw_weights(rng, t, 3, 2880)
        assert _same_bits(gpu.decode_blocks_host(wide, t, 3, 2880), gpu.decode_rows_host(wide, t, 3, 2880))
    every_half = np.arange(65536, dtype=np.uint16).view(np.uint8)  # subnormals, infinities, NaNs
    for t in (F16, BF16):
        blocks = gpu.decode_blocks_host(every_half, t, 64, 1024)
        assert _same_bits(blocks, gpu.decode_rows_host(every_half, t, 64, 1024))
    with pytest.raises(ValueError, match="whole 32-element blocks"):
        gpu.decode_blocks_host(np.zeros(4 * 37, np.uint8), F32, 1, 37)


def test_shared_decoding_worked_example():
    # MODEL.md §3.5: codes 0..15, 15..0 with scale byte 0x7E (x 0.5).
    block = np.frombuffer(bytes.fromhex("7E F0 E1 D2 C3 B4 A5 96 87 78 69 5A 4B 3C 2D 1E 0F"), np.uint8)
    e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    want = np.array(e2m1 + e2m1[::-1]) * 0.5
    assert _same_bits(gpu.decode_rows_host(block, MXFP4, 1, 32)[0], want)


# --------------------------------------------------------------------------- argument checks (host)


def test_ops_reject_bad_arguments_before_touching_cuda():
    # Every one of these is caught by the binding or cuda/ops.cu before any CUDA call, so they
    # raise ValueError on a machine without a driver too.
    raw = np.zeros((2, 34), np.uint8)
    x = np.zeros((1, 32), np.float32)
    with pytest.raises(ValueError, match="type 16"):  # IQ2_XXS: no model file type of ours
        gpu.matmul(np.zeros((2, 144), np.uint8), 16, 2, 256, np.zeros((1, 256), np.float32))
    with pytest.raises(ValueError, match="bytes"):
        gpu.matmul(raw[:, :33], Q8_0, 2, 32, x)
    with pytest.raises(ValueError, match="x must be"):
        gpu.matmul(raw, Q8_0, 2, 32, np.zeros((1, 31), np.float32))
    with pytest.raises(ValueError, match="bias"):
        gpu.matmul(raw, Q8_0, 2, 32, x, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="kernel"):
        gpu.matmul(raw, Q8_0, 2, 32, x, None, "cublas")
    with pytest.raises(ValueError, match="block shape"):
        gpu.matmul(np.zeros((2, 34), np.uint8), Q8_0, 2, 33, np.zeros((1, 33), np.float32))
    kv = np.zeros((4, 1, 8), np.float32)
    q = np.zeros((1, 2, 8), np.float32)
    with pytest.raises(ValueError, match="key range"):  # position 4 needs 5 slots, the cache has 4
        gpu.attention(q, kv, kv, np.array([4]), np.zeros(2, np.float32), 0, 1.0)
    with pytest.raises(ValueError, match="multiple of n_kv"):
        gpu.attention(np.zeros((1, 3, 8), np.float32), np.zeros((4, 2, 8), np.float32),
                      np.zeros((4, 2, 8), np.float32), np.array([0]), np.zeros(3, np.float32), 0, 1.0)
    with pytest.raises(ValueError, match="256"):
        big = np.zeros((1, 1, 258), np.float32)
        gpu.attention(big, big, big, np.array([0]), np.zeros(1, np.float32), 0, 1.0)
    with pytest.raises(ValueError, match="k <= E"):
        gpu.router_topk(np.zeros((1, 4), np.float32), 5)
    with pytest.raises(ValueError, match="positions"):
        gpu.apply_rope(np.zeros((1, 1, 4), np.float32), np.array([-1]), np.ones(2, np.float32), 1.0)
    with pytest.raises(ValueError, match="swiglu"):
        gpu.swiglu(np.zeros(3, np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="T <= min"):  # the kernel rates' timing entry
        gpu.time_attention(9, 8, 2, 64, 8)
    with pytest.raises(ValueError, match="kv_type"):
        gpu.time_attention(1, 8, 2, 64, 8, 0, "f8")


# --------------------------------------------------------------------------- matmul (device)

MATMUL_SHAPES = [(F32, 37), (F32, 100), (F16, 37), (BF16, 100), (Q8_0, 96), (Q8_0, 2880),
                 (MXFP4, 96), (MXFP4, 2880), (MXFP4, 4128), (Q8_0, 4128),
                 (F32, 96), (F16, 96), (F16, 2880), (BF16, 320)]  # the last: whole blocks, lane-owned
# below, at and above the gemv/gemm switch; a gemv pass of 8 tokens + 1; a 64-token tile + 6
TOKENS = [1, 3, 7, 8, 9, 33, 70]


def _shape_id(p):
    return f"{TYPE_NAMES[p[0]]}-{p[1]}"


def _tensor_cores(ggml_type, cols, kernel, T) -> bool:
    """Whether matmul(kernel) runs cuda/gemm_mma.cu for these weights and tokens."""
    exact_in_half = ggml_type in (MXFP4, Q8_0) or (ggml_type == F16 and cols % 32 == 0)
    return exact_in_half and (kernel == "gemm" or (kernel == "auto" and T >= 8))


def matmul_bound(x, W, bias, tensor_cores: bool, precision: str = "f32") -> np.ndarray:
    """The worst-case error of y = x W^T + bias per output. Exact decoding and float32 products
    and sums in any order (FMAs round less): (K + 2)·U·Σ|w||x| (tests/test_kernels.py's bound).
    On the tensor cores the sums may truncate (2U a step), and x enters as x_hi + x_lo ("f32":
    within 2^-24 |x|) or x_hi ("fast": 2^-12 |x|), each token's row scaled to a largest value
    in [2^14, 2^15), below whose half range an element errs by at most 2^-39 of the row's
    largest (gemm_mma.cu)."""
    x = np.abs(np.asarray(x, np.float64))
    aw = np.abs(W)
    mag = x @ aw.T + (0 if bias is None else np.abs(bias))
    K = W.shape[1]
    if not tensor_cores:
        return (K + 2) * U * mag
    rel = 2.0**-24 if precision == "f32" else 2.0**-12
    row_max = x.max(axis=1, keepdims=True)
    return 2 * (K + 2) * U * mag + rel * (x @ aw.T) + 2.0**-39 * row_max * aw.sum(axis=1)


@needs_device
@pytest.mark.parametrize("kernel", ["auto", "gemv", "gemm"])
@pytest.mark.parametrize("rows", [1, 19, 67], ids=["one_row", "rows19", "rows67"])
@pytest.mark.parametrize("shape", MATMUL_SHAPES, ids=_shape_id)
def test_cuda_matmul_within_rounding_bound(rng, shape, rows, kernel):
    ggml_type, cols = shape
    raw = raw_weights(rng, ggml_type, rows, cols)
    W = R.dequantize(raw, ggml_type, (rows, cols))
    b = rng.standard_normal(rows).astype(np.float32)
    for T in TOKENS:
        x = rng.standard_normal((T, cols)).astype(np.float32)
        bias = b if T % 2 else None
        y = gpu.matmul(raw, ggml_type, rows, cols, x, bias, kernel)
        ref = R.matmul(x.astype(np.float64), W, None if bias is None else b.astype(np.float64))
        tol = matmul_bound(x, W, None if bias is None else b, _tensor_cores(ggml_type, cols, kernel, T))
        assert y.shape == (T, rows)
        assert np.all(np.abs(y - ref) <= tol), f"T={T}: max err {np.max(np.abs(y - ref) - tol):.3g} over"
        y_cpu = cpu.matmul(raw, ggml_type, rows, cols, x, bias, "scalar")
        assert np.all(np.abs(y - y_cpu) <= 2 * tol), f"T={T}: the CPU op disagrees"


@needs_device
@pytest.mark.parametrize("scale", [1.0, 2.0**-60, 2.0**40], ids=["unit", "tiny", "huge"])
@pytest.mark.parametrize("ggml_type", [MXFP4, Q8_0, F16], ids=["MXFP4", "Q8_0", "F16"])
def test_cuda_tensor_core_gemm_fast_precision(rng, ggml_type, scale):
    """precision="fast": one half per activation, each token's row scaled by a power of two first,
    so the error stays 2^-12 of |x| at any magnitude (no half overflow or underflow), one token's
    blocks 2^20 apart in size included; "f32" stays within its own bound on the same x."""
    rows, cols, T = 70, 2880, 70
    raw = raw_weights(rng, ggml_type, rows, cols)
    W = R.dequantize(raw, ggml_type, (rows, cols))
    x = (rng.standard_normal((T, cols)) * scale).astype(np.float32)
    x[:, :32] *= 2.0**20  # a large block beside ordinary ones
    x[3] = 0.0            # a token of zeros
    ref = R.matmul(x.astype(np.float64), W)
    for precision in ("fast", "f32"):
        y = gpu.matmul(raw, ggml_type, rows, cols, x, None, "gemm", precision)
        tol = matmul_bound(x, W, None, True, precision)
        worst = np.max(np.abs(y - ref) / (tol + 1e-300))
        assert np.all(np.abs(y - ref) <= tol), f"{precision}: max err/bound {worst:.3g}"
    assert not np.array_equal(gpu.matmul(raw, ggml_type, rows, cols, x, None, "gemm", "fast"),
                              gpu.matmul(raw, ggml_type, rows, cols, x, None, "gemm", "f32"))


@needs_device
@pytest.mark.parametrize("precision", ["f32", "fast"])
@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
@pytest.mark.parametrize("shape", MATMUL_SHAPES, ids=_shape_id)
def test_cuda_matmul_exact_when_arithmetic_is_exact(rng, shape, kernel, precision):
    """Small integers times weights on a coarse grid: every product and partial sum is exact (and
    every x exact in half), so any correct kernel returns the exact answer bit for bit; catches one
    misplaced element."""
    ggml_type, cols = shape
    rows = 45
    raw = raw_weights(rng, ggml_type, rows, cols, small_ints=True)
    W = R.dequantize(raw, ggml_type, (rows, cols))
    b = rng.integers(-100, 101, rows).astype(np.float32)
    for T in (1, 5, 33, 70):
        x = rng.integers(-8, 9, (T, cols)).astype(np.float32)
        y = gpu.matmul(raw, ggml_type, rows, cols, x, b, kernel, precision)
        ref = R.matmul(x.astype(np.float64), W, b.astype(np.float64))
        assert np.array_equal(y, ref), f"T={T}: {np.argwhere(y != ref)[:3].tolist()}"


@needs_device
@pytest.mark.parametrize("shape", [(MXFP4, 2880), (Q8_0, 96), (F16, 96), (BF16, 320), (F32, 37)],
                         ids=_shape_id)
def test_cuda_matmul_parts_equal_their_matmuls_bit_for_bit(rng, shape):
    """Decode's q, k and v projections as one launch (kernels.cuh matmul_parts): each part's rows
    equal its own matmul's bit for bit, parts of uneven rows (a block of rows shared by none, a
    one-row part, no bias on one); element-read shapes (F32 of 37 columns) and prefill tokens run
    one matmul each, as before."""
    ggml_type, cols = shape
    rows = [67, 1, 130]
    raws = [raw_weights(rng, ggml_type, r, cols) for r in rows]
    biases = [rng.standard_normal(r).astype(np.float32) for r in rows]
    biases[1] = None
    block_read = cols % 32 == 0
    for T in (1, 3, 8, 9):
        x = rng.standard_normal((T, cols)).astype(np.float32)
        ys, fused = gpu.matmul_parts(raws, ggml_type, rows, cols, x, biases)
        assert fused == (block_read and T < 8)
        for raw, r, b, y in zip(raws, rows, biases, ys):
            alone = gpu.matmul(raw, ggml_type, r, cols, x, b)
            assert y.shape == (T, r) and np.array_equal(f32_bits(y), f32_bits(alone)), f"T={T}, rows={r}"


def test_cuda_matmul_parts_arguments_are_checked():
    raw = np.zeros(34, np.uint8)  # one Q8_0 row of 32
    x = np.zeros((1, 32), np.float32)
    with pytest.raises(ValueError, match="same length"):
        gpu.matmul_parts([raw], Q8_0, [1, 1], 32, x, [None])
    with pytest.raises(ValueError, match="1 to 3"):
        gpu.matmul_parts([raw] * 4, Q8_0, [1] * 4, 32, x, [None] * 4)


# --------------------------------------------------------------------------- routed experts (device)


def _expert_case(rng, ggml_type, n_experts, rows, cols, n_pairs, x_div):
    """A stack of experts, routing that leaves expert 1 unused and sends more than one 64-row
    tile's pairs to expert 0, inputs and the float64 answer."""
    raw = np.concatenate([raw_weights(rng, ggml_type, rows, cols) for _ in range(n_experts)])
    W = R.dequantize(raw, ggml_type, (n_experts * rows, cols)).reshape(n_experts, rows, cols)
    idx = rng.choice([e for e in range(n_experts) if e != 1], n_pairs).astype(np.int32)
    idx[: min(n_pairs, 70)] = 0
    rng.shuffle(idx)
    x = rng.standard_normal((-(-n_pairs // x_div), cols)).astype(np.float32)
    bias = rng.standard_normal((n_experts, rows)).astype(np.float32)
    xs = x[np.arange(n_pairs) // x_div].astype(np.float64)
    ref = np.einsum("prc,pc->pr", W[idx], xs) + bias[idx]
    return raw, W, idx, x, xs, bias, ref


@needs_device
@pytest.mark.parametrize("x_div", [1, 4])
@pytest.mark.parametrize("n_pairs", [1, 7, 64, 200])
@pytest.mark.parametrize("shape", [(MXFP4, 96), (MXFP4, 2880), (Q8_0, 96), (Q8_0, 4128), (F16, 96)],
                         ids=_shape_id)
def test_cuda_expert_matmul_pairs_and_grouped(rng, shape, n_pairs, x_div):
    ggml_type, cols = shape
    E, rows = 5, 67
    raw, W, idx, x, xs, bias, ref = _expert_case(rng, ggml_type, E, rows, cols, n_pairs, x_div)
    aw = np.abs(W[idx])
    mag = np.einsum("prc,pc->pr", aw, np.abs(xs)) + np.abs(bias[idx])
    pairs = gpu.expert_matmul(raw, ggml_type, E, rows, cols, idx, x, x_div, bias, grouped=False)
    assert np.all(np.abs(pairs - ref) <= (cols + 2) * U * mag)
    floor = 2.0**-39 * np.abs(xs).max(axis=1, keepdims=True) * aw.sum(axis=2)
    for precision, rel in (("f32", 2.0**-24), ("fast", 2.0**-12)):
        grouped = gpu.expert_matmul(raw, ggml_type, E, rows, cols, idx, x, x_div, bias, grouped=True,
                                    precision=precision)
        tol = (2 * (cols + 2) * U + rel) * mag + floor  # matmul_bound's tensor-core terms
        worst = np.max(np.abs(grouped - ref) / tol)
        assert np.all(np.abs(grouped - ref) <= tol), f"{precision}: max err/bound {worst:.3g}"


@needs_device
@pytest.mark.parametrize("shape", [(MXFP4, 2880), (Q8_0, 96), (BF16, 320), (F32, 37)], ids=_shape_id)
@pytest.mark.parametrize("n_pairs,x_div", [(4, 4), (7, 1)])
def test_cuda_expert_gate_up_equals_its_matmuls_and_swiglu(rng, shape, n_pairs, x_div):
    """Decode's gate and up expert rows and their SwiGLU in one launch (kernels.cuh expert_gate_up):
    bit for bit the two pair-by-pair expert matmuls and the SwiGLU op; element-read shapes (F32 of
    37 columns) decline, and the device model takes the three launches."""
    ggml_type, cols = shape
    E, rows, alpha, limit = 5, 67, 1.702, 7.0
    raw_g, _, idx, x, _, bias_g, _ = _expert_case(rng, ggml_type, E, rows, cols, n_pairs, x_div)
    raw_u = np.concatenate([raw_weights(rng, ggml_type, rows, cols) for _ in range(E)])
    bias_u = rng.standard_normal((E, rows)).astype(np.float32)
    x *= 4  # gates past the clamp
    h, fused = gpu.expert_gate_up(raw_g, raw_u, ggml_type, E, rows, cols, idx, x, x_div, bias_g, bias_u,
                                  alpha, limit)
    assert fused == (cols % 32 == 0)
    if not fused:
        assert h is None
        return
    gate = gpu.expert_matmul(raw_g, ggml_type, E, rows, cols, idx, x, x_div, bias_g, grouped=False)
    up = gpu.expert_matmul(raw_u, ggml_type, E, rows, cols, idx, x, x_div, bias_u, grouped=False)
    want = gpu.swiglu(gate.ravel(), up.ravel(), alpha, limit).reshape(n_pairs, rows)
    assert np.mean(gate > limit) > 0  # the clamp is reached
    assert np.array_equal(f32_bits(h), f32_bits(want))


def test_cuda_expert_matmul_arguments_are_checked():
    raw = np.zeros((2 * 3 * 17), np.uint8)
    x = np.zeros((1, 32), np.float32)
    bias = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="idx must name experts"):
        gpu.expert_matmul(raw, MXFP4, 2, 3, 32, np.array([2], np.int32), x, 1, bias, grouped=True)
    with pytest.raises(ValueError, match="bias must be"):
        gpu.expert_matmul(raw, MXFP4, 2, 3, 32, np.array([0], np.int32), x, 1, bias[:1], grouped=True)
    with pytest.raises(ValueError, match="x must be"):
        gpu.expert_matmul(raw, MXFP4, 2, 3, 32, np.array([0, 1], np.int32), x, 1, bias, grouped=True)
    with pytest.raises(ValueError, match="MXFP4, Q8_0 or F16"):
        gpu.expert_matmul(np.zeros(2 * 3 * 128, np.uint8), F32, 2, 3, 32, np.array([0], np.int32), x, 1, bias,
                          grouped=True)
    with pytest.raises(ValueError, match="precision"):
        gpu.expert_matmul(raw, MXFP4, 2, 3, 32, np.array([0], np.int32), x, 1, bias, grouped=True,
                          precision="bf16")


# --------------------------------------------------------------------------- rmsnorm, rope (device)


@needs_device
@pytest.mark.parametrize("n", [1, 7, 37, 64, 100, 2880])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])  # 1e-3: mean(x²) ≈ ε, so ε's place matters
def test_cuda_rmsnorm(rng, n, scale):
    x = (rng.standard_normal((5, n)) * scale).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    y = gpu.rmsnorm(x, g, 1e-5)
    ref = R.rmsnorm(x.astype(np.float64), g.astype(np.float64), float(np.float32(1e-5)))
    # n positive squares in any order err ≤ (n-1)·U relative; mean, +ε, sqrt, divide and two
    # multiplies a few U more; every output carries that relative error (the CPU test's bound).
    tol = (n + 8) * U * np.abs(ref)
    assert np.all(np.abs(y - ref) <= tol)
    assert np.all(np.abs(y - cpu.rmsnorm(x, g, 1e-5, "scalar")) <= 2 * tol)


GPT_OSS_ROPE = {"key_length": 64, "rope_freq_base": 150000.0, "rope_scaling_factor": 32.0,
                "rope_original_context": 4096.0}


@needs_device
@pytest.mark.parametrize("heads", [1, 3, 64])
def test_cuda_rope_yarn(rng, heads):
    theta, C = cpu.rope_theta(GPT_OSS_ROPE)  # the YaRN θ table (bit-exact, tests/test_kernels.py)
    T, d = 9, 64
    positions = np.array([0, 1, 2, 127, 128, 4095, 4096, 65535, 131071], np.int64)
    x = rng.standard_normal((T, heads, d)).astype(np.float32)
    y = gpu.apply_rope(x, positions, theta, C)
    cos, sin = R.rope_cos_sin(positions, theta, C)
    ref = R.apply_rope(x.astype(np.float64), cos, sin)
    # cos/sin of the float32 angle rounded to float32, as the reference (a double cos differs
    # from another by < 1 ulp of a double, so their float32 roundings almost always agree); then
    # two float32 products and a sum: ≤ 2U·(|a||c| + |b||s|) plus a float32 ulp of c and s.
    half = d // 2
    a, b = np.abs(x[..., :half]).astype(np.float64), np.abs(x[..., half:]).astype(np.float64)
    ac, asn = np.abs(cos)[:, None, :], np.abs(sin)[:, None, :]
    bound = 3 * U * np.concatenate([a * ac + b * asn, b * ac + a * asn], axis=-1)
    assert np.all(np.abs(y - ref) <= bound)
    y_cpu = cpu.apply_rope(x, positions, theta, C)
    assert np.all(np.abs(y - y_cpu) <= 2 * bound)
    assert np.mean(y == y_cpu) > 0.999  # the same arithmetic: equal but for rare cos/sin roundings


# --------------------------------------------------------------------------- attention (device)

# name: (cap, n_positions P, query positions, window): the cache holds positions 0..P-1, position
# j in slot j % cap (later ones overwrite earlier).
ATTENTION_CASES = {
    "one_key": (16, 1, [0], 0),
    "full_causal_decode": (300, 300, [299], 0),  # three chunks of 128 keys
    "full_causal_prefill": (200, 200, list(range(150, 200)), 0),
    "window_exactly_full": (128, 128, [127], 128),
    "window_partial": (64, 40, [39], 128),  # fewer keys than the window
    "kv_ring_wrapped": (160, 1000, [999], 128),
    "kv_ring_wrapped_prefill": (160, 1000, list(range(968, 1000)), 128),
    "sink_dominates": (64, 64, [63], 0),
    # Flash-decoding's parts of 2048 keys (run split and unsplit): three parts; rows of one, two
    # and three parts in one call; a window across a part boundary in a wrapped ring.
    "split_decode_long": (5000, 5000, [4999], 0),
    "split_decode_rows": (4200, 4200, [2047, 2048, 4199], 0),
    "split_window_across_parts": (300, 2100, [2099], 128),
}


def _attention_bound(q, K, V, sinks, qpos, window, scale, n_chunks):
    """Per (t, h) the CPU test's bound (tests/test_kernels.py test_attention_row), widened by the
    online softmax's rescales: one rounding of acc and of l per chunk, and expf's 2 ulp."""
    T, nq, d = q.shape
    group = nq // K.shape[1]
    tol = np.empty((T, nq, d))
    for t in range(T):
        p = qpos[t]
        lo = max(0, p - window + 1) if window else 0
        k_vis, v_vis = K[lo:p + 1], V[lo:p + 1]
        for h in range(nq):
            g = h // group
            qh = q[t, h].astype(np.float64)
            z = k_vis[:, g] @ qh * scale
            S = np.abs(k_vis[:, g]) @ np.abs(qh) * scale
            m = max(z.max(), sinks[h])
            arg_err = np.max((d + 2) * U * S + U * (np.abs(z) + abs(m)))
            w = np.exp(z - m) / (np.exp(sinks[h] - m) + np.exp(z - m).sum())
            n = p - lo + 1
            tol[t, h] = 2 * (2 * arg_err + (n + 8 + 4 * n_chunks) * U) * (w @ np.abs(v_vis[:, g]))
    return tol


@needs_device
@pytest.mark.parametrize("heads", [(8, 1), (8, 2), (3, 3), (64, 8)], ids=lambda h: f"q{h[0]}kv{h[1]}")
@pytest.mark.parametrize("d", [64, 80, 256])
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_cuda_attention(rng, case, d, heads):
    cap, P, qpos, window = ATTENTION_CASES[case]
    nq, nkv = heads
    if d == 256 and nq == 64:
        pytest.skip("one wide case is enough")
    T = len(qpos)
    K = rng.standard_normal((P, nkv, d)).astype(np.float32)
    V = rng.standard_normal((P, nkv, d)).astype(np.float32)
    q = rng.standard_normal((T, nq, d)).astype(np.float32)
    sinks = rng.normal(0, 2, nq).astype(np.float32)
    if case == "sink_dominates":
        q *= 0.05
        sinks += 8
    k_cache = np.zeros((cap, nkv, d), np.float32)
    v_cache = np.zeros((cap, nkv, d), np.float32)
    for j in range(P):
        k_cache[j % cap], v_cache[j % cap] = K[j], V[j]
    scale = np.float32(1 / math.sqrt(d))
    ref = R.attention(q.astype(np.float64), K.astype(np.float64), V.astype(np.float64),
                      sinks.astype(np.float64), qpos, np.arange(P), window or None)
    n_keys = min(P, window) if window else P
    # Split: each part's last 128-key step is partial, and the merge rescales once per part
    # (the most 2048-key parts a row has, csrc/attention_split.h).
    parts = max(p // 2048 - (max(0, p - window + 1) if window else 0) // 2048 + 1 for p in qpos)
    # Rows of more than 8 tokens take the tiled kernel: 2048 / d' keys a step (d' = d rounded up
    # to 64, 128 or 256), from the block's first key, which may lie a step before the row's.
    tiled = T > 8 and d % 16 == 0 and nq // nkv <= 64
    step_keys = 2048 // next(w for w in (64, 128, 256) if d <= w) if tiled else 128
    for split in (False, True) if case.startswith("split") else (False,):
        out = gpu.attention(q, k_cache, v_cache, np.array(qpos, np.int64), sinks, window, scale, split=split)
        n_chunks = -(-n_keys // step_keys) + int(tiled) + (2 * parts if split else 0)
        tol = _attention_bound(q, K, V, sinks, qpos, window, float(scale), n_chunks)
        assert out.shape == (T, nq, d)
        err = np.abs(out - ref)
        assert np.all(err <= tol), f"split={split}: max err/bound {np.max(err / tol):.3g}"
    # The CPU kernel on the same cache, one GQA group of one query at a time.
    t = T - 1
    p = qpos[t]
    lo = max(0, p - window + 1) if window else 0
    group = nq // nkv
    for g in range(nkv):
        hs = slice(g * group, (g + 1) * group)
        k_g, v_g = np.ascontiguousarray(k_cache[:, g]), np.ascontiguousarray(v_cache[:, g])
        want = cpu.attention(q[t, hs], k_g, v_g, lo, p, sinks[hs], scale, "scalar")
        assert np.all(np.abs(out[t, hs] - want) <= 2 * tol[t, hs])


@needs_device
@pytest.mark.parametrize("kv_type", ["f16", "bf16"])
@pytest.mark.parametrize("case", ["full_causal_decode", "kv_ring_wrapped", "split_decode_rows",
                                  "full_causal_prefill", "kv_ring_wrapped_prefill"])
def test_cuda_attention_16_bit_cache_is_the_rounded_float_cache(rng, case, kv_type):
    # A 16-bit cache holds K and V rounded to nearest even and widens them exactly: the same
    # outputs, bit for bit, as the float32 kernel on the values the CPU cache's rounding gives.
    cap, P, qpos, window = ATTENTION_CASES[case]
    nq, nkv, d = 8, 2, 64
    k_cache = rng.standard_normal((cap, nkv, d)).astype(np.float32)
    v_cache = rng.standard_normal((cap, nkv, d)).astype(np.float32)
    q = rng.standard_normal((len(qpos), nq, d)).astype(np.float32)
    sinks = rng.normal(0, 2, nq).astype(np.float32)
    pos = np.array(qpos, np.int64)
    scale = np.float32(1 / math.sqrt(d))
    split = case.startswith("split")
    if kv_type == "f16" and len(qpos) > 8:
        pytest.skip("prefill rows over an f16 cache take the tensor cores: test_cuda_attention_tensor_cores")
    out = gpu.attention(q, k_cache, v_cache, pos, sinks, window, scale, kv_type, split=split)
    rounded = [cpu.kv_round(c.ravel(), kv_type).reshape(c.shape) for c in (k_cache, v_cache)]
    want = gpu.attention(q, *rounded, pos, sinks, window, scale, split=split)
    assert np.array_equal(f32_bits(out), f32_bits(want))


# The tensor-core prefill kernel (attention_mma.cu) takes an IEEE-half cache, d a multiple of 16 up
# to 128 and more than 8 query rows; name: (cap, n_positions, query positions, window) as above.
MMA_ATTENTION_CASES = {
    "full_causal_prefill": ATTENTION_CASES["full_causal_prefill"],
    "kv_ring_wrapped_prefill": ATTENTION_CASES["kv_ring_wrapped_prefill"],
    "from_position_zero": (70, 70, list(range(70)), 0),  # rows of 1 .. 70 keys, tiles of one key
    "window_from_zero": (200, 150, list(range(150)), 128),
}


def _attention_mma_bound(q, K, V, sinks, qpos, window, scale, exact):
    """Per (t, h, c) _attention_bound's terms for the tensor cores' operands: q in halves relative
    to its row's largest |q| (two: 2^-21 of it, one: 2^-11), each weight p in halves (2^-21 or
    2^-11 of itself, plus 2^-25: half's subnormal spacing), and the mma's float32 sums counted as
    truncating (2U a term, twice for the two halves) over d channels and the keys' tiles."""
    rel_q, rel_p = (2.0**-21, 2.0**-21) if exact else (2.0**-11, 2.0**-11)
    T, nq, d = q.shape
    group = nq // K.shape[1]
    tol = np.empty((T, nq, d))
    for t in range(T):
        p = qpos[t]
        lo = max(0, p - window + 1) if window else 0
        k_vis, v_vis = K[lo:p + 1], V[lo:p + 1]
        n = p - lo + 1
        for h in range(nq):
            g = h // group
            qh = q[t, h].astype(np.float64)
            z = k_vis[:, g] @ qh * scale
            S = np.abs(k_vis[:, g]) @ np.abs(qh) * scale
            dz = rel_q * np.abs(qh).max() * scale * np.abs(k_vis[:, g]).sum(axis=1)
            m = max(z.max(), sinks[h])
            arg_err = np.max(4 * (d + 2) * U * S + U * (np.abs(z) + abs(m)) + dz)
            w = np.exp(z - m) / (np.exp(sinks[h] - m) + np.exp(z - m).sum())
            av = np.abs(v_vis[:, g])
            sums = 4 * (n + 8 + 2 * (n // 64 + 2)) * U  # _attention_bound's, for 64-key tiles
            tol[t, h] = 2 * (2 * arg_err + sums) * (w @ av) + (rel_p * w + 2.0**-25) @ av
    return tol


@needs_device
@pytest.mark.parametrize("precision", ["f32", "fast"])
@pytest.mark.parametrize("heads", [(8, 1), (3, 3), (64, 8)], ids=lambda h: f"q{h[0]}kv{h[1]}")
@pytest.mark.parametrize("d", [64, 80, 128])
@pytest.mark.parametrize("case", list(MMA_ATTENTION_CASES))
def test_cuda_attention_tensor_cores(rng, case, d, heads, precision):
    cap, P, qpos, window = MMA_ATTENTION_CASES[case]
    nq, nkv = heads
    T = len(qpos)
    # K and V as an f16 cache holds them (rounded once, then exact); q of mixed scales, so a
    # row's halves lose bits relative to its largest value.
    K = cpu.kv_round(rng.standard_normal((P, nkv, d)).astype(np.float32).ravel(), "f16").reshape(P, nkv, d)
    V = cpu.kv_round(rng.standard_normal((P, nkv, d)).astype(np.float32).ravel(), "f16").reshape(P, nkv, d)
    q = (rng.standard_normal((T, nq, d)) * np.exp(rng.uniform(-3, 3, (T, nq, 1)))).astype(np.float32)
    sinks = rng.normal(0, 2, nq).astype(np.float32)
    k_cache = np.zeros((cap, nkv, d), np.float32)
    v_cache = np.zeros((cap, nkv, d), np.float32)
    for j in range(P):
        k_cache[j % cap], v_cache[j % cap] = K[j], V[j]
    scale = np.float32(1 / math.sqrt(d))
    pos = np.array(qpos, np.int64)
    out, kernel = gpu.attention(q, k_cache, v_cache, pos, sinks, window, scale, "f16",
                                precision=precision, with_kernel=True)
    assert kernel == "tensor cores"
    ref = R.attention(q.astype(np.float64), K.astype(np.float64), V.astype(np.float64),
                      sinks.astype(np.float64), qpos, np.arange(P), window or None)
    tol = _attention_mma_bound(q, K, V, sinks, qpos, window, float(scale), precision == "f32")
    err = np.abs(out - ref)
    assert np.all(err <= tol), f"max err/bound {np.max(err / tol):.3g}"
    # The float32 tiled kernel on the same (exactly widened) cache agrees within both bounds.
    f32_out, f32_kernel = gpu.attention(q, k_cache, v_cache, pos, sinks, window, scale, with_kernel=True)
    assert f32_kernel == "tiled"
    assert np.all(np.abs(out - f32_out) <= 2 * tol)
    if precision == "fast":  # one half loses ~11 bits that two keep: the flag reaches the kernel
        exact = gpu.attention(q, k_cache, v_cache, pos, sinks, window, scale, "f16")
        assert np.max(np.abs(exact - ref)) < np.max(err) / 8


@needs_device
def test_cuda_attention_takes_the_tensor_cores_where_they_apply(rng):
    cap, P, qpos, window = ATTENTION_CASES["full_causal_prefill"]
    sinks = np.zeros(8, np.float32)

    def kernel(T, d, kv_type, nq=8, nkv=2, split=False):
        q = rng.standard_normal((T, nq, d)).astype(np.float32)
        kv = rng.standard_normal((cap, nkv, d)).astype(np.float32)
        return gpu.attention(q, kv, kv, np.array(qpos[-T:], np.int64), sinks[:nq], window, 0.125, kv_type,
                             split=split, with_kernel=True)[1]

    assert kernel(9, 64, "f16") == "tensor cores"
    assert kernel(9, 128, "f16") == "tensor cores"
    assert kernel(9, 256, "f16") == "tiled"  # past the kernel's 128 channels
    assert kernel(9, 64, "f32") == "tiled" and kernel(9, 64, "bf16") == "tiled"
    assert kernel(8, 64, "f16") == "rows"  # decode rows
    assert kernel(9, 72, "f16") == "rows"  # d not a multiple of 16


def test_cuda_attention_kv_type_is_checked():
    z = np.zeros((1, 1, 8), np.float32)
    with pytest.raises(ValueError, match="kv_type"):
        gpu.attention(z, z, z, np.array([0]), np.zeros(1, np.float32), 0, 1.0, "f8")


# --------------------------------------------------------------------------- router, SwiGLU (device)


@needs_device
@pytest.mark.parametrize("E,k", [(32, 4), (128, 4), (5, 5), (7, 1)])
def test_cuda_router_topk(rng, E, k):
    T = 70
    logits = rng.standard_normal((T, E)).astype(np.float32)
    logits[: T // 2] = rng.integers(-3, 4, (T // 2, E))  # many ties: the lower index wins
    idx, w = gpu.router_topk(logits, k)
    ref_idx, ref_w = R.router_topk(logits.astype(np.float64), k)
    cpu_idx, cpu_w = cpu.router_topk(logits, k)
    assert np.array_equal(idx, ref_idx) and np.array_equal(idx, cpu_idx)
    # exp of an exact float32 difference (2 ulp), a k-term sum and a divide: (k + 6)·U relative.
    assert np.all(np.abs(w - ref_w) <= (k + 6) * U * ref_w)
    assert np.all(np.abs(w - cpu_w) <= 2 * (k + 6) * U * ref_w)


@needs_device
@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # σ of a gate of -1e30 in float64
def test_cuda_swiglu(rng):
    n = 10_000
    gate = (rng.standard_normal(n) * 6).astype(np.float32)
    lin = (rng.standard_normal(n) * 6).astype(np.float32)
    gate[:4] = [7.0, -100.0, 1e30, -1e30]  # at the clamp, σ → 0, clamped, far below
    lin[:4] = [-7.0, 8.0, -1e30, 0.0]
    h = gpu.swiglu(gate, lin, 1.702, 7.0)
    ref = R.swiglu_oai(gate.astype(np.float64), lin.astype(np.float64), 1.702, 7.0)
    # σ(αg) through expf (2 ulp), a product, an add, a divide, a product: 8U relative; α·g's
    # rounding moves σ by ≤ U·|αg|·σ(1-σ) relative, bounded by U·|αg|.
    g = np.minimum(gate.astype(np.float64), 7.0)
    tol = (8 + np.abs(1.702 * g)) * U * np.abs(ref) + 1e-30
    assert np.all(np.abs(h - ref) <= tol)
    h_cpu = cpu.swiglu(gate, lin, 1.702, 7.0)
    assert np.all(np.abs(h - h_cpu) <= 2 * tol)
