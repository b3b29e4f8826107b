"""The built-in nano model (python/ossrun/models/, trained by tools/train_nano.py).

1. ossrun's float32 logits on the shipped file equal PyTorch's float32 forward of the trained
   weights (tests/data/nano_reference.npz, written by the trainer's export): an independent
   check of the runtime on weights that are not random.
2. Its vocabulary: a small BPE with single-digit tokens and the harmony specials.
3. What it does through ossrun's chat loop, sampled greedily (so each reply is deterministic):
   it calls Python functions itself, with the arguments the prompt asks for, and answers with
   what the function returned; it answers with JSON valid for a schema stated in the developer
   message (no constrained decoding); it works a sum out in its reasoning before answering.

The prompts use cities, numbers and schema field lists of tools/nano_data.py's held-out split,
which training never saw; tools/eval_nano.py measures the held-out accuracy over many prompts.
"""

from __future__ import annotations

import json
import operator
from pathlib import Path

import numpy as np
import ossrun
import pytest
from ossrun.builtin_model import builtin_model_path
from ossrun.chat import ToolResult
from ossrun.tools import validate

REFERENCE = Path(__file__).parent / "data" / "nano_reference.npz"
DATE = "2026-12-01"  # fixed, so the prompt (and the greedy reply) never depends on today


@pytest.fixture(scope="module")
def nano():
    return ossrun.load(builtin_model_path(), n_ctx=2048, precision="f32")


def test_the_builtin_model_is_small_package_data():
    path = builtin_model_path()
    assert path.parent.name == "models" and path.parent.parent.name == "ossrun"
    assert path.stat().st_size <= 8 * 2**20


def test_logits_equal_the_training_frameworks_float32_forward(nano):
    ref = np.load(REFERENCE)
    n_sequences = len([k for k in ref.files if k.startswith("tokens_")])
    assert n_sequences >= 3
    for i in range(n_sequences):
        tokens, rows = ref[f"tokens_{i}"], ref[f"positions_{i}"]
        expected = ref[f"logits_{i}"]
        got = nano.logits(tokens)[rows]
        err = np.abs(got - expected).max() / np.abs(expected).max()
        assert err < 1e-4, f"sequence {i}: max error {err:.2e} of max |logit|"
        # Not a vacuous comparison: the reference is a trained model's confident prediction.
        assert (got.argmax(-1) == expected.argmax(-1)).mean() == 1.0


def test_the_tokenizer_round_trips_harmony_text(nano):
    tok = nano.tokenizer
    text = "What's the weather in Paris? 123 + 45 = 168."
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # a BPE, not bytes
    assert [tok.decode([i]) for i in tok.encode("1234")] == ["1", "2", "3", "4"]  # digit tokens
    for name in ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>"):
        assert tok.is_special(tok.special_id(name))


def roles(reply) -> list[tuple]:
    return [(m.role, m.channel, m.recipient) for m in reply.messages]


def get_weather(city: str) -> dict:
    """Get the current weather for a city.

    Args:
        city: The city name
    """
    get_weather.calls.append(city)
    return {"city": city, "temperature_c": 23, "condition": "foggy"}


@pytest.mark.parametrize("city", ["London", "Berlin"])  # held-out cities
def test_the_model_calls_a_python_tool_and_answers_with_its_result(nano, city):
    get_weather.calls = []
    chat = nano.chat(tools=[get_weather], temperature=0, date=DATE, max_tokens=200)
    events = list(chat.stream(f"What's the weather in {city}?"))
    reply = events[-1].reply
    # The model chose the tool and passed the city the user named; the loop ran the function.
    assert get_weather.calls == [city]
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("get_weather", {"city": city})]
    results = [e for e in events if isinstance(e, ToolResult)]
    assert len(results) == 1 and not results[0].is_error
    assert roles(reply)[:3] == [("assistant", "analysis", None),
                                ("assistant", "commentary", "functions.get_weather"),
                                ("tool", "commentary", "assistant")]
    # Then it reasoned again and answered with what the function returned.
    assert roles(reply)[-1] == ("assistant", "final", None) and reply.finish_reason == "stop"
    assert "23" in reply.content and "foggy" in reply.content and city in reply.content


_OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: The expression, e.g. 12 * 7
    """
    a, op, b = expression.split()
    calculator.calls.append(expression)
    return str(_OPERATORS[op](int(a), int(b)))


def test_the_answer_is_the_value_the_function_computed(nano):
    """The model cannot know 683 * 47 itself (it multiplies one digit by two): the number in
    its answer must come from the function's result."""
    calculator.calls = []
    chat = nano.chat(tools=[calculator, get_weather], temperature=0, date=DATE, max_tokens=200)
    reply = chat.send("Use the calculator to compute 683 * 47.")
    assert calculator.calls == ["683 * 47"]
    assert reply.finish_reason == "stop"
    assert str(683 * 47) in reply.content


SCHEMA = {"type": "object",  # a held-out field list (nano_data._heldout_schema)
          "properties": {"age": {"type": "integer"}, "name": {"type": "string"},
                         "active": {"type": "boolean"}},
          "required": ["age", "name", "active"]}


def test_structured_output_is_valid_for_the_stated_schema(nano):
    instructions = ("Reply with only a JSON object that matches this schema: "
                    + json.dumps(SCHEMA, separators=(",", ":")))
    chat = nano.chat(instructions=instructions, temperature=0, date=DATE, max_tokens=200)
    reply = chat.send("The age is 41, they are active and the name is Nora.")
    assert reply.finish_reason == "stop" and reply.reasoning
    value = json.loads(reply.content)  # no constrained decoding: the model wrote valid JSON
    assert validate(value, SCHEMA) == []
    assert value == {"age": 41, "name": "Nora", "active": True}


def test_it_works_a_sum_out_in_its_reasoning_then_answers(nano):
    reply = nano.chat(temperature=0, date=DATE, max_tokens=300).send("What is 386 + 457?")
    assert reply.finish_reason == "stop"
    assert roles(reply) == [("assistant", "analysis", None), ("assistant", "final", None)]
    assert "Add the larger first: 457 + 386. Ones: 7 + 6 = 13, write 3 carry 1." in reply.reasoning
    assert "843" in reply.content


def test_reasoning_is_longer_at_high_effort(nano):
    def reasoning(effort):
        chat = nano.chat(temperature=0, date=DATE, reasoning=effort, max_tokens=300)
        return chat.send("What is 52 + 39?").reasoning

    low, high = reasoning("low"), reasoning("high")
    assert "91" in low and "91" in high
    assert len(high) > 1.5 * len(low)
