"""`ossrun bench`: load time, prefill and decode tokens/s and peak RSS of a GGUF model, optionally
side by side with llama.cpp (through llama-cpp-python) on the same file and settings.

Each measurement runs in a fresh worker process (`python -m ossrun.bench --worker ENGINE ...`),
so peak RSS belongs to one engine alone and runs of the two engines alternate; the report gives
medians. Benchmarks print numbers; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

ENGINES = ("ossrun", "llama_cpp", "llama_bench")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a gpt-oss .gguf file, a folder holding one, or an Ollama name")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: physical cores)")
    p.add_argument("--prompt", type=int, default=512, help="prefill length in tokens (default 512)")
    p.add_argument("--gen", type=int, default=128, help="tokens to decode (default 128)")
    p.add_argument("--depth", type=int, default=0,
                   help="tokens of context already in the cache before decoding (default 0)")
    p.add_argument("--kv-type", choices=("f16", "bf16", "f32"), default=None,
                   help="ossrun's KV cache elements (default: f16, its fast precision's)")
    p.add_argument("--synthetic-depth", action="store_true",
                   help="ossrun only: fill the --depth positions of the cache with pseudo-random keys "
                        "and values instead of prefilling them (decode's cost does not depend on them; "
                        "minutes saved at 32k); llama-bench still prefills")
    p.add_argument("--commit-kv", action="store_true",
                   help="make ossrun's whole KV cache resident before the runs, so peak RSS is that "
                        "of a full context (of --ctx tokens)")
    p.add_argument("--ctx", type=int, default=None,
                   help="context length (default: depth + max(prompt, gen) + 8)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per engine (default 3)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--vs-llama-cpp", action="store_true",
                   help="also run llama.cpp (llama-cpp-python) on the same file, alternating runs")
    p.add_argument("--llama-bench", metavar="PATH", default=None,
                   help="also run this llama-bench binary on the same file (pp and tg as separate "
                        "tests, tg at --depth), alternating runs")
    p.add_argument("--llama-bench-args", default="", metavar="ARGS",
                   help="extra llama-bench arguments, e.g. '--repack 0'")
    p.add_argument("--bandwidth", type=float, default=None, metavar="GBS",
                   help="the machine's DRAM read bandwidth in GB/s (default: measured before the runs)")
    from .device_cli import add_device_flags

    add_device_flags(p)  # --device, --gpu-layers, --n-cpu-moe / --cpu-moe (ossrun only)


def _tokens(n: int, seed: int, n_vocab: int) -> list[int]:
    # Ordinary token ids inside the vocabulary (past the first 100, up to 20000 for o200k files);
    # the content does not matter for speed.
    hi = min(20000, n_vocab)
    return [int(t) for t in np.random.default_rng(seed).integers(min(100, hi // 2), hi, n)]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _measure(a, prefill, reset, n_vocab, counter=lambda: 0, fill=None) -> tuple[float, float, int]:
    """The same protocol for every engine: prefill `--prompt` tokens on an empty context; then
    from empty, `--depth` tokens of context and `--gen` decoded one at a time (the first one's
    prefill is not timed). `prefill(ids)` appends ids; `reset()` empties the context; `counter()`
    is a running count of weight bytes read, returned as its growth over the timed decode;
    `fill(n)`, where given, stands in for the depth's prefill (--synthetic-depth)."""
    t = time.perf_counter()
    prefill(_tokens(a.prompt, 1, n_vocab))
    prefill_s = time.perf_counter() - t
    reset()
    if a.depth and fill:
        fill(a.depth)
    elif a.depth:
        prefill(_tokens(a.depth, 2, n_vocab))
    gen = _tokens(a.gen, 3, n_vocab)
    prefill(gen[:1])
    c0 = counter()
    t = time.perf_counter()
    for tok in gen[1:]:
        prefill([tok])
    return prefill_s, time.perf_counter() - t, counter() - c0


def _n_ctx(a) -> int:
    return a.ctx or a.depth + max(a.prompt, a.gen) + 8


