"""POST /v1/responses and GET /v1/responses/{id}: OpenAI's Responses API on harmony.

Input items (messages, function_call, function_call_output, reasoning) become harmony messages;
the output is reasoning, message and function_call items, streamed as the API's typed events
(each with its sequence_number). Responses are stored (SQLite, see store.py) unless `store` is
false, so `previous_response_id` continues a conversation, also after a restart.
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
from .schemas import ResponsesRequest
from .sse import event_stream, sse

TEXT_PARTS = ("input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text")


def _text(content, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise APIError(400, f"Invalid value for '{param}': a string or a list of parts.", param=param)
    out = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise APIError(400, f"Invalid value for '{param}[{i}].type': this server takes text "
                                f"parts only, not {kind!r}.", param=f"{param}[{i}].type")
        out.append(part.get("text", part.get("refusal", "")) or "")
    return "".join(out)


def normalize_input(value) -> list[dict]:
    """`input` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return [dict(item) for item in value]


def items_to_spec(items: list[dict], spec: PromptSpec) -> None:
    call_names: dict[str, str] = {}
    for i, item in enumerate(items):
        param = f"input[{i}]"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            text = _text(item.get("content"), f"{param}.content")
            if role in ("system", "developer"):
                if text:
                    spec.instructions.append(text)
            elif role == "user":
                spec.turns.append(Turn("user", text))
            elif role == "assistant":
                spec.turns.append(Turn("assistant", text))
            else:
                raise APIError(400, f"Invalid value for '{param}.role': {role!r}.", param=f"{param}.role")
        elif kind == "reasoning":
            text = (_text(item.get("content"), f"{param}.content")
                    or _text(item.get("summary"), f"{param}.summary"))
            if text:
                spec.turns.append(Turn("assistant", reasoning=text))
        elif kind == "function_call":
            name, call_id = item.get("name"), item.get("call_id")
            if not isinstance(name, str) or not isinstance(call_id, str):
                raise APIError(400, f"Missing required parameter: '{param}.name' and '{param}.call_id'.",
                               param=f"{param}.name")
            args = item.get("arguments", "")
            call_names[call_id] = name
            call = ToolCallOut(call_id, name, args if isinstance(args, str) else "")
            spec.turns.append(Turn("assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            name = call_names.get(item.get("call_id"))
            if name is None:
                raise APIError(400, f"Invalid value for '{param}.call_id': no function_call before it "
                                    f"has the call_id {item.get('call_id')!r}.", param=f"{param}.call_id")
            output = item.get("output", "")
            text = output if isinstance(output, str) else _text(output, f"{param}.output")
            spec.turns.append(Turn("tool", text, tool_name=name))
        else:
            raise APIError(400, f"Invalid value for '{param}.type': {kind!r} is not supported "
                                "(message, function_call, function_call_output, reasoning).",
                           param=f"{param}.type")


def tools_of(body: ResponsesRequest):
    tools = []
    for i, t in enumerate(body.tools or []):
        if t.get("type") != "function":
            raise APIError(400, f"Invalid value for 'tools[{i}].type': only function tools are "
                                f"supported, not {t.get('type')!r}.", param=f"tools[{i}].type")
        tools.append(tool_description(t.get("name"), t.get("description"), t.get("parameters"),
                                      f"tools[{i}]"))
    return tools


class ResponseBuilder:
    """Output items and stream events as the reply is generated."""

    def __init__(self, tokenizer, base: dict):
        self.parser = OutputParser(tokenizer)
        self.base = base
        self.output: list[dict] = []
        self.seq = 0
        self._open: dict | None = None  # the item being written
        self.done: DoneEvent | None = None
        self.n_tokens = 0
        self.error: str | None = None

    def event(self, type_: str, **fields) -> str:
        data = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse(data, event=type_)

    def snapshot(self, status: str) -> dict:
        out = {**self.base, "status": status, "output": self.output}
        if status == "in_progress":
            return {**out, "output": [], "usage": None}
        if status == "incomplete":
            out["incomplete_details"] = {"reason": "max_output_tokens"}
        if status == "failed":
            out["error"] = {"code": "server_error", "message": self.error}
        done = self.done
        out["usage"] = {"input_tokens": self.base["_prompt_tokens"],
                        "input_tokens_details": {"cached_tokens": done.cached_tokens if done else 0},
                        "output_tokens": self.n_tokens,
                        "output_tokens_details": {"reasoning_tokens": self.parser.reasoning_tokens},
                        "total_tokens": self.base["_prompt_tokens"] + self.n_tokens}
        return out

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        return "incomplete" if self.done is not None and self.done.finish_reason == "length" else "completed"

    def token(self, token: int) -> list[str]:
        self.n_tokens += 1
        return self._pieces(self.parser.feed(token))

    def finish(self) -> list[str]:
        return self._pieces(self.parser.finish()) + self._close()

    def _pieces(self, pieces) -> list[str]:
        out: list[str] = []
        for p in pieces:
            if p.kind in ("reasoning", "content"):
                kind = "reasoning" if p.kind == "reasoning" else "message"
                if self._open is None or self._open["type"] != kind:
                    out += self._close() + self._open_text(kind)
                item, idx = self._open, len(self.output) - 1
                part = item["content"][0]
                text = p.text if part["text"] else p.text.removeprefix("\n\n")
                part["text"] += text
                if kind == "reasoning":
                    out.append(self.event("response.reasoning_text.delta", item_id=item["id"],
                                          output_index=idx, content_index=0, delta=text))
                else:
                    out.append(self.event("response.output_text.delta", item_id=item["id"],
                                          output_index=idx, content_index=0, delta=text, logprobs=[]))
            elif p.kind == "call_start":
                out += self._close()
                item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                        "call_id": p.call.call_id, "name": p.call.name, "arguments": ""}
                self.output.append(item)
                self._open = item
                out.append(self.event("response.output_item.added", output_index=len(self.output) - 1,
                                      item=dict(item)))
            elif p.kind == "call_args" and self._open is not None and self._open["type"] == "function_call":
                self._open["arguments"] += p.text
                out.append(self.event("response.function_call_arguments.delta", item_id=self._open["id"],
                                      output_index=len(self.output) - 1, delta=p.text))
            elif p.kind == "call_done":
                out += self._close()
        return out

    def _open_text(self, kind: str) -> list[str]:
        if kind == "reasoning":
            item = {"id": new_id("rs"), "type": "reasoning", "summary": [],
                    "content": [{"type": "reasoning_text", "text": ""}], "status": "in_progress"}
        else:
            item = {"id": new_id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                    "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]}
        self.output.append(item)
        self._open = item
        idx = len(self.output) - 1
        added = {**item, "content": []}
        return [self.event("response.output_item.added", output_index=idx, item=added),
                self.event("response.content_part.added", item_id=item["id"], output_index=idx,
                           content_index=0, part={**item["content"][0], "text": ""})]

    def _close(self) -> list[str]:
        item, self._open = self._open, None
        if item is None:
            return []
        idx = self.output.index(item)
        item["status"] = "completed" if self.status != "incomplete" else "incomplete"
        out = []
        if item["type"] == "function_call":
            out.append(self.event("response.function_call_arguments.done", item_id=item["id"],
                                  output_index=idx, name=item["name"], arguments=item["arguments"]))
        else:
            part = item["content"][0]
            kind = "reasoning_text" if item["type"] == "reasoning" else "output_text"
            extra = {} if kind == "reasoning_text" else {"logprobs": []}
            out.append(self.event(f"response.{kind}.done", item_id=item["id"], output_index=idx,
                                  content_index=0, text=part["text"], **extra))
            out.append(self.event("response.content_part.done", item_id=item["id"], output_index=idx,
                                  content_index=0, part=dict(part)))
        out.append(self.event("response.output_item.done", output_index=idx, item=dict(item)))
        return out


def public(response: dict) -> dict:
    return {k: v for k, v in response.items() if not k.startswith("_")}


async def create(body: ResponsesRequest, request: Request, engine: Engine, store):
    engine.require(body.model)
    items = normalize_input(body.input)
    history: list[dict] = []
    if body.previous_response_id:
        found = store.get(body.previous_response_id) if store else None
        if found is None:
            raise APIError(404, f"Previous response with id '{body.previous_response_id}' not found.",
                           param="previous_response_id", code="previous_response_not_found")
        previous, previous_input = found
        history = previous_input + [_as_input(o) for o in previous.get("output", [])]
    all_items = history + items
    effort = effort_of(body.reasoning.effort if body.reasoning else None, "reasoning.effort")
    spec = PromptSpec(turns=[], effort=effort)
    if body.instructions:
        spec.instructions.append(body.instructions)
    items_to_spec(all_items, spec)
    spec.tools = tools_of(body)
    choice = body.tool_choice or "auto"
    if isinstance(choice, dict):
        named = named_tool_choice(choice)
        if named is None or named not in {t.name for t in spec.tools}:
            raise APIError(400, "Invalid value for 'tool_choice': it must name one of the tools.",
                           param="tool_choice")
        choice = named
    spec.tool_choice = choice
    fmt = body.text.format if body.text else None
    spec.response_format = response_format_of(fmt, "text.format")
    tokenizer = engine.tokenizer
    prompt = render_prompt(spec, tokenizer)
    engine.check_prompt(prompt)
    gen = Generation(prompt, engine.sampler(prompt, body.temperature, body.top_p, body.seed), emit=None,
                     max_tokens=body.max_output_tokens, stop_ids=engine.stop_ids,
                     mask=token_mask_for(fmt, spec.tools, spec.tool_choice, tokenizer,
                                         engine.model.n_vocab, reasoning_budget(body)))
    base = {"id": new_id("resp"), "object": "response", "created_at": int(time.time()),
            "model": engine.model_id, "error": None, "incomplete_details": None,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": body.reasoning.effort if body.reasoning else None, "summary": None},
            "store": body.store is not False, "temperature": body.temperature, "top_p": body.top_p,
            "tools": body.tools or [], "tool_choice": body.tool_choice or "auto",
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "text": {"format": fmt or {"type": "text"}}, "truncation": "disabled",
            "metadata": body.metadata or {}, "user": None, "_prompt_tokens": len(prompt)}
    builder = ResponseBuilder(tokenizer, base)

    def save(response: dict) -> None:
        if store is not None and body.store is not False:
            store.put(response, all_items)

    if not body.stream:
        async with generation(engine, request, gen) as events:
            try:
                async for event in events:
                    if isinstance(event, DoneEvent):
                        builder.done = event
                    else:
                        builder.token(event.token)
            except APIError as e:
                builder.error = e.message
        builder.finish()
        response = public(builder.snapshot(builder.status))
        save(response)
        return response

    events_cm = generation(engine, request, gen)
    events = await events_cm.__aenter__()

    async def stream():
        try:
            yield builder.event("response.created", response=public(builder.snapshot("in_progress")))
            yield builder.event("response.in_progress", response=public(builder.snapshot("in_progress")))
            try:
                async for event in events:
                    if isinstance(event, DoneEvent):
                        builder.done = event
                    else:
                        for chunk in builder.token(event.token):
                            yield chunk
            except APIError as e:
                builder.error = e.message
            for chunk in builder.finish():
                yield chunk
            status = builder.status
            response = public(builder.snapshot(status))
            save(response)
            kind = {"completed": "response.completed", "incomplete": "response.incomplete",
                    "failed": "response.failed"}[status]
            yield builder.event(kind, response=response)
        finally:
            await events_cm.__aexit__(None, None, None)

    return event_stream(stream())


def _as_input(item: dict) -> dict:
    """An output item of a stored response as an input item of the next one."""
    if item.get("type") == "message":
        return {"type": "message", "role": "assistant", "content": item.get("content", [])}
    return item


def get(response_id: str, engine: Engine, store) -> dict:
    found = store.get(response_id) if store else None
    if found is None:
        raise APIError(404, f"No response with id '{response_id}' found.", param="response_id",
                       code="response_not_found")
    return found[0]
