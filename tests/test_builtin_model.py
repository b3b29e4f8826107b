"""The built-in nano model (python/ossrun/models/, trained by tools/train_nano.py).

1. ossrun's float32 logits on the shipped file equal PyTorch's float32 forward of the trained
   weights (tests/data/nano_reference.npz, written by the trainer's export): an independent
   check of the runtime on weights that are not random.
2. Its vocabulary: a small BPE with single-digit tokens and the harmony specials.

tools/eval_nano.py measures what it does on held-out prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ossrun
import pytest
from ossrun.builtin_model import builtin_model_path

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
