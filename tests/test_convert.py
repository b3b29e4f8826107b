"""`ossrun convert` (python/ossrun/convert.py): checkpoint folders -> ggml-org GGUF.

- OpenAI's original layout (the spec fixtures): the converted files give the float32 golden
  logits and hold exactly the tensors of the fixtures' own GGUF (same bytes).
- transformers layout (tests/data/convert, made by tools/make_convert_oracle.py with
  transformers' GptOssForCausalLM): every tensor and the tokenizer metadata equal, bit for bit,
  what llama.cpp's convert_hf_to_gguf.py writes, for MXFP4 and BF16 experts and every --dense
  type; the logits equal transformers' own float32 forward.
- bad folders, configs and tensors are ModelErrors that name them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import ossrun
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from ossrun import cli, convert
from ossrun.errors import ModelError
from ossrun.gguf_reader import GgufFile
from ossrun.safetensors_reader import read_safetensors

DATA = Path(__file__).parent / "data" / "convert"
ORACLE = json.loads((DATA / "llama_cpp_oracle.json").read_text())
TOL = 1e-4  # tests/test_model.py's exact-mode bound (MODEL.md §7.4)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_convert_oracle import tokenizer_digest, write_safetensors_raw  # noqa: E402


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("convert")


# --------------------------------------------------------------------------- OpenAI layout


@pytest.mark.parametrize("fixture", ["tiny-w4", "tiny-w128"])
@pytest.mark.parametrize("dense", ["bf16", "f32"])
def test_openai_checkpoint_gives_golden_logits(fixtures_dir, out_dir, fixture, dense):
    d = fixtures_dir / fixture
    out = convert.convert(d, out_dir / f"{fixture}-{dense}.gguf", dense=dense, progress=False)
    g = np.load(d / "golden.npz")
    logits = ossrun.load(out, precision="f32").logits(g["tokens"])
    assert rel_err(logits, g["logits_ref_fp32"]) < TOL
    if dense == "bf16":  # the fixture's own GGUF was written with BF16 matrices, F32 others
        ours, theirs = GgufFile(out), GgufFile(d / "tiny.gguf")
        assert set(ours.tensors) == set(theirs.tensors)
        for name, t in theirs.tensors.items():
            assert (ours.tensors[name].ggml_type, ours.tensors[name].ne) == (t.ggml_type, t.ne), name
            assert np.array_equal(ours.tensor_bytes(name), theirs.tensor_bytes(name)), name


def test_original_subfolder_is_found(fixtures_dir, tmp_path):
    # The Hub repo keeps OpenAI's layout in original/; SRC may be the repo folder itself.
    (tmp_path / "repo" / "original").mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(fixtures_dir / "tiny-w4" / f, tmp_path / "repo" / "original" / f)
    ck = convert.open_checkpoint(tmp_path / "repo")
    assert ck.layout == "openai" and ck.folder.name == "original" and ck.tokenizer_json is None


# --------------------------------------------------------------------------- transformers layout


def _tensor_digest(path) -> dict:
    g = GgufFile(path)
    return {n: {"type": GGMLQuantizationType(t.ggml_type).name, "ne": list(t.ne),
                "sha256": hashlib.sha256(g.tensor_bytes(n)).hexdigest()} for n, t in g.tensors.items()}


@pytest.mark.parametrize("checkpoint", ["hf-mxfp4", "hf-bf16"])
@pytest.mark.parametrize("dense", ["bf16", "f16", "f32", "q8_0"])
def test_transformers_checkpoint_equals_llama_cpp(out_dir, checkpoint, dense):
    out = convert.convert(DATA / checkpoint, out_dir / f"{checkpoint}-{dense}.gguf", dense=dense,
                          progress=False)
    oracle = ORACLE["checkpoints"][checkpoint][dense]
    ours = _tensor_digest(out)
    assert sorted(ours) == sorted(oracle["tensors"])
    for name, want in oracle["tensors"].items():
        assert ours[name] == want, name
    expert = oracle["tensors"]["blk.0.ffn_up_exps.weight"]["type"]
    assert expert == ("MXFP4" if checkpoint == "hf-mxfp4" else dense.upper())
    assert tokenizer_digest(GGUFReader(out)) == oracle["tokenizer"]


@pytest.mark.parametrize("checkpoint", ["hf-mxfp4", "hf-bf16"])
def test_transformers_checkpoint_gives_transformers_logits(out_dir, checkpoint):
    ref = np.load(DATA / "transformers_logits.npz")
    out = convert.convert(DATA / checkpoint, out_dir / f"{checkpoint}-logits.gguf", dense="f32",
                          progress=False)
    m = ossrun.load(out, precision="f32")
    logits = m.logits(ref["tokens"])
    assert rel_err(logits, ref[checkpoint.replace("-", "_")]) < TOL
    # The vocabulary came from tokenizer.json: merges apply, specials are whole tokens.
    assert m.tokenizer.encode(" the") == [258]
    assert m.tokenizer.special_id("<|return|>") == 267 + 4


def test_repack_mxfp4_moves_nibbles(rng):
    blocks = rng.integers(0, 256, (3, 5, 16), dtype=np.uint8)
    scales = rng.integers(0, 256, (3, 5), dtype=np.uint8)
    out = convert.repack_mxfp4(blocks, scales)
    # OpenAI: element 2j in the low nibble of byte j, 2j+1 in the high one.
    codes = np.empty((3, 5, 32), np.uint8)
    codes[..., 0::2], codes[..., 1::2] = blocks & 15, blocks >> 4
    assert np.array_equal(out[..., 0], scales)
    for k in range(16):  # GGUF: element k low, k + 16 high
        assert np.array_equal(out[..., 1 + k] & 15, codes[..., k])
        assert np.array_equal(out[..., 1 + k] >> 4, codes[..., k + 16])


# --------------------------------------------------------------------------- vocabulary fallback


def test_o200k_fallback_without_tokenizer_json(vocab_file, tmp_path):
    ck = convert.Checkpoint(tmp_path, "openai", {}, {}, None)
    vocab = convert.vocabulary(ck, 201088, vocab_file)
    assert len(vocab.tokens) == 201088 and vocab.eos_id == 200002 and vocab.bos_id == 199998
    with pytest.raises(ModelError, match="--vocab-file"):
        convert.vocabulary(ck, 201088, tmp_path / "absent.tiktoken")


# --------------------------------------------------------------------------- the CLI


def test_cli_convert(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert cli.main(["convert", str(DATA / "hf-mxfp4"), str(out), "--dense", "q8_0"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert GgufFile(out).tensors["blk.1.attn_q.weight"].ggml_type == GGMLQuantizationType.Q8_0
    assert cli.main(["convert", str(DATA / "hf-mxfp4"), str(out)]) == 1
    assert "exists (use --force" in capsys.readouterr().err
    assert cli.main(["convert", str(DATA / "hf-mxfp4"), str(out), "--force"]) == 0


# --------------------------------------------------------------------------- bad input


def _copy(tmp_path, name="hf-mxfp4") -> Path:
    d = tmp_path / name
    shutil.copytree(DATA / name, d)
    return d


def _edit_tensors(folder: Path, edit) -> None:
    raw = {n: (t.dtype, t.shape, t.array.tobytes())
           for n, t in read_safetensors(folder / "model.safetensors").items()}
    edit(raw)
    write_safetensors_raw(folder / "model.safetensors", raw)


def _convert_fails(src, tmp_path, match):
    with pytest.raises(ModelError, match=match):
        convert.convert(src, tmp_path / "out.gguf", progress=False)
    assert not (tmp_path / "out.gguf").exists() and not (tmp_path / "out.gguf.part").exists()


def test_missing_and_unknown_folders(tmp_path):
    _convert_fails(tmp_path / "nowhere", tmp_path, "no such folder")
    (tmp_path / "f.txt").write_text("x")
    _convert_fails(tmp_path / "f.txt", tmp_path, "not a folder")
    (tmp_path / "empty").mkdir()
    _convert_fails(tmp_path / "empty", tmp_path, "no config.json")
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text('{"model_type": "llama"}')
    _convert_fails(llama, tmp_path, "not a gpt-oss checkpoint .model type 'llama'")
    d = _copy(tmp_path)
    (d / "model.safetensors").unlink()
    _convert_fails(d, tmp_path, "no .safetensors files")


def test_bad_config(tmp_path):
    d = _copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "swiglu_limit": 8.0}))
    _convert_fails(d, tmp_path, "swiglu_limit")
    del cfg["num_local_experts"]
    (d / "config.json").write_text(json.dumps(cfg))
    _convert_fails(d, tmp_path, "config key 'num_local_experts' is missing")
    (d / "config.json").write_text("[1, 2")
    _convert_fails(d, tmp_path, "not a JSON object")


def test_bad_tensors(tmp_path):
    d = _copy(tmp_path)
    name = "model.layers.1.self_attn.k_proj.weight"
    _edit_tensors(d, lambda raw: raw.pop(name))
    _convert_fails(d, tmp_path, f"tensor '{name}' is missing")

    d = _copy(tmp_path / "shape")
    blocks = "model.layers.0.mlp.experts.down_proj_blocks"

    def reshape(raw):
        dtype, shape, data = raw[blocks]
        raw[blocks] = (dtype, (shape[0], shape[1] // 2, shape[2] * 2, 16), data)

    _edit_tensors(d, reshape)
    _convert_fails(d, tmp_path,
                   f"tensor '{blocks}' has shape \\[4, 16, 4, 16\\], expected \\[4, 32, 2, 16\\]")

    d = _copy(tmp_path / "dtype")
    _edit_tensors(d, lambda raw: raw.update({name: ("I32", (16, 32), raw[name][2] * 2)}))
    _convert_fails(d, tmp_path, f"tensor '{name}' has dtype I32, expected BF16 or F16 or F32")

    d = _copy(tmp_path / "extra")
    _edit_tensors(d, lambda raw: raw.update({"model.layers.2.mlp.router.bias": ("BF16", (4,), bytes(8))}))
    _convert_fails(d, tmp_path, "'model.layers.2.mlp.router.bias' is not part of a gpt-oss model")

    d = _copy(tmp_path / "truncated")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) - 100])
    _convert_fails(d, tmp_path, "lies outside the file")


# --------------------------------------------------------------------------- streaming


def _random_openai_checkpoint(folder: Path, rng, H=512, I=512, E=64, layers=2, V=512) -> int:
    """An OpenAI-layout checkpoint of random finite bf16 bits and MXFP4 bytes; returns its size."""
    nq, nkv, d = 8, 2, 64
    (folder / "config.json").write_text(json.dumps(dict(
        num_hidden_layers=layers, num_experts=E, experts_per_token=4, vocab_size=V, hidden_size=H,
        intermediate_size=I, swiglu_limit=7.0, head_dim=d, num_attention_heads=nq,
        num_key_value_heads=nkv, sliding_window=128, initial_context_length=4096,
        rope_theta=150000.0, rope_scaling_factor=32.0, rope_ntk_alpha=1.0, rope_ntk_beta=32.0)))
    shapes = {"embedding.weight": (V, H), "norm.scale": (H,), "unembedding.weight": (V, H)}
    for n in range(layers):
        p, q = f"block.{n}.", d * (nq + 2 * nkv)
        shapes |= {p + "attn.norm.scale": (H,), p + "attn.qkv.weight": (q, H), p + "attn.qkv.bias": (q,),
                   p + "attn.sinks": (nq,), p + "attn.out.weight": (H, nq * d), p + "attn.out.bias": (H,),
                   p + "mlp.norm.scale": (H,), p + "mlp.gate.weight": (E, H), p + "mlp.gate.bias": (E,),
                   p + "mlp.mlp1_weight.blocks": (E, 2 * I, H // 32, 16),
                   p + "mlp.mlp1_weight.scales": (E, 2 * I, H // 32), p + "mlp.mlp1_bias": (E, 2 * I),
                   p + "mlp.mlp2_weight.blocks": (E, H, I // 32, 16),
                   p + "mlp.mlp2_weight.scales": (E, H, I // 32), p + "mlp.mlp2_bias": (E, H)}
    tensors = {}
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        if "weight." in name:
            tensors[name] = ("U8", shape, rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        else:  # exponents 0x60..0x7F: finite, moderate values
            bits = (rng.integers(0, 1 << 16, n, dtype=np.uint16) & 0x8FFF) | 0x3000
            tensors[name] = ("BF16", shape, bits.astype("<u2").tobytes())
    write_safetensors_raw(folder / "model.safetensors", tensors)
    return (folder / "model.safetensors").stat().st_size


def test_conversion_streams_without_holding_the_checkpoint(tmp_path, rng, monkeypatch):
    import psutil

    size = _random_openai_checkpoint(tmp_path, rng)
    peak, original = [0], convert.release_pages

    def measured(tensors):  # RSS while converting, taken after every written chunk
        original(tensors)
        peak[0] = max(peak[0], psutil.Process().memory_info().rss)

    monkeypatch.setattr(convert, "release_pages", measured)
    before = psutil.Process().memory_info().rss
    out = convert.convert(tmp_path, tmp_path / "big.gguf", dense="bf16", progress=False)
    grown = peak[0] - before
    # Without dropping each chunk's source pages, the mapped checkpoint stays resident (RSS grows
    # by its whole size); streamed, RSS grows by about one chunk.
    assert grown < 0.25 * size, f"RSS grew by {grown / 1e6:.0f} MB converting {size / 1e6:.0f} MB"
    g = GgufFile(out)
    src = read_safetensors(tmp_path / "model.safetensors")
    assert np.array_equal(g.tensor_bytes("token_embd.weight").view("<u2").reshape(512, 512),
                          src["embedding.weight"].array)