def _worker_ossrun(a) -> dict:
    import ossrun
    from ossrun._core import ops

    t = time.perf_counter()
    model = ossrun.load(a.model, n_ctx=_n_ctx(a), threads=a.threads, kv_type=a.kv_type, device=a.device,
                        gpu_layers=a.gpu_layers, cpu_moe=a.cpu_moe, mmap=not a.no_mmap)
    load_s = time.perf_counter() - t
    s = model.session()
    if a.commit_kv:
        s._core.commit_kv()
    fill = s._core.fill_synthetic if a.synthetic_depth else None
    prefill_s, decode_s, decode_bytes = _measure(a, s.prefill, s.reset, model.n_vocab,
                                                 lambda: model._core.weight_bytes_read, fill)
    r = _result(a, load_s, prefill_s, decode_s,
                f"ossrun {model.isa}, {model.threads} threads, {model.kv_type} KV cache"
                + (f", MXFP4 GEMV tuning {ops.mxfp4_tuning()} (prefetch:rows a pass)"
                   if model.isa == "avx512vbmi" else "")
                + (f", CUDA: {model.device_reason}" if model.device == "cuda" else "")
                + (", experts copied into 2 MiB pages (--no-mmap)" if model.weights_in_ram else "")
                + (" in 16-row groups"
                   if model.device == "cpu" and model._core.interleaved_mxfp4_bytes else ""))
    # Weights actually read per decoded token: the routed experts of each step, counted in the core.
    r["decode_weight_bytes_per_token"] = decode_bytes / (a.gen - 1)
    r["prefill_int16_ops_per_token"] = 2 * _prefill_macs_per_token(model.config, a.prompt)
    return r


def _prefill_macs_per_token(c, prompt: int) -> float:
    """Multiply-adds per prefilled token of a `prompt`-token prompt from an empty context
    (MODEL.md §2): q/k/v/o, router, the routed experts' three matrices, and attention's scores
    and value sums over the keys each position sees (sliding layers: at most the window)."""
    H, d = c.embedding_length, c.key_length
    q, kv = c.head_count * d, c.head_count_kv * d
    dense = H * (q + 2 * kv) + q * H + H * c.expert_count
    experts = c.expert_used_count * 3 * H * c.expert_feed_forward_length
    mean_keys_full = (prompt + 1) / 2
    mean_keys_window = sum(min(p + 1, c.sliding_window) for p in range(prompt)) / prompt
    attn = 0.0
    for layer in range(c.block_count):
        keys = mean_keys_window if layer % 2 == 0 and c.sliding_window else mean_keys_full
        attn += 2 * c.head_count * d * keys
    return c.block_count * (dense + experts) + attn


def _worker_llama_cpp(a) -> dict:
    import llama_cpp

    threads = a.threads or os.cpu_count()
    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=_n_ctx(a), n_threads=threads,
                          n_threads_batch=threads, n_batch=max(512, a.prompt), n_ubatch=512,
                          verbose=False)
    load_s = time.perf_counter() - t
    # reset(): the next eval starts at position 0 and drops the cached positions after it.
    prefill_s, decode_s, _ = _measure(a, llm.eval, llm.reset, llm.n_vocab())
    return _result(a, load_s, prefill_s, decode_s, f"llama.cpp via llama-cpp-python {llama_cpp.__version__}")


def _worker_llama_bench(a) -> dict:
    import shlex

    threads = a.threads or os.cpu_count()

    def run(extra: list[str]) -> float:
        cmd = [a.llama_bench, "-m", a.model, "-t", str(threads), "-r", "1", "-o", "json", *extra,
               *shlex.split(a.llama_bench_args)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"llama-bench failed: {(out.stderr or out.stdout).strip()[-300:]}")
        return float(json.loads(out.stdout)[0]["avg_ts"])

    pp = run(["-p", str(a.prompt), "-n", "0"])
    tg = run(["-p", "0", "-n", str(a.gen), "-d", str(a.depth)])
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {"engine": f"llama-bench ({a.llama_bench})", "load_s": float("nan"), "prefill_tok_s": pp,
            "decode_tok_s": tg, "peak_rss_mb": rss}


