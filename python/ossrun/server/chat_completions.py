"""POST /v1/chat/completions: OpenAI's Chat Completions on harmony.

The reasoning is returned in `message.reasoning` and its alias `reasoning_content`, never in
`content`. `finish_reason` is "tool_calls" after a call, "length" when max_tokens or the context
cut the reply (what was generated is returned), else "stop".
"""

from __future__ import annotations

import time

from fastapi import Request

from .constraints import reasoning_budget, token_mask_for
from .conversation import (
    OutputParser,
    PromptSpec,
    ToolCallOut,
    Turn,
    effort_of,
    named_tool_choice,
    new_id,
    render_prompt,
    response_format_of,
    tool_description,
)
from .engine import DoneEvent, Engine, Generation, generation
from .errors import APIError
from .schemas import ChatCompletionRequest
from .sse import StopMatcher, chat_logprobs, event_stream, sse, stop_list


def content_text(content, param: str) -> str:
    """A message's content: a string, or text parts joined (other parts are refused)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise APIError(400, f"Invalid value for '{param}[{i}].type': this server takes text "
                                f"parts only, not {kind!r}.", param=f"{param}[{i}].type")
    return "".join(texts)


def prompt_spec(body: ChatCompletionRequest) -> PromptSpec:
    spec = PromptSpec(turns=[], effort=effort_of(body.reasoning_effort, "reasoning_effort"))
    call_names: dict[str, str] = {}
    for i, m in enumerate(body.messages):
        param = f"messages[{i}]"
        text = content_text(m.content, f"{param}.content")
        if m.role in ("system", "developer"):
            if text:
                spec.instructions.append(text)
        elif m.role == "user":
            spec.turns.append(Turn("user", text))
        elif m.role == "assistant":
            calls = [ToolCallOut(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or []]
            call_names.update((c.call_id, c.name) for c in calls)
            spec.turns.append(Turn("assistant", text, m.reasoning or m.reasoning_content or "", calls))
        else:
            name = call_names.get(m.tool_call_id or "") or m.name
            if name is None:
                raise APIError(400, f"Invalid value for '{param}.tool_call_id': no earlier assistant "
                                    f"tool call has the id {m.tool_call_id!r}.",
                               param=f"{param}.tool_call_id")
            spec.turns.append(Turn("tool", text, tool_name=name))
    spec.tools = [tool_description(t.function.name, t.function.description, t.function.parameters,
                                   f"tools[{i}].function") for i, t in enumerate(body.tools or [])]
    choice = body.tool_choice or "auto"
    named = named_tool_choice(choice)
    if isinstance(choice, dict):
        if named is None or named not in {t.name for t in spec.tools}:
            raise APIError(400, "Invalid value for 'tool_choice': it must name one of the tools.",
                           param="tool_choice")
        choice = named
    spec.tool_choice = choice
    spec.response_format = response_format_of(body.response_format, "response_format")
    return spec


def usage(done: DoneEvent | None, prompt_len: int, n_out: int, reasoning_tokens: int) -> dict:
    cached = done.cached_tokens if done else 0
    return {"prompt_tokens": prompt_len, "completion_tokens": n_out,
            "total_tokens": prompt_len + n_out,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens}}


class ChatReply:
    """The reply as it is generated: each token becomes the deltas of a chunk."""

    def __init__(self, tokenizer, stops: list[str], logprobs: bool):
        self.tokenizer = tokenizer
        self.parser = OutputParser(tokenizer)
        self.stop = StopMatcher(stops)
        self.want_logprobs = logprobs
        self.logprobs: list[dict] = []
        self.content = ""
        self.n_tokens = 0
        self.done: DoneEvent | None = None

    def token(self, event) -> list[dict]:
        self.n_tokens += 1
        deltas = self._deltas(self.parser.feed(event.token))
        if self.want_logprobs and any("content" in d for d in deltas):
            self.logprobs.append(chat_logprobs(self.tokenizer, event))
        return deltas

    def finish(self) -> list[dict]:
        deltas = self._deltas(self.parser.finish())
        rest = self.stop.flush()
        if rest:
            self.content += rest
            deltas.append({"content": rest})
        return deltas

    def _deltas(self, pieces) -> list[dict]:
        out = []
        for p in pieces:
            if p.kind == "reasoning":
                out.append({"reasoning": p.text, "reasoning_content": p.text})
            elif p.kind == "content":
                text = self.stop.feed(p.text)
                if text:
                    self.content += text
                    out.append({"content": text})
            elif p.kind == "call_start":
                out.append({"tool_calls": [{"index": self.parser.calls.index(p.call), "id": p.call.call_id,
                                            "type": "function",
                                            "function": {"name": p.call.name, "arguments": ""}}]})
            elif p.kind == "call_args":
                out.append({"tool_calls": [{"index": self.parser.calls.index(p.call),
                                            "function": {"arguments": p.text}}]})
        return out

    @property
    def finish_reason(self) -> str:
        if self.stop.stopped:
            return "stop"
        if self.done is not None and self.done.finish_reason == "length":
            return "length"
        return "tool_calls" if any(c.complete for c in self.parser.calls) else "stop"

    def message(self) -> dict:
        reasoning = self.parser.reasoning_text
        content = self.content if self.content or not self.parser.calls else None
        msg = {"role": "assistant", "content": content,
               "reasoning": reasoning or None, "reasoning_content": reasoning or None, "refusal": None}
        calls = [c for c in self.parser.calls if c.complete]  # a call cut off by length is not one
        if calls:
            msg["tool_calls"] = [{"id": c.call_id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
        return msg


async def create(body: ChatCompletionRequest, request: Request, engine: Engine):
    engine.require(body.model)
    spec = prompt_spec(body)
    stops = stop_list(body.stop)
    tokenizer = engine.tokenizer
    prompt = render_prompt(spec, tokenizer)
    engine.check_prompt(prompt)
    gen = Generation(
        prompt, engine.sampler(prompt, body.temperature, body.top_p, body.seed), emit=None,
        max_tokens=body.max_completion_tokens or body.max_tokens, stop_ids=engine.stop_ids,
        top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        mask=token_mask_for(body.response_format, spec.tools, spec.tool_choice, tokenizer,
                            engine.model.n_vocab, reasoning_budget(body),
                            strict_tools={t.function.name for t in body.tools or []
                                          if t.function.strict}))
    reply = ChatReply(tokenizer, stops, bool(body.logprobs))
    meta = {"id": new_id("chatcmpl", "-"), "created": int(time.time()), "model": engine.model_id,
            "system_fingerprint": None}

    if not body.stream:
        async with generation(engine, request, gen) as events:
            async for event in events:
                if isinstance(event, DoneEvent):
                    reply.done = event
                else:
                    reply.token(event)
                    if reply.stop.stopped:
                        break
        reply.finish()
        return {**meta, "object": "chat.completion", "choices": [{
            "index": 0, "message": reply.message(),
            "logprobs": {"content": reply.logprobs} if body.logprobs else None,
            "finish_reason": reply.finish_reason}],
            "usage": usage(reply.done, len(prompt), reply.n_tokens, reply.parser.reasoning_tokens)}

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    # Errors found before the first byte are plain HTTP errors; start the generation now.
    events_cm = generation(engine, request, gen)
    events = await events_cm.__aenter__()

    def chunk(delta: dict | None, finish=None, logprobs=None, **extra) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": logprobs,
                                             "finish_reason": finish}]
        body_ = {**meta, "object": "chat.completion.chunk", "choices": choices, **extra}
        if include_usage and "usage" not in body_:
            body_["usage"] = None
        return sse(body_)

    async def chunks():
        try:
            yield chunk({"role": "assistant", "content": ""})
            try:
                async for event in events:
                    if isinstance(event, DoneEvent):
                        reply.done = event
                        continue
                    n_lp = len(reply.logprobs)
                    for d in reply.token(event):
                        lp = {"content": reply.logprobs[n_lp:]} if body.logprobs and "content" in d else None
                        yield chunk(d, logprobs=lp)
                    if reply.stop.stopped:
                        break
            except APIError as e:
                yield sse(e.body())
                return
            for d in reply.finish():
                yield chunk(d)
            yield chunk({}, finish=reply.finish_reason)
            if include_usage:
                yield chunk(None, usage=usage(reply.done, len(prompt), reply.n_tokens,
                                              reply.parser.reasoning_tokens))
            yield sse("[DONE]")
        finally:
            await events_cm.__aexit__(None, None, None)

    return event_stream(chunks())
