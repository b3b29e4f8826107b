#!/usr/bin/env python3
"""Regenerate tests/data/convert/: two tiny transformers-layout gpt-oss checkpoints and what
llama.cpp's own convert_hf_to_gguf.py makes of them (the oracle of tests/test_convert.py).

Dev-only: needs torch (`pip install torch==2.13.0` first), transformers, tokenizers and a
llama.cpp checkout (the llama-cpp-python sdist vendors one: `pip download --no-deps
--no-binary :all: llama-cpp-python==0.3.36`, then unpack; vendor/llama.cpp). CI needs none of them:
the checkpoints and the oracle JSON are committed.

    python tools/make_convert_oracle.py --llama-cpp PATH/TO/llama.cpp [--out tests/data/convert]

Checkpoints (both made from one random `GptOssForCausalLM`, cast to bf16):
- `hf-bf16/`: as `save_pretrained` writes it, BF16 experts (gate_up_proj [E, H, 2I]).
- `hf-mxfp4/`: the same with the experts replaced by random MXFP4 `*_blocks` / `*_scales` in
  the Hub's layout (OpenAI nibble order, `quantization_config.quant_method = "mxfp4"`), as
  openai/gpt-oss-20b ships; transformers cannot write MXFP4 itself without GPU kernels.
Each has a small byte-level BPE tokenizer.json (256 bytes, a few merges, the 21 harmony specials).

The oracle records, per checkpoint and llama.cpp `--outtype`, each tensor's ggml type, ne and the
sha256 of its bytes, and the tokenizer metadata's hashes. One patch to llama.cpp: its pre-tokenizer
detection hashes the tokenization of a test text and knows only full vocabularies, so
`get_vocab_base_pre` is told "gpt-4o" (what it answers for gpt-oss's own tokenizer).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
HPARAMS = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
               num_key_value_heads=1, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
               sliding_window=4)
SPECIALS = {0: "<|startoftext|>", 1: "<|endoftext|>", 4: "<|return|>", 5: "<|constrain|>",
            7: "<|channel|>", 8: "<|start|>", 9: "<|end|>", 10: "<|message|>", 14: "<|call|>",
            20: "<|endofprompt|>"}
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"),
          ("Ġ", "s"), ("r", "e"), ("a", "t"), ("Ġ", "o")]
OUTTYPES = ("bf16", "f16", "f32", "q8_0")
VOCAB_ROWS = 296  # 256 bytes + 11 merges + 21 specials = 288 tokens, 8 [PAD] rows

_RUNNER = """
import runpy, sys
llama = sys.argv.pop(1)
sys.path.insert(0, llama)
sys.path.insert(1, llama + "/gguf-py")
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-4o"
sys.argv[0] = llama + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    sys.path.insert(0, str(REPO / "python"))
    from ossrun.tokenizer import gpt2_byte_to_unicode

    byte_map = gpt2_byte_to_unicode()
    vocab = {byte_map[b]: b for b in range(256)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    first = len(vocab)
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(SPECIALS.get(k, f"<|reserved_{first + k}|>"), special=True,
                                       normalized=False) for k in range(21)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>",
                                   eos_token="<|return|>", pad_token="<|endoftext|>")
    fast.save_pretrained(folder)