def _result(a, load_s, prefill_s, decode_s, engine) -> dict:
    return {
        "engine": engine,
        "load_s": load_s,
        "prefill_tok_s": a.prompt / prefill_s,
        "decode_tok_s": (a.gen - 1) / decode_s if a.gen > 1 else float("nan"),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _run_worker(engine: str, a) -> dict:
    cmd = [sys.executable, "-m", "ossrun.bench", "--worker", engine, a.model,
           "--prompt", str(a.prompt), "--gen", str(a.gen), "--depth", str(a.depth)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    if a.kv_type:
        cmd += ["--kv-type", a.kv_type]
    if a.ctx:
        cmd += ["--ctx", str(a.ctx)]
    if a.commit_kv:
        cmd += ["--commit-kv"]
    if a.synthetic_depth:
        cmd += ["--synthetic-depth"]
    if engine == "ossrun":
        cmd += ["--device", a.device]
        if a.no_mmap:
            cmd += ["--no-mmap"]
        if a.gpu_layers is not None:
            cmd += ["--gpu-layers", str(a.gpu_layers)]
        if a.cpu_moe is not None:
            cmd += ["--cpu-moe"] if a.cpu_moe == "all" else ["--n-cpu-moe", str(a.cpu_moe)]
    if engine == "llama_bench":
        cmd += ["--llama-bench", a.llama_bench, f"--llama-bench-args={a.llama_bench_args}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines()
        raise RuntimeError(f"{engine} run failed: {lines[-1] if lines else out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(runs: list[dict]) -> dict:
    keys = ("load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "decode_weight_bytes_per_token",
            "prefill_int16_ops_per_token")
    out = {k: statistics.median(r[k] for r in runs) for k in keys if k in runs[0]}
    out["engine"] = runs[0]["engine"]
    out["runs"] = runs
    return out


def main(a) -> int:
    from .errors import ModelError
    from .gguf_loader import open_gguf

    for name in ("prompt", "reps"):
        if getattr(a, name) < 1:
            print(f"ossrun bench: --{name} must be at least 1", file=sys.stderr)
            return 2
    if a.gen < 2 or a.depth < 0 or (a.threads is not None and a.threads < 1):
        print("ossrun bench: --gen must be >= 2, --depth >= 0, --threads >= 1", file=sys.stderr)
        return 2
    try:
        open_gguf(a.model)  # fail early, with the loader's message, on a bad file
    except ModelError as e:
        print(f"ossrun bench: {e}", file=sys.stderr)
        return 1
    if a.vs_llama_cpp:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("ossrun bench: --vs-llama-cpp needs llama-cpp-python (pip install llama-cpp-python)",
                  file=sys.stderr)
            return 1
    if a.ctx is not None and a.ctx < a.depth + max(a.prompt, a.gen):
        print("ossrun bench: --ctx must hold --depth + max(--prompt, --gen) tokens", file=sys.stderr)
        return 2
    if a.bandwidth is not None and not a.bandwidth > 0:
        print("ossrun bench: --bandwidth must be positive", file=sys.stderr)
        return 2
    ceilings = _ceilings(a)
    engines = ["ossrun"] + (["llama_cpp"] if a.vs_llama_cpp else [])
    engines += ["llama_bench"] if a.llama_bench else []
    runs: dict[str, list] = {e: [] for e in engines}
    try:
        for rep in range(a.reps):
            for engine in engines if rep % 2 == 0 else engines[::-1]:  # alternate the order
                r = _run_worker(engine, a)
                runs[engine].append(r)
                if not a.json:
                    print(f"  rep {rep + 1} {engine:9s} prefill {r['prefill_tok_s']:7.2f} tok/s  "
                          f"decode {r['decode_tok_s']:6.2f} tok/s  load {r['load_s']:5.2f} s  "
                          f"peak RSS {r['peak_rss_mb']:8.0f} MB", file=sys.stderr)
    except RuntimeError as e:
        print(f"ossrun bench: {e}", file=sys.stderr)
        return 1
    result = _median(runs["ossrun"])
    result.update(model=os.fspath(a.model), threads=a.threads, prompt=a.prompt, gen=a.gen,
                  depth=a.depth, synthetic_depth=a.synthetic_depth, kv_type=a.kv_type, reps=a.reps,
                  **ceilings)
    _add_roofline(result)
    if a.vs_llama_cpp:
        ll = _median(runs["llama_cpp"])
        result["llama_cpp"] = ll
        result["ratio_prefill"] = result["prefill_tok_s"] / ll["prefill_tok_s"]
        result["ratio_decode"] = result["decode_tok_s"] / ll["decode_tok_s"]
    if a.llama_bench:
        lb = _median(runs["llama_bench"])
        result["llama_bench"] = lb
        result["ratio_prefill_llama_bench"] = result["prefill_tok_s"] / lb["prefill_tok_s"]
        result["ratio_decode_llama_bench"] = result["decode_tok_s"] / lb["decode_tok_s"]
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 0


def _ceilings(a) -> dict:
    """The machine's DRAM read bandwidth (given, or measured here with the bench's threads on a
    1 GiB buffer) and int16 dot-product peak, measured before the runs."""
    from ._core import ops

    threads = a.threads or os.cpu_count() or 1
    measured = a.bandwidth is None
    bw = ops.read_bandwidth(threads, 1024) if measured else a.bandwidth
    peak, instruction = ops.int16_peak(threads)
    return {"bandwidth_gb_s": bw, "bandwidth_measured": measured, "int16_peak_gops": peak,
            "int16_instruction": instruction, "cpu": _cpu_name()}


def _cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The first CPU's model name, with its x86 family and model where the file has them: a VM's
    name ("AMD EPYC") does not tell a Zen 4 (family 25) from a Zen 5 (family 26), whose kernels'
    rates differ twofold."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block only
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return ""
    name = fields.get("model name", "")
    if name and fields.get("cpu family", "").isdigit() and fields.get("model", "").isdigit():
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def _add_roofline(r: dict) -> None:
    """Decode: weight bytes per token x tok/s against the read bandwidth. Prefill: int16
    operations per token x tok/s against the int16 peak."""
    if "decode_weight_bytes_per_token" in r:
        gbs = r["decode_weight_bytes_per_token"] * r["decode_tok_s"] / 1e9
        r["decode_gb_s"] = gbs
        r["decode_fraction_of_bandwidth"] = gbs / r["bandwidth_gb_s"]
    if "prefill_int16_ops_per_token" in r and r["int16_peak_gops"] > 0:
        gops = r["prefill_int16_ops_per_token"] * r["prefill_tok_s"] / 1e9
        r["prefill_gops"] = gops
        r["prefill_fraction_of_int16_peak"] = gops / r["int16_peak_gops"]


def _print_table(r: dict) -> None:
    rows = [("ossrun", r)] + ([("llama.cpp", r["llama_cpp"])] if "llama_cpp" in r else [])
    rows += [("llama-bench", r["llama_bench"])] if "llama_bench" in r else []
    depth = f" @ depth {r['depth']}" if r["depth"] else ""
    print(f"{'engine':10s} {'pp' + str(r['prompt']):>10s} {'tg' + str(r['gen']) + depth:>16s} "
          f"{'load s':>8s} {'peak RSS MB':>12s}")
    for name, x in rows:
        print(f"{name:10s} {x['prefill_tok_s']:10.2f} {x['decode_tok_s']:16.2f} {x['load_s']:8.2f} "
              f"{x['peak_rss_mb']:12.0f}")
    if "llama_cpp" in r:
        print(f"ratio      {r['ratio_prefill']:10.2f}x {r['ratio_decode']:15.2f}x")
    if "llama_bench" in r:
        print(f"ratio (vs llama-bench) {r['ratio_prefill_llama_bench']:.2f}x "
              f"{r['ratio_decode_llama_bench']:.2f}x")
    print(f"(medians of {r['reps']} alternating runs; {r['engine']})")
    bw = "measured" if r["bandwidth_measured"] else "given"
    print(f"machine: {r['cpu'] or 'unknown CPU'}; DRAM read {r['bandwidth_gb_s']:.1f} GB/s ({bw}); "
          f"int16 peak {r['int16_peak_gops']:.0f} GOP/s ({r['int16_instruction'] or 'none'})")
    if "decode_gb_s" in r:
        print(f"decode: {r['decode_weight_bytes_per_token'] / 1e9:.3f} GB of weights per token, "
              f"{r['decode_gb_s']:.1f} GB/s = {100 * r['decode_fraction_of_bandwidth']:.0f} % "
              "of the read bandwidth")
    if "prefill_gops" in r:
        print(f"prefill: {r['prefill_int16_ops_per_token'] / 1e9:.2f} G int16 ops per token, "
              f"{r['prefill_gops']:.0f} GOP/s = {100 * r['prefill_fraction_of_int16_peak']:.0f} % "
              "of the int16 peak")


def _worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ossrun.bench --worker")
    p.add_argument("--worker", choices=ENGINES, required=True)
    add_arguments(p)
    a = p.parse_args(argv)
    workers = {"ossrun": _worker_ossrun, "llama_cpp": _worker_llama_cpp, "llama_bench": _worker_llama_bench}
    fn = workers[a.worker]
    print(json.dumps(fn(a)))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
