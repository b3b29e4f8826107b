"""Rates of the CUDA matmul kernels on gpt-oss-20b-shaped matrices (tools/device_check.sh runs
it on a GPU machine): the decode GEMV's GB/s of weights streamed and the prefill GEMM's TFLOP/s
(tensor cores for MXFP4 / Q8_0, in both precisions: "f32" sends two halves per activation), and
the attention kernels' TFLOP/s for prefill chunks and decode rows at depth.
Numbers only; nothing passes or fails. Needs only numpy and ossrun._cuda (built with CUDA)."""

from __future__ import annotations

import sys

import numpy as np
from ossrun import _cuda, cuda_status

Q8_0, MXFP4 = 8, 39


def raw_bytes(rng, ggml_type, rows, cols):
    """Random blocks with finite, ordinary scales (the rate does not depend on the values)."""
    nb = cols // 32
    if ggml_type == Q8_0:
        b = rng.integers(0, 256, (rows, nb, 34), dtype=np.uint8)
        b[:, :, :2] = np.array([0.01], np.float16).view(np.uint8)
    else:
        b = rng.integers(0, 256, (rows, nb, 17), dtype=np.uint8)
        b[:, :, 0] = 120
    return b.reshape(rows, -1)


def main() -> int:
    st = cuda_status()
    print(st)
    if not st.available:
        return 1
    rng = np.random.default_rng(0)
    cases = [  # (what, type, rows, cols, tokens, kernel, precision of the tensor-core GEMM)
        ("experts of a layer, MXFP4 [32*2880, 2880]", MXFP4, 32 * 2880, 2880, 1, "gemv", "f32"),
        ("experts of a layer, MXFP4 [32*2880, 2880], 4 tokens", MXFP4, 32 * 2880, 2880, 4, "gemv", "f32"),
        ("unembedding, Q8_0 [201088, 2880]", Q8_0, 201088, 2880, 1, "gemv", "f32"),
        ("attn_q, Q8_0 [4096, 2880], 4 tokens", Q8_0, 4096, 2880, 4, "gemv", "f32"),
        ("attn_q, Q8_0 [4096, 2880], 256 tokens", Q8_0, 4096, 2880, 256, "gemm", "f32"),
        ("attn_q, Q8_0 [4096, 2880], 256 tokens", Q8_0, 4096, 2880, 256, "gemm", "fast"),
        ("an expert, MXFP4 [2880, 2880], 512 tokens", MXFP4, 2880, 2880, 512, "gemm", "f32"),
        ("an expert, MXFP4 [2880, 2880], 512 tokens", MXFP4, 2880, 2880, 512, "gemm", "fast"),
        ("unembedding, Q8_0 [201088, 2880], 8 tokens", Q8_0, 201088, 2880, 8, "gemm", "fast"),
    ]
    for what, t, rows, cols, n_tok, kernel, precision in cases:
        raw = raw_bytes(rng, t, rows, cols)
        s = _cuda.ops.time_matmul(raw, t, rows, cols, n_tok, kernel, 20, precision)
        gbs = raw.nbytes / s / 1e9
        tflops = 2 * rows * cols * n_tok / s / 1e12
        print(f"{kernel} {precision:4} {what}: {s * 1e6:9.1f} us  {gbs:8.1f} GB/s of weights  "
              f"{tflops:7.2f} TFLOP/s")
    # Attention of gpt-oss-20b's heads (64 query, 8 KV, d 64): a prefill chunk at depth on a full
    # and a sliding layer, over an f16 cache on the tensor cores (fast: one half of q and p, f32:
    # two) and over an f32 cache on the float32 tiled kernel; decode rows over an f16 cache (split
    # into 2048-key parts past one). FLOPs: 4 T n_q d per visible key (QK^T and PV).
    attention_cases = [  # (what, T, n_keys, window, kv_type, precision)
        ("prefill 1024 at depth 2048, full layer, tensor cores fast", 1024, 2048, 0, "f16", "fast"),
        ("prefill 1024 at depth 2048, full layer, tensor cores f32", 1024, 2048, 0, "f16", "f32"),
        ("prefill 1024 at depth 2048, full layer, f32 cache, tiled", 1024, 2048, 0, "f32", "f32"),
        ("prefill 1024 at depth 2048, sliding layer, tensor cores fast", 1024, 2048, 128, "f16", "fast"),
        ("prefill 1024 at depth 2048, sliding layer, f32 cache, tiled", 1024, 2048, 128, "f32", "f32"),
        ("decode 1 row at depth 128, full layer", 1, 128, 0, "f16", "f32"),
        ("decode 1 row at depth 8192, full layer", 1, 8192, 0, "f16", "f32"),
        ("decode 4 rows at depth 8192, full layer", 4, 8192, 0, "f16", "f32"),
    ]
    for what, T, n_keys, window, kv_type, precision in attention_cases:
        s = _cuda.ops.time_attention(T, 64, 8, 64, n_keys, window, kv_type, 20, precision)
        keys = sum(min(p + 1, window) if window else p + 1 for p in range(n_keys - T, n_keys))
        tflops = 4 * 64 * 64 * keys / s / 1e12
        kv_gbs = 2 * 8 * 64 * 2 * min(n_keys, window + T if window else n_keys) / s / 1e9
        print(f"attention {what}: {s * 1e6:9.1f} us  {tflops:7.2f} TFLOP/s  "
              f"{kv_gbs:8.1f} GB/s of K/V read once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
