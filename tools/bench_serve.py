#!/usr/bin/env python3
"""Benchmark `ossrun serve`: aggregate decode speed with 1, 2, 4, 8 concurrent streams, and the
time to first token of a long prompt whose prefix was seen in an earlier request versus cold.

    python tools/bench_serve.py /work/models/gpt-oss-20b-4layer.gguf [--repeats 3]

Issue 11's table on the 20b-shaped file (both engines, one loaded at a time, the bench lock
held per engine and repeat):

    python tools/bench_serve.py /work/models/gpt-oss-20b.gguf --llama-server /work/llama/bin/llama-server \
        --one-at-a-time --lock /work/bench20b.lock --threads 2 --repeats 2

Starts the server itself (a subprocess on a free loopback port, --parallel = the most streams)
unless --url points at a running one; --llama-server PATH also starts llama.cpp's server on the
same file (-np = the most streams, otherwise its defaults: it repacks the weights it has CPU
kernels for; --llama-no-repack leaves them in the file's map, as ossrun does) and alternates the
two, case by case.

--one-at-a-time keeps one server loaded at a time (for files where both would not fit in
memory beside each other, e.g. the 12 GB 20b-shaped file: llama.cpp's repacking holds a second
copy of the experts): each repeat starts ossrun, runs its cases, stops it, then llama-server.
Before an engine starts, the file is read through once (both start with it in the page cache).
--lock FILE holds flock(FILE) while an engine is loaded (per engine and repeat with
--one-at-a-time), so other users of the file can run between them.
--skip-ttft leaves out the 2k-token TTFT cases (with --one-at-a-time they run after each
engine's decode cases, before it is stopped).

Decode: each of N streams generates --tokens tokens (greedy, raw completions);
aggregate tok/s counts the tokens of all streams inside the window where all N are decoding
(after the last first token, before the first last token), so prefill is left out. For ossrun
it also prints the server's own count (/health "decode"): ms between the starts of its
N-sequence steps, the step, and the forward inside it. TTFT: a non-streamed completion of one
token, i.e. prefill plus one decode step (llama-server asked to cache prompts). Each figure is
the median of --repeats runs; runs of the cases alternate, so that a noisy neighbour hits all of
them. Prints a markdown table (--json: everything as JSON).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx


def progress(line: str) -> None:
    """Each case's figure as it comes (stderr): a long run stopped early keeps what it measured."""
    print(time.strftime("%H:%M:%S"), line, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    store = tempfile.mkdtemp(prefix="bench-serve-")
    cmd = [sys.executable, "-m", "ossrun", "serve", args.model, "--port", str(port), "--parallel",
           str(max(args.streams)), "--ctx", str(args.ctx), "--store", f"{store}/r.sqlite3"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += args.ossrun_args.split()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, _wait_health(proc, f"http://127.0.0.1:{port}")


def _wait_health(proc, url: str) -> str:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server at {url} exited while loading")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the server at {url} did not start")


def stream_times(url: str, model: str, prompt: str, n_tokens: int) -> list[float]:
    """Arrival time of every streamed token of one raw completion (one chunk per token; the
    chunk that carries the finish reason is not one)."""
    body = {"model": model, "prompt": prompt, "max_tokens": n_tokens, "temperature": 0, "stream": True}
    times = []
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("finish_reason") is None:
                    times.append(time.perf_counter())
    return times


def aggregate_decode(url: str, model: str, n: int, n_tokens: int, run: int) -> float:
    prompts = [f"Stream {i} of run {run}: tell me a story about the number {i * 7 + run}." for i in range(n)]
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        all_times = list(pool.map(lambda p: stream_times(url, model, p, n_tokens), prompts))
    start = max(t[0] for t in all_times)
    end = min(t[-1] for t in all_times)
    tokens = sum(sum(start < x <= end for x in t) for t in all_times)
    return tokens / (end - start) if end > start else float("nan")


def server_decode_stats(url: str) -> dict | None:
    """ossrun's own count of its decode steps by size (/health "decode"); None for another server."""
    try:
        return httpx.get(url + "/health", timeout=10).json().get("decode")
    except (httpx.HTTPError, ValueError):
        return None


def server_step_ms(before: dict | None, after: dict | None, n: int) -> dict | None:
    """Milliseconds per n-sequence decode step between two server_decode_stats: period (step
    start to the next one's, what a client sees), step (forward, sampling, events), forward."""
    if before is None or after is None or str(n) not in after:
        return None
    a, b = after[str(n)], before.get(str(n), {})
    steps = a["steps"] - b.get("steps", 0)
    periods = a["periods"] - b.get("periods", 0)
    if steps < 1 or periods < 1:
        return None
    return {"steps": steps,
            "period": 1e3 * (a["period_seconds"] - b.get("period_seconds", 0.0)) / periods,
            "step": 1e3 * (a["step_seconds"] - b.get("step_seconds", 0.0)) / steps,
            "forward": 1e3 * (a["forward_seconds"] - b.get("forward_seconds", 0.0)) / steps}


def first_token_seconds(url: str, model: str, prompt: str, extra: dict | None = None) -> float:
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 1,
                                                  "temperature": 0, **(extra or {})}, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - t0


