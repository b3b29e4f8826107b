"""Per-token cost of constrained decoding: decode with and without an llguidance mask.

    python tools/constrained_overhead.py MODEL.gguf [--tokens 48] [--rounds 3] [--serve]

Three loops of `--tokens` decoded tokens each, alternated `--rounds` times: plain sampling;
the harmony grammar while the model reasons (free text: the mask allows ~all 200k ids); and a
JSON Schema grammar (the mask allows few ids). Prints the median time per token of each, the
overhead against plain, and the parts: the matcher's CPU time per token (what the worker thread
overlaps with the forward pass) and the wait + apply that remains on the critical path.

--serve times the same loops through `ossrun serve`'s scheduler (one sequence; the mask of the
server's constraints.py, prepared before each batched forward and applied after it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import ossrun
from ossrun.constrain import Constraint, harmony_grammar, response_format
from ossrun.sampler import Sampler

SCHEMA = {"type": "array", "minItems": 10000,
          "items": {"type": "object", "properties": {"word": {"type": "string"},
                                                     "n": {"type": "integer"}},
                    "required": ["word", "n"], "additionalProperties": False}}


def run(model, prompt, n, make_constraint, seed):
    tok = model.tokenizer
    s = model.session()
    logits = s.prefill(prompt)
    c = make_constraint()
    sampler = Sampler(1.0, seed=seed)
    if c is not None and c.name == "reasoning":
        head = tok.encode("<|channel|>analysis<|message|>", allowed_special="all")
        c.advance(head)
        logits = s.prefill(head)
    apply_s = 0.0
    t0 = time.perf_counter()
    for _ in range(n):
        if c is not None:
            ta = time.perf_counter()
            c.apply(logits)
            apply_s += time.perf_counter() - ta
        t = sampler(logits)
        if c is not None:
            c.advance([t])
        logits = s.decode(t)
    return (time.perf_counter() - t0) / n, apply_s / n


def mask_alone(model, make_constraint, n, seed):
    """CPU time of the matcher alone per token (consume + mask, synchronously), excluding the
    sampler and the logits: what the worker thread adds to the machine's load."""
    c = make_constraint()
    c.wait()
    m, tok = c.matcher, model.tokenizer
    if c.name == "reasoning":
        for t in tok.encode("<|channel|>analysis<|message|>", allowed_special="all"):
            m.consume_token(t)
    sampler = Sampler(1.0, seed=seed)
    rng = np.random.default_rng(seed)
    cpu = 0.0
    for _ in range(n):
        c0 = time.thread_time()
        m.unsafe_compute_mask_ptr(c._mask.ctypes.data, c._mask.nbytes)
        cpu += time.thread_time() - c0
        logits = rng.standard_normal(model.n_vocab).astype(np.float32)
        bits = np.unpackbits(c._mask.view(np.uint8), bitorder="little", count=model.n_vocab)
        logits[bits == 0] = -np.inf
        t = sampler(logits)
        c0 = time.thread_time()
        m.consume_token(t)
        cpu += time.thread_time() - c0
    return cpu / n


def run_served(model, prompt, n, make_constraint, seed):
    """Seconds per token of one generation through the server's scheduler."""
    import queue

    from ossrun.server.constraints import _GrammarMask
    from ossrun.server.scheduler import DoneEvent, Generation, Scheduler

    c = make_constraint()
    mask = None
    if c is not None:
        if c.name == "reasoning":
            head = model.tokenizer.encode("<|channel|>analysis<|message|>", allowed_special="all")
            c.advance(head)
            prompt = prompt + head
        mask = _TimedMask(_GrammarMask(c, model.n_vocab))
    sched = Scheduler(model, 1, 4096)
    try:
        events: queue.Queue = queue.Queue()
        sched.submit(Generation(list(prompt), Sampler(1.0, seed=seed), events.put, max_tokens=n + 1,
                                mask=mask))
        events.get(timeout=600)  # the first token: after the prefill
        t0 = time.perf_counter()
        while not isinstance(events.get(timeout=600), DoneEvent):
            pass
        return (time.perf_counter() - t0) / n, mask.seconds / max(mask.calls, 1) if mask else 0.0
    finally:
        sched.close()


class _TimedMask:
    """The server's mask, timing what stays on the critical path after the forward (the wait
    for the worker thread and the boolean mask)."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0
        self.prepare = inner.prepare

    def __call__(self, output):
        t0 = time.perf_counter()
        out = self.inner(output)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--serve", action="store_true", help="through the server's scheduler")
    args = ap.parse_args()
    model = ossrun.load(args.model, n_ctx=4096, threads=args.threads)
    tok = model.tokenizer
    prompt = tok.encode("<|start|>user<|message|>Write a list.<|end|><|start|>assistant",
                        allowed_special="all")
    reasoning_grammar = harmony_grammar(response_format(SCHEMA))
    json_grammar = json.dumps({"grammars": [{"name": "main", "json_schema": {
        **SCHEMA, "x-guidance": {"whitespace_flexible": False}}}]})

    def named(grammar, name):
        def make():
            c = Constraint(tok, grammar)
            c.name = name
            return c
        return make

    modes = {"plain": lambda: None, "reasoning": named(reasoning_grammar, "reasoning"),
             "json": named(json_grammar, "json")}
    Constraint(tok, json_grammar)  # builds the llguidance tokenizer once, outside the timings
    times = {m: [] for m in modes}
    applies = {m: [] for m in modes}
    for r in range(args.rounds):
        for name, make in modes.items():
            per_token, apply_s = (run_served if args.serve else run)(model, prompt, args.tokens,
                                                                     make, seed=r)
            times[name].append(per_token)
            applies[name].append(apply_s)
    plain = statistics.median(times["plain"])
    print(f"{model.path.name}: {model.threads} threads, {model.isa}; {args.tokens} tokens x "
          f"{args.rounds} rounds (median){'; through the server scheduler' if args.serve else ''}")
    print(f"  plain       {plain * 1e3:8.2f} ms/token")
    for name in ("reasoning", "json"):
        t = statistics.median(times[name])
        alone = mask_alone(model, modes[name], args.tokens, seed=0)
        path = (f", {'wait+mask' if args.serve else 'wait+apply'} on the path "
                f"{statistics.median(applies[name]) * 1e3:.3f} ms")
        print(f"  {name:10s}  {t * 1e3:8.2f} ms/token  overhead {100 * (t - plain) / plain:+6.1f} %"
              f"  (matcher CPU {alone * 1e3:.3f} ms{path})")


if __name__ == "__main__":
    main()
