"""Writes generated models (ossrun.model_maker) in the other layouts ossrun reads.

- `write_split`: shards as llama.cpp's gguf-split --split-max-size writes them (see
  ossrun.gguf_split): tensors in file order, a new shard whenever the next tensor's padded bytes
  would take the current one past the limit; the first shard keeps all metadata.
- `layout_model("ollama", ...)`: Ollama's gptoss blob (ossrun.layouts), holding the same weights
  as the ggml-org file of the same seed (values are seeded by the ggml-org name).
- `layout_model("ollama-qkv", ...)`: the same with one fused attn_qkv per layer (rows q | k | v),
  as Ollama converts OpenAI's `original/` checkpoints; again the same weights.
- `layout_model("ollama-fused", ...)`: Ollama's August-October 2025 blob (fused attn_qkv,
  ffn_gate_up_exps, MXFP4 under type id 4), which the loader refuses.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT
from gguf import GGMLQuantizationType as GGMLType
from gguf import GGUFValueType as VT

from . import model_maker as mm
from .gguf_split import SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS_COUNT, shard_path
from .layouts import LEGACY_OLLAMA_MXFP4, OLLAMA, file_name
from .tokenizer import TOKEN_UNUSED, TOKEN_USER_DEFINED

LAYOUTS = ("ggml-org", "ollama", "ollama-qkv", "ollama-fused")
_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3}  # decimal, as gguf-split's M and G


def parse_size(text: str) -> int:
    """'100M' -> 100_000_000 bytes ('2G', '500K', or a plain byte count)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", str(text).upper())
    if m is None or int(m[1]) <= 0:
        raise ValueError(f"split size must be a positive number with an optional K, M or G, "
                         f"got {text!r}")
    return int(m[1]) * _UNITS[m[2]]


