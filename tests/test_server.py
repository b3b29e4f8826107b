"""`ossrun serve` end to end: the real server as a subprocess on a free loopback port, driven by
the official `openai` client for every endpoint (streaming and not) and by raw HTTP for errors,
SSE framing, authentication and disconnects.

The tiny model's own samples are random text, so replies that must mean something are scripted:
the server's test seam (--test-script) plays a harmony completion for prompts with a marker.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from server_util import API_KEY, Server, sse_events  # noqa: E402

CALL = ("<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json"
        '<|message|>{"city":"Paris"}<|call|>')
SCRIPT = {
    "REASON-Q": "<|channel|>analysis<|message|>Thinking hard.<|end|>"
                "<|start|>assistant<|channel|>final<|message|>The answer is 42.<|return|>",
    "WEATHER-Q": CALL,
    "SUNNY-21": "<|channel|>analysis<|message|>It is sunny.<|end|>"
                "<|start|>assistant<|channel|>final<|message|>Sunny, 21 C in Paris.<|return|>",
    "STOP-Q": "<|channel|>final<|message|>alpha beta STOPHERE gamma<|return|>",
    "BAD-HEADER": "<|channel|>final extra words here<|message|>Still readable.<|return|>",
}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def server(tiny_gguf, vocab_file, tmp_path_factory):
    s = Server(tiny_gguf, tmp_path_factory.mktemp("serve"), "--ctx", 4096, "--parallel", 2,
               "--queue", 2, "--precision", "f32", script=SCRIPT)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, headers=server.headers(), timeout=60, **kw)


# -- models, health -------------------------------------------------------------------------------

def test_models_and_health(server, client, model_id):
    assert model_id == "tiny"
    assert client.models.retrieve(model_id).id == model_id
    h = server.health()
    assert h["status"] == "ok" and h["slots"] == 2 and h["n_ctx"] == 4096


# -- Chat Completions ---------------------------------------------------------------------------

def test_chat_reasoning_is_never_in_content(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "REASON-Q"}],
        reasoning_effort="high")
    msg = r.choices[0].message
    assert msg.content == "The answer is 42."
    assert msg.model_extra["reasoning"] == "Thinking hard."
    assert msg.model_extra["reasoning_content"] == "Thinking hard."
    assert r.choices[0].finish_reason == "stop"
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert 0 < u.completion_tokens_details.reasoning_tokens < u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens >= 0


def test_chat_stream_gives_the_same_reply(client, model_id):
    stream = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "REASON-Q"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning") or ""
                        for c in chunks if c.choices)
    assert content == "The answer is 42." and reasoning == "Thinking hard."
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_sse_framing(server, model_id):
    r = post(server, "/chat/completions", {"model": model_id, "stream": True,
                                          "messages": [{"role": "user", "content": "REASON-Q"}]})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert all(name is None for name, _ in events)
    assert events[-1][1] == "[DONE]"
    for _, data in events[:-1]:
        chunk = json.loads(data)
        assert chunk["object"] == "chat.completion.chunk" and "content" not in chunk["choices"][0]["delta"] \
            or chunk["choices"][0]["delta"].get("content") is not None


def test_chat_tool_round_trip_keeps_the_reasoning(client, model_id):
    messages = [{"role": "user", "content": "WEATHER-Q in Paris?"}]
    first = client.chat.completions.create(model=model_id, messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert choice.message.model_extra["reasoning"] == "Need the weather."
    assert not choice.message.content
    # Send the call back with its reasoning: it renders as the analysis + call it was, so the
    # prompt continues the cached one through the whole previous reply.
    messages += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()],
                  "reasoning_content": choice.message.model_extra["reasoning"]},
                 {"role": "tool", "tool_call_id": call.id, "content": "SUNNY-21"}]
    second = client.chat.completions.create(model=model_id, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "Sunny, 21 C in Paris."
    assert second.choices[0].finish_reason == "stop"
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens + \
        first.usage.completion_tokens - 1


def test_chat_tool_call_streamed(client, model_id):
    stream = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "WEATHER-Q"}], tools=[WEATHER_TOOL],
        tool_choice="required", stream=True)
    calls, finish = {}, None
    for c in stream:
        d = c.choices[0].delta
        for tc in d.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            entry["id"] = tc.id or entry["id"]
            entry["name"] = (tc.function.name if tc.function else None) or entry["name"]
            entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
        finish = c.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}


def test_chat_stop_strings_length_and_logprobs(client, model_id):
    r = client.chat.completions.create(model=model_id, stop=["STOP"],
                                       messages=[{"role": "user", "content": "STOP-Q"}])
    assert r.choices[0].message.content == "alpha beta " and r.choices[0].finish_reason == "stop"
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model_id, stop="STOPHERE", stream=True, messages=[{"role": "user", "content": "STOP-Q"}])
        if c.choices]
    assert "".join(parts) == "alpha beta "
    r = client.chat.completions.create(model=model_id, max_tokens=3, temperature=0,
                                       messages=[{"role": "user", "content": "hello"}],
                                       logprobs=True, top_logprobs=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    r = client.chat.completions.create(model=model_id, max_completion_tokens=40, logprobs=True,
                                       top_logprobs=3, messages=[{"role": "user", "content": "REASON-Q"}])
    lps = r.choices[0].logprobs.content
    assert "".join(lp.token for lp in lps) == "The answer is 42."
    assert all(lp.logprob <= 0 and len(lp.top_logprobs) == 3 for lp in lps)
    assert all(lp.top_logprobs[0].logprob >= lp.top_logprobs[-1].logprob for lp in lps)


def test_malformed_header_is_parsed_leniently(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "BAD-HEADER"}])
    assert "Still readable." in r.choices[0].message.content


def test_response_format_is_accepted(client, model_id):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    r = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "REASON-Q"}],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    # The scripted test sampler ignores the mask, so the grammar gives up (it constrains real
    # sampling: tests/test_structured.py).
    assert r.choices[0].message.content == "The answer is 42."
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "REASON-Q"}],
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"


def test_structured_output_from_sampled_noise_validates(client, model_id):
    """Unscripted: the random model's samples are noise, so a reply that validates does so
    because the server's grammar constrained the final channel (both APIs' format shapes)."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2}$"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3}},
        "required": ["code", "tags"], "additionalProperties": False}
    for seed in range(2):
        r = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "Reply in JSON."}], seed=seed,
            temperature=1.0, max_tokens=400, extra_body={"max_reasoning_tokens": 4},
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
        r = client.responses.create(model=model_id, input="Reply in JSON.",
                                    temperature=1.0, max_output_tokens=400,
                                    extra_body={"max_reasoning_tokens": 4, "seed": seed},
                                    text={"format": {"type": "json_schema", "name": "a",
                                                     "schema": schema}})
        assert r.status == "completed"
        jsonschema.validate(json.loads(r.output_text), schema)


