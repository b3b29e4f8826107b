"""Ollama's gptoss blobs: the current layout (and its fused-attn_qkv variant) loads and gives
exactly the logits of the same weights in ggml-org's layout; the August-October 2025 fused
layout and broken blobs are ModelErrors naming the tensor or key."""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np
import ossrun
import pytest
from ossrun import ModelError, layout_writers, model_maker

SEED = 7
HP = model_maker.preset("tiny", layers=3)
PRE = "tokenizer.ggml.pre"


def variant(tmp_path, layout, kv_edit=None, plans_edit=None):
    """The fixture's model in `layout` with its metadata (key -> serialised entry) or tensor
    plans changed."""
    kv, plans = layout_writers.layout_model(layout, HP, model_maker.byte_vocab(HP.vocab), "test",
                                            model_maker.tensor_plans(HP, "bf16"))
    if kv_edit:
        kv_edit(kv)
    if plans_edit:
        plans = plans_edit(plans)
    return model_maker.write_gguf(tmp_path / "blob", kv, plans, seed=SEED)


def without(*names):
    return lambda plans: [p for p in plans if p.name not in names]


def renamed(old, new):
    return lambda plans: [dataclasses.replace(p, name=new) if p.name == old else p for p in plans]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny preset (3 layers: an odd count) in each layout, the same weights in all."""
    d = tmp_path_factory.mktemp("ollama")
    return {layout: model_maker.write_model(d / f"{layout}.gguf", HP, seed=SEED, matrix_type="bf16",
                                            layout=layout)
            for layout in ("ggml-org", "ollama", "ollama-qkv", "ollama-fused")}


def load_error(path, *needles):
    with pytest.raises(ModelError) as e:
        ossrun.load(path)
    for n in needles:
        assert n in str(e.value), str(e.value)
    return str(e.value)


def test_the_writer_writes_ollamas_layout(files):
    # What Ollama's converter writes for gpt-oss (its convert_gptoss.go and model/models/gptoss).
    r = gguf.GGUFReader(str(files["ollama"]))
    keys = set(r.fields)
    assert r.fields["general.architecture"].contents() == "gptoss"
    assert {"gptoss.block_count", "gptoss.feed_forward_length", "gptoss.expert_count",
            "gptoss.rope.scaling.factor", "gptoss.attention.sliding_window"} <= keys
    assert not any(k.startswith("gpt-oss.") for k in keys)
    assert "gptoss.expert_feed_forward_length" not in keys and "gptoss.rope.scaling.type" not in keys
    assert r.fields["tokenizer.ggml.pre"].contents() == "default"
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    eos = r.fields["tokenizer.ggml.eos_token_ids"].contents()
    assert [tokens[i] for i in eos] == ["<|endoftext|>", "<|return|>", "<|call|>"]
    assert tokens[r.fields["tokenizer.ggml.eos_token_id"].contents()] == "<|endoftext|>"
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.2.attn_out.weight"] == "BF16" and types["blk.2.attn_out.bias"] == "F32"
    assert types["blk.2.attn_sinks"] == "F32" and types["blk.2.ffn_norm.weight"] == "F32"
    assert types["blk.2.ffn_gate_exps.weight"] == "MXFP4" and types["token_embd.weight"] == "BF16"
    assert not any(n.endswith(("attn_output.weight", "attn_sinks.weight", "post_attention_norm.weight"))
                   for n in types)
    fused = {t.name for t in gguf.GGUFReader(str(files["ollama-qkv"])).tensors}
    assert "blk.0.attn_qkv.weight" in fused and "blk.0.attn_qkv.bias" in fused
    assert "blk.0.attn_q.weight" not in fused


@pytest.mark.parametrize("layout", ["ollama", "ollama-qkv"])
def test_same_logits_as_the_ggml_org_file(files, layout):
    tokens = np.random.default_rng(4).integers(0, 512, 29)

    def run(model):
        s = model.session()
        s.prefill(tokens[:20])
        return model.logits(tokens), np.stack([s.decode(int(t)) for t in tokens[20:]])

    want = run(ossrun.load(files["ggml-org"], precision="f32"))
    m = ossrun.load(files[layout], precision="f32")
    assert m._file.layout.name == "ollama"
    assert m.config == ossrun.load(files["ggml-org"]).config  # derived hparams included
    got = run(m)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    fast = ossrun.load(files["ggml-org"]).logits(tokens)
    assert np.array_equal(ossrun.load(files[layout]).logits(tokens), fast)


def test_fused_qkv_is_a_view_of_the_file(files):
    # q, k and v are row ranges of attn_qkv, not copies.
    m = ossrun.load(files["ollama-qkv"])
    raw = {name: t[0] for name, t in m._file.tensors.items()}
    fused = m._file.reader.tensor_bytes("blk.1.attn_qkv.weight")
    for part in ("attn_q", "attn_k", "attn_v"):
        assert np.shares_memory(raw[f"blk.1.{part}.weight"], fused)
    q = raw["blk.1.attn_q.weight"]
    assert q.ctypes.data == fused.ctypes.data
    assert q.nbytes + 2 * raw["blk.1.attn_k.weight"].nbytes == fused.nbytes


@pytest.mark.parametrize("pre", [None, "default"])
def test_pre_tokenizer_absent_or_default(files, tmp_path, pre):
    def edit(kv):
        kv.pop(PRE)
        if pre is not None:
            kv[PRE] = model_maker._kv(PRE, gguf.GGUFValueType.STRING, pre)

    path = variant(tmp_path, "ollama", kv_edit=edit)
    text = "<|start|>user<|message|>Hello, world 123<|end|>"
    got = ossrun.load(path).tokenizer.encode(text, allowed_special="all")
    assert got == ossrun.load(files["ggml-org"]).tokenizer.encode(text, allowed_special="all")


def test_real_vocabulary(tmp_path, vocab_file, tiny_gguf):
    # Ollama pads the 201088 rows past tokenizer.json's tokens as user-defined [PADn]; the harmony
    # specials are found by name all the same.
    path = model_maker.make_model(tmp_path / "blob", "tiny", seed=1, vocab_file=vocab_file,
                                  layout="ollama")
    got, want = ossrun.load(path).tokenizer, ossrun.load(tiny_gguf).tokenizer
    text = "<|start|>assistant<|channel|>final<|message|>Hi — ünïcode<|return|>"
    assert got.encode(text, allowed_special="all") == want.encode(text, allowed_special="all")
    for name in ("<|return|>", "<|call|>", "<|end|>", "<|start|>", "<|channel|>"):
        assert got.special_id(name) == want.special_id(name)


@pytest.mark.parametrize("name", ["blk.1.attn_sinks", "blk.2.ffn_norm.weight", "blk.0.attn_out.bias",
                                  "output.weight", "blk.0.ffn_gate_exps.weight"])
def test_missing_tensor(tmp_path, name):
    path = variant(tmp_path, "ollama", plans_edit=without(name))
    load_error(path, str(path), f"'{name}'", "missing")


def test_missing_fused_qkv(tmp_path):
    path = variant(tmp_path, "ollama-qkv", plans_edit=without("blk.1.attn_qkv.bias"))
    load_error(path, str(path), "'blk.1.attn_q.bias'", "missing")


def test_fused_qkv_of_the_wrong_height(tmp_path):
    def shorter(plans):
        return [dataclasses.replace(p, ne=(p.ne[0], p.ne[1] - 32), parts=())
                if p.name == "blk.1.attn_qkv.weight" else p for p in plans]

    path = variant(tmp_path, "ollama-qkv", plans_edit=shorter)
    load_error(path, str(path), "'blk.1.attn_qkv.weight' has shape", "q | k | v")


def test_missing_hparam(tmp_path):
    path = variant(tmp_path, "ollama", kv_edit=lambda kv: kv.pop("gptoss.attention.head_count_kv"))
    load_error(path, str(path), "'gptoss.attention.head_count_kv'", "missing")


def test_august_2025_blob_is_refused(files):
    message = load_error(files["ollama-fused"], str(files["ollama-fused"]), "'blk.0.")
    assert "August-October 2025" in message and "newer Ollama" in message and "ollama pull" in message


def test_interleaved_gate_up_alone_is_refused(tmp_path):
    # A fused expert tensor in type 39 (no type-4 tensor): still refused, for its row order.
    path = variant(tmp_path, "ollama", plans_edit=renamed("blk.0.ffn_gate_exps.weight",
                                                         "blk.0.ffn_gate_up_exps.weight"))
    load_error(path, "'blk.0.ffn_gate_up_exps.weight' fuses gate and up rows", "newer Ollama")


def test_llama_cpp_fused_gate_up_is_refused(tmp_path):
    path = variant(tmp_path, "ggml-org", plans_edit=renamed("blk.0.ffn_gate_exps.weight",
                                                           "blk.0.ffn_gate_up_exps.weight"))
    load_error(path, str(path), "'blk.0.ffn_gate_up_exps.weight'", "--fuse-gate-up-exps")


def test_a_tensor_under_both_names(tmp_path):
    def twice(plans):
        out = list(plans)
        out += [dataclasses.replace(p, name="blk.1.attn_out.weight", seed_name=p.name)
                for p in plans if p.name == "blk.1.attn_output.weight"]
        return out

    path = variant(tmp_path, "ggml-org", plans_edit=twice)
    load_error(path, str(path), "present twice", "'blk.1.attn_output.weight'", "'blk.1.attn_out.weight'")