def _padded(n: int) -> int:
    return -(-n // GGUF_DEFAULT_ALIGNMENT) * GGUF_DEFAULT_ALIGNMENT


def shard_plans(plans: list, max_bytes: int) -> list[list]:
    """Tensors per shard: a new shard when the next tensor would pass max_bytes of data (a tensor
    larger than the limit gets a shard of its own)."""
    shards, size = [[]], 0
    for p in plans:
        n = _padded(p.nbytes)
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += n
    return shards


def write_split(path, kv: dict, plans: list, max_bytes: int, *, seed: int = 0,
                progress: bool | None = None) -> list[Path]:
    """Write PREFIX-0000n-of-0000N.gguf shards (PREFIX: `path` without .gguf); returns their paths."""
    path = Path(path)
    prefix = path.with_name(path.name[:-5] if path.name.endswith(".gguf") else path.name)
    groups = shard_plans(plans, max_bytes)
    count = len(groups)
    if count > 65535:
        raise ValueError(f"{count} shards: split.count is a u16; use a larger split size")
    out = []
    for no, group in enumerate(groups):
        split_kv = {
            SPLIT_NO: mm._kv(SPLIT_NO, VT.UINT16, no),
            SPLIT_COUNT: mm._kv(SPLIT_COUNT, VT.UINT16, count),
            SPLIT_TENSORS_COUNT: mm._kv(SPLIT_TENSORS_COUNT, VT.INT32, len(plans)),
        }
        shard_kv = (kv | split_kv) if no == 0 else split_kv
        out.append(mm.write_gguf(shard_path(prefix, no, count), shard_kv, group, seed=seed,
                                 progress=progress))
    return out


# ---------------------------------------------------------------------------------------------
# Ollama


def layout_model(layout: str, hp, vocab, name: str, plans: list) -> tuple[dict, list]:
    """(serialised KV, tensor plans) of a model in `layout`, from ggml-org's plans."""
    if layout == "ggml-org":
        return mm._model_kv(hp, name) | vocab.kv, plans
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    kv = _ollama_kv(hp, name) | _ollama_vocab_kv(vocab)
    renamed = [dataclasses.replace(p, name=file_name(OLLAMA, p.name), seed_name=p.name) for p in plans]
    if layout == "ollama":
        return kv, renamed
    return kv, _fuse(renamed, experts=layout == "ollama-fused")


def _ollama_kv(hp, name: str) -> dict:
    a = "gptoss."
    entries = [
        ("general.architecture", VT.STRING, "gptoss"),
        ("general.name", VT.STRING, name),
        ("general.file_type", VT.UINT32, 4),
        (a + "context_length", VT.UINT32, hp.context_length),
        (a + "block_count", VT.UINT32, hp.layers),
        (a + "embedding_length", VT.UINT32, hp.hidden),
        (a + "feed_forward_length", VT.UINT32, hp.intermediate),
        (a + "expert_count", VT.UINT32, hp.experts),
        (a + "expert_used_count", VT.UINT32, hp.top_k),
        (a + "attention.head_count", VT.UINT32, hp.heads),
        (a + "attention.head_count_kv", VT.UINT32, hp.kv_heads),
        (a + "attention.key_length", VT.UINT32, hp.head_dim),
        (a + "attention.value_length", VT.UINT32, hp.head_dim),
        (a + "attention.layer_norm_rms_epsilon", VT.FLOAT32, hp.rms_eps),
        (a + "attention.sliding_window", VT.UINT32, hp.sliding_window),
        (a + "rope.freq_base", VT.FLOAT32, hp.rope_freq_base),
        (a + "rope.scaling.factor", VT.FLOAT32, hp.rope_scaling_factor),
        (a + "rope.scaling.original_context_length", VT.UINT32, hp.rope_original_context),
    ]
    return {key: mm._kv(key, vtype, value) for key, vtype, value in entries}


def _ollama_vocab_kv(vocab) -> dict:
    """Ollama's tokenizer keys: pre-tokenizer "default", EOS <|endoftext|> plus an eos_token_ids
    list, and the embedding rows past the tokenizer's tokens padded as user-defined [PADn]."""
    t = "tokenizer.ggml."
    tokens, types = list(vocab.tokens), np.array(vocab.token_types, dtype=np.int32)
    pads = np.flatnonzero(types == TOKEN_UNUSED)
    for k, i in enumerate(pads.tolist()):
        tokens[i] = f"[PAD{k}]"
    types[pads] = TOKEN_USER_DEFINED
    ids = {s: i for i, s in enumerate(tokens)}
    eos = [ids["<|endoftext|>"], ids["<|return|>"], ids["<|call|>"]]
    scalars = [
        (t + "model", VT.STRING, "gpt2"),
        (t + "pre", VT.STRING, "default"),
        (t + "bos_token_id", VT.UINT32, vocab.bos_id),
        (t + "add_bos_token", VT.BOOL, False),
        (t + "eos_token_id", VT.UINT32, eos[0]),
        (t + "add_eos_token", VT.BOOL, False),
    ]
    kv = {key: mm._kv(key, vtype, value) for key, vtype, value in scalars}
    return kv | {
        t + "tokens": mm._kv_string_array(t + "tokens", tokens),
        t + "token_type": mm._kv_int32_array(t + "token_type", types),
        t + "merges": mm._kv_string_array(t + "merges", vocab.merges),
        t + "eos_token_ids": mm._kv_int32_array(t + "eos_token_ids", np.array(eos)),
    }


def _fuse(plans: list, experts: bool) -> list:
    """attn_qkv (q | k | v rows, the same values); with `experts` also Ollama's Aug-Oct 2025
    ffn_gate_up_exps (2I rows per expert) and MXFP4 under type id 4, whose values are random:
    only that layout matters, as the loader refuses it."""
    by_name = {p.name: p for p in plans}
    out = []
    for p in plans:
        base, _, kind = p.name.rpartition(".")
        stem = base.rsplit(".", 1)[-1]
        if stem in ("attn_k", "attn_v") or experts and stem == "ffn_up_exps":
            continue  # written inside the fused tensor
        if stem == "attn_q":
            prefix = base[: -len("attn_q")]
            parts = tuple(by_name[f"{prefix}{s}.{kind}"] for s in ("attn_q", "attn_k", "attn_v"))
            ne = (*p.ne[:-1], sum(q.ne[-1] for q in parts))
            p = dataclasses.replace(p, name=f"{prefix}attn_qkv.{kind}", ne=ne, parts=parts)
        elif experts and stem == "ffn_gate_exps":
            prefix = base[: -len("ffn_gate_exps")]
            up = by_name[f"{prefix}ffn_up_exps.{kind}"]
            ne = list(p.ne)
            ne[-2] *= 2  # gate_up rows of each expert
            p = dataclasses.replace(p, name=f"{prefix}ffn_gate_up_exps.{kind}", ne=tuple(ne),
                                    parts=(p, up))
        if experts and p.ggml_type == GGMLType.MXFP4:
            p = dataclasses.replace(p, stored_type=LEGACY_OLLAMA_MXFP4)
        out.append(p)
    return out