def test_strict_tool_arguments_from_sampled_noise_validate(client, model_id):
    """A `strict` function tool's arguments match its schema (objects closed), whatever the
    random model samples; a schema the grammar compiler rejects is a 400, not a 500."""
    jsonschema = pytest.importorskip("jsonschema")
    params = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                               "days": {"type": "integer", "minimum": 1,
                                                        "maximum": 7}},
              "required": ["city", "days"]}
    tool = {"type": "function", "function": {"name": "forecast", "parameters": params,
                                             "strict": True}}
    r = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Forecast?"}], tools=[tool],
        tool_choice="required", seed=3, temperature=1.0, max_tokens=300,
        extra_body={"max_reasoning_tokens": 4})
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "forecast"
    jsonschema.validate(json.loads(call.function.arguments), {**params, "additionalProperties": False})
    r = client.responses.create(model=model_id, input="Forecast?", tool_choice="required",
                                tools=[{"type": "function", "name": "forecast", "parameters": params,
                                        "strict": True}], temperature=1.0, max_output_tokens=300,
                                extra_body={"max_reasoning_tokens": 4, "seed": 3})
    (call,) = [o for o in r.output if o.type == "function_call"]
    jsonschema.validate(json.loads(call.arguments), {**params, "additionalProperties": False})
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "x"}],
                                       response_format=bad)
    assert e.value.body["param"] == "response_format"


