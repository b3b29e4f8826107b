"""The CUDA device model (cuda/device_model.h, ossrun.device_load). On every machine whose build has
the CUDA target: the host logic (which tensors go to the device and where in its arena, against
the placement plan's bytes; the KV cache and activation sizes against the plan; which weight types
and splits are refused and why; a CUDA failure as a DeviceError). On a machine with a GPU
(tools/device_check.sh): the fixtures' golden logits (float32 within 1e-4, MODEL.md §7.4's bound,
as tests/test_model.py), decode == prefill, chunked and long prompts, truncation, batches, the
16-bit KV caches and the hybrid split (experts of the first layers on the CPU) against the CPU
backend. Those skip cleanly without a device.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time

import numpy as np
import ossrun
import pytest
import reference as R
from golden import FIXTURES, TOL, golden_case, load, rel_err
from ossrun import _core, device_load, placement
from ossrun.device import CudaStatus, cuda_status
from ossrun.errors import DeviceError

if not getattr(_core, "HAS_DEVICE_MODEL", False):
    pytest.skip("ossrun was built without CUDA (no device model in the core)", allow_module_level=True)

STATUS = cuda_status()
if os.environ.get("OSSRUN_REQUIRE_CUDA") and not STATUS.available:  # tools/device_check.sh
    raise RuntimeError(f"OSSRUN_REQUIRE_CUDA is set and CUDA is unavailable: {STATUS.reason}")
needs_device = pytest.mark.skipif(not STATUS.available, reason=f"no CUDA device: {STATUS.reason}")

ALIGN = 256  # cuda/kernels.cuh kDeviceAlign
# A prompt that wraps tiny-w4's (window 4) sliding ring on the device, by ~300 positions.
PAST_THE_RING = 4 - 1 + placement.MAX_CHUNK + placement.ROLLBACK_MARGIN + 300
DENSE = ("attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias",
         "attn_v.weight", "attn_v.bias", "attn_output.weight", "attn_output.bias",
         "attn_sinks.weight", "post_attention_norm.weight")
MOE = ("ffn_gate_inp.weight", "ffn_gate_inp.bias", "ffn_gate_exps.weight", "ffn_gate_exps.bias",
       "ffn_up_exps.weight", "ffn_up_exps.bias", "ffn_down_exps.weight", "ffn_down_exps.bias")


@pytest.fixture(scope="module", params=FIXTURES)
def fx(request, fixtures_dir):
    return golden_case(fixtures_dir, request.param)


def tensor_bytes(m) -> dict:
    return {name: int(arr.nbytes) for name, (arr, _, _) in m._file.tensors.items()}


# --------------------------------------------------------------------------- host logic (no GPU)


@pytest.mark.parametrize("gpu_layers", [None, 1])
@pytest.mark.parametrize("n_cpu_moe", [0, 1, "all"])
def test_upload_layout_is_the_plans_gpu_part(fx, n_cpu_moe, gpu_layers):
    # What DeviceModel copies to the GPU: every tensor the plan puts there, each at an aligned,
    # non-overlapping offset with its GGUF size, and nothing else (never the token embedding, nor
    # anything of the layers that run on the CPU).
    m = load(fx["gguf"], precision="f32", device="cpu")
    L = m.config.block_count
    n = L if n_cpu_moe == "all" else n_cpu_moe
    first = 0 if gpu_layers is None else L - gpu_layers
    items, total = _core.device_upload_layout(m._core, n, gpu_layers)
    names = [name for name, _, _ in items]
    want = ["output_norm.weight", "output.weight"]
    for layer in range(first, L):
        want += [f"blk.{layer}.{t}" for t in DENSE + (MOE if layer >= n else ())]
    assert names == want
    sizes = tensor_bytes(m)
    end = 0
    for name, offset, nbytes in items:
        assert nbytes == sizes[name], name
        assert offset % ALIGN == 0 and offset >= end, name
        end = offset + nbytes
    assert end <= total < end + ALIGN
    plan = placement.plan_placement(m.config, sizes, m.n_ctx, 2**40, gpu_layers=gpu_layers, cpu_moe=n_cpu_moe)
    assert plan.gpu_layers == L - first and plan.n_cpu_moe == max(n, first)
    kv = sum(p.bytes for p in plan.parts if p.kind == "kv_cache" and p.device == "cuda")
    assert sum(b for _, _, b in items) == plan.bytes_on("cuda") - kv
    assert _core.device_kv_bytes(m._core, m.n_ctx, "f32", gpu_layers) == kv


@pytest.mark.parametrize("kv_type", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("n_ctx", [1, 100, 2000])
def test_device_kv_cache_bytes_are_the_plans(fx, kv_type, n_ctx):
    m = load(fx["gguf"], precision="f32", device="cpu")
    layers = range(m.config.block_count)
    want = sum(placement.kv_cache_bytes(m.config, layer, n_ctx, kv_type) for layer in layers)
    assert _core.device_kv_bytes(m._core, n_ctx, kv_type) == want


def test_the_plan_knows_the_device_models_chunk():
    assert placement.MAX_CHUNK == _core.DEVICE_MAX_CHUNK


def test_device_activations_fit_the_plans_scratch(fx, tiny_gguf):
    for path in (fx["gguf"], tiny_gguf):
        m = load(path, precision="f32", device="cpu")
        for experts in (True, False):  # without MoE blocks on the GPU (--cpu-moe) less
            have = _core.device_scratch_bytes(m._core, experts)
            assert 0 < have <= placement.scratch_bytes(m.config, None, experts)
        assert _core.device_scratch_bytes(m._core, False) < _core.device_scratch_bytes(m._core, True)
        sizes = tensor_bytes(m)
        # An offloading plan computes the CPU's MoE blocks on the GPU too, so it carves them.
        for cpu_moe, offload, experts in ((None, 0, True), ("all", 0, False), ("all", 512, True)):
            plan = placement.plan_placement(m.config, sizes, m.n_ctx, 2**40, cpu_moe=cpu_moe, offload=offload)
            assert plan.scratch == placement.scratch_bytes(m.config, m.n_ctx, experts)
            if offload:  # two slots of the largest MoE matrix with its bias, as the core allocates them
                assert plan.stage_slots == 2
                assert plan.stage == 2 * _core.device_stage_bytes(m._core, plan.n_cpu_moe) > 0
            else:
                assert plan.stage == 0


@pytest.mark.parametrize("role_types", [{"attn_qkv": "q4_0", "output": "q6_k"},
                                        {"attn_qkv": "q5_k", "attn_output": "iq4_nl"}])
def test_dense_quant_files_are_accepted_on_the_gpu(tmp_path, role_types):
    from ossrun import model_maker

    path = model_maker.make_model(tmp_path / "q.gguf", "tiny", use_byte_vocab=True, vocab=512, hidden=256,
                                  role_types=role_types)
    m = ossrun.load(path, n_ctx=64, threads=1, device="cpu", precision="f32")  # no repacking
    assert _core.device_unsupported_weight(m._core, 0) == ""
    assert device_load.check_plan(m, device_load.device_plan(m, 2**40)) == ""


def fake_status(free: int) -> CudaStatus:
    return CudaStatus(True, "", built=True, device="Fake GPU", compute_capability=(9, 0),
                      free_bytes=free, total_bytes=free)


def test_a_plan_with_no_layer_on_the_gpu_is_refused(fx, monkeypatch):
    m = load(fx["gguf"], precision="f32", device="cpu")
    monkeypatch.setattr(device_load, "cuda_status", lambda: fake_status(placement.DEFAULT_RESERVE))
    with pytest.raises(DeviceError, match="none of the .* layers on the GPU.*too little VRAM"):
        device_load.plan_on_gpu(m, explicit=True)
    plan, why = device_load.plan_on_gpu(m, explicit=False)  # auto: the CPU, and why
    assert plan is None and "none of the" in why
    m.gpu_layers = 0
    try:
        why = device_load.check_plan(m, device_load.device_plan(m, 2**40))
        assert "none of the" in why and "gpu_layers=0" in why
        m.gpu_layers = 1  # the other layers on the CPU backend: a plan the device model runs
        plan = device_load.device_plan(m, 2**40)
        assert plan.gpu_layers == 1 and device_load.check_plan(m, plan) == ""
    finally:
        m.gpu_layers = None


def test_gpu_layers_out_of_range_are_refused_by_the_core(fx):
    m = load(fx["gguf"], precision="f32", device="cpu")
    L = m.config.block_count
    for bad in (0, L + 1):
        with pytest.raises(ValueError, match="gpu_layers must be in"):
            _core.device_upload_layout(m._core, 0, bad)
        with pytest.raises(ValueError, match="gpu_layers must be in"):
            _core.device_kv_bytes(m._core, 100, "f32", bad)


@pytest.mark.skipif(STATUS.available, reason="needs a machine where CUDA cannot start")
def test_cuda_failure_is_a_device_error(fx, monkeypatch):
    # The plan fits (a fake 1 TiB device), then the real CUDA runtime fails to start: DeviceError
    # from the core's translator, raised for "cuda", the reason kept for "auto".
    m = load(fx["gguf"], precision="f32", device="cpu")
    with pytest.raises(DeviceError, match="CUDA error in cudaSetDevice"):
        _core.DeviceModel(m._core, 0)
    monkeypatch.setattr(device_load, "cuda_status", lambda: fake_status(2**40))
    plan, why = device_load.plan_on_gpu(m, explicit=True)
    assert plan is not None and why == ""
    with pytest.raises(DeviceError, match="cudaSetDevice"):
        device_load.place_on_gpu(m, plan, explicit=True)
    core, why = device_load.place_on_gpu(m, plan, explicit=False)
    assert core is None and "cudaSetDevice" in why


def test_device_model_arguments_are_checked(fx):
    m = load(fx["gguf"], precision="f32", device="cpu")
    with pytest.raises(ValueError, match="n_cpu_moe must be in"):
        _core.DeviceModel(m._core, m.config.block_count + 1)
    with pytest.raises(ValueError, match="n_cpu_moe must be in"):
        _core.device_upload_layout(m._core, -1)


# --------------------------------------------------------------------------- on the GPU


def gpu(path, **kw):
    return load(path, device="cuda", **kw)


@needs_device
def test_loads_on_the_gpu_with_a_plan(fx):
    m = gpu(fx["gguf"], precision="f32")
    assert m.device == "cuda" and m.plan is not None and m.plan.gpu_layers == m.config.block_count
    cpu = load(fx["gguf"], precision="f32", device="cpu")
    assert m._core.weight_bytes_on_device == _core.device_upload_layout(cpu._core, 0)[1]


@needs_device
def test_f32_logits_match_golden_on_the_gpu(fx):
    logits = gpu(fx["gguf"], precision="f32").logits(fx["tokens"])
    assert logits.shape == fx["gold"].shape and rel_err(logits, fx["gold"]) < TOL
    assert np.array_equal(np.argmax(logits, -1), np.argmax(fx["gold"], -1))


def half_rows(x) -> np.ndarray:
    """x [T, K] as the fast tensor-core GEMM feeds it (cuda/gemm_mma.cu): each token's row divided
    by a power of two to a largest |x| in [2^14, 2^15), rounded to IEEE half, and multiplied back."""
    x = np.asarray(x, np.float64)
    big = np.abs(x).max(-1, keepdims=True)
    k = np.where(big > 0, np.clip(np.frexp(big)[1] - 15, -126, 127), 0)
    return np.ldexp(x, -k).astype(np.float16).astype(np.float64) * np.ldexp(1.0, k)


@needs_device
def test_fast_precision_on_the_gpu_errs_as_half_activations_do(fx, monkeypatch):
    """precision="fast" rounds the prefill GEMMs' activations to half (cuda/gemm_mma.cu); judged
    against the error of a plain implementation at that precision: the float64 reference with
    every matmul's input rounded so (more than the GPU rounds: its decode GEMVs and other weight
    types read float32), both with float32 K/V. Under any such rounding a near-tie in the router
    flips an expert for a few tokens (tiny-w128: 1 row in 200 moves by 0.15), so rows are judged by
    their median error and the top token, not by the largest error."""
    hp, weights = R.load_gguf_weights(fx["gguf"])
    exact = R.matmul
    monkeypatch.setattr(R, "matmul",
                        lambda x, W, b=None: exact(half_rows(x) if x.shape[-1] % 32 == 0 else x, W, b))
    plain = R.forward(hp, weights, fx["tokens"])
    monkeypatch.undo()
    fast = gpu(fx["gguf"], precision="fast", kv_type="f32").logits(fx["tokens"])
    gold = fx["gold"]

    def row_errors(logits):
        return np.abs(logits - gold).max(-1) / np.abs(gold).max()

    def top_agreement(logits):
        return np.mean(np.argmax(logits, -1) == np.argmax(gold, -1))

    assert np.median(row_errors(plain)) > TOL / 10  # the rounding is real
    assert np.median(row_errors(fast)) <= 2 * np.median(row_errors(plain)) + TOL / 10
    assert top_agreement(fast) >= top_agreement(plain) - 0.02
    # The defaults (an f16 cache): the prefill attention on tensor cores with q and the softmax
    # weights in one half each (cuda/attention_mma.cu) adds an error of the same order.
    default = gpu(fx["gguf"]).logits(fx["tokens"])
    assert np.median(row_errors(default)) <= 3 * np.median(row_errors(plain)) + TOL / 10
    assert top_agreement(default) >= top_agreement(plain) - 0.02


@needs_device
def test_decode_token_by_token_equals_golden_on_the_gpu(fx):
    s = gpu(fx["gguf"], precision="f32").session()
    toks = fx["tokens"]
    rows = [s.prefill(toks[:1])] + [s.decode(int(t)) for t in toks[1:]]
    assert s.n_past == len(toks) and s.tokens == toks.tolist()
    assert rel_err(np.stack(rows), fx["gold"]) < TOL


@needs_device
def test_decode_graphs_replay_the_launched_steps_bit_for_bit(fx):
    """Decode steps replayed from CUDA graphs (cuda/decode_graphs.h) equal the same steps launched
    kernel by kernel, bit for bit, with two sessions taking turns (a graph per cache); the weight
    bytes are counted alike. Every other GPU test runs with the graphs on (the default)."""
    m = ossrun.load(fx["gguf"], precision="f32", device="cuda")  # its own graphs
    toks = fx["tokens"][:20]

    def run(graphs: bool):
        m._core.decode_graphs = graphs
        a, b = m.session(), m.session()
        before = m._core.weight_bytes_read
        rows_a, rows_b = [a.prefill(toks[:1])], [b.prefill(toks[:2])]
        for t in toks[1:]:
            rows_a.append(a.decode(int(t)))
            rows_b.append(b.decode(int(t)))
        return np.stack(rows_a), np.stack(rows_b), m._core.weight_bytes_read - before

    off = run(False)
    assert m._core.decode_graphs_recorded == 0
    on = run(True)
    assert m._core.decode_graphs_recorded >= 2
    assert np.array_equal(on[0], off[0]) and np.array_equal(on[1], off[1])
    assert on[2] == off[2]
    assert rel_err(on[0], fx["gold"][: len(toks)]) < TOL


@needs_device
@pytest.mark.parametrize("chunks", [[127, 73], [1, 127, 1, 71], [200]])
def test_chunked_prefill_on_the_gpu(fixtures_dir, chunks):
    g = np.load(fixtures_dir / "tiny-w128" / "golden.npz")
    toks, gold = g["tokens"], g["logits_ref_fp32"]
    s = gpu(fixtures_dir / "tiny-w128" / "tiny.gguf", precision="f32").session()
    done = 0
    for n in chunks:
        last = s.prefill(toks[done:done + n])
        done += n
        assert rel_err(last, gold[done - 1]) < TOL


@needs_device
@pytest.mark.parametrize("n_cpu_moe", [1, "all"])
def test_hybrid_cpu_experts_equal_the_cpu(fx, n_cpu_moe):
    m = gpu(fx["gguf"], precision="f32", cpu_moe=n_cpu_moe)
    assert m.plan.n_cpu_moe == (m.config.block_count if n_cpu_moe == "all" else n_cpu_moe)
    cpu = load(fx["gguf"], precision="f32", device="cpu").logits(fx["tokens"])
    assert rel_err(m.logits(fx["tokens"]), cpu) < TOL


@needs_device
@pytest.mark.parametrize("precision", ["f32", "fast"])
def test_hybrid_copies_the_cpu_layers_experts_to_ram(fx, precision, monkeypatch):
    # mmap=False on a split: only the experts of the layers whose MoE runs on the CPU are copied
    # into RAM (and, without the offload, repacked into 16-row groups where this CPU's kernels
    # take them, as a CPU load repacks); the GPU's experts are uploaded from the file's map.
    monkeypatch.setenv("OSSRUN_CUDA_OFFLOAD_MIN_TOKENS", "0")
    m = gpu(fx["gguf"], precision=precision, cpu_moe=1, mmap=False)
    ram = m.weights_in_ram
    assert m.plan.n_cpu_moe == 1 and ram is not None and ram.n_tensors == 3
    base = np.frombuffer(ram.buffer, dtype=np.uint8, count=1).ctypes.data
    in_ram = {name for name, (arr, _, _) in m._file.tensors.items()
              if base <= arr.ctypes.data < base + len(ram.buffer)}
    assert in_ram == {f"blk.0.ffn_{w}_exps.weight" for w in ("gate", "up", "down")}
    cpu = load(fx["gguf"], precision=precision, device="cpu", mmap=False)
    assert ("repacked" in m.mmap_reason) == (cpu._core.interleaved_mxfp4_bytes > 0)
    toks = fx["tokens"]
    mapped = gpu(fx["gguf"], precision=precision, cpu_moe=1)  # the same split, the experts in the map
    assert mapped.weights_in_ram is None
    got, want = m.logits(toks), mapped.logits(toks)
    if precision == "f32":  # the GGUF layout both ways (the repack is fast precision's)
        assert rel_err(got, want) < TOL and rel_err(got, cpu.logits(toks)) < TOL
    else:  # the layouts' block sums in another order (tests/test_mxfp4_interleave.py's bound)
        assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()


@needs_device
@pytest.mark.parametrize("gpu_layers, n_cpu_moe", [(None, 1), (None, "all"), (1, "all")])
def test_long_chunks_offload_the_cpus_moe_blocks_to_the_gpu(fx, monkeypatch, gpu_layers, n_cpu_moe):
    # Chunks of >= OSSRUN_CUDA_OFFLOAD_MIN_TOKENS rows run the MoE blocks kept on the CPU (beside
    # attention on the GPU) on the GPU from the staging slots; decode steps leave them on the CPU;
    # layers wholly on the CPU are never offloaded. Both give the CPU model's logits.
    monkeypatch.setenv("OSSRUN_CUDA_OFFLOAD_MIN_TOKENS", "8")
    m = gpu(fx["gguf"], precision="f32", cpu_moe=n_cpu_moe, gpu_layers=gpu_layers, mmap=False)
    L = m.config.block_count
    first = 0 if gpu_layers is None else L - gpu_layers
    offloaded = m.plan.n_cpu_moe - first  # blocks on the CPU beside attention on the GPU
    assert m._core.offload_min_tokens == 8 and m._core.stage_bytes == m.plan.stage > 0
    assert "repacked" not in m.mmap_reason  # the GPU reads the copies' GGUF rows
    toks = fx["tokens"]
    cpu = load(fx["gguf"], precision="f32", device="cpu").logits(toks)
    assert len(toks) >= 8
    assert rel_err(m.logits(toks), cpu) < TOL
    assert m._core.offloaded_moe_blocks == offloaded and m._core.offloaded_bytes > 0
    s = m.session()
    rows = [s.prefill(toks[:10])] + [s.decode(int(t)) for t in toks[10:]]
    assert m._core.offloaded_moe_blocks == 2 * offloaded  # the prefill only
    assert rel_err(np.stack(rows), cpu[9:]) < TOL


# The emulated core's stream orders (cuda/emulator/emulator.h); a device has its own.
STREAM_ORDERS = (["immediate", "lazy-even", "lazy-odd", "lazy-all"]
                 if hasattr(_core, "set_emulator_stream_order") else [None])


@needs_device
def test_the_offloads_two_slots_equal_one_in_every_stream_order(fx, monkeypatch):
    # Two staging slots: each matrix is copied on a stream of its own while the matmul before it
    # reads the other slot, events ordering each copy after its slot's last reader and each matmul
    # after its copy. The logits are the one-slot offload's (copies on the model's stream) bit for
    # bit. On the emulator in every stream order too: lazy-even and lazy-odd hold the work of the
    # model's stream or of the copies' (created one after the other) until it is needed, so a
    # missing event (a copy over a slot still to be read, a matmul before its copy) changes them.
    monkeypatch.setenv("OSSRUN_CUDA_OFFLOAD_MIN_TOKENS", "8")
    toks = fx["tokens"]
    monkeypatch.setenv("OSSRUN_CUDA_STAGE_SLOTS", "1")
    fresh = dict(device="cuda", precision="f32", cpu_moe="all", mmap=False)  # not golden.load's cache
    m1 = ossrun.load(fx["gguf"], **fresh)
    assert m1._core.stage_slots == 1 and m1._core.stage_bytes == m1.plan.stage > 0
    want = m1.logits(toks)
    monkeypatch.delenv("OSSRUN_CUDA_STAGE_SLOTS")
    try:
        for order in STREAM_ORDERS:
            if order:
                _core.set_emulator_stream_order(order)
            m2 = ossrun.load(fx["gguf"], **fresh)  # its streams made in this order
            assert m2._core.stage_slots == 2 and m2._core.stage_bytes == 2 * m1._core.stage_bytes
            np.testing.assert_array_equal(m2.logits(toks), want, err_msg=f"stream order {order}")
            assert m2._core.offloaded_moe_blocks == m2.config.block_count
    finally:
        if STREAM_ORDERS[0]:
            _core.set_emulator_stream_order("immediate")


@needs_device
@pytest.mark.parametrize("mmap", [True, False])
def test_pinned_offload_sources_change_no_logit(fx, monkeypatch, mmap):
    # OSSRUN_CUDA_PIN_OFFLOAD=1 page-locks the matrices the offload copies where they lie (the map,
    # or the experts' copy in RAM with mmap=False): every offloadable matrix's bytes, in whole
    # pages, and the logits of the pageable copies bit for bit.
    monkeypatch.setenv("OSSRUN_CUDA_OFFLOAD_MIN_TOKENS", "8")
    toks = fx["tokens"]
    fresh = dict(device="cuda", precision="f32", cpu_moe="all", mmap=mmap)
    pageable = ossrun.load(fx["gguf"], **fresh)
    assert pageable._core.pinned_offload_bytes == 0
    want = pageable.logits(toks)
    monkeypatch.setenv("OSSRUN_CUDA_PIN_OFFLOAD", "1")
    m = ossrun.load(fx["gguf"], **fresh)
    matrices = sum(n for name, n in tensor_bytes(m).items()
                   if name.endswith(("ffn_gate_inp.weight", "_exps.weight")))
    page = os.sysconf("SC_PAGE_SIZE")
    assert m._core.pin_error == ""
    assert matrices <= m._core.pinned_offload_bytes < matrices + 8 * m.config.block_count * page
    assert m._core.pinned_offload_bytes % page == 0
    np.testing.assert_array_equal(m.logits(toks), want)
    assert m._core.offloaded_moe_blocks == m.config.block_count


@needs_device
@pytest.mark.skipif(not hasattr(_core, "set_emulator_host_register_works"), reason="the emulator's knob")
def test_a_failed_pin_warns_and_copies_pageable(fx, monkeypatch):
    monkeypatch.setenv("OSSRUN_CUDA_OFFLOAD_MIN_TOKENS", "8")
    monkeypatch.setenv("OSSRUN_CUDA_PIN_OFFLOAD", "1")
    fresh = dict(device="cuda", precision="f32", cpu_moe="all", mmap=False)
    want = ossrun.load(fx["gguf"], **fresh).logits(fx["tokens"])
    _core.set_emulator_host_register_works(False)
    try:
        with pytest.warns(RuntimeWarning, match="stay pageable: cudaHostRegister .* cudaErrorNotSupported"):
            m = ossrun.load(fx["gguf"], **fresh)
    finally:
        _core.set_emulator_host_register_works(True)
    assert m._core.pinned_offload_bytes == 0
    np.testing.assert_array_equal(m.logits(fx["tokens"]), want)


@needs_device
@pytest.mark.parametrize("offload", ["none", "one slot", "two slots"])
def test_a_dropped_model_leaves_no_cuda_error_behind(fx, monkeypatch, offload):
    # A failed runtime call is also the error cudaGetLastError() returns next, so a destructor's
    # failure (destroying the events that no offload, or a one-slot one, never made) became the
    # next model's first launch error: seen on an H200 as "CUDA error in rmsnorm: invalid
    # resource handle". The emulator records such failures as the runtime does.
    keep = gpu(fx["gguf"], precision="f32")  # loaded before the drop: no status check after it
    kw = {}
    if offload != "none":
        monkeypatch.setenv("OSSRUN_CUDA_OFFLOAD_MIN_TOKENS", "8")
        monkeypatch.setenv("OSSRUN_CUDA_STAGE_SLOTS", "1" if offload == "one slot" else "2")
        kw = dict(cpu_moe="all")
    dropped = ossrun.load(fx["gguf"], device="cuda", precision="f32", **kw)
    assert dropped._core.stage_slots == {"none": 0, "one slot": 1, "two slots": 2}[offload]
    dropped.logits(fx["tokens"])
    del dropped
    gc.collect()
    assert rel_err(keep.logits(fx["tokens"]), fx["gold"]) < TOL


@needs_device
def test_part_timing_splits_the_gpus_time_and_changes_no_logit(fx):
    # OSSRUN_CUDA_PART_TIMES / part_timing (cuda/device_model.h): each op's launches bracketed by
    # CUDA events, charged to csrc/part_timer.h's parts; the kernels are the same, so the logits
    # are too, bit for bit (decode steps launch them one by one instead of replaying a graph).
    toks = fx["tokens"]
    m = ossrun.load(fx["gguf"], device="cuda", precision="f32")
    want_prefill = m.logits(toks)
    s = m.session()
    want_decode = [s.prefill([int(t)]) for t in toks[:6]]
    graphs = m._core.decode_graphs_recorded
    m._core.part_timing = True
    t0 = time.perf_counter()
    np.testing.assert_array_equal(m.logits(toks), want_prefill)
    s = m.session()
    for t, want in zip(toks[:6], want_decode):
        np.testing.assert_array_equal(s.prefill([int(t)]), want)
    wall = time.perf_counter() - t0
    parts = m._core.gpu_part_seconds
    assert set(parts) == {"other", "dense_matmul", "attention", "router", "experts", "moe_other", "output"}
    assert all(v > 0 for v in parts.values()), parts
    assert sum(parts.values()) <= wall, (parts, wall)
    assert m._core.decode_graphs_recorded == graphs  # none recorded for the timed session's steps
    m._core.reset_gpu_part_seconds()
    assert sum(m._core.gpu_part_seconds.values()) == 0
    m._core.part_timing = False
    s.prefill([int(toks[6])])
    assert sum(m._core.gpu_part_seconds.values()) == 0 and m._core.decode_graphs_recorded > graphs


@needs_device
def test_the_bench_runs_on_the_gpu(fx):
    # `ossrun bench --device cuda` (tools/device_check.sh's numbers): its engine line and the weight
    # bytes per decoded token, which the device model counts as the CPU's does.
    run = subprocess.run([sys.executable, "-m", "ossrun", "bench", str(fx["gguf"]), "--device", "cuda",
                          "--prompt", "8", "--gen", "4", "--reps", "1", "--bandwidth", "10", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert "CUDA: " in result["engine"] and result["decode_tok_s"] > 0
    assert result["decode_weight_bytes_per_token"] > 0


def test_the_offload_threshold_is_checked(monkeypatch):
    monkeypatch.setenv("OSSRUN_CUDA_OFFLOAD_MIN_TOKENS", "-3")
    with pytest.raises(ValueError, match="OSSRUN_CUDA_OFFLOAD_MIN_TOKENS"):
        placement.offload_min_tokens()


@needs_device
def test_mmap_false_with_every_expert_on_the_gpu_warns(fx):
    with pytest.warns(RuntimeWarning, match="runs them all on the GPU"):
        m = gpu(fx["gguf"], precision="f32", mmap=False)
    assert m.plan.n_cpu_moe == 0 and m.weights_in_ram is None


@needs_device
@pytest.mark.parametrize("gpu_layers, n_cpu_moe", [(1, 0), (1, "all")])
def test_first_layers_on_the_cpu_equal_the_cpu(fx, gpu_layers, n_cpu_moe):
    # The first layers wholly on the CPU backend (their KV cache in RAM), the rest on the GPU:
    # prefill, then decode token by token across the hand-over.
    m = gpu(fx["gguf"], precision="f32", gpu_layers=gpu_layers, cpu_moe=n_cpu_moe)
    assert m.plan.gpu_layers == gpu_layers and m._core.gpu_layers == gpu_layers
    toks = fx["tokens"]
    assert rel_err(m.logits(toks), fx["gold"]) < TOL
    s = m.session()
    rows = [s.prefill(toks[:3])] + [s.decode(int(t)) for t in toks[3:]]
    assert rel_err(np.stack(rows), fx["gold"][2:]) < TOL


@needs_device
def test_split_session_truncates_past_the_ring_on_the_gpu(fixtures_dir):
    path = fixtures_dir / "tiny-w4" / "tiny.gguf"
    toks = np.random.default_rng(5).integers(0, 256, PAST_THE_RING).astype(np.int32)
    cpu = load(path, precision="f32", device="cpu").logits(toks)
    s = gpu(path, precision="f32", gpu_layers=1).session(n_ctx=4096)
    s.prefill(toks)
    assert not s.truncates_in_place(100)  # both caches' sliding rings lost those keys
    s.truncate(100)
    assert rel_err(s.prefill(toks[100:110]), cpu[109]) < TOL


@needs_device
def test_decode_past_one_attention_part_on_the_gpu(fixtures_dir):
    # Decode steps at positions beyond 2048 keys: the full layers' rows are split into parts
    # (flash-decoding) and merged; the prompt's chunks are not. Against the CPU backend.
    path = fixtures_dir / "tiny-w4" / "tiny.gguf"
    toks = np.random.default_rng(8).integers(0, 256, 4200).astype(np.int32)
    cpu = load(path, precision="f32", device="cpu").logits(toks)
    s = gpu(path, precision="f32").session(n_ctx=4300)
    s.prefill(toks[:2040])
    rows = [s.decode(int(t)) for t in toks[2040:2060]]  # across the boundary at 2048
    assert rel_err(np.stack(rows), cpu[2040:2060]) < TOL
    s.prefill(toks[2060:4190])
    rows = [s.decode(int(t)) for t in toks[4190:4200]]  # three parts
    assert rel_err(np.stack(rows), cpu[4190:4200]) < TOL


@needs_device
def test_long_prompt_and_truncation_past_the_ring_on_the_gpu(fixtures_dir):
    # tiny-w4's sliding ring on the device holds 4 - 1 + MAX_CHUNK + 1024 positions: PAST_THE_RING
    # tokens wrap it, and truncating to 100 must replay the kept tokens (as the CPU session does).
    path = fixtures_dir / "tiny-w4" / "tiny.gguf"
    toks = np.random.default_rng(3).integers(0, 256, PAST_THE_RING).astype(np.int32)
    cpu = load(path, precision="f32", device="cpu").logits(toks)
    m = gpu(path, precision="f32")
    assert rel_err(m.logits(toks), cpu) < TOL
    s = m.session(n_ctx=4096)
    s.prefill(toks)
    assert not s.truncates_in_place(100)
    s.truncate(100)
    assert s.n_past == 100
    assert rel_err(s.prefill(toks[100:110]), cpu[109]) < TOL


@needs_device
@pytest.mark.parametrize("kv_type", ["f16", "bf16"])
def test_16_bit_kv_cache_on_the_gpu_matches_the_cpus(fx, kv_type):
    # Both round the same float32 K/V to the same type (nearest even); the float32 values differ
    # in their last bits, so an element may round the other way: 16-bit tolerances.
    dev = gpu(fx["gguf"], precision="f32", kv_type=kv_type).logits(fx["tokens"])
    cpu = load(fx["gguf"], precision="f32", kv_type=kv_type, device="cpu").logits(fx["tokens"])
    assert rel_err(dev, cpu) < (2e-3 if kv_type == "f16" else 2e-2)
    assert np.mean(np.argmax(dev, -1) == np.argmax(cpu, -1)) >= 0.95


@needs_device
def test_batch_and_generate_on_the_gpu(fixtures_dir):
    from ossrun.batch import Batch

    g = np.load(fixtures_dir / "tiny-w128" / "golden.npz")
    toks, gold = g["tokens"], g["logits_ref_fp32"]
    m = gpu(fixtures_dir / "tiny-w128" / "tiny.gguf", precision="f32")
    a, b = m.session(), m.session()
    out = Batch(m).step([(a, toks[:50], False), (b, toks[:30], True)])
    assert rel_err(out[0], gold[49]) < TOL and rel_err(out[1], gold[:30]) < TOL
    cpu = load(fixtures_dir / "tiny-w128" / "tiny.gguf", precision="f32", device="cpu")
    assert list(m.generate(toks[:20], 12, temperature=0)) == list(cpu.generate(toks[:20], 12, temperature=0))


@needs_device
@pytest.mark.parametrize("n_cpu_moe, gpu_layers", [(0, None), (1, None), (0, 1)])
def test_stacked_steps_equal_each_sessions_own_on_the_gpu(fixtures_dir, n_cpu_moe, gpu_layers):
    # One stacked forward over three sessions at different depths (each its own cache and
    # positions; one of them a 5-token chunk) gives each the logits of its own prefill.
    from ossrun.batch import Batch

    path = fixtures_dir / "tiny-w4" / "tiny.gguf"
    toks = np.random.default_rng(11).integers(0, 256, 300).astype(np.int32)
    m = gpu(path, precision="f32", cpu_moe=n_cpu_moe, gpu_layers=gpu_layers)
    cpu = load(path, precision="f32", device="cpu").logits(toks)
    sessions = [m.session() for _ in range(3)]
    pos, lengths = [7, 130, 40], [1, 1, 5]
    for s, n in zip(sessions, pos):
        s.prefill(toks[:n])
    batch = Batch(m)
    for _ in range(4):
        out = batch.step([(s, toks[p:p + n], n > 1) for s, p, n in zip(sessions, pos, lengths)])
        for i, (p, n) in enumerate(zip(pos, lengths)):
            want = cpu[p:p + n] if n > 1 else cpu[p]
            assert out[i].shape == want.shape and rel_err(out[i], want) < TOL
            pos[i] += n
    assert [s.n_past for s in sessions] == pos


@needs_device
def test_dense_quant_model_on_the_gpu_equals_the_cpu(tmp_path):
    # The shared element decoding inside the GPU's GEMV, GEMM and expert matmuls: float32 logits
    # of a model whose dense matrices are Q4_K, Q6_K and Q5_0, against the CPU backend's.
    from ossrun import model_maker

    path = model_maker.make_model(tmp_path / "q.gguf", "tiny", use_byte_vocab=True, vocab=512, hidden=256,
                                  role_types={"attn_qkv": "q5_0", "attn_output": "q4_k", "output": "q6_k"})
    toks = np.random.default_rng(2).integers(0, 512, 40).astype(np.int32)
    cpu = load(path, precision="f32", device="cpu").logits(toks)
    assert rel_err(gpu(path, precision="f32").logits(toks), cpu) < TOL


@needs_device
def test_out_of_device_memory_is_a_device_error(fx):
    m = gpu(fx["gguf"], precision="f32")
    with pytest.raises(DeviceError, match="cannot allocate the KV cache"):
        _core.DeviceSession(m._core, 2**40, "f32")
    assert m.session().prefill(fx["tokens"][:3]).shape == (m.n_vocab,)  # still usable after
