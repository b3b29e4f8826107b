"""The built-in nano model (python/ossrun/models/, trained by tools/train_nano.py).

1. ossrun's float32 logits on the shipped file equal PyTorch's float32 forward of the trained
   weights (tests/data/nano_reference.npz, written by the trainer's export): an independent
   check of the runtime on weights that are not random.
2. What it does through ossrun's chat loop, sampled greedily: it calls a Python function tool
   itself and answers with the result; it answers with JSON valid for a schema stated in the
   developer message (no constrained decoding); it reasons before answering.

The prompts are held-out-style prompts the model handles reliably; tools/eval_nano.py measures
held-out accuracy over many prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import ossrun
import pytest
from ossrun.builtin_model import builtin_model_path
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


def get_weather(city: str) -> dict:
    """Get the current weather for a city.

    Args:
        city: The city name
    """
    get_weather.calls.append(city)
    return {"city": city, "temperature_c": 21, "condition": "sunny"}


def test_the_model_calls_a_python_tool_and_answers_with_its_result(nano):
    get_weather.calls = []
    chat = nano.chat(tools=[get_weather], temperature=0, date=DATE, max_tokens=200)
    reply = chat.send("What's the weather in Paris?")
    assert get_weather.calls == ["Paris"]
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert reply.finish_reason == "stop"
    assert "21" in reply.content and "sunny" in reply.content
    assert reply.reasoning
    roles = [(m.role, m.channel) for m in reply.messages]
    assert roles[0] == ("assistant", "analysis") and roles[-1] == ("assistant", "final")
    assert ("tool", "commentary") in roles


SCHEMA = {"type": "object", "properties": {"age": {"type": "integer"}, "name": {"type": "string"}},
          "required": ["age", "name"]}


def test_structured_output_is_valid_for_the_stated_schema(nano):
    instructions = ("Reply with only a JSON object that matches this schema: "
                    + json.dumps(SCHEMA, separators=(",", ":")))
    chat = nano.chat(instructions=instructions, temperature=0, date=DATE, max_tokens=200)
    reply = chat.send("The name is Alice and the age is 30.")
    assert reply.finish_reason == "stop"
    value = json.loads(reply.content)
    assert validate(value, SCHEMA) == []
    assert value == {"age": 30, "name": "Alice"}


def test_it_reasons_then_answers(nano):
    chat = nano.chat(temperature=0, date=DATE, max_tokens=300)
    reply = chat.send("What is 25 + 17?")
    assert reply.finish_reason == "stop"
    assert reply.reasoning and "42" in reply.reasoning
    assert "42" in reply.content