def test_reasoning_budget_extension_field(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "REASON-Q"}],
                                       extra_body={"max_reasoning_tokens": 2})
    assert r.choices[0].finish_reason == "stop"  # accepted (the scripted sampler ignores masks)
    with pytest.raises(openai.BadRequestError, match="max_reasoning_tokens"):
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "x"}],
                                       extra_body={"max_reasoning_tokens": -1})


# -- Responses ----------------------------------------------------------------------------------

def test_responses_reasoning_and_text(client, model_id):
    r = client.responses.create(model=model_id, input="REASON-Q", instructions="Be brief.",
                                reasoning={"effort": "low"})
    assert r.status == "completed" and r.object == "response"
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == "Thinking hard."
    assert r.output_text == "The answer is 42."
    assert r.usage.output_tokens_details.reasoning_tokens > 0
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == "The answer is 42."


def test_responses_stream_events_in_order(client, model_id):
    events = list(client.responses.create(model=model_id, input="REASON-Q", stream=True))
    types = [e.type for e in events]
    assert types == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        *["response.reasoning_text.delta"] * types.count("response.reasoning_text.delta"),
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * types.count("response.output_text.delta"),
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "The answer is 42." == events[-1].response.output_text
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert reasoning == "Thinking hard."


def test_responses_tool_round_trip(client, model_id):
    tools = [{"type": "function", **WEATHER_TOOL["function"]}]
    first = client.responses.create(model=model_id, input="WEATHER-Q", tools=tools)
    assert [o.type for o in first.output] == ["reasoning", "function_call"]
    call = first.output[1]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    out = {"type": "function_call_output", "call_id": call.call_id, "output": "SUNNY-21"}
    # Through the stored conversation ...
    second = client.responses.create(model=model_id, previous_response_id=first.id, input=[out], tools=tools)
    assert second.output_text == "Sunny, 21 C in Paris."
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens + \
        first.usage.output_tokens - 1
    # ... and with the items sent back by the client, streamed.
    replayed = [o.model_dump(exclude_none=True) for o in first.output]
    items = [{"role": "user", "content": "WEATHER-Q"}, *replayed, out]
    events = list(client.responses.create(model=model_id, input=items, tools=tools, stream=True, store=False))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Sunny, 21 C in Paris."
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(events[-1].response.id)  # store=False kept nothing


def test_responses_function_call_stream_events(client, model_id):
    tools = [{"type": "function", **WEATHER_TOOL["function"]}]
    events = list(client.responses.create(model=model_id, input="WEATHER-Q", tools=tools, stream=True))
    types = [e.type for e in events]
    i = types.index("response.function_call_arguments.done")
    assert types[i + 1] == "response.output_item.done"
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == {"city": "Paris"} and json.loads(events[i].arguments) == {"city": "Paris"}
    assert events[-1].type == "response.completed"


def test_responses_incomplete_at_max_output_tokens(client, model_id):
    r = client.responses.create(model=model_id, input="REASON-Q", max_output_tokens=4)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 4


# -- Completions --------------------------------------------------------------------------------

