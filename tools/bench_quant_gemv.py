#!/usr/bin/env python3
"""One-thread decode GEMV rate of each dense weight type (ossrun._core.ops.matmul, one token,
the fast precision's int16 activations): GB/s of weights per call, median of --reps calls.
A 4096-row matrix sits in L3 on the machines we use: the kernel's own rate, not DRAM's.
Prints one line per type; the numbers in docs/PERFORMANCE.md's dense-quant section came from it."""

import argparse
import sys
import time

import numpy as np
from ossrun._core import ops
from ossrun.quantize import quantize

# ggml type id, elements and bytes per block (GGUF's block layouts).
TYPES = {"Q8_0": (8, 32, 34), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22),
         "Q5_1": (7, 32, 24), "IQ4_NL": (20, 32, 18), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110),
         "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210)}


def q8_0(x: np.ndarray) -> np.ndarray:
    blocks = x.reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / 127
    q = np.rint(blocks / np.where(d > 0, d, 1)[:, None]).astype(np.int8)
    return np.concatenate([d.astype("<f2").view(np.uint8).reshape(-1, 2), q.view(np.uint8)], axis=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=0, help="default 2880 (32-blocks), 3072 (K-quants)")
    p.add_argument("--isa", default="auto")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--types", default=",".join(TYPES))
    a = p.parse_args()
    rng = np.random.default_rng(0)
    for name in a.types.split(","):
        type_id, elems, nbytes = TYPES[name]
        cols = a.cols or (2880 if elems == 32 else 3072)
        w = rng.standard_normal(a.rows * cols).astype(np.float32) * 0.05
        raw = (q8_0(w) if name == "Q8_0" else quantize(w, name)).reshape(a.rows, -1)
        x = rng.standard_normal((1, cols)).astype(np.float32)
        times = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            ops.matmul(raw, type_id, a.rows, cols, x, None, a.isa, "fast")
            times.append(time.perf_counter() - t0)
        t = float(np.median(times))
        print(f"{name:7s} {a.isa}: {t * 1e3:7.3f} ms  {raw.nbytes / t / 1e9:5.1f} GB/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
