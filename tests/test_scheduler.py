"""The server's scheduler in process: continuous batching over slots, longest-prefix slot choice,
cancellation, the queue bound and the token-mask seam of constrained decoding."""

from __future__ import annotations

import queue
import time

import numpy as np
import ossrun
import pytest
from ossrun import model_maker
from ossrun.sampler import Sampler

pytest.importorskip("fastapi")

from ossrun.server.scheduler import DoneEvent, Generation, QueueFull, Scheduler, TokenEvent, _logprobs  # noqa: E402

VOCAB = 4096


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = model_maker.make_model(tmp_path_factory.mktemp("sched") / "tiny.gguf", "tiny", seed=5,
                                  vocab=VOCAB, use_byte_vocab=True)
    return ossrun.load(path, n_ctx=512, precision="f32")


def run(sched, prompt, max_tokens=8, **kw):
    q: queue.Queue = queue.Queue()
    gen = Generation(list(prompt), Sampler(0), q.put, max_tokens=max_tokens, **kw)
    sched.submit(gen)
    return gen, q


def collect(q, timeout=30):
    tokens = []
    while True:
        ev = q.get(timeout=timeout)
        if isinstance(ev, DoneEvent):
            return tokens, ev
        assert isinstance(ev, TokenEvent)
        tokens.append(ev.token)


def greedy_alone(model, prompt, n):
    return list(model.generate(prompt, n, temperature=0))


def test_batched_generations_equal_greedy_alone_and_reuse_prefixes(model, rng):
    sched = Scheduler(model, n_slots=3, n_ctx=256)
    try:
        prompts = [list(rng.integers(0, VOCAB, n)) for n in (5, 40, 17, 3)]
        runs = [run(sched, p) for p in prompts]  # 4 requests, 3 slots: one waits
        for (_gen, q), p in zip(runs, prompts):
            tokens, done = collect(q)
            assert tokens == greedy_alone(model, p, 8) and done.finish_reason == "length"
        # The same 40-token prompt with another ending lands on the slot that holds it.
        again = prompts[1][:30] + [1, 2, 3]
        _, q = run(sched, again)
        tokens, done = collect(q)
        assert done.cached_tokens == 30 and tokens == greedy_alone(model, again, 8)
        assert sched.status()["active"] == 0
    finally:
        sched.close()


def test_stop_ids_cancel_queue_bound_and_mask(model):
    sched = Scheduler(model, n_slots=1, n_ctx=256, max_queue=1)
    try:
        expected = greedy_alone(model, [7, 8, 9], 8)
        _, q = run(sched, [7, 8, 9], stop_ids=frozenset({expected[2]}))
        tokens, done = collect(q)
        assert tokens == expected[:3] and done.finish_reason == "stop"
        long_gen, long_q = run(sched, [1, 2], max_tokens=200)
        assert isinstance(long_q.get(timeout=30), TokenEvent)  # it holds the only slot
        waiting, wq = run(sched, [3, 4])
        with pytest.raises(QueueFull):
            run(sched, [5, 6])
        sched.cancel(long_gen)
        _, done = collect(long_q)
        assert done.finish_reason == "cancelled" and done.completion_tokens < 200
        collect(wq)
        # The constrained-decoding seam: the mask's allowed ids are the only ones sampled.
        allowed = np.zeros(VOCAB, bool)
        allowed[[11, 12]] = True
        _, q = run(sched, [1, 2, 3], max_tokens=6, mask=lambda out: allowed)
        tokens, _ = collect(q)
        assert set(tokens) <= {11, 12} and len(tokens) == 6
        with pytest.raises(ValueError, match="no room"):
            run(sched, list(range(256)))
    finally:
        sched.close()


def test_the_context_end_is_length(model):
    sched = Scheduler(model, n_slots=1, n_ctx=20)
    try:
        _, q = run(sched, list(range(10)), max_tokens=None)
        tokens, done = collect(q)
        assert done.finish_reason == "length" and len(tokens) == 11  # the last one is never fed
    finally:
        sched.close()


def test_the_mask_is_prepared_before_the_forward_and_applied_after(model):
    """A mask with `prepare` is started before each batched forward (so it is computed while the
    forward runs) and asked after it, for the output it was prepared for."""
    sched = Scheduler(model, n_slots=2, n_ctx=256)
    log = []
    step = sched.batch.step

    def forward(work):
        log.append(("forward",))
        return step(work)

    class Mask:
        def prepare(self, output):
            log.append(("prepare", len(output)))

        def __call__(self, output):
            log.append(("mask", len(output)))
            allowed = np.zeros(VOCAB, bool)
            allowed[[21, 22, 23]] = True
            return allowed

    sched.batch.step = forward
    try:
        _, q = run(sched, [4, 5, 6], max_tokens=5, mask=Mask())
        _, q2 = run(sched, [9, 8], max_tokens=5)  # an unconstrained neighbour in the same steps
        tokens, _ = collect(q)
        collect(q2)
        assert set(tokens) <= {21, 22, 23} and len(tokens) == 5
        masked = [e for e in log if e[0] != "forward"]
        assert masked == [e for n in range(5) for e in (("prepare", n), ("mask", n))]
        for n in range(5):
            i = log.index(("prepare", n))
            assert log[i + 1] == ("forward",) and ("mask", n) in log[i + 2:]
    finally:
        sched.close()


