"""POST /v1/responses and GET /v1/responses/{id}: OpenAI's Responses API on harmony.

Input items (messages, function_call, function_call_output, reasoning, code_interpreter_call)
become harmony messages; the output is reasoning, message and function_call items, streamed as the
API's typed events (each with its sequence_number). Responses are stored (SQLite, see store.py)
unless `store` is false, so `previous_response_id` continues a conversation, also after a restart.

Built-in tools (hosted_tools.py: web_search -> the browser, code_interpreter -> the python tool)
run here, within the response: when the model calls one, the server runs it, appends the result
to the prompt and generates on; the calls are web_search_call / code_interpreter_call items.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from ..harmony import Message
from ..harmony.render import render_message
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
from .hosted_tools import namespace_of
from .schemas import ResponsesRequest
from .sse import event_stream, sse

DEFAULT_MAX_TOOL_CALLS = 16  # built-in tool calls per response, unless `max_tool_calls` says
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
        elif kind == "code_interpreter_call":
            code = item.get("code") or ""
            logs = "".join(o.get("logs", "") for o in item.get("outputs") or []
                           if isinstance(o, dict) and o.get("type") == "logs")
            spec.turns.append(Turn("assistant", tool_calls=[
                ToolCallOut(item.get("id") or "", "python", code, builtin=True)]))
            spec.turns.append(Turn("tool", logs, tool_name="python", builtin=True))
        elif kind == "web_search_call":
            pass  # its pages are not kept; the answer that followed it is
        else:
            raise APIError(400, f"Invalid value for '{param}.type': {kind!r} is not supported "
                                "(message, function_call, function_call_output, reasoning, "
                                "code_interpreter_call, web_search_call).", param=f"{param}.type")


def tools_of(body: ResponsesRequest):
    tools = []
    for i, t in enumerate(body.tools or []):
        if namespace_of(t.get("type")) is not None:
            continue  # a built-in tool (hosted_tools.py)
        if t.get("type") != "function":
            raise APIError(400, f"Invalid value for 'tools[{i}].type': {t.get('type')!r} is not "
                                "supported (function, web_search, web_search_preview, "
                                "code_interpreter).", param=f"tools[{i}].type")
        tools.append(tool_description(t.get("name"), t.get("description"), t.get("parameters"),
                                      f"tools[{i}]"))
    return tools


class ResponseBuilder:
    """Output items and stream events as the reply is generated (over one or more generations:
    a built-in tool's result starts the next)."""

    def __init__(self, tokenizer, base: dict, hosted=None):
        self.tokenizer = tokenizer
        self.parser = OutputParser(tokenizer)
        self.base = base
        self.hosted = hosted            # the response's built-in tools (hosted_tools.RequestTools)
        self.output: list[dict] = []
        self.seq = 0
        self._open: dict | None = None  # the item being written
        self._calls: dict[str, object] = {}  # built-in call item id -> its ToolCallOut
        self.pending: dict | None = None  # a complete built-in call, to run
        self.done: DoneEvent | None = None
        self.n_tokens = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.reasoning_tokens = 0       # of the generations before this one
        self.builtin_calls = 0
        self.cut = False                # no room (context, max_output_tokens) to go on after a call
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
        prompt = self.prompt_tokens or self.base["_prompt_tokens"]
        out["usage"] = {"input_tokens": prompt,
                        "input_tokens_details": {"cached_tokens": self.cached_tokens},
                        "output_tokens": self.n_tokens,
                        "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens
                                                  + self.parser.reasoning_tokens},
                        "total_tokens": prompt + self.n_tokens}
        return out

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        cut = self.cut or (self.done is not None and self.done.finish_reason == "length")
        return "incomplete" if cut else "completed"

    def token(self, token: int) -> list[str]:
        self.n_tokens += 1
        return self._pieces(self.parser.feed(token))

    def finish(self) -> list[str]:
        return self._pieces(self.parser.finish()) + self._close()

    def next_generation(self) -> list[str]:
        """The generation ended with a built-in call that was run: the next one starts."""
        out = self._pieces(self.parser.finish()) + self._close()
        self.reasoning_tokens += self.parser.reasoning_tokens
        self.parser = OutputParser(self.tokenizer)
        return out

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
                tool = self.hosted.handles(p.call.name) if self.hosted is not None else None
                if tool is not None:
                    out += self._open_builtin(tool, p.call)
                    continue
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
            elif p.kind == "call_args" and self._open is not None \
                    and self._open["type"] == "code_interpreter_call":
                self._open["code"] += p.text
                out.append(self.event("response.code_interpreter_call_code.delta",
                                      item_id=self._open["id"], output_index=len(self.output) - 1,
                                      delta=p.text))
            elif p.kind == "call_done":
                out += self._close()
        return out

    # -- built-in tool calls (web_search_call, code_interpreter_call) ----------------------------

    def _open_builtin(self, tool: str, call) -> list[str]:
        if tool == "python":
            item = {"id": new_id("ci"), "type": "code_interpreter_call", "status": "in_progress",
                    "code": "", "container_id": self.hosted.container.id, "outputs": None}
        else:  # announced when its arguments are complete (web search streams no arguments)
            item = {"id": new_id("ws"), "type": "web_search_call", "status": "in_progress",
                    "action": None}
        self.output.append(item)
        self._open = item
        self._calls[item["id"]] = call
        if tool != "python":
            return []
        idx = len(self.output) - 1
        return [self.event("response.output_item.added", output_index=idx, item=dict(item)),
                self.event("response.code_interpreter_call.in_progress", item_id=item["id"],
                           output_index=idx)]

    def _close_builtin(self, item: dict) -> list[str]:
        idx = self.output.index(item)
        call = self._calls[item["id"]]
        out = []
        if item["type"] == "code_interpreter_call":
            out.append(self.event("response.code_interpreter_call_code.done", item_id=item["id"],
                                  output_index=idx, code=item["code"]))
            if call.complete:
                item["status"] = "interpreting"
                self.pending = item
                out.append(self.event("response.code_interpreter_call.interpreting",
                                      item_id=item["id"], output_index=idx))
                return out
        else:
            item["action"] = planned_web_action(call.name, call.arguments)
            out.append(self.event("response.output_item.added", output_index=idx, item=dict(item)))
            if call.complete:
                self.pending = item
                return out
        item["status"] = "incomplete"  # cut off while it was written: not run
        out.append(self.event("response.output_item.done", output_index=idx, item=dict(item)))
        return out

    def pending_call(self):
        """(item, recipient, text) of the built-in call the generation ended with, or None."""
        item, self.pending = self.pending, None
        if item is None:
            return None
        call = self._calls[item["id"]]
        return item, call.name, call.arguments

    def builtin_running(self, item: dict) -> list[str]:
        if item["type"] != "web_search_call":
            return []
        idx = self.output.index(item)
        item["status"] = "searching"
        return [self.event("response.web_search_call.in_progress", item_id=item["id"],
                           output_index=idx),
                self.event("response.web_search_call.searching", item_id=item["id"],
                           output_index=idx)]

    def builtin_done(self, item: dict, result: str | None, action: dict | None = None) -> list[str]:
        """The call was run (result None: it was not, the limit of calls was reached)."""
        idx = self.output.index(item)
        kind = item["type"]
        out = []
        if result is None:
            item["status"] = "incomplete"
        else:
            self.builtin_calls += 1
            item["status"] = "completed"
            if kind == "code_interpreter_call":
                item["outputs"] = [{"type": "logs", "logs": result}]
            elif action is not None:
                item["action"] = action
            out.append(self.event(f"response.{kind}.completed", item_id=item["id"],
                                  output_index=idx))
        out.append(self.event("response.output_item.done", output_index=idx, item=dict(item)))
        return out

    # -- text items ------------------------------------------------------------------------------

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
        if item["type"] in ("code_interpreter_call", "web_search_call"):
            return self._close_builtin(item)
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
            if kind == "output_text":
                for i, note in enumerate(self._citations(part["text"])):
                    part["annotations"].append(note)
                    out.append(self.event("response.output_text.annotation.added",
                                          item_id=item["id"], output_index=idx, content_index=0,
                                          annotation_index=i, annotation=note))
            out.append(self.event(f"response.{kind}.done", item_id=item["id"], output_index=idx,
                                  content_index=0, text=part["text"], **extra))
            out.append(self.event("response.content_part.done", item_id=item["id"], output_index=idx,
                                  content_index=0, part=dict(part)))
        out.append(self.event("response.output_item.done", output_index=idx, item=dict(item)))
        return out

    def _citations(self, text: str) -> list[dict]:
        """The answer's citations of pages this response's browser showed, as url_citation
        annotations over their markers (【cursor†Lstart-Lend】)."""
        session = self.hosted.browser_session if self.hosted is not None else None
        if session is None:
            return []
        out, start = [], 0
        for c in session.resolve_citations(text)[1]:
            at = text.find(c.marker, start)
            if at < 0:
                continue
            start = at + len(c.marker)
            out.append({"type": "url_citation", "start_index": at, "end_index": start,
                        "url": c.url, "title": c.title})
        return out


