"""`ossrun serve` on the built-in nano model: the tool round trip of the OpenAI chat API with a
model that decides to call the tool itself (tests/test_server.py scripts its model's replies).

Greedy sampling, a held-out city (tools/nano_data.py): the model's call must carry the city the
user named, and its answer the numbers the tool result gave it.
"""

from __future__ import annotations

import json

import pytest
from ossrun.builtin_model import builtin_model_path

pytest.importorskip("openai")
pytest.importorskip("httpx")

from server_util import Server  # noqa: E402

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    s = Server(builtin_model_path(), tmp_path_factory.mktemp("serve-nano"), "--ctx", 2048,
               "--precision", "f32")
    yield s.client()
    s.stop()


def test_the_model_calls_the_tool_and_answers_with_the_result(client):
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": "What's the weather in London?"}]
    first = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL],
                                           temperature=0, max_tokens=200)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "London"}
    assert choice.message.model_extra["reasoning"]
    result = {"city": "London", "temperature_c": 17, "condition": "drizzly"}
    messages += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()],
                  "reasoning_content": choice.message.model_extra["reasoning"]},
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}]
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL],
                                            temperature=0, max_tokens=200)
    answer = second.choices[0]
    assert answer.finish_reason == "stop"
    assert "17" in answer.message.content and "drizzly" in answer.message.content