def test_completions(client, model_id):
    r = client.completions.create(model=model_id, prompt="Hello there", max_tokens=6, temperature=0,
                                  logprobs=2)
    text = r.choices[0].text
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    assert "".join(r.choices[0].logprobs.tokens) == text
    streamed = client.completions.create(model=model_id, prompt="Hello there", max_tokens=6,
                                         temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text
    echo = client.completions.create(model=model_id, prompt="Hello there", max_tokens=6, temperature=0,
                                     echo=True)
    assert echo.choices[0].text == "Hello there" + text


# -- errors -------------------------------------------------------------------------------------

def test_bad_bodies_are_400_naming_the_field(server, model_id):
    cases = [({"model": model_id}, "messages"),
             ({"model": model_id, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
             ({"model": model_id, "messages": [{"role": "user", "content": "x"}], "temperature": 7},
              "temperature"),
             ({"model": model_id, "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "huge"},
              "reasoning_effort"),
             ({"model": model_id, "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]},
              "messages[0].tool_call_id")]
    for body, param in cases:
        r = post(server, "/chat/completions", body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and param in err["message"] and err["type"] == "invalid_request_error"
    r = httpx.post(server.url + "/chat/completions", content=b"{not json", timeout=10,
                   headers={**server.headers(), "content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = post(server, "/responses", {"model": model_id, "input": [{"type": "image_generation_call"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].type"


def test_auth(server, model_id):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}):
        r = httpx.get(server.url + "/models", headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(server.url + "/chat/completions", json={"model": model_id}, headers=headers,
                       timeout=10)
        assert r.status_code == 401
    assert httpx.get(server.base + "/health", timeout=10).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()


def test_not_found_and_too_long(server, client, model_id):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=model_id, input="x", previous_response_id="resp_unknown")
    r = post(server, "/chat/completions", {"model": model_id,
                                          "messages": [{"role": "user", "content": "hello " * 5000}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "context_length_exceeded"
    assert httpx.get(server.url + "/nowhere", headers=server.headers(), timeout=10).status_code == 404


def _open_stream(server, model_id, opened: list, stop: threading.Event):
    """A raw streaming request whose client goes away (closes the socket) when `stop` is set."""
    body = json.dumps({"model": model_id, "stream": True, "max_tokens": 3500, "temperature": 0,
                       "messages": [{"role": "user", "content": "write a lot"}]}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=0.1) as sock:
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        sock.sendall(head + body)
        first = True
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if first and data:
                opened.append(data.split(b"\r\n", 1)[0])
                first = False
            if not data:
                break


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_disconnect_stops_generation_and_the_queue_has_a_bound(server, model_id):
    before = server.health()
    stop, opened = threading.Event(), []
    # Two streams fill both slots, two more wait (the queue holds 2): the fifth gets a 429.
    threads = [threading.Thread(target=_open_stream, args=(server, model_id, opened, stop)) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    assert wait_for(lambda: server.health()["active"] == 2 and server.health()["waiting"] == 2)
    r = post(server, "/chat/completions", {"model": model_id, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
    stop.set()  # every client goes away
    for t in threads:
        t.join(30)
    assert opened == [b"HTTP/1.1 200 OK"] * 4
    assert wait_for(lambda: server.health()["active"] == 0 and server.health()["waiting"] == 0)
    after = server.health()
    assert after["cancelled"] - before["cancelled"] == 4
    assert after["generated_tokens"] - before["generated_tokens"] < 2 * 3500


def test_loading_is_503_and_responses_survive_a_restart(server, client, model_id, tiny_gguf, tmp_path):
    r = client.responses.create(model=model_id, input="REASON-Q")
    store = server.log.parent / "responses.sqlite3"
    other_dir = tmp_path
    late = Server(tiny_gguf, other_dir, "--ctx", 512, "--parallel", 1, "--store", store,
                  "--test-load-delay", 3, wait=False)
    try:
        assert wait_for(lambda: _status(late.base + "/health") == 503, timeout=90)
        r2 = httpx.get(late.url + "/models", headers=late.headers(), timeout=10)
        assert r2.status_code == 503 and r2.json()["error"]["code"] == "model_loading"
        late.wait_ready()
        again = late.client().responses.retrieve(r.id)
        assert again.output_text == "The answer is 42."
    finally:
        late.stop()


def _status(url):
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return None
