#!/usr/bin/env python3
"""One-thread prefill GEMM rate at gpt-oss-20b's shapes (ossrun._core.ops.matmul, the fast
precision's int16 activations): an expert's 2880 x 2880 MXFP4 matrix against the tokens routed to
it (~T * 4 / 32 per expert for a T-token chunk) and the dense Q8_0 attention projections against
a whole chunk. Prints G int16 ops/s per case (2 x rows x cols x tokens per call, median of --reps
calls, in this process's CPU time, so that other processes sharing the cores do not count), the
fraction of one thread's peak (the int16_peak loop, also in CPU time), and per matrix the fixed cost
of a call (the panel packing: the time at 0 tokens extrapolated from two token counts) against the
per-token cost.
The matrices sit in L3 or DRAM (2880 x 2880 MXFP4 is 4.4 MB): the kernel's rate, not the model's."""

import argparse
import sys
import time

import numpy as np
from ossrun._core import ops

MXFP4, Q8_0 = 39, 8


def raw_mxfp4(rng, rows, cols):
    nb = cols // 32
    scale = rng.integers(118, 126, (rows, nb, 1), dtype=np.uint8)
    codes = rng.integers(0, 256, (rows, nb, 16), dtype=np.uint8)
    return np.concatenate([scale, codes], axis=2).reshape(rows, nb * 17)


def raw_q8_0(rng, rows, cols):
    nb = cols // 32
    d = (rng.uniform(0.001, 0.01, (rows, nb)).astype("<f2")).view(np.uint8).reshape(rows, nb, 2)
    q = rng.integers(-127, 128, (rows, nb, 32), dtype=np.int8).view(np.uint8)
    return np.concatenate([d, q], axis=2).reshape(rows, nb * 34)


def timed(raw, type_id, rows, cols, x, isa, reps):
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        ops.matmul(raw, type_id, rows, cols, x, None, isa, "fast")
        times.append(time.process_time() - t0)
    return float(np.median(times))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--isa", default="auto")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--cases", default="expert:32,expert:64,expert:128,q:256,out:256")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    # The peak loop's work is fixed: its wall-time rate x its wall time, over its CPU time.
    w0, c0 = time.perf_counter(), time.process_time()
    wall_gops, instruction = ops.int16_peak(1)
    peak = wall_gops * (time.perf_counter() - w0) / (time.process_time() - c0)
    print(f"one-thread int16 peak {peak:.0f} GOP/s ({instruction})", flush=True)
    shapes = {"expert": (MXFP4, 2880, 2880), "q": (Q8_0, 4096, 2880), "out": (Q8_0, 2880, 4096)}
    mats = {}
    for case in a.cases.split(","):
        name, tokens = case.split(":")
        T = int(tokens)
        type_id, rows, cols = shapes[name]
        if name not in mats:
            mats[name] = (raw_mxfp4 if type_id == MXFP4 else raw_q8_0)(rng, rows, cols)
        raw = mats[name]
        x = rng.standard_normal((T, cols)).astype(np.float32)
        x1 = rng.standard_normal((max(4, T // 4) if T > 4 else 5, cols)).astype(np.float32)
        t = timed(raw, type_id, rows, cols, x, a.isa, a.reps)
        t1 = timed(raw, type_id, rows, cols, x1, a.isa, a.reps)
        per_tok = (t - t1) / (T - len(x1))
        fixed = t - per_tok * T
        gops = 2 * rows * cols * T / t / 1e9
        print(f"{name:6s} {rows}x{cols} T={T:4d}: {t * 1e3:8.2f} ms  {gops:6.0f} GOP/s "
              f"= {100 * gops / peak:4.1f} % of peak   fixed {fixed * 1e3:6.2f} ms, "
              f"per token {per_tok * 1e6:7.1f} us ({2 * rows * cols / per_tok / 1e9:.0f} GOP/s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