def planned_web_action(recipient: str, arguments: str) -> dict:
    """A web_search_call's action as the call's arguments state it (before it runs)."""
    from .hosted_tools import _json_object

    args = _json_object(arguments)
    name = recipient.removeprefix("browser.")
    if name == "search":
        return {"type": "search", "query": str(args.get("query", ""))}
    if name == "find":
        return {"type": "find_in_page", "pattern": str(args.get("pattern", "")), "url": ""}
    target = args.get("id")
    return {"type": "open_page", "url": target if isinstance(target, str) else None}


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
    tokenizer = engine.tokenizer
    hosted = engine.hosted.for_request(body.tools or [], all_items, tokenizer)
    spec.builtins = hosted.namespaces()
    choice, only = body.tool_choice or "auto", None
    if isinstance(choice, dict) and namespace_of(choice.get("type")) is not None:
        only = namespace_of(choice.get("type"))  # a built-in tool named by tool_choice
        if only not in hosted.tools:
            raise APIError(400, f"Invalid value for 'tool_choice': the request's tools hold no "
                                f"{choice.get('type')!r} tool.", param="tool_choice")
        spec.instructions.append(f"Use the {only} tool now.")
        choice = "builtin"
    elif isinstance(choice, dict):
        named = named_tool_choice(choice)
        if named is None or named not in {t.name for t in spec.tools}:
            raise APIError(400, "Invalid value for 'tool_choice': it must name one of the tools.",
                           param="tool_choice")
        choice = named
    spec.tool_choice = "auto" if choice == "builtin" else choice
    fmt = body.text.format if body.text else None
    spec.response_format = response_format_of(fmt, "text.format")
    prompt = render_prompt(spec, tokenizer)
    engine.check_prompt(prompt)
    budget = reasoning_budget(body)
    max_calls = _max_tool_calls(body)
    strict_tools = {t.get("name") for t in body.tools or [] if t.get("type") == "function"
                    and t.get("strict")}
    base = {"id": new_id("resp"), "object": "response", "created_at": int(time.time()),
            "model": engine.model_id, "error": None, "incomplete_details": None,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": (body.model_extra or {}).get("max_tool_calls"),
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": body.reasoning.effort if body.reasoning else None, "summary": None},
            "store": body.store is not False, "temperature": body.temperature, "top_p": body.top_p,
            "tools": body.tools or [], "tool_choice": body.tool_choice or "auto",
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "text": {"format": fmt or {"type": "text"}}, "truncation": "disabled",
            "metadata": body.metadata or {}, "user": None, "_prompt_tokens": len(prompt)}
    builder = ResponseBuilder(tokenizer, base, hosted)

    def new_generation(prompt: list[int], n: int) -> Generation:
        """The n-th generation of this response (n > 0: after n built-in tool results)."""
        left = None if body.max_output_tokens is None else body.max_output_tokens - builder.n_tokens
        seed = None if body.seed is None else body.seed + n
        used = builder.reasoning_tokens
        mask = token_mask_for(fmt, spec.tools, choice if n == 0 else "auto", tokenizer,
                              engine.model.n_vocab, None if budget is None else max(budget - used, 0),
                              builtin_recipients=hosted.recipients(only if n == 0 else None),
                              calls_allowed=builder.builtin_calls < max_calls,
                              strict_tools=strict_tools, format_param="text.format")
        return Generation(prompt, engine.sampler(prompt, body.temperature, body.top_p, seed),
                          emit=None, max_tokens=left, stop_ids=engine.stop_ids, mask=mask)

    def save(response: dict) -> None:
        if store is not None and body.store is not False:
            store.put(response, all_items)

    async def generate(gen: Generation, events_cm, events):
        """The response's generations and built-in tool calls, as stream chunks."""
        n = 0
        try:
            while True:
                builder.prompt_tokens += len(gen.prompt)
                done = None
                try:
                    async for event in events:
                        if isinstance(event, DoneEvent):
                            done = builder.done = event
                            builder.cached_tokens += event.cached_tokens
                        else:
                            for chunk in builder.token(event.token):
                                yield chunk
                except APIError as e:
                    builder.error = e.message
                finally:
                    await events_cm.__aexit__(None, None, None)
                pending = builder.pending_call()
                if done is None or builder.error or pending is None or done.finish_reason != "stop":
                    if pending is not None:
                        for chunk in builder.builtin_done(pending[0], None):
                            yield chunk
                    break
                item, recipient, text = pending
                if builder.builtin_calls >= max_calls:  # only a scripted sampler gets here
                    for chunk in builder.builtin_done(item, None):
                        yield chunk
                    break
                for chunk in builder.builtin_running(item):
                    yield chunk
                if item["type"] == "web_search_call":
                    result, _, action = await asyncio.to_thread(hosted.run_web_call, recipient, text)
                else:
                    result, _ = await asyncio.to_thread(hosted.call, recipient, text)
                    action = None
                for chunk in builder.builtin_done(item, result, action):
                    yield chunk
                for chunk in builder.next_generation():
                    yield chunk
                # The result goes to the assistant on the call's channel (HARMONY.md §10).
                call = builder_last_call(gen.output, tokenizer)
                tool_message = Message("tool", result, name=recipient, recipient="assistant",
                                       channel=call.channel if call else "analysis")
                prompt = gen.prompt + gen.output + render_message(tool_message, tokenizer) + \
                    tokenizer.encode("<|start|>assistant", allowed_special="all")
                if len(prompt) >= engine.n_ctx or (body.max_output_tokens is not None
                                                   and builder.n_tokens >= body.max_output_tokens):
                    builder.cut = True  # no room to answer after the call
                    break
                n += 1
                gen = new_generation(prompt, n)
                events_cm = generation(engine, request, gen)
                try:
                    events = await events_cm.__aenter__()
                except APIError as e:
                    builder.error = e.message
                    break
            for chunk in builder.finish():
                yield chunk
        finally:
            hosted.close()

    gen = new_generation(prompt, 0)
    events_cm = generation(engine, request, gen)
    events = await events_cm.__aenter__()  # a full queue is a 429 before anything is sent

    if not body.stream:
        async for _ in generate(gen, events_cm, events):
            pass
        response = public(builder.snapshot(builder.status))
        save(response)
        return response

    async def stream():
        yield builder.event("response.created", response=public(builder.snapshot("in_progress")))
        yield builder.event("response.in_progress", response=public(builder.snapshot("in_progress")))
        async for chunk in generate(gen, events_cm, events):
            yield chunk
        status = builder.status
        response = public(builder.snapshot(status))
        save(response)
        kind = {"completed": "response.completed", "incomplete": "response.incomplete",
                "failed": "response.failed"}[status]
        yield builder.event(kind, response=response)

    return event_stream(stream())


def builder_last_call(output: list[int], tokenizer):
    """The last message of a generation's ids (the call it ended with), or None."""
    from ..harmony import parse_messages

    try:
        messages = parse_messages(output, tokenizer, role="assistant", strict=False)
    except Exception:  # noqa: BLE001
        return None
    return messages[-1] if messages else None


def _max_tool_calls(body) -> int:
    value = (body.model_extra or {}).get("max_tool_calls")
    if value is None:
        return DEFAULT_MAX_TOOL_CALLS
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise APIError(400, "Invalid value for 'max_tool_calls': it must be an integer >= 1.",
                       param="max_tool_calls")
    return value


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
