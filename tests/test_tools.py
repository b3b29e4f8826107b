"""ossrun.tools and the chat's tool loop (HARMONY.md §5–§7, §10): schemas from Python functions,
argument checking, and scripted tool calls end to end on the tiny real-vocabulary model, where
every kind of failure reaches the model as a tool message, never the user as an exception.
"""

from __future__ import annotations

import enum
import re
from typing import Literal, Optional

import pytest
from ossrun.chat import ContentDelta, Done, ToolCall, ToolResult
from ossrun.harmony import Message, render_message
from ossrun.tools import Tool, ToolArgumentError, as_tool, function_tool, parse_docstring, validate
from test_chat import Script, tiny_chat_model


@pytest.fixture(scope="session")
def model(vocab_file, tiny_gguf):
    return tiny_chat_model(vocab_file, tiny_gguf)


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


def get_weather(city: str, unit: Unit = Unit.CELSIUS, days: int = 1) -> dict:
    """Get the current weather in a city.

    Args:
        city: The city, e.g. Paris.
        unit: Temperature unit.
        days (int): How many days to forecast,
            counting today.

    Returns:
        The weather.
    """
    return {"city": city, "unit": unit.value, "temperature": 20, "days": days}


def search(query: str, tags: Optional[list[str]] = None,  # noqa: UP045 -- typing.Optional too
           mode: Literal["fast", "deep"] = "fast", limit: float = 2.5,
           options: dict | None = None, exact: bool = False):
    """Search the notes.

    Parameters
    ----------
    query : str
        What to look for.
    limit : float
        Most results.
    """


def no_arguments():
    return "pong"


def test_schema_from_google_docstring_and_hints():
    tool = function_tool(get_weather)
    assert tool.name == "get_weather"
    assert tool.description == "Get the current weather in a city."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "city": {"description": "The city, e.g. Paris.", "type": "string"},
            "unit": {"description": "Temperature unit.", "type": "string",
                     "enum": ["celsius", "fahrenheit"], "default": "celsius"},
            "days": {"description": "How many days to forecast, counting today.",
                     "type": "integer", "default": 1},
        },
        "required": ["city"],
    }


def test_schema_of_containers_unions_literals_and_numpy_docstring():
    tool = function_tool(search)
    props = tool.parameters["properties"]
    assert tool.description == "Search the notes."
    assert tool.parameters["required"] == ["query"]
    assert props["query"] == {"description": "What to look for.", "type": "string"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "nullable": True}
    assert props["mode"] == {"type": "string", "enum": ["fast", "deep"], "default": "fast"}
    assert props["limit"] == {"description": "Most results.", "type": "number", "default": 2.5}
    assert props["options"] == {"type": "object", "nullable": True}
    assert props["exact"] == {"type": "boolean", "default": False}
    assert function_tool(no_arguments).parameters is None


def test_sphinx_docstring():
    doc = """Add two numbers.

    :param a: the first
        addend
    :param int b: the second
    :returns: the sum
    """
    assert parse_docstring(doc) == ("Add two numbers.", {"a": "the first addend", "b": "the second"})


def test_tool_dicts_and_bad_tools():
    tool = as_tool({"name": "lookup", "description": "Look a key up.",
                    "parameters": {"type": "object", "properties": {"key": {"type": "string"}},
                                   "required": ["key"]},
                    "function": lambda key: key.upper()})
    assert isinstance(tool, Tool) and tool.run('{"key": "x"}') == ("X", False)
    assert as_tool({"function": get_weather}).parameters == function_tool(get_weather).parameters
    with pytest.raises(ValueError, match="function"):
        as_tool({"name": "x"})
    with pytest.raises(TypeError):
        as_tool(42)
    with pytest.raises(ValueError, match="identifier"):
        as_tool({"name": "bad name", "function": no_arguments})


def test_validation():
    schema = function_tool(search).parameters
    assert validate({"query": "q", "limit": 3, "tags": None}, schema) == []
    assert validate({}, schema) == ["missing required argument 'query'"]
    # Messages are jsonschema's (raw-schema tools) and pydantic's (function tools), naming the
    # argument; they were hand-written ones before the validators were replaced by libraries.
    assert validate({"query": 1}, schema) == ["query: 1 is not of type 'string'"]
    assert validate({"query": "q", "exact": 1}, schema) == ["exact: 1 is not of type 'boolean'"]
    assert validate({"query": "q", "limit": True}, schema) == [
        "limit: True is not of type 'number'"]
    assert validate({"query": "q", "mode": "slow"}, schema) == [
        "mode: 'slow' is not one of ['fast', 'deep']"]
    assert validate({"query": "q", "tags": ["a", 2]}, schema) == [
        "tags[1]: 2 is not of type 'string'"]
    assert validate({"query": "q", "tags": None, "options": None}, schema) == []  # nullable
    strict = function_tool(search)
    for text, error in [('{"query": 1}', "query: Input should be a valid string"),
                        ('{"query": "q", "exact": 1}', "exact: Input should be a valid boolean"),
                        ('{"query": "q", "tags": ["a", 2]}', "tags[1]: Input should be a valid string"),
                        ('{"query": "q", "x": 2}', "unexpected keyword argument 'x'")]:
        with pytest.raises(ToolArgumentError, match=re.escape(error)):
            strict.parse_arguments(text)
    assert strict.parse_arguments('{"query": "q", "limit": 3}') == {"query": "q", "limit": 3}
    assert function_tool(get_weather).parse_arguments('{"city": "Oslo", "unit": "fahrenheit"}') \
        == {"city": "Oslo", "unit": Unit.FAHRENHEIT}
    tool = function_tool(get_weather)
    with pytest.raises(ToolArgumentError, match="JSON object"):
        tool.parse_arguments("[1, 2]")
    assert tool.run('{"city": "Oslo", "unit": "fahrenheit"}')[0] == (
        '{"city": "Oslo", "unit": "fahrenheit", "temperature": 20, "days": 1}')