def make_checkpoints(out: Path, seed: int) -> None:
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    config = GptOssConfig(vocab_size=VOCAB_ROWS, **HPARAMS)
    model = GptOssForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():  # the default init leaves biases at 0
            p.normal_(1.0 if "norm" in name else 0.0, 0.5)
    model = model.to(torch.bfloat16)
    bf16 = out / "hf-bf16"
    shutil.rmtree(bf16, ignore_errors=True)
    model.save_pretrained(bf16)
    write_tokenizer(bf16)
    for junk in ("generation_config.json", "chat_template.jinja"):
        (bf16 / junk).unlink(missing_ok=True)

    # The MXFP4 twin: same dense weights, experts as random MXFP4 blocks in the Hub's layout.
    mx = out / "hf-mxfp4"
    shutil.rmtree(mx, ignore_errors=True)
    shutil.copytree(bf16, mx)
    rng = np.random.default_rng(seed)
    E, H, I = config.num_local_experts, config.hidden_size, config.intermediate_size
    tensors = {}
    raw = load_file_raw(bf16 / "model.safetensors")
    for name, value in raw.items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            rows, cols = (2 * I, H) if name.endswith("gate_up_proj") else (H, I)
            tensors[name + "_blocks"] = rng.integers(0, 256, (E, rows, cols // 32, 16), dtype=np.uint8)
            tensors[name + "_scales"] = rng.integers(120, 130, (E, rows, cols // 32), dtype=np.uint8)
        else:
            tensors[name] = value
    write_safetensors_raw(mx / "model.safetensors", tensors)
    cfg = json.loads((mx / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (mx / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def reference_logits(out: Path, seed: int) -> None:
    """transformers' own float32 forward of both checkpoints on random tokens (the MXFP4 one
    dequantized by transformers' Mxfp4Config), for the end-to-end logits test."""
    import torch
    from transformers import GptOssForCausalLM, Mxfp4Config

    tokens = np.random.default_rng(seed + 1).integers(0, VOCAB_ROWS, 24)
    saved = {"tokens": tokens.astype(np.int32)}
    for ck in ("hf-bf16", "hf-mxfp4"):
        kw = {"quantization_config": Mxfp4Config(dequantize=True)} if ck == "hf-mxfp4" else {}
        model = GptOssForCausalLM.from_pretrained(out / ck, dtype=torch.float32,
                                                  attn_implementation="eager", **kw)
        with torch.no_grad():
            logits = model.float()(torch.tensor(tokens[None])).logits[0]
        saved[ck.replace("-", "_")] = logits.numpy().astype(np.float32)
    np.savez_compressed(out / "transformers_logits.npz", **saved)


def load_file_raw(path: Path) -> dict:
    """name -> (dtype, shape, bytes) without numpy's lack of bf16 getting in the way."""
    sys.path.insert(0, str(REPO / "python"))
    from ossrun.safetensors_reader import read_safetensors

    return {n: (t.dtype, t.shape, t.array.tobytes()) for n, t in read_safetensors(path).items()}


def write_safetensors_raw(path: Path, tensors: dict) -> None:
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        v = tensors[name]
        dtype, shape, data = v if isinstance(v, tuple) else ("U8", v.shape, v.tobytes())
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def digest(gguf_path: Path) -> dict:
    """Per-tensor type, ne and sha256; the tokenizer keys' hashes."""
    from gguf import GGUFReader

    r = GGUFReader(gguf_path)
    tensors = {t.name: {"type": t.tensor_type.name, "ne": [int(n) for n in t.shape],
                        "sha256": hashlib.sha256(t.data.tobytes()).hexdigest()} for t in r.tensors}
    return {"tensors": tensors, "tokenizer": tokenizer_digest(r)}


def tokenizer_digest(reader) -> dict:
    """Hashes of tokenizer.ggml.{tokens,token_type,merges} and the special ids, from a gguf.GGUFReader."""
    out = {}
    for key in ("tokens", "merges"):
        f = reader.fields[f"tokenizer.ggml.{key}"]
        joined = "\n".join(bytes(f.parts[i]).decode() for i in f.data)
        out[key] = hashlib.sha256(joined.encode()).hexdigest()
    f = reader.fields["tokenizer.ggml.token_type"]
    types = np.array([int(f.parts[i][0]) for i in f.data], dtype="<i4")
    out["token_type"] = hashlib.sha256(types.tobytes()).hexdigest()
    for key in ("model", "pre"):
        f = reader.fields[f"tokenizer.ggml.{key}"]
        out[key] = bytes(f.parts[f.data[0]]).decode()
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        f = reader.fields[f"tokenizer.ggml.{key}"]
        out[key] = int(f.parts[f.data[0]][0])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp", required=True, type=Path, help="a llama.cpp source folder")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "convert")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    make_checkpoints(a.out, a.seed)
    reference_logits(a.out, a.seed)
    oracle = {"llama_cpp": str(a.llama_cpp.name), "checkpoints": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for ck in ("hf-mxfp4", "hf-bf16"):
            runs = oracle["checkpoints"][ck] = {}
            for outtype in OUTTYPES:
                target = Path(tmp) / f"{ck}-{outtype}.gguf"
                subprocess.run([sys.executable, "-c", _RUNNER, str(a.llama_cpp), str(a.out / ck),
                                "--outtype", outtype, "--outfile", str(target)],
                               check=True, capture_output=True)
                runs[outtype] = digest(target)
                print(f"{ck} --outtype {outtype}: {len(runs[outtype]['tensors'])} tensors")
    (a.out / "llama_cpp_oracle.json").write_text(json.dumps(oracle, indent=1, sort_keys=True) + "\n")
    sizes = sum(f.stat().st_size for f in a.out.rglob("*") if f.is_file())
    print(f"wrote {a.out} ({sizes / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
