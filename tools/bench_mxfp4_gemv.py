#!/usr/bin/env python3
"""One-thread MXFP4 (or, with --type q8_0, Q8_0) decode GEMV rate (ossrun._core.ops.matmul at the
fast precision, int16 activations) for 1..8 tokens, each listed ISA variant timed in turn in the
same loop so that an A/B comparison sees the same machine load. GB/s of weights per call and ns
per block and row, the best of --reps calls. 65536 rows x 2880 columns (190 MB) stream from DRAM;
1024 rows (3 MB) come from L3 after the first call: the kernel's own rate. --mmap reads the
weights from a file's page cache (as a model's memory map; a freshly written file may be mapped
with 2 MiB pages on kernels with large page-cache folios) rather than numpy's memory (huge pages).
--layout rows q8_0x16 times Q8_0 as the GGUF lays it and as the model repacks it at load (16 rows
interleaved, csrc/q8_0_interleave.h), alternating in the same loop, and --layout rows mxfp4x16 the
same for MXFP4 (csrc/mxfp4_interleave.h); with --mmap only the GGUF layout comes from a file, the
repacked copy lies in anonymous memory as the model's does. --tuning l1:1 l2:2
compares the VBMI MXFP4 GEMV's tunings (prefetch into L1 or L2 : rows per pass, csrc/cpu/cpu_tuning.h)
the same way."""

import argparse
import sys
import tempfile
import time

import numpy as np
from ossrun._core import ops

MXFP4 = 39
Q8_0 = 8


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, nargs="+", default=[65536, 1024])
    p.add_argument("--cols", type=int, default=2880)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 3, 4, 8])
    p.add_argument("--isa", nargs="+", default=["auto"], help="variants to compare, e.g. avx512vbmi avx512")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--mmap", action="store_true", help="weights from a memory-mapped file")
    p.add_argument("--type", choices=("mxfp4", "q8_0"), default="mxfp4")
    p.add_argument("--layout", nargs="+", choices=("rows", "q8_0x16", "mxfp4x16"), default=["rows"],
                   help="layouts to compare (the 16-row ones need rows a multiple of 16)")
    p.add_argument("--tuning", nargs="+", choices=("auto", "l1:1", "l1:2", "l2:1", "l2:2"), default=["auto"],
                   help="the VBMI MXFP4 GEMV's tunings to compare: prefetch into l1 or l2, 1 or 2 rows per "
                        "pass at 2-8 tokens (csrc/cpu/cpu_tuning.h)")
    a = p.parse_args()
    if ("q8_0x16" in a.layout and a.type != "q8_0") or ("mxfp4x16" in a.layout and a.type != "mxfp4"):
        p.error("--layout q8_0x16 is for --type q8_0, mxfp4x16 for --type mxfp4")
    rng = np.random.default_rng(1)
    for rows in a.rows:
        nb = rows * (a.cols // 32)
        if a.type == "mxfp4":
            raw = rng.integers(0, 256, nb * 17, dtype=np.uint8)
            raw.reshape(-1, 17)[:, 0] = rng.integers(118, 129, nb)  # scales of trained weights
        else:
            raw = rng.integers(0, 256, nb * 34, dtype=np.uint8)
            raw.reshape(-1, 34)[:, :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # fp16 scales
        raw = raw.reshape(rows, -1)
        weights = {"rows": raw}
        if "q8_0x16" in a.layout:
            weights["q8_0x16"] = ops.interleave_q8_0(raw, rows, a.cols).reshape(rows, -1)
        if "mxfp4x16" in a.layout:
            weights["mxfp4x16"] = ops.interleave_mxfp4(raw, rows, a.cols).reshape(rows, -1)
        files = []
        if a.mmap:
            # The GGUF layout as a model reads it (the file's map); the repacked copy stays in
            # anonymous memory, as the model's (csrc/q8_0_interleave_weights.cpp).
            files.append(tempfile.NamedTemporaryFile(dir="/tmp"))
            raw.tofile(files[-1].name)
            weights["rows"] = np.memmap(files[-1].name, np.uint8, "r", shape=raw.shape)
        variants = [(isa, layout, pf) for isa in a.isa for layout in a.layout for pf in a.tuning]
        for t in a.tokens:
            x = rng.standard_normal((t, a.cols)).astype(np.float32)
            best = {v: float("inf") for v in variants}
            for _ in range(a.reps):
                for isa, layout, pf in variants:
                    ops.set_mxfp4_tuning(pf)
                    t0 = time.perf_counter()
                    ops.matmul(weights[layout], MXFP4 if a.type == "mxfp4" else Q8_0, rows, a.cols, x, None,
                               isa, "fast", layout=layout)
                    best[isa, layout, pf] = min(best[isa, layout, pf], time.perf_counter() - t0)
            cells = []
            for (isa, layout, pf), s in best.items():
                name = isa + ("" if layout == "rows" else " " + layout)
                name += "" if pf == "auto" else " tuning " + pf
                cells.append(f"{name} {raw.nbytes / s / 1e9:5.1f} GB/s {s / nb * 1e9:5.3f} ns")
            print(f"rows {rows:6d} tokens {t}: " + " | ".join(cells), flush=True)
    ops.set_mxfp4_tuning("auto")
    return 0


if __name__ == "__main__":
    sys.exit(main())