def call(name: str, arguments: str) -> str:
    return (f"<|channel|>commentary to=functions.{name} <|constrain|>json"
            f"<|message|>{arguments}<|call|>")


FINAL = "<|channel|>final<|message|>It is sunny.<|return|>"


def tool_chat(model, *completions, **kwargs):
    calls = []

    def get_weather_logged(city: str) -> dict:
        """Get the weather."""
        calls.append(city)
        return {"sunny": True, "temperature": 20}

    def explode(reason: str) -> str:
        """Always fails."""
        raise RuntimeError(f"boom: {reason}")

    script = Script(model.tokenizer, *completions)
    chat = model.chat(sampler=script, date="2025-06-28", **kwargs,
                      tools=[{"name": "get_weather", "function": get_weather_logged}, explode])
    return script.attach(chat), script, calls


def test_tool_call_loop_end_to_end(model):
    tok = model.tokenizer
    chat, script, calls = tool_chat(model, call("get_weather", '{"city":"Paris"}'), FINAL)
    events = list(chat.stream("Weather in Paris?"))
    assert calls == ["Paris"]
    assert [type(e) for e in events[:2]] == [ToolCall, ToolResult]
    assert events[0] == ToolCall("get_weather", {"city": "Paris"}, "call_0")
    assert events[1] == ToolResult("get_weather", '{"sunny": true, "temperature": 20}', False)
    assert all(isinstance(e, ContentDelta) for e in events[2:-1])
    reply = events[-1].reply
    assert isinstance(events[-1], Done) and reply.content == "It is sunny."
    assert reply.tool_calls == [events[0]] and reply.finish_reason == "stop"
    assert [(m.role, m.recipient) for m in reply.messages] == [
        ("assistant", "functions.get_weather"), ("tool", "assistant"), ("assistant", None)]
    # The declaration the model saw, and the tool message it receives next (HARMONY.md §10).
    first = tok.decode(script.prompts[0])
    assert "type get_weather = (_: {\ncity: string,\n}) => any;" in first
    assert "Calls to these tools must go to the commentary channel: 'functions'." in first
    result = Message("tool", '{"sunny": true, "temperature": 20}', name="functions.get_weather",
                     recipient="assistant", channel="commentary")
    expected_tail = (render_message(result, tok) + [tok.special_id("<|start|>")]
                     + tok.encode("assistant"))
    assert script.prompts[1][-len(expected_tail):] == expected_tail
    canonical_call = tok.encode(
        '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json'
        '<|message|>{"city":"Paris"}<|call|>', allowed_special="all")
    n = len(canonical_call) + len(expected_tail)
    assert script.prompts[1][-n:-len(expected_tail)] == canonical_call
    assert reply.stats.prompt_tokens == len(script.prompts[0]) + len(script.prompts[1])


@pytest.mark.parametrize("name, arguments, error", [
    ("get_weather", '{"city": "Paris"', "not valid JSON"),
    ("get_wether", '{"city": "Paris"}', "unknown tool 'functions.get_wether'"),
    ("get_weather", '{"city": 75001}', "city: Input should be a valid string"),
    ("get_weather", '{}', "missing required argument 'city'"),
    ("get_weather", '{"city": "Paris", "when": "now"}', "unexpected keyword argument 'when'"),
    ("explode", '{"reason": "test"}', "explode raised RuntimeError: boom: test"),
])
def test_tool_failures_go_back_to_the_model(model, name, arguments, error):
    chat, script, calls = tool_chat(model, call(name, arguments), FINAL)
    reply = chat.send("Weather?")
    assert calls == [] and reply.content == "It is sunny."
    tool_message = reply.messages[1]
    assert tool_message.role == "tool" and tool_message.name == f"functions.{name}"
    assert tool_message.text.startswith("Error: ") and error in tool_message.text
    rendered = render_message(tool_message, model.tokenizer)  # then <|start|>assistant
    assert script.prompts[1][-len(rendered) - 2:-2] == rendered


def test_tool_round_limit(model):
    weather = call("get_weather", '{"city":"Rome"}')
    chat, script, calls = tool_chat(model, weather, weather, weather, FINAL, max_tool_rounds=2)
    events = list(chat.stream("Keep asking"))
    reply = events[-1].reply
    assert calls == ["Rome", "Rome"]
    assert len(reply.tool_calls) == 3
    results = [e for e in events if isinstance(e, ToolResult)]
    assert [r.is_error for r in results] == [False, False, True]
    assert "limit of 2 tool calls" in results[-1].content
    assert reply.finish_reason == "tool_limit" and "max_tool_rounds = 2" in reply.note
    assert reply.content == "" and script.gen == 3  # no generation after the limit
    assert chat.messages[-1].role == "tool"  # the history stays well-formed for the next turn
