"""The built-in nano model (python/ossrun/models/, trained by tools/train_nano.py).

1. ossrun's float32 logits on the shipped file equal PyTorch's float32 forward of the trained
   weights (tests/data/nano_reference.npz, written by the trainer's export): an independent
   check of the runtime on weights that are not random.
2. Its vocabulary: a small BPE with single-digit tokens and the harmony specials.
3. The tool loop with a model that really calls tools: through ossrun's chat loop, sampled
   greedily, the model itself calls a Python function (right name, arguments valid for its
   schema), the loop runs it, and the model answers after the result.

This model is undertrained (see tools/eval_nano.py's held-out numbers): it writes well-formed
harmony and picks the right tool, but does not yet copy names or numbers from the prompt, so the
tests check the structure of what it does, not the city or the sum it writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ossrun
import pytest
from ossrun.builtin_model import builtin_model_path
from ossrun.chat import ToolResult

REFERENCE = Path(__file__).parent / "data" / "nano_reference.npz"


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


def test_the_model_calls_a_python_tool_and_answers_after_its_result(nano):
    get_weather.calls = []
    chat = nano.chat(tools=[get_weather], temperature=0, date="2026-12-01", max_tokens=200)
    events = list(chat.stream("What's the weather in Paris?"))
    reply = events[-1].reply
    # The model chose the tool and wrote schema-valid arguments; the loop ran the function.
    assert len(get_weather.calls) == 1 and isinstance(get_weather.calls[0], str)
    assert [c.name for c in reply.tool_calls] == ["get_weather"]
    assert set(reply.tool_calls[0].arguments) == {"city"}
    results = [e for e in events if isinstance(e, ToolResult)]
    assert len(results) == 1 and not results[0].is_error and '"temperature_c": 21' in results[0].content
    # Then it reasoned and answered, ending the turn by itself.
    roles = [(m.role, m.channel, m.recipient) for m in reply.messages]
    assert roles[0] == ("assistant", "analysis", None)
    assert roles[1] == ("assistant", "commentary", "functions.get_weather")
    assert roles[2] == ("tool", "commentary", "assistant")
    assert roles[-1] == ("assistant", "final", None)
    assert reply.finish_reason == "stop" and reply.content


def test_it_reasons_then_answers(nano):
    reply = nano.chat(temperature=0, date="2026-12-01", max_tokens=200).send("Hi")
    assert reply.finish_reason == "stop"
    assert "greet" in reply.reasoning
    assert reply.content.startswith(("Hello", "Hi"))
