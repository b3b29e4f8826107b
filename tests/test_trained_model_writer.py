"""model_maker's writer of given weights (used by tools/train_nano.py for the built-in model):
the MXFP4 quantizer, the small BPE vocabulary and a round trip through ossrun's loader."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf import GGUFReader
from gguf.quants import dequantize
from ossrun import model_maker as mm
from ossrun.gguf_loader import open_gguf
from ossrun.tokenizer import tokenizer_from_gguf

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float64)


def nearest_mxfp4(values: np.ndarray) -> np.ndarray:
    """float64 reference: OCP scale 2^(floor(log2 amax) - 2), nearest E2M1 value, clip at 6."""
    blocks = values.astype(np.float64).reshape(-1, 32)
    out = np.zeros_like(blocks)
    for i, b in enumerate(blocks):
        amax = np.abs(b).max()
        if amax == 0:
            continue
        scale = 2.0 ** (np.floor(np.log2(amax)) - 2)
        mag = np.minimum(np.abs(b) / scale, 6)
        # Nearest grid value; an exact tie goes to the larger magnitude (the writer's rule),
        # hence the search over the grid from its top end.
        dist = np.abs(mag[:, None] - E2M1[None, ::-1])
        pick = E2M1[::-1][np.argmin(dist, axis=1)]
        out[i] = np.sign(b) * pick * scale
    return out.reshape(values.shape)


def test_quantize_mxfp4_rounds_to_the_nearest_value(rng):
    values = (rng.standard_normal((5, 96)) * rng.uniform(1e-3, 10, (5, 1))).astype(np.float32)
    values[0, :32] = 0  # an all-zero block
    blocks = mm.quantize_mxfp4(values)
    assert blocks.shape == (5, 3, 17)
    decoded = dequantize(blocks.reshape(5, -1), GT.MXFP4)  # gguf-py's independent decoder
    ref = nearest_mxfp4(values)
    # The reference breaks exact ties (a value midway between two grid points) as the writer
    # does, so the decoded values equal it exactly whatever the seed.
    np.testing.assert_array_equal(decoded, ref.astype(np.float32))


def test_quantize_mxfp4_is_idempotent_and_splits_nibbles(rng):
    values = dequantize(mm.quantize_mxfp4(rng.standard_normal((4, 64)).astype(np.float32))
                        .reshape(4, -1), GT.MXFP4)
    again = mm.quantize_mxfp4(values)
    np.testing.assert_array_equal(dequantize(again.reshape(4, -1), GT.MXFP4), values)
    # MODEL.md §3.5's worked example (scale byte 0x7E, split nibble order), with +0 for its -0:
    # element k and k+16 share byte k.
    codes = [*range(16), *range(15, -1, -1)]
    codes = [0 if c == 8 else c for c in codes]
    grid = np.array([(-1 if c >= 8 else 1) * E2M1[c & 7] * 0.5 for c in codes], np.float32)
    got = mm.quantize_mxfp4(grid[None])[0, 0]
    assert got[0] == 0x7E
    assert list(got[1:]) == [codes[k] | codes[k + 16] << 4 for k in range(16)]


def test_quantize_mxfp4_breaks_ties_to_the_larger_magnitude():
    # amax 4 gives scale 1, so the midpoints between E2M1 values are exact ties.
    mids = (E2M1[1:] + E2M1[:-1]) / 2
    block = np.zeros(32, np.float32)
    block[:7], block[7:14], block[14] = mids, -mids, 4.0
    decoded = dequantize(mm.quantize_mxfp4(block[None]).reshape(1, -1), GT.MXFP4)[0]
    np.testing.assert_array_equal(decoded[:7], E2M1[1:])
    np.testing.assert_array_equal(decoded[7:14], -E2M1[1:])
    np.testing.assert_array_equal(nearest_mxfp4(block[None])[0], decoded)


def test_bad_quantize_input():
    with pytest.raises(ValueError, match="multiple of 32"):
        mm.quantize_mxfp4(np.zeros((2, 40), np.float32))


def _random_weights(hp: mm.HParams, rng) -> dict:
    out = {}
    for p in mm.tensor_plans(hp, "f32"):
        out[p.name] = (rng.standard_normal(tuple(reversed(p.ne))) * p.std + p.mean).astype(np.float32)
    return out


def test_write_trained_model_round_trip(tmp_path, rng):
    hp = mm.preset("tiny", vocab=300)
    weights = _random_weights(hp, rng)
    merges = [(b"h", b"e"), (b"he", b"l"), (b"l", b"o"), (b"hel", b"lo")]
    tokens = [bytes([b]) for b in range(256)] + [a + b for a, b in merges]
    path = mm.write_trained_model(tmp_path / "m.gguf", dataclasses.asdict(hp), weights, tokens,
                                  merges, name="test")
    reader = GGUFReader(path)
    for t in reader.tensors:
        value = weights[t.name]
        if t.tensor_type == GT.MXFP4:
            decoded = dequantize(t.data, GT.MXFP4).reshape(value.shape)
            np.testing.assert_array_equal(decoded, nearest_mxfp4(value).astype(np.float32))
        else:
            assert t.tensor_type == GT.F32
            np.testing.assert_array_equal(np.asarray(t.data).reshape(value.shape), value)
    tok = tokenizer_from_gguf(open_gguf(path).reader)
    assert tok.encode("hello") == [256 + 3]  # h+e, he+l, l+o, hel+lo
    assert tok.encode("help") == [256 + 1, ord("p")]
    assert tok.decode(tok.encode("hello world")) == "hello world"
    assert tok.special_id("<|start|>") == len(tokens) + 8


def test_write_trained_model_checks_its_input(tmp_path, rng):
    hp = mm.preset("tiny", vocab=300)
    weights = _random_weights(hp, rng)
    tokens = [bytes([b]) for b in range(256)]
    del weights["output.weight"]
    with pytest.raises(ValueError, match="output.weight"):
        mm.write_trained_model(tmp_path / "m.gguf", dataclasses.asdict(hp), weights, tokens, [],
                               name="x")
    with pytest.raises(ValueError, match="256 single bytes"):
        mm.bpe_vocab([b"ab"] + tokens[1:], [], 300)
