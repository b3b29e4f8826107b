"""Decode attention at depth: where a decode step's time goes at a given context length.

Loads a model, fills the cache to each --depth with pseudo-random keys and values (as `ossrun
bench --synthetic-depth`), decodes --gen tokens and prints, per depth, the wall and process CPU
seconds per token and the forward's parts (Model.part_seconds) per token, so an attention change
can be A/B'd on a loaded machine (CPU seconds move less with other processes than wall time), and
the KV bytes the full layers read per token as GB/s of the attention part.

    python tools/bench_attention.py /work/models/gpt-oss-20b-4layer.gguf --depth 0 16384 32768
"""

from __future__ import annotations

import argparse
import resource
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--depth", type=int, nargs="+", default=[0, 32768])
    p.add_argument("--gen", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--kv-type", default=None, choices=["f16", "bf16", "f32"])
    p.add_argument("--prefill", type=int, default=0,
                   help="also prefill this many tokens at each depth in one call and time its attention")
    a = p.parse_args()

    import ossrun

    n_ctx = max(a.depth) + max(a.gen, a.prefill) + 8
    model = ossrun.load(a.model, n_ctx=n_ctx, threads=a.threads, kv_type=a.kv_type)
    c = model.config
    full_layers = sum(1 for layer in range(c.block_count) if not (layer % 2 == 0 and c.sliding_window))
    elem = {"f32": 4, "f16": 2, "bf16": 2}[model.kv_type]
    s = model.session()
    print(f"{model.isa}, {model.threads} threads, {model.kv_type} KV cache")
    for depth in a.depth:
        s._core.fill_synthetic(depth)
        s.prefill([1])
        parts0 = dict(model._core.part_seconds)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for i in range(a.gen):
            s.prefill([2 + i])
        wall = (time.perf_counter() - t0) / a.gen
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / a.gen
        parts = {k: (v - parts0[k]) / a.gen for k, v in model._core.part_seconds.items()}
        kv_bytes = full_layers * (depth + a.gen / 2) * 2 * c.head_count_kv * c.key_length * elem
        attn = parts["attention"]
        print(f"depth {depth:6d}: {1 / wall:6.2f} tok/s, wall {wall * 1e3:7.2f} ms, "
              f"cpu {cpu * 1e3:7.2f} ms/token; "
              f"attention {attn * 1e3:6.2f} ms ({kv_bytes / attn / 1e9:5.1f} GB/s of KV); "
              + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in parts.items() if k != "attention"))
        if a.prefill:
            s._core.fill_synthetic(depth)
            parts0 = dict(model._core.part_seconds)
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            s.prefill([5 + i % 1000 for i in range(a.prefill)])
            wall = time.perf_counter() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
            attn = model._core.part_seconds["attention"] - parts0["attention"]
            print(f"  prefill {a.prefill} at depth {depth}: {a.prefill / wall:6.1f} tok/s, cpu {cpu:.2f} s; "
                  f"attention {attn:.2f} s ({attn / a.prefill * 1e3:.2f} ms/token)")


if __name__ == "__main__":
    main()
