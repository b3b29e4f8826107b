"""POST /v1/completions: the legacy raw-text API. The prompt goes to the model as it is (no
harmony rendering; special-token names in it are special tokens, so a client can write harmony
itself); generation stops at <|return|>, <|call|>, <|endoftext|>, a stop string or max_tokens."""

from __future__ import annotations

import time

from fastapi import Request

from .conversation import new_id
from .engine import DoneEvent, Engine, Generation, generation
from .errors import APIError
from .schemas import CompletionRequest
from .sse import StopMatcher, event_stream, sse, stop_list


def prompt_ids(prompt, tokenizer, n_vocab: int) -> list[int]:
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        if any(not 0 <= t < n_vocab for t in prompt):
            raise APIError(400, f"Invalid value for 'prompt': token ids must be in [0, {n_vocab}).",
                           param="prompt")
        return list(prompt)
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise APIError(400, "Invalid value for 'prompt': this server takes one prompt per request.",
                           param="prompt")
        prompt = prompt[0]
    ids = tokenizer.encode(prompt, allowed_special="all")
    if not ids:
        raise APIError(400, "Invalid value for 'prompt': the prompt is empty.", param="prompt")
    return ids


class _Text:
    """Decoded text of the generated ids, streamed without splitting UTF-8 sequences."""

    def __init__(self, tokenizer, stops):
        self.tokenizer = tokenizer
        self.pending = b""
        self.stop = StopMatcher(stops)
        self.text = ""
        self.tokens: list[int] = []
        self.logprobs: list[tuple] = []

    def token(self, event) -> str:
        self.tokens.append(event.token)
        data = self.pending + self.tokenizer.decode_bytes([event.token])
        try:
            text, self.pending = data.decode("utf-8"), b""
        except UnicodeDecodeError as e:
            if e.reason != "unexpected end of data":
                text, self.pending = data.decode("utf-8", errors="replace"), b""
            else:
                text, self.pending = data[:e.start].decode("utf-8"), data[e.start:]
        if event.logprob is not None:
            self.logprobs.append((event.token, event.logprob, event.top or []))
        out = self.stop.feed(text)
        self.text += out
        return out

    def finish(self) -> str:
        out = self.stop.feed(self.pending.decode("utf-8", errors="replace")) + self.stop.flush()
        self.pending = b""
        self.text += out
        return out

    def logprobs_json(self, offset: int) -> dict:
        tok = self.tokenizer
        names = [tok.decode_bytes([t]).decode("utf-8", errors="replace") for t, _, _ in self.logprobs]
        offsets, pos = [], offset
        for name in names:
            offsets.append(pos)
            pos += len(name)
        return {"tokens": names, "token_logprobs": [lp for _, lp, _ in self.logprobs],
                "top_logprobs": [{tok.decode_bytes([i]).decode("utf-8", errors="replace"): v for i, v in top}
                                 for _, _, top in self.logprobs],
                "text_offset": offsets}


async def create(body: CompletionRequest, request: Request, engine: Engine):
    engine.require(body.model)
    tokenizer = engine.tokenizer
    prompt = prompt_ids(body.prompt, tokenizer, engine.model.n_vocab)
    engine.check_prompt(prompt)
    stops = stop_list(body.stop)
    stop_ids = engine.stop_ids | {tokenizer.special_id("<|endoftext|>")}
    gen = Generation(prompt, engine.sampler(prompt, body.temperature, body.top_p, body.seed), emit=None,
                     max_tokens=body.max_tokens, stop_ids=frozenset(stop_ids),
                     top_logprobs=body.logprobs)
    out = _Text(tokenizer, stops)
    echo = tokenizer.decode(prompt) if body.echo else ""
    meta = {"id": new_id("cmpl", "-"), "created": int(time.time()), "model": engine.model_id,
            "object": "text_completion", "system_fingerprint": None}
    done: list[DoneEvent] = []

    def finish_reason() -> str:
        if out.stop.stopped:
            return "stop"
        return "length" if done and done[0].finish_reason == "length" else "stop"

    def usage() -> dict:
        cached = done[0].cached_tokens if done else 0
        return {"prompt_tokens": len(prompt), "completion_tokens": len(out.tokens),
                "total_tokens": len(prompt) + len(out.tokens),
                "prompt_tokens_details": {"cached_tokens": cached}}

    if not body.stream:
        async with generation(engine, request, gen) as events:
            async for event in events:
                if isinstance(event, DoneEvent):
                    done.append(event)
                else:
                    out.token(event)
                    if out.stop.stopped:
                        break
        out.finish()
        logprobs = out.logprobs_json(len(echo)) if body.logprobs is not None else None
        return {**meta, "choices": [{"index": 0, "text": echo + out.text, "finish_reason": finish_reason(),
                                     "logprobs": logprobs}],
                "usage": usage()}

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    events_cm = generation(engine, request, gen)
    events = await events_cm.__aenter__()

    def chunk(text: str, finish=None) -> str:
        return sse({**meta, "choices": [{"index": 0, "text": text, "finish_reason": finish,
                                         "logprobs": None}]})

    async def chunks():
        try:
            if echo:
                yield chunk(echo)
            try:
                async for event in events:
                    if isinstance(event, DoneEvent):
                        done.append(event)
                        continue
                    yield chunk(out.token(event))  # one chunk per token, as OpenAI streams
                    if out.stop.stopped:
                        break
            except APIError as e:
                yield sse(e.body())
                return
            rest = out.finish()
            yield chunk(rest, finish=finish_reason())
            if include_usage:
                yield sse({**meta, "choices": [], "usage": usage()})
            yield sse("[DONE]")
        finally:
            await events_cm.__aexit__(None, None, None)

    return event_stream(chunks())