def words(rng: random.Random, n: int) -> str:
    vocab = ["river", "stone", "light", "engine", "paper", "window", "garden", "signal", "cloud", "metal",
             "orange", "silver", "forest", "market", "bridge", "winter", "summer", "number", "letter"]
    return " ".join(rng.choice(vocab) for _ in range(n))


def start_llama_server(args) -> tuple[subprocess.Popen, str]:
    """llama.cpp's server on the same file: -np slots of --ctx tokens each, the same threads."""
    port = free_port()
    n = max(args.streams)
    cmd = [args.llama_server, "-m", args.model, "--host", "127.0.0.1", "--port", str(port), "-np", str(n),
           "-c", str(n * args.ctx), "-t", str(args.threads or _physical_cores())]
    if args.llama_no_repack:
        cmd.append("--no-repack")
    cmd += args.llama_server_args.split()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, _wait_health(proc, f"http://127.0.0.1:{port}")


def _physical_cores() -> int:
    from ossrun.model import default_threads

    return default_threads()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a gpt-oss .gguf file (with the real vocabulary)")
    ap.add_argument("--url", help="a running ossrun server instead of starting one")
    ap.add_argument("--llama-server", metavar="PATH", help="also measure llama.cpp's llama-server "
                    "(started on the same file with -np = the most streams), alternating with ossrun")
    ap.add_argument("--llama-no-repack", action="store_true",
                    help="llama-server --no-repack: its weights from the file's map, as ossrun (its "
                    "default repacks them for its CPU kernels: a second copy of the experts)")
    ap.add_argument("--llama-server-args", default="", metavar="ARGS", help="more llama-server arguments")
    ap.add_argument("--ossrun-args", default="", metavar="ARGS",
                    help="more `ossrun serve` arguments, e.g. '--mmap'")
    ap.add_argument("--lock", metavar="FILE", help="hold flock(FILE) while an engine is loaded")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, default=48, help="tokens per stream (default 48)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=2048, help="TTFT prompt length (default 2048)")
    ap.add_argument("--seen-tokens", type=int, default=1900, help="of which seen before (default 1900)")
    ap.add_argument("--ctx", type=int, default=4096, help="context per sequence (default 4096)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--one-at-a-time", action="store_true", help="one server loaded at a time")
    ap.add_argument("--skip-ttft", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    starters = {}
    if args.url:
        starters["ossrun"] = lambda: (None, args.url.rstrip("/").removesuffix("/v1"))
    else:
        starters["ossrun"] = lambda: start_server(args)
    if args.llama_server:
        starters["llama-server"] = lambda: start_llama_server(args)
    procs, engines, models = {}, {}, {}

    held = contextlib.ExitStack()

    def up(name):
        if name not in engines:
            if args.lock:
                held.enter_context(_flock(args.lock))
            if not args.url:
                _page_in(args.model)
            procs[name], engines[name] = starters[name]()
            models[name] = httpx.get(engines[name] + "/v1/models", timeout=10).json()["data"][0]["id"]
            weights = httpx.get(engines[name] + "/health", timeout=10).json().get("weights")
            if weights:
                progress(f"{name} weights: {weights}")
            aggregate_decode(engines[name], models[name], 1, 4, -1)  # warm-up: page in the weights

    def down(name):
        proc = procs.pop(name, None)
        engines.pop(name, None)
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        if args.one_at_a_time:
            held.close()  # between engines, others may take the file

    try:
        tok = _tokenizer(args.model)
        rng = random.Random(0)
        decode = {name: {n: [] for n in args.streams} for name in starters}
        server_ms = {n: [] for n in args.streams}  # ossrun's own ms per step (server_step_ms)
        ttft = {name: {"seen_prefix": [], "cold": []} for name in starters}
        if not args.one_at_a_time:
            for name in starters:
                up(name)
        def decode_case(name, n, run):
            before = server_decode_stats(engines[name]) if name == "ossrun" else None
            rate = aggregate_decode(engines[name], models[name], n, args.tokens, run)
            decode[name][n].append(rate)
            ms = server_step_ms(before, server_decode_stats(engines[name]), n) if before is not None else None
            if ms:
                server_ms[n].append(ms)
            progress(f"{name}: {n} streams {rate:.2f} tok/s" + (
                f" (server: {ms['steps']} steps of {n}: {ms['period']:.1f} ms apart, the step "
                f"{ms['step']:.1f} ms, its forward {ms['forward']:.1f} ms)" if ms else ""))

        def ttft_cases(name, prompts):
            # TTFT: a fresh 2k prompt whose first 1.9k tokens were sent before (another ending),
            # and a cold 2k prompt.
            seen_first, seen_second, cold_prompt = prompts
            url = engines[name]
            extra = {"cache_prompt": True} if name == "llama-server" else None
            first_token_seconds(url, models[name], seen_first, extra)
            ttft[name]["seen_prefix"].append(first_token_seconds(url, models[name], seen_second, extra))
            ttft[name]["cold"].append(first_token_seconds(url, models[name], cold_prompt, extra))
            last = {k: v[-1] for k, v in ttft[name].items()}
            progress(f"{name}: TTFT seen prefix {last['seen_prefix']:.2f} s, cold {last['cold']:.2f} s")

        for run in range(args.repeats):
            prompts = None
            if not args.skip_ttft:
                prefix = _text_of_tokens(tok, words(rng, args.seen_tokens * 2), args.seen_tokens)
                rest = args.prompt_tokens - args.seen_tokens
                endings = [_text_of_tokens(tok, words(rng, rest * 2), rest) for _ in range(2)]
                cold_prompt = _text_of_tokens(tok, words(rng, args.prompt_tokens * 2), args.prompt_tokens)
                prompts = (prefix + endings[0], prefix + endings[1], cold_prompt)
            if args.one_at_a_time:  # the engines alternate by repeat
                for name in starters:
                    up(name)
                    for n in args.streams:
                        decode_case(name, n, run)
                    if prompts:
                        ttft_cases(name, prompts)
                    down(name)
            else:  # by case
                for n in args.streams:
                    for name in starters:
                        decode_case(name, n, run)
                if prompts:
                    for name in engines:
                        ttft_cases(name, prompts)
        med = statistics.median
        result = {"model": args.model, "tokens_per_stream": args.tokens, "repeats": args.repeats,
                  "decode_tok_s": {name: {n: med(v) for n, v in d.items()} for name, d in decode.items()},
                  "ttft_s": {name: {k: med(v) for k, v in t.items()}
                             for name, t in ttft.items() if not args.skip_ttft},
                  "runs": {"decode_tok_s": decode, "ttft_s": ttft, "ossrun_server_ms": server_ms}}
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(_table(result, args))
    finally:
        for name in list(procs):
            down(name)
        held.close()
    return 0


@contextlib.contextmanager
def _flock(path: str):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _page_in(path: str) -> None:
    """Read the file through once, so that no engine pays for faulting in the other's evictions."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(16 << 20)
        while f.readinto(buf):
            pass



def _table(result: dict, args) -> str:
    """Issue 11's table: aggregate tok/s per stream count, each engine's ratio to its own single
    stream, ossrun's to llama-server's, and the TTFTs."""
    names = list(result["decode_tok_s"])
    first = args.streams[0]
    head = "| streams |" + "".join(f" {name} tok/s (vs {first}) |" for name in names)
    both = len(names) == 2
    if both:
        head += f" {names[0]} / {names[1]} |"
    lines = [f"aggregate decode tok/s, median of {args.repeats}, {args.tokens} tokens per stream", "",
             head, "|---|" + "---|" * (len(names) + both)]
    for n in args.streams:
        row = f"| {n} |"
        for name in names:
            d = result["decode_tok_s"][name]
            row += f" {d[n]:.2f} ({d[n] / d[first]:.2f}x) |"
        if both:
            a, b = (result["decode_tok_s"][name][n] for name in names)
            row += f" {a / b:.2f}x |"
        lines.append(row)
    if result["ttft_s"]:
        t = result["ttft_s"]
        lines += ["", f"| TTFT, {args.prompt_tokens}-token prompt |" + "".join(f" {n} |" for n in t),
                  "|---|" + "---|" * len(t)]
        lines.append("| cold |" + "".join(f" {t[n]['cold']:.2f} s |" for n in t))
        seen = {n: (t[n]["seen_prefix"], 100 * t[n]["seen_prefix"] / t[n]["cold"]) for n in t}
        lines.append(f"| first {args.seen_tokens} tokens seen before |"
                     + "".join(f" {s:.2f} s ({pct:.0f} % of cold) |" for s, pct in seen.values()))
    return "\n".join(lines)


def _tokenizer(path):
    from ossrun.gguf_loader import open_gguf
    from ossrun.tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(open_gguf(path).reader)


def _text_of_tokens(tok, text: str, n: int) -> str:
    """The first n tokens of `text`, as text (a prompt of exactly about n tokens)."""
    return tok.decode(tok.encode(text)[:n])


if __name__ == "__main__":
    raise SystemExit(main())
