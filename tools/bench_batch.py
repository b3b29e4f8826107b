#!/usr/bin/env python3
"""The batched decode step alone (no HTTP): aggregate tok/s of one ossrun.batch step over N
sessions, each decoding one token, for N = 1, 2, 4, 8.

    python tools/bench_batch.py /work/models/gpt-oss-20b-4layer.gguf [--repeats 3]

Each repeat times --steps steps per N, the Ns alternating; prints the median per N. The sessions
hold a 4-token prompt each (attention over a short context: this measures the weights' side),
distinct random ids, and each decodes its own greedy next token, as a server's streams do
(--feed greedy), so the sequences of a step route to different experts. --feed fixed gives every
sequence the same token at every step (the earlier runs of this tool): the sequences' hidden
states stay alike and share experts, which a server's streams do not.
Beside each N: the weight bytes a step read (MB/step), the ratio to the first N that a step
timed by its bytes alone would give ("bound": how far batching can go with this routing), and
the GB/s the step moved. --mxfp4-tuning l1:1 l2:2 alternates the MXFP4 GEMV's tunings (prefetch
into L1 or L2 : 1 or 2 rows per pass, csrc/cpu/cpu_tuning.h) within each repeat, a table for each.
Then, per N, the milliseconds per step each part of the forward took (the core's part timer,
csrc/part_timer.h), summed over all repeats; "python" is the step's wall time outside the core.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> int:
    import numpy as np
    import ossrun
    from ossrun._core import ops
    from ossrun.batch import Batch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--sequences", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--warmup", type=int, default=4, help="untimed steps of all sessions first")
    ap.add_argument("--precision", choices=("fast", "f32"), default="fast")
    ap.add_argument("--feed", choices=("greedy", "fixed"), default="greedy",
                    help="each sequence's own greedy token (default), or token 5 for all")
    ap.add_argument("--no-mmap", action="store_true", help="experts copied into 2 MiB pages")
    ap.add_argument("--mxfp4-tuning", nargs="+", choices=("l1:1", "l1:2", "l2:1", "l2:2"),
                    help="the MXFP4 GEMV's tunings to compare, alternating: prefetch into l1 or l2, "
                         "1 or 2 rows per pass (csrc/cpu/cpu_tuning.h); default: this CPU's")
    args = ap.parse_args(argv)

    model = ossrun.load(args.model, n_ctx=1024, threads=args.threads, precision=args.precision,
                        mmap=not args.no_mmap)
    batch = Batch(model)
    sessions = [model.session() for _ in range(max(args.sequences))]
    prompts = np.random.default_rng(0).integers(1000, min(model.n_vocab, 100000), (len(sessions), 4))
    for prompt, s in zip(prompts, sessions):
        s.prefill(prompt.tolist())
    # Warm-up: page in the weights, most experts included (varied tokens route to varied experts).
    for w in range(args.warmup):
        batch.step([(s, [7 + 13 * w + i], False) for i, s in enumerate(sessions)])
    for s in sessions:
        s.truncate(4)
    policies = args.mxfp4_tuning or [ops.mxfp4_tuning()]
    cases = [(pf, n) for pf in policies for n in args.sequences]
    rates: dict[tuple, list[float]] = {c: [] for c in cases}
    parts: dict[tuple, dict[str, float]] = {c: {} for c in cases}
    weight_bytes: dict[tuple, int] = {c: 0 for c in cases}  # read by the timed steps
    try:
        for _ in range(args.repeats):
            for pf, n in cases:
                ops.set_mxfp4_tuning(pf)
                before = model._core.part_seconds
                bytes_before = model._core.weight_bytes_read
                t0 = time.perf_counter()
                feed = prompts[:n, 0].tolist() if args.feed == "greedy" else [5] * n
                for _ in range(args.steps):
                    logits = batch.step([(s, [t], False) for s, t in zip(sessions[:n], feed)])
                    if args.feed == "greedy":
                        feed = [int(np.argmax(x)) for x in logits]
                wall = time.perf_counter() - t0
                weight_bytes[pf, n] += model._core.weight_bytes_read - bytes_before
                rates[pf, n].append(n * args.steps / wall)
                after = model._core.part_seconds
                for k in after:
                    parts[pf, n][k] = parts[pf, n].get(k, 0.0) + after[k] - before[k]
                outside = wall - sum(after[k] - before[k] for k in after)
                parts[pf, n]["python"] = parts[pf, n].get("python", 0.0) + outside
                for s in sessions[:n]:
                    s.truncate(4)
    finally:
        ops.set_mxfp4_tuning("auto")
    steps = args.repeats * args.steps
    first = args.sequences[0]
    for pf in policies:
        if len(policies) > 1:
            print(f"MXFP4 tuning {pf} (prefetch:rows per pass):")
        base = statistics.median(rates[pf, first])
        # "bound by bytes": the ratio to the first N if a step's time went as the weight bytes it
        # reads (the experts the N tokens route to, the dense weights once): what memory-bound
        # kernels can reach, given the routing.
        mb = {n: weight_bytes[pf, n] / steps / 1e6 for n in args.sequences}
        print(f"{'sequences':>9} {'tok/s':>8} {'vs first':>8} {'MB/step':>9} {'bound':>6} {'GB/s':>6}   "
              f"(median of {args.repeats}, {model.threads} threads, {args.precision})")
        for n in args.sequences:
            m = statistics.median(rates[pf, n])
            bound = n * mb[first] / (first * mb[n])
            gb_s = mb[n] * m / n / 1e3
            print(f"{n:>9} {m:>8.2f} {m / base:>8.2f} {mb[n]:>9.4g} {bound:>6.2f} {gb_s:>6.1f}")
        names = list(parts[pf, first])
        print("\nms per step by part (all repeats)")
        print(f"{'sequences':>9} " + " ".join(f"{k:>12}" for k in names) + f" {'total':>8}")
        for n in args.sequences:
            row = [parts[pf, n][k] * 1e3 / steps for k in names]
            print(f"{n:>9} " + " ".join(f"{v:>12.2f}" for v in row) + f" {sum(row):>8.2f}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
