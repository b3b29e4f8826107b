"""forward_pass (csrc/forward.h) over a placement that splits the layers between backends, as the
CUDA device model's gpu_layers / cpu_moe do: here two CPU backends with their own activations
(ossrun._core.ops.forward_placed), so the hand-overs of the residual stream, the MoE block's input
and output, and the output head's input are checked on every machine. The same kernels on the same
numbers: the logits must equal the one-backend forward's bit for bit, whatever the placement.
"""

from __future__ import annotations

import numpy as np
import pytest
from golden import load
from ossrun import _core


@pytest.fixture(scope="module", params=["f32", "fast"])
def tiny(tiny_gguf, request):
    return load(tiny_gguf, precision=request.param, device="cpu")


@pytest.mark.parametrize("placement", [
    "all on 0",
    "first layers on 0, the rest on 1",   # gpu_layers
    "every MoE block on the other",       # cpu_moe all
    "alternating, output on 0",
    "random",
])
def test_a_split_placement_gives_the_one_backend_logits(tiny, placement, rng):
    L = tiny.config.block_count
    if placement == "all on 0":
        att, moe, out = [0] * L, [0] * L, 0
    elif placement.startswith("first"):
        att = [0] * (L // 2) + [1] * (L - L // 2)
        moe, out = list(att), 1
    elif placement.startswith("every"):
        att, moe, out = [1] * L, [0] * L, 1
    elif placement.startswith("alternating"):
        att = [l % 2 for l in range(L)]
        moe, out = [1 - a for a in att], 0
    else:
        att, moe = rng.integers(0, 2, L).tolist(), rng.integers(0, 2, L).tolist()
        out = int(rng.integers(0, 2))
    toks = rng.integers(0, tiny.n_vocab, 37).astype(np.int32)
    got = _core.ops.forward_placed(tiny._core, toks, att, moe, out, tiny.kv_type)
    assert np.array_equal(got, tiny.logits(toks))


def test_placement_arguments_are_checked(tiny):
    L = tiny.config.block_count
    toks = np.arange(5, dtype=np.int32)
    with pytest.raises(ValueError, match="each layer"):
        _core.ops.forward_placed(tiny._core, toks, [0] * (L - 1), [0] * L, 0)
    with pytest.raises(ValueError, match="backends are 0 and 1"):
        _core.ops.forward_placed(tiny._core, toks, [2] * L, [0] * L, 0)
    with pytest.raises(IndexError, match="outside the vocabulary"):
        _core.ops.forward_placed(tiny._core, np.array([tiny.n_vocab], np.int32), [0] * L, [1] * L, 0)
