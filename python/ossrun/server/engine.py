"""The served model: loaded in the background (the API answers 503 until it is ready), its
scheduler, and the bridge from the scheduler thread's events to an endpoint's async code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from ..harmony import stop_token_ids
from ..sampler import Sampler
from .errors import APIError
from .hosted_tools import HostedTools
from .scheduler import DoneEvent, ErrorEvent, Generation, QueueFull, Scheduler, TokenEvent  # noqa: F401

POLL_SECONDS = 0.1  # how often a waiting endpoint checks that its client is still there


@dataclass
class EngineOptions:
    model_path: str
    n_ctx: int | None = None
    parallel: int | None = None
    threads: int | None = None
    precision: str = "fast"
    kv_type: str | None = None          # default: per precision (ossrun.model.Model)
    name: str | None = None
    max_queue: int = 64
    tools: list = field(default_factory=list)  # built-in tools: ossrun.Browser, ossrun.PythonTool
    test_script: str | None = None      # tests only: scripted completions (ScriptedOutput)
    test_load_delay: float = 0.0        # tests only: seconds to stay "loading"
    mmap: bool | str = "auto"           # ossrun.Model's mmap: serve copies the experts when they fit


def default_parallel(model, n_ctx: int) -> int:
    """Sequences that fit in half the memory available after the weights (1 to 4)."""
    import psutil

    from ..cli import memory_estimate

    est = memory_estimate(model.config, n_ctx, 0, model.threads, model.kv_type)
    per_slot = est["kv_cache"] + est["activations"]
    return max(1, min(4, int(0.5 * psutil.virtual_memory().available // max(per_slot, 1))))


class ScriptedOutput:
    """Test seam (`ossrun serve --test-script FILE`): replaces sampling with scripted output.

    FILE holds a JSON object {marker: completion}: a request whose rendered prompt contains a
    marker gets that completion (harmony text, special tokens allowed) token by token, whatever
    the logits say; the marker found last in the prompt wins, so a tool result can pick the reply
    that follows it. Requests without a marker are sampled normally.
    """

    def __init__(self, path, tokenizer):
        script = json.loads(Path(path).read_text(encoding="utf-8"))
        self.tokenizer = tokenizer
        self.scripts = {k: tokenizer.encode(v, allowed_special="all") for k, v in script.items()}

    def sampler_for(self, prompt: list[int]):
        text = self.tokenizer.decode(prompt)
        found = [(text.rfind(marker), marker) for marker in self.scripts if marker in text]
        if not found:
            return None
        ids = iter(self.scripts[max(found)[1]])
        end = self.tokenizer.special_id("<|return|>")
        return lambda logits: next(ids, end)


class Engine:
    def __init__(self, options: EngineOptions):
        self.options = options
        self.model = None
        self.scheduler: Scheduler | None = None
        self.script: ScriptedOutput | None = None
        self.error: str | None = None
        self.hosted = HostedTools(options.tools)
        self.model_id = options.name or Path(options.model_path).stem
        self.created = int(time.time())
        self._thread = threading.Thread(target=self._load, name="ossrun-load", daemon=True)

    def load_in_background(self) -> None:
        self._thread.start()

    def _load(self) -> None:
        from ..cli import DEFAULT_CTX, _context_length
        from ..model import Model

        try:
            o = self.options
            if o.test_load_delay:
                time.sleep(o.test_load_delay)
            n_ctx = o.n_ctx or min(DEFAULT_CTX, _context_length(o.model_path))
            model = Model(o.model_path, n_ctx=n_ctx, threads=o.threads, precision=o.precision,
                          kv_type=o.kv_type, mmap=o.mmap)
            if model.tokenizer is None:
                raise ValueError(f"{o.model_path}: the model has no tokenizer")
            parallel = o.parallel or default_parallel(model, n_ctx)
            self.stop_ids = frozenset(stop_token_ids(model.tokenizer))
            self.script = ScriptedOutput(o.test_script, model.tokenizer) if o.test_script else None
            self.scheduler = Scheduler(model, parallel, n_ctx, o.max_queue, deliver=self._deliver)
            self.model = model
            print(f"ossrun: weights: {model.mmap_reason}", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - reported by /health and every request
            self.error = f"{type(e).__name__}: {e}"

    @staticmethod
    def _deliver(items) -> None:
        """The scheduler's events of one step (scheduler thread) -> their queues, one call per
        event loop (the server has one)."""
        by_loop: dict = {}
        for emit, event in items:
            by_loop.setdefault(emit.loop, []).append((emit, event))
        for loop, group in by_loop.items():
            loop.call_soon_threadsafe(_put_all, group)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        self.hosted.close()

    @property
    def ready(self) -> bool:
        return self.model is not None

    def require(self, model_name: str | None) -> None:
        """503 while loading (or failed), 404 for another model's name."""
        if self.error is not None:
            raise APIError(503, f"The model failed to load: {self.error}", code="model_load_failed")
        if not self.ready:
            raise APIError(503, "The model is loading; try again shortly.", code="model_loading")
        if model_name is not None and model_name != self.model_id:
            raise APIError(404, f"The model '{model_name}' does not exist; this server serves "
                                f"'{self.model_id}'.", param="model", code="model_not_found")

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def n_ctx(self) -> int:
        return self.scheduler.n_ctx

    def check_prompt(self, prompt: list[int]) -> None:
        if len(prompt) >= self.n_ctx:
            raise APIError(413, f"The prompt has {len(prompt)} tokens; this server's context holds "
                                f"{self.n_ctx} (a reply needs at least one more).",
                           param="messages", code="context_length_exceeded")

    def sampler(self, prompt, temperature, top_p, seed):
        scripted = self.script.sampler_for(prompt) if self.script else None
        if scripted is not None:
            return scripted
        try:
            return Sampler(1.0 if temperature is None else temperature,
                           1.0 if top_p is None else top_p, 0, seed)
        except ValueError as e:
            raise APIError(400, str(e)) from None

    def submit(self, gen: Generation) -> asyncio.Queue:
        """Submit `gen` (429 when the queue is full); its events arrive on the returned queue."""
        queue: asyncio.Queue = asyncio.Queue()
        gen.emit = _QueueEmit(asyncio.get_running_loop(), queue)
        try:
            self.scheduler.submit(gen)
        except QueueFull as e:
            raise APIError(429, f"The server is busy: {e}.", code="queue_full") from None
        return queue

    async def events(self, request: Request, gen: Generation, queue: asyncio.Queue):
        """Yield a started generation's TokenEvents, then its DoneEvent; returns early when the
        client disconnects (the caller cancels the generation). The disconnect check runs at most
        every POLL_SECONDS, not per token (it was a third of the event loop's time per token)."""
        loop = asyncio.get_running_loop()
        check_at = loop.time() + POLL_SECONDS
        while True:
            if queue.empty():
                try:
                    event = await asyncio.wait_for(queue.get(), max(check_at - loop.time(), 0.001))
                except asyncio.TimeoutError:
                    event = None
            else:
                event = queue.get_nowait()
            if event is None or loop.time() >= check_at:
                if await request.is_disconnected():
                    return
                check_at = loop.time() + POLL_SECONDS
            if event is None:
                continue
            if isinstance(event, ErrorEvent):
                raise APIError(500, event.message, type="server_error")
            yield event
            if isinstance(event, DoneEvent):
                return


class _QueueEmit:
    """A generation's emit: puts an event on its queue; runs on the queue's event loop."""

    __slots__ = ("loop", "queue")

    def __init__(self, loop, queue):
        self.loop, self.queue = loop, queue

    def __call__(self, event) -> None:
        self.queue.put_nowait(event)


def _put_all(items) -> None:
    for emit, event in items:
        emit(event)


@contextlib.asynccontextmanager
async def generation(engine: Engine, request: Request, gen: Generation):
    """`async with generation(...) as events`: submits at once (so a full queue is a 429 before
    any byte is sent) and cancels the generation, if still running, when the block ends."""
    queue = engine.submit(gen)
    events = engine.events(request, gen, queue)
    try:
        yield events
    finally:
        await events.aclose()
        engine.scheduler.cancel(gen)  # no-op once it is done


__all__ = ["DoneEvent", "Engine", "EngineOptions", "Generation", "TokenEvent", "generation"]