def test_a_new_prompt_is_prefilled_in_chunks_while_others_decode(model, rng):
    sched = Scheduler(model, n_slots=2, n_ctx=256, prefill_chunk=16)
    try:
        order = []  # (which, event), in the order the scheduler emitted them
        long_prompt, new_prompt = [5, 6, 7], list(rng.integers(0, VOCAB, 100))
        long_q: queue.Queue = queue.Queue()
        sched.submit(Generation(long_prompt, Sampler(0), lambda e: (order.append(("long", e)), long_q.put(e)),
                                max_tokens=40))
        assert isinstance(long_q.get(timeout=30), TokenEvent)  # it is decoding
        new_q: queue.Queue = queue.Queue()
        mark = len(order)
        sched.submit(Generation(new_prompt, Sampler(0), lambda e: (order.append(("new", e)), new_q.put(e)),
                                max_tokens=4))
        new_tokens, _ = collect(new_q)
        long_tokens, _ = collect(long_q)
        first_new = next(i for i, (who, _) in enumerate(order) if who == "new")
        # 100 prompt tokens at 16 per step take 7 steps, each also decoding the long stream.
        assert sum(who == "long" for who, _ in order[mark:first_new]) >= 6
        assert new_tokens == greedy_alone(model, new_prompt, 4)
        assert [order[0][1].token] + long_tokens == greedy_alone(model, long_prompt, 40)
    finally:
        sched.close()


def test_a_prefix_the_rings_lost_is_fed_in_steps_not_replayed(model, rng):
    # The tiny preset's sliding window is 4 tokens; its rings keep a chunk and a margin more
    # (1283 positions), so 1400 tokens later the first 50 are gone from them.
    sched = Scheduler(model, n_slots=1, n_ctx=1600)
    try:
        first = list(rng.integers(0, VOCAB, 1400))
        _, q = run(sched, first, max_tokens=2)
        collect(q)
        session = sched.slots[0].session
        assert session.truncates_in_place(1400) and not session.truncates_in_place(50)
        again = first[:50] + [1, 2, 3]
        _, q = run(sched, again, max_tokens=6)
        tokens, done = collect(q)
        assert done.cached_tokens == 0 and tokens == greedy_alone(model, again, 6)
    finally:
        sched.close()


def test_logprobs_match_a_float64_log_softmax(rng):
    z = rng.normal(0, 3, 5000).astype(np.float32)
    z[rng.integers(0, 5000, 300)] = -np.inf  # a constraint's mask
    token = int(np.flatnonzero(np.isfinite(z))[7])
    finite = z[np.isfinite(z)].astype(np.float64)
    lse = finite.max() + np.log(np.exp(finite - finite.max()).sum())
    lp, top = _logprobs(z, token, 5)
    assert abs(lp - (float(z[token]) - lse)) < 1e-5
    want = np.lexsort((np.arange(5000), -z))[:5]
    assert [i for i, _ in top] == want.tolist()
    np.testing.assert_allclose([v for _, v in top], z[want].astype(np.float64) - lse, atol=1e-5)


def test_deliver_takes_each_steps_events_of_all_sequences_at_once(model, rng):
    batches = []
    sched = Scheduler(model, n_slots=2, n_ctx=256, deliver=lambda items: batches.append(list(items)))
    try:
        prompts = [list(rng.integers(0, VOCAB, 6)) for _ in range(2)]
        qs = [run(sched, p, max_tokens=6)[1] for p in prompts]  # the emits, called by the test below
        deadline = time.monotonic() + 30
        while sum(isinstance(e, DoneEvent) for b in batches for _, e in b) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for batch in batches:
            for emit, event in batch:
                emit(event)  # here, as the server's event loop would
        for q, p in zip(qs, prompts):
            tokens, done = collect(q)
            assert tokens == greedy_alone(model, p, 6) and done.finish_reason == "length"
        # Once both decode, a step's two tokens come in one delivery.
        assert any(sum(isinstance(e, TokenEvent) for _, e in b) == 2 for b in batches)
        assert sched.status()["decode"]["2"]["steps"] >= 1
    finally:
        sched.close()
