"""tools/make_model.py / ossrun.model_maker: generated files follow MODEL.md §4.2, §4.2b, §4.3.

The expected layout is written out here from the spec, independently of the generator's own
tensor table. Files are tiny; the 20b/120b shapes are checked on the plan, not written.
"""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
from conftest import load_tool
from ossrun import model_maker as mm

GT = gguf.GGMLQuantizationType
E2M1 = np.array(
    [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32
)


def expected_layout(L, H, I, nq, nkv, d, E, V, mt):
    """name -> (ggml ne, type), transcribed from the table of MODEL.md §4.3."""
    f32 = GT.F32
    out = {
        "token_embd.weight": ([H, V], mt),
        "output_norm.weight": ([H], f32),
        "output.weight": ([H, V], mt),
    }
    for n in range(L):
        b = f"blk.{n}."
        out |= {
            b + "attn_norm.weight": ([H], f32),
            b + "attn_q.weight": ([H, nq * d], mt),
            b + "attn_q.bias": ([nq * d], f32),
            b + "attn_k.weight": ([H, nkv * d], mt),
            b + "attn_k.bias": ([nkv * d], f32),
            b + "attn_v.weight": ([H, nkv * d], mt),
            b + "attn_v.bias": ([nkv * d], f32),
            b + "attn_output.weight": ([nq * d, H], mt),
            b + "attn_output.bias": ([H], f32),
            b + "attn_sinks.weight": ([nq], f32),
            b + "post_attention_norm.weight": ([H], f32),
            b + "ffn_gate_inp.weight": ([H, E], f32),
            b + "ffn_gate_inp.bias": ([E], f32),
            b + "ffn_gate_exps.weight": ([H, I, E], GT.MXFP4),
            b + "ffn_gate_exps.bias": ([I, E], f32),
            b + "ffn_up_exps.weight": ([H, I, E], GT.MXFP4),
            b + "ffn_up_exps.bias": ([I, E], f32),
            b + "ffn_down_exps.weight": ([I, H, E], GT.MXFP4),
            b + "ffn_down_exps.bias": ([H, E], f32),
        }
    return out


def file_layout(reader):
    return {t.name: ([int(x) for x in t.shape], t.tensor_type) for t in reader.tensors}


def field(reader, key):
    return reader.fields[key].contents()


def tensor_bytes(reader, name):
    return next(t for t in reader.tensors if t.name == name).data


def decode_mxfp4(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, scale bytes) of ggml block_mxfp4 bytes (MODEL.md §3.3: split nibble order)."""
    blocks = raw.reshape(-1, 17)
    e, qs = blocks[:, 0], blocks[:, 1:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1)  # elements 0..15, then 16..31
    return E2M1[codes] * np.ldexp(np.float32(1), e.astype(np.int32) - 127)[:, None], e


def decode_matrix(raw: np.ndarray, ggml_type) -> np.ndarray:
    if ggml_type == GT.Q8_0:
        blocks = raw.reshape(-1).view(np.dtype([("d", "<f2"), ("qs", "i1", 32)]))
        return blocks["d"].astype(np.float32)[:, None] * blocks["qs"]
    if ggml_type == GT.BF16:
        return (raw.reshape(-1).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory):
    return mm.write_model(tmp_path_factory.mktemp("mm") / "tiny.gguf", mm.preset("tiny"), seed=0)


@pytest.fixture(scope="session")
def tiny_reader(tiny_file):
    return gguf.GGUFReader(tiny_file)


def test_tiny_layout_matches_spec(tiny_reader):
    hp = mm.PRESETS["tiny"]
    want = expected_layout(
        hp.layers,
        hp.hidden,
        hp.intermediate,
        hp.heads,
        hp.kv_heads,
        hp.head_dim,
        hp.experts,
        hp.vocab,
        GT.Q8_0,
    )
    assert file_layout(tiny_reader) == want


def test_tiny_metadata(tiny_reader):
    hp = mm.PRESETS["tiny"]
    want = {
        "general.architecture": "gpt-oss",
        "gpt-oss.block_count": hp.layers,
        "gpt-oss.context_length": 131072,
        "gpt-oss.embedding_length": hp.hidden,
        "gpt-oss.feed_forward_length": hp.intermediate,
        "gpt-oss.expert_feed_forward_length": hp.intermediate,
        "gpt-oss.attention.head_count": hp.heads,
        "gpt-oss.attention.head_count_kv": hp.kv_heads,
        "gpt-oss.attention.key_length": hp.head_dim,
        "gpt-oss.attention.value_length": hp.head_dim,
        "gpt-oss.attention.sliding_window": hp.sliding_window,
        "gpt-oss.expert_count": hp.experts,
        "gpt-oss.expert_used_count": hp.top_k,
        "gpt-oss.rope.freq_base": 150000.0,
        "gpt-oss.rope.scaling.type": "yarn",
        "gpt-oss.rope.scaling.factor": 32.0,
        "gpt-oss.rope.scaling.original_context_length": 4096,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-4o",
        # byte vocabulary: the specials start right after the 256 byte tokens
        "tokenizer.ggml.bos_token_id": 256,
        "tokenizer.ggml.eos_token_id": 260,
        "tokenizer.ggml.padding_token_id": 257,
    }
    assert {k: field(tiny_reader, k) for k in want} == want
    assert field(tiny_reader, "gpt-oss.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert "general.alignment" not in tiny_reader.fields  # the default, 32
    u32 = [k for k in want if isinstance(want[k], int)]
    assert all(tiny_reader.fields[k].types == [gguf.GGUFValueType.UINT32] for k in u32)


@pytest.mark.parametrize("name,experts,n_layers", [("20b", 32, 24), ("120b", 128, 36)])
def test_big_presets_plan_matches_spec(name, experts, n_layers):
    plans = mm.tensor_plans(mm.preset(name))
    got = {p.name: (list(p.ne), p.ggml_type) for p in plans}
    assert got == expected_layout(n_layers, 2880, 2880, 64, 8, 64, experts, 201088, GT.Q8_0)
    mx = [p for p in plans if p.ggml_type == GT.MXFP4]
    assert len(mx) == 3 * n_layers  # 72 for 20b
    assert all(p.nbytes == experts * 2880 * 1530 for p in mx)  # 1530-byte rows, no padding


def test_byte_vocab_layout(tiny_reader):
    tokens = field(tiny_reader, "tokenizer.ggml.tokens")
    types = field(tiny_reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == mm.PRESETS["tiny"].vocab
    assert tokens[32] == "Ġ" and tokens[10] == "Ċ" and tokens[65] == "A"
    assert tokens[256:277:4] == [
        "<|startoftext|>",
        "<|return|>",
        "<|start|>",
        "<|reserved_268|>",
        "<|reserved_272|>",
        "<|endofprompt|>",
    ]
    assert tokens[277] == "[PAD277]" and tokens[-1] == f"[PAD{len(tokens) - 1}]"
    assert types[:256] == [1] * 256 and types[256:277] == [3] * 21 and set(types[277:]) == {5}
    assert "tokenizer.ggml.merges" in tiny_reader.fields  # present, empty: llama.cpp needs the key
    assert tiny_reader.fields["tokenizer.ggml.merges"].data == []


def test_real_vocab_metadata(vocab_file):
    v = mm.o200k_vocab(vocab_file)
    assert len(v.tokens) == 201088 and len(v.merges) == 446189
    assert v.tokens[220] == "Ġ" and v.tokens[198] == "Ċ" and v.tokens[279] == "ĊĊ"
    assert v.merges[0] == "Ġ Ġ"  # rank 256, the first multi-byte token
    assert v.tokens[199998:200019:10] == ["<|startoftext|>", "<|message|>", "<|endofprompt|>"]
    assert v.tokens[200002] == "<|return|>" and v.tokens[200012] == "<|call|>"
    assert v.tokens[200000] == "<|reserved_200000|>" and v.tokens[200019] == "[PAD200019]"
    assert (v.bos_id, v.eos_id, v.pad_id) == (199998, 200002, 199999)
    counts = np.bincount(v.token_types)
    assert (counts[1], counts[3], counts[5]) == (199998, 21, 201088 - 200019)
    with pytest.raises(ValueError, match="at least 200019"):
        mm.o200k_vocab(vocab_file, 1000)


def test_mxfp4_blocks_are_valid_and_scaled(tiny_reader):
    hp = mm.PRESETS["tiny"]
    for kind, fan_in in [("gate", hp.hidden), ("up", hp.hidden), ("down", hp.intermediate)]:
        values, scales = decode_mxfp4(tensor_bytes(tiny_reader, f"blk.1.ffn_{kind}_exps.weight"))
        assert scales.max() < 255 and scales.min() > 0
        assert np.isfinite(values).all()
        rms = float(np.sqrt(np.mean(values**2)))
        assert 0.5 < rms * math.sqrt(fan_in) < 2, kind  # std ~ 1/sqrt(fan-in)


@pytest.mark.parametrize("matrix_type", ["f32", "f16", "bf16", "q8_0"])
def test_matrix_types(tmp_path, matrix_type):
    path = mm.write_model(tmp_path / "m.gguf", mm.preset("tiny", layers=1), matrix_type=matrix_type)
    r = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type for t in r.tensors}
    want = mm.MATRIX_TYPES[matrix_type]
    for name in [
        "token_embd.weight",
        "output.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.0.attn_v.weight",
        "blk.0.attn_output.weight",
    ]:
        assert types[name] == want
    q = decode_matrix(tensor_bytes(r, "blk.0.attn_q.weight"), want)
    assert np.isfinite(q).all()
    assert 0.7 < float(np.std(q)) * math.sqrt(mm.PRESETS["tiny"].hidden) < 1.4
    assert types["blk.0.ffn_gate_inp.weight"] == GT.F32  # the router is always F32


def test_norms_sinks_biases_are_realistic(tiny_reader):
    norm = tensor_bytes(tiny_reader, "blk.0.attn_norm.weight")
    sinks = tensor_bytes(tiny_reader, "blk.0.attn_sinks.weight")
    bias = tensor_bytes(tiny_reader, "blk.0.ffn_down_exps.bias")
    assert abs(float(norm.mean()) - 1) < 0.1
    assert 0.3 < float(np.abs(sinks).max()) < 5
    assert float(np.abs(bias).max()) < 1


def test_deterministic_for_a_seed(tmp_path, tiny_file):
    again = mm.write_model(tmp_path / "again.gguf", mm.preset("tiny"), seed=0)
    assert again.read_bytes() == tiny_file.read_bytes()
    other = gguf.GGUFReader(mm.write_model(tmp_path / "other.gguf", mm.preset("tiny"), seed=1))
    first = gguf.GGUFReader(tiny_file)
    assert file_layout(other) == file_layout(first)
    for a, b in zip(first.tensors, other.tensors):
        assert not np.array_equal(a.data, b.data), a.name


def test_overrides_are_honoured(tmp_path):
    over = {
        "layers": 3,
        "hidden": 96,
        "intermediate": 32,
        "heads": 6,
        "kv_heads": 3,
        "head_dim": 16,
        "experts": 5,
        "top_k": 3,
        "vocab": 300,
        "sliding_window": 7,
        "context_length": 2048,
    }
    r = gguf.GGUFReader(
        mm.write_model(tmp_path / "o.gguf", mm.preset("tiny", **over), matrix_type="f16")
    )
    assert file_layout(r) == expected_layout(3, 96, 32, 6, 3, 16, 5, 300, GT.F16)
    got = {
        k: field(r, "gpt-oss." + k)
        for k in [
            "block_count",
            "embedding_length",
            "expert_feed_forward_length",
            "attention.head_count",
            "attention.head_count_kv",
            "attention.key_length",
            "expert_count",
            "expert_used_count",
            "attention.sliding_window",
            "context_length",
        ]
    }
    assert list(got.values()) == [3, 96, 32, 6, 3, 16, 5, 3, 7, 2048]


def test_cli_writes_the_same_file(tmp_path, tiny_file):
    tool = load_tool("make_model")
    assert tool.main([str(tmp_path / "cli.gguf"), "--preset", "tiny", "--seed", "0"]) == 0
    assert (tmp_path / "cli.gguf").read_bytes() == tiny_file.read_bytes()
    tool.main(
        [str(tmp_path / "o.gguf"), "--layers", "1", "--vocab", "288", "--matrix-type", "bf16"]
    )
    r = gguf.GGUFReader(tmp_path / "o.gguf")
    assert field(r, "gpt-oss.block_count") == 1 and len(field(r, "tokenizer.ggml.tokens")) == 288


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"hidden": 48}, "multiples of 32"),
        ({"intermediate": 100}, "multiples of 32"),
        ({"heads": 3}, "multiple of kv_heads"),
        ({"top_k": 5}, "cannot exceed experts"),
        ({"layers": 0}, "layers must be positive"),
        ({"head_dim": 7}, "must be even"),
        ({"head_dim": 14}, "multiple of 32 for q8_0"),
        ({"vocab": 276}, "at least 277"),
    ],
)
def test_bad_hparams(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        mm.write_model(tmp_path / "bad.gguf", mm.preset("tiny", **overrides))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown preset"):
        mm.preset("7b")
    with pytest.raises(ValueError, match="matrix type 'q8_1'"):
        mm.write_model(tmp_path / "x.gguf", mm.preset("tiny"), matrix_type="q8_1")
    with pytest.raises(ValueError, match=r"hidden \(64\) must be a multiple of 256 for q4_k \(embd\)"):
        mm.write_model(tmp_path / "x.gguf", mm.preset("tiny"), role_types={"embd": "q4_k"})
    with pytest.raises(ValueError, match="seed must be non-negative"):
        mm.write_model(tmp_path / "x.gguf", mm.preset("tiny"), seed=-1)
    with pytest.raises(ValueError, match="has 512 tokens but hparams.vocab is 300"):
        mm.write_model(tmp_path / "x.gguf", mm.preset("tiny", vocab=300), vocab=mm.byte_vocab(512))
    with pytest.raises(SystemExit) as exit_info:
        load_tool("make_model").main([str(tmp_path / "x.gguf"), "--hidden", "40"])
    assert exit_info.value.code == 2
    assert "hidden (40) and intermediate (96) must be multiples of 32" in capsys.readouterr().err


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def disk_full(plan, seed):
        raise OSError("No space left on device")

    monkeypatch.setattr(mm, "tensor_chunks", disk_full)
    with pytest.raises(OSError, match="No space"):
        mm.write_model(tmp_path / "x.gguf", mm.preset("tiny"))
    assert not list(tmp_path.iterdir())
