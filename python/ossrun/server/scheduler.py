"""Continuous batching: one thread runs the model for every request in flight.

There are `n_slots` sequences, each a Session with its own KV cache. Every step is ONE core
forward (ossrun.batch) over all active sequences: each decodes its last sampled token or feeds the
next chunk of its prompt, mixed in one batch, so the dense weights are read once per step and each
expert once for all tokens routed to it. A new request goes to the free slot whose cached tokens
share the longest prefix with its prompt (prompt caching across requests). While other
sequences decode, a prompt goes in chunks of at most `prefill_chunk` tokens per step, so a new
request slows the running streams down for a while instead of stopping them for its whole
prefill; where a sliding-window ring no longer reaches back to the shared prefix, the prefix is
fed the same way rather than replayed in one go (Session.truncate would). A cancelled request
(its client went away) leaves at the next step. The queue of waiting requests has a bound.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..batch import Batch
from ..chat import common_prefix
from ..sampler import top_ids


@dataclass
class TokenEvent:
    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None  # (id, logprob), likeliest first


@dataclass
class DoneEvent:
    finish_reason: str  # "stop" (a stop token), "length" (max_tokens or the context), "cancelled"
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclass
class ErrorEvent:
    message: str


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class Generation:
    """One request's generation. `emit` is called with each event: from the scheduler thread,
    or, where the scheduler has a `deliver` function, by that (see Scheduler);
    `mask` (constrained decoding, see constraints.py) returns the allowed ids or None; if it has
    a `prepare(output)` method, the scheduler calls that before each forward pass, so that the
    mask is computed while the forward runs."""

    prompt: list[int]
    sample: Callable[[np.ndarray], int]
    emit: Callable[[object], None]
    max_tokens: int | None = None
    stop_ids: frozenset[int] = frozenset()
    top_logprobs: int | None = None  # None: no logprobs; k: the chosen id's and the k likeliest
    mask: object | None = None
    cancelled: bool = False
    output: list[int] = field(default_factory=list)


class _Slot:
    def __init__(self, session):
        self.session = session
        self.gen: Generation | None = None
        self.pending: list[int] = []    # prompt ids not prefilled yet
        self.next_id: int | None = None  # sampled, to be fed next step
        self.cached = 0
        self.last_used = 0.0


class Scheduler:
    """`deliver(items)`, where given, takes the (emit, event) pairs of each step (its tokens of all
    sequences) at once, to run the emits on another thread: one wake-up of that thread per step,
    not one per token, each of which made this thread wait for the interpreter lock while it
    handled the token. They go out as the next forward starts (or at once when none follows).
    Without it, each emit is called here as its event comes."""

    def __init__(self, model, n_slots: int, n_ctx: int, max_queue: int = 64, prefill_chunk: int = 32,
                 deliver: Callable[[list[tuple[Callable[[object], None], object]]], None] | None = None):
        if n_slots < 1:
            raise ValueError("the scheduler needs at least one slot")
        if prefill_chunk < 1:
            raise ValueError("prefill_chunk must be positive")
        self.prefill_chunk = prefill_chunk
        self.deliver = deliver
        self._outbox: list[tuple[Callable[[object], None], object]] = []
        self.model = model
        self.n_ctx = n_ctx
        self.max_queue = max_queue
        self.batch = Batch(model)
        self.slots = [_Slot(model.session(n_ctx)) for _ in range(n_slots)]
        self.waiting: collections.deque[Generation] = collections.deque()
        self.cond = threading.Condition()
        self.running = True
        self.stats = {"steps": 0, "cancelled": 0, "completed": 0, "generated_tokens": 0,
                      "prefilled_tokens": 0, "cached_tokens": 0}
        # Steps that only decode, by their number of sequences (str), for a benchmark's ms per
        # step: "step_seconds" the whole step (forward, sampling, events), "forward_seconds" the
        # model's part of it, "period_seconds" over "periods" the time from one such step's start
        # to the next one's of the same size with no idle wait between (what a client sees).
        self.decode_stats: dict[str, dict[str, float]] = {}
        self._last_decode: tuple[float, int] | None = None  # (start, sequences) of the last step
        self.thread = threading.Thread(target=self._run, name="ossrun-scheduler", daemon=True)
        self.thread.start()

    # -- called from the server's threads -----------------------------------------------------

    def submit(self, gen: Generation) -> None:
        if len(gen.prompt) >= self.n_ctx:
            raise ValueError(f"the prompt of {len(gen.prompt)} tokens leaves no room in the "
                             f"context of {self.n_ctx}")
        with self.cond:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (the bound is "
                                f"{self.max_queue})")
            self.waiting.append(gen)
            self.cond.notify()

    def cancel(self, gen: Generation) -> None:
        gen.cancelled = True
        with self.cond:
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify()
        self.thread.join(timeout=10)

    def status(self) -> dict:
        with self.cond:
            return {"slots": len(self.slots), "active": sum(s.gen is not None for s in self.slots),
                    "waiting": len(self.waiting), **self.stats,
                    "decode": {n: dict(d) for n, d in self.decode_stats.items()}}

    # -- the scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self.cond:
                while self.running and not self.waiting and not self._active():
                    self._last_decode = None
                    self.cond.wait()
                if not self.running:
                    break
                self._drop_cancelled()
                admitted = self._admit()
            for slot in admitted:
                self._start(slot)
            if self._active():
                self._step()
            if not self._active():
                self._flush()  # no step follows to hand them over in
        for slot in self._active():
            self._finish(slot, "cancelled")
        self._flush()

    def _post(self, gen: Generation, event) -> None:
        if self.deliver is None:
            gen.emit(event)
        else:
            self._outbox.append((gen.emit, event))

    def _flush(self) -> None:
        if self._outbox:
            items, self._outbox = self._outbox, []
            try:
                self.deliver(items)
            except Exception:  # noqa: BLE001 - e.g. the server's event loop closed: nobody listens
                pass

    def _active(self) -> list[_Slot]:
        return [s for s in self.slots if s.gen is not None]

    def _drop_cancelled(self) -> None:
        for gen in [g for g in self.waiting if g.cancelled]:
            self.waiting.remove(gen)
            self.stats["cancelled"] += 1
        for slot in self._active():
            if slot.gen.cancelled:
                self._finish(slot, "cancelled")

    def _admit(self) -> list[_Slot]:
        """Waiting requests (first come, first served) into free slots, each into the one whose
        cached tokens share the longest prefix with its prompt (ties: least recently used)."""
        admitted = []
        while self.waiting:
            free = [s for s in self.slots if s.gen is None]
            if not free:
                break
            gen = self.waiting.popleft()
            slot = max(free, key=lambda s: (common_prefix(gen.prompt, s.session.tokens), -s.last_used))
            slot.gen = gen
            admitted.append(slot)
        return admitted

    def _start(self, slot: _Slot) -> None:
        gen = slot.gen
        # Keep one prompt id to feed: its logits start the reply.
        reused = min(common_prefix(gen.prompt, slot.session.tokens), len(gen.prompt) - 1)
        if not slot.session.truncates_in_place(reused):
            reused = 0  # the rings lost the prefix's keys: prefill it in the steps, chunk by chunk
        try:
            slot.session.truncate(reused)
        except Exception as e:  # noqa: BLE001 - reported to the request, the slot is reset
            slot.session.reset()
            self._fail(slot, f"could not reuse the cache: {e}")
            return
        slot.cached = reused
        slot.pending = list(gen.prompt[reused:])
        slot.next_id = None
        self.stats["cached_tokens"] += reused

    def _step(self) -> None:
        t0 = time.perf_counter()
        budget = self.batch.rows
        work = []  # (slot, ids, wants the reply's next token)
        active = self._active()
        for slot in active:
            if not slot.pending and slot.next_id is not None:
                work.append((slot, [slot.next_id], True))
                budget -= 1
        if work:  # streams are decoding: a step costs about its prompt tokens, so keep them few
            budget = min(budget, self.prefill_chunk)
        for slot in active:
            if slot.pending and budget > 0:
                n = min(len(slot.pending), budget)
                chunk, slot.pending = slot.pending[:n], slot.pending[n:]
                work.append((slot, chunk, not slot.pending))
                budget -= n
                self.stats["prefilled_tokens"] += n
        if not work:
            self._flush()
            return
        for slot, _, wants in work:
            if wants:
                self._prepare_mask(slot)
        decode_only = all(len(ids) == 1 and wants and slot.gen.output for slot, ids, wants in work)
        try:
            # The last step's events go now: the event loop handles them while the forward runs
            # without the interpreter lock, instead of holding it while this thread sets up.
            self._flush()
            t1 = time.perf_counter()
            logits = self.batch.step([(slot.session, ids, False) for slot, ids, _ in work])
            t2 = time.perf_counter()
        except Exception as e:  # noqa: BLE001 - the step's requests fail, the server stays up
            for slot, _, _ in work:
                slot.session.reset()
                self._fail(slot, f"the model failed: {e}")
            return
        self.stats["steps"] += 1
        for (slot, _, wants), row in zip(work, logits):
            if wants:
                self._next_token(slot, row)
        if decode_only:
            self._count_decode(len(work), t0, t2 - t1)
        else:
            self._last_decode = None

    def _count_decode(self, n: int, start: float, forward: float) -> None:
        with self.cond:  # status() copies these from another thread
            d = self.decode_stats.setdefault(str(n), {"steps": 0, "step_seconds": 0.0, "forward_seconds": 0.0,
                                                      "periods": 0, "period_seconds": 0.0})
            d["steps"] += 1
            d["step_seconds"] += time.perf_counter() - start
            d["forward_seconds"] += forward
            if self._last_decode is not None and self._last_decode[1] == n:
                d["periods"] += 1
                d["period_seconds"] += start - self._last_decode[0]
        self._last_decode = (start, n)

    def _prepare_mask(self, slot: _Slot) -> None:
        """Start computing the mask of the token this step's logits will give (on the mask's
        worker thread: llguidance and the forward both release the GIL)."""
        prepare = getattr(slot.gen.mask, "prepare", None)
        if prepare is not None:
            try:
                prepare(slot.gen.output)
            except Exception:  # noqa: BLE001 - raised again where the mask is applied
                pass

    def _next_token(self, slot: _Slot, logits: np.ndarray) -> None:
        gen = slot.gen
        try:
            if gen.mask is not None:
                allowed = gen.mask(gen.output)
                if allowed is not None:
                    if not logits.flags.writeable:
                        logits = logits.copy()
                    np.copyto(logits, -np.inf, where=~allowed)  # in place: this row is ours
            token = int(gen.sample(logits))
        except Exception as e:  # noqa: BLE001
            self._fail(slot, f"sampling failed: {e}")
            return
        event = TokenEvent(token)
        if gen.top_logprobs is not None:
            event.logprob, event.top = _logprobs(logits, token, gen.top_logprobs)
        gen.output.append(token)
        self.stats["generated_tokens"] += 1
        self._post(gen, event)
        if token in gen.stop_ids:
            self._finish(slot, "stop")
        elif gen.max_tokens is not None and len(gen.output) >= gen.max_tokens:
            self._finish(slot, "length")
        elif slot.session.n_past >= slot.session.n_ctx:
            self._finish(slot, "length")  # no room to feed it: the context is full
        else:
            slot.next_id = token

    def _finish(self, slot: _Slot, reason: str) -> None:
        gen = slot.gen
        self.stats["cancelled" if reason == "cancelled" else "completed"] += 1
        self._post(gen, DoneEvent(reason, len(gen.prompt), slot.cached, len(gen.output)))
        self._release(slot)

    def _fail(self, slot: _Slot, message: str) -> None:
        self._post(slot.gen, ErrorEvent(message))
        self._release(slot)

    def _release(self, slot: _Slot) -> None:
        slot.gen, slot.pending, slot.next_id = None, [], None
        slot.last_used = time.monotonic()


def _logprobs(logits: np.ndarray, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen id's log-probability and the k likeliest (id, log-probability), likeliest
    first; exp in float32, the normaliser summed in float64 (masked ids are -inf: they add 0)."""
    z = np.asarray(logits, np.float32)
    m = float(z.max())
    lse = m + math.log(float(np.exp(z - m).sum(dtype=np.float64)))
    top = [(int(i), float(z[i]) - lse) for i in top_ids(z, min(k, z.size))] if k > 0 else []
    return float(z[token]) - lse, top
