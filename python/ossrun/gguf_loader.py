"""Opens a gpt-oss GGUF file and checks it against MODEL.md §4 before anything computes.

`gguf_split.open_shards` memory-maps the file (every shard of a split one, `gguf_split`);
tensors are handed to the core as views into those maps (zero copy), so RSS stays small until
weights are touched. Files in Ollama's layout are read through `layouts`, which says under which
keys and names each hyperparameter and tensor lies. Every problem — not a GGUF, another
architecture, a missing or malformed key, a tensor with the wrong name, shape, type or extent, a
missing or mismatched shard — becomes a `ModelError` that names the file and the key or tensor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import layouts
from .errors import ModelError
from .gguf_split import GgufShards, open_shards
from .resolve import resolve_model

ARCH = "gpt-oss"

# ggml type ids we accept (MODEL.md §4.3), and those allowed per tensor role.
F32, F16, Q8_0, BF16, MXFP4 = 0, 1, 8, 30, 39
# The dense quants of community files: 32-element blocks, then 256-element K-quants.
DENSE_QUANTS = {2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 20: "IQ4_NL",
                10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K"}
TYPE_NAMES = {F32: "F32", F16: "F16", Q8_0: "Q8_0", BF16: "BF16", MXFP4: "MXFP4", **DENSE_QUANTS}
MATRIX_TYPES = (F32, F16, BF16, Q8_0, *DENSE_QUANTS)
EXPERT_TYPES = (MXFP4, Q8_0, F16, BF16, F32)


@dataclass(frozen=True)
class ModelConfig:
    """gpt-oss hyperparameters, named after their GGUF keys (without the `gpt-oss.` prefix)."""

    block_count: int
    context_length: int
    embedding_length: int
    feed_forward_length: int
    expert_feed_forward_length: int
    head_count: int
    head_count_kv: int
    key_length: int
    value_length: int
    rms_norm_eps: float
    sliding_window: int
    expert_count: int
    expert_used_count: int
    rope_freq_base: float
    rope_scaling_type: str
    rope_scaling_factor: float
    rope_original_context: int
    vocab_size: int
    # Fixed by the architecture unless a file says otherwise (MODEL.md §4.2).
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


# (config field, GGUF key suffix, python type, required)
_HPARAMS = [
    ("block_count", "block_count", int, True),
    ("context_length", "context_length", int, True),
    ("embedding_length", "embedding_length", int, True),
    ("feed_forward_length", "feed_forward_length", int, False),
    ("expert_feed_forward_length", "expert_feed_forward_length", int, False),
    ("head_count", "attention.head_count", int, True),
    ("head_count_kv", "attention.head_count_kv", int, True),
    ("key_length", "attention.key_length", int, True),
    ("value_length", "attention.value_length", int, True),
    ("rms_norm_eps", "attention.layer_norm_rms_epsilon", float, True),
    ("sliding_window", "attention.sliding_window", int, True),
    ("expert_count", "expert_count", int, True),
    ("expert_used_count", "expert_used_count", int, True),
    ("rope_freq_base", "rope.freq_base", float, True),
    ("rope_scaling_type", "rope.scaling.type", str, False),
    ("rope_scaling_factor", "rope.scaling.factor", float, True),
    ("rope_original_context", "rope.scaling.original_context_length", int, True),
    ("yarn_beta_fast", "rope.scaling.yarn_beta_fast", float, False),
    ("yarn_beta_slow", "rope.scaling.yarn_beta_slow", float, False),
]

# Sanity bounds that keep a hostile header from asking for absurd allocations.
_MAX_DIM = 1 << 20


@dataclass
class GgufModel:
    """A validated, memory-mapped gpt-oss GGUF file."""

    path: Path
    reader: GgufShards  # keeps the memory maps alive
    config: ModelConfig
    tensors: dict  # name -> (array view, ggml type, logical numpy shape)
    tensor_types: dict  # name -> type name, for `ossrun info`
    file_size: int  # of all shards together
    layout: layouts.Layout = layouts.GGML_ORG

    @property
    def paths(self) -> list[Path]:
        """The file, or every shard of a split model in order."""
        return self.reader.paths


def field_value(reader, key: str):
    """A metadata value (scalar, str, list of str or numpy array), or None when absent."""
    return reader.metadata.get(key)


def open_gguf(path) -> GgufModel:
    """Open and validate `path` (or what it names, see ossrun.resolve); raises ModelError on
    anything that is not a good gpt-oss file."""
    path = resolve_model(path)  # a file, a folder holding one, or an Ollama model name
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")

    reader = open_shards(path)
    layout = layouts.detect(reader, path)
    config = _read_config(reader, path, layout)
    tensors, types = _check_tensors(reader, config, path, layout)
    return GgufModel(path, reader, config, tensors, types, reader.size, layout)


def _read_config(reader, path: Path, layout: layouts.Layout = layouts.GGML_ORG) -> ModelConfig:
    values = {}
    for name, suffix, typ, required in _HPARAMS:
        key = layout.key_prefix + suffix
        v = field_value(reader, key)
        if v is None:
            if required:
                raise ModelError(f"{path}: metadata key '{key}' is missing")
            continue
        if typ is str:
            if not isinstance(v, str):
                raise ModelError(f"{path}: metadata key '{key}' must be a string")
        else:
            if isinstance(v, (list, str, bytes, np.ndarray)) or isinstance(v, bool):
                raise ModelError(f"{path}: metadata key '{key}' must be a number, got {v!r}")
            if typ is int and float(v) != int(v):
                raise ModelError(f"{path}: metadata key '{key}' must be an integer, got {v!r}")
            v = typ(v)
            if not math.isfinite(v) or v <= 0:
                raise ModelError(f"{path}: metadata key '{key}' must be positive, got {v!r}")
            if typ is int and v > (1 << 24):
                raise ModelError(f"{path}: metadata key '{key}' = {v} is implausibly large")
        values[name] = v
    if "expert_feed_forward_length" not in values:
        # Not written by Ollama: the rows of an expert's gate matrix (MODEL.md §4.3).
        found = layouts.locate(reader, layout, "blk.0.ffn_gate_exps.weight")
        if found is None or len(found[0].ne) != 3:
            key = f"{layout.key_prefix}expert_feed_forward_length"
            raise ModelError(f"{path}: metadata key '{key}' is missing" if found else
                             f"{path}: tensor 'blk.0.ffn_gate_exps.weight' is missing (the file "
                             f"lacks metadata key '{key}' too, which it would give)")
        values["expert_feed_forward_length"] = int(found[0].ne[1])
    values.setdefault("feed_forward_length", values["expert_feed_forward_length"])
    values.setdefault("rope_scaling_type", "yarn")

    emb = reader.tensors.get("token_embd.weight")
    if emb is None:
        raise ModelError(f"{path}: tensor 'token_embd.weight' is missing")
    values["vocab_size"] = int(emb.ne[1]) if len(emb.ne) == 2 else 0
    cfg = ModelConfig(**values)

    def bad(msg):
        raise ModelError(f"{path}: {msg}")

    if cfg.rope_scaling_type != "yarn":
        bad(f"rope.scaling.type is {cfg.rope_scaling_type!r}; gpt-oss uses 'yarn'")
    if cfg.key_length != cfg.value_length:
        bad("attention.key_length and value_length differ")
    if cfg.key_length % 2:
        bad("attention.key_length must be even (half-split RoPE)")
    if cfg.head_count % cfg.head_count_kv:
        bad("attention.head_count must be a multiple of head_count_kv")
    if cfg.expert_used_count > cfg.expert_count:
        bad("expert_used_count exceeds expert_count")
    if cfg.embedding_length % 32 or cfg.expert_feed_forward_length % 32:
        bad("embedding_length and expert_feed_forward_length must be multiples of 32")
    if not 0 < cfg.rms_norm_eps < 1:
        bad(f"layer_norm_rms_epsilon {cfg.rms_norm_eps} is out of range")
    for name in ("embedding_length", "expert_feed_forward_length", "head_count", "key_length",
                 "expert_count", "vocab_size"):
        if not 0 < getattr(cfg, name) <= _MAX_DIM:
            bad(f"{name} = {getattr(cfg, name)} is out of range")
    if cfg.rope_scaling_factor > 1:
        half, log_base = cfg.key_length / 2, math.log(cfg.rope_freq_base)
        low = half * math.log(cfg.rope_original_context / (cfg.yarn_beta_fast * 2 * math.pi)) / log_base
        high = half * math.log(cfg.rope_original_context / (cfg.yarn_beta_slow * 2 * math.pi)) / log_base
        if not 0 < low < high < half - 1:
            bad("the YaRN parameters give a degenerate correction range (need 0 < low < high < d/2 - 1)")
    return cfg


def expected_tensors(cfg: ModelConfig) -> dict:
    """name -> (logical numpy shape, allowed ggml types), per MODEL.md §4.3."""
    return dict(iter_expected_tensors(cfg))


def iter_expected_tensors(cfg: ModelConfig):
    """(name, (logical numpy shape, allowed ggml types)) in file order, per MODEL.md §4.3."""
    H, I, E = cfg.embedding_length, cfg.expert_feed_forward_length, cfg.expert_count
    Q, KV, V = cfg.head_count * cfg.key_length, cfg.head_count_kv * cfg.key_length, cfg.vocab_size
    yield "token_embd.weight", ((V, H), MATRIX_TYPES)
    yield "output_norm.weight", ((H,), (F32,))
    yield "output.weight", ((V, H), MATRIX_TYPES)
    for n in range(cfg.block_count):
        p = f"blk.{n}."
        yield from {
            p + "attn_norm.weight": ((H,), (F32,)),
            p + "attn_q.weight": ((Q, H), MATRIX_TYPES),
            p + "attn_q.bias": ((Q,), (F32,)),
            p + "attn_k.weight": ((KV, H), MATRIX_TYPES),
            p + "attn_k.bias": ((KV,), (F32,)),
            p + "attn_v.weight": ((KV, H), MATRIX_TYPES),
            p + "attn_v.bias": ((KV,), (F32,)),
            p + "attn_output.weight": ((H, Q), MATRIX_TYPES),
            p + "attn_output.bias": ((H,), (F32,)),
            p + "attn_sinks.weight": ((cfg.head_count,), (F32,)),
            p + "post_attention_norm.weight": ((H,), (F32,)),
            p + "ffn_gate_inp.weight": ((E, H), MATRIX_TYPES),
            p + "ffn_gate_inp.bias": ((E,), (F32,)),
            p + "ffn_gate_exps.weight": ((E, I, H), EXPERT_TYPES),
            p + "ffn_gate_exps.bias": ((E, I), (F32,)),
            p + "ffn_up_exps.weight": ((E, I, H), EXPERT_TYPES),
            p + "ffn_up_exps.bias": ((E, I), (F32,)),
            p + "ffn_down_exps.weight": ((E, H, I), EXPERT_TYPES),
            p + "ffn_down_exps.bias": ((E, H), (F32,)),
        }.items()


def _check_tensors(reader: GgufShards, cfg: ModelConfig, path: Path,
                   layout: layouts.Layout = layouts.GGML_ORG):
    # GgufFile has already checked that every tensor's bytes lie inside its file. Expected names
    # are generated lazily: a hostile block_count stops at the first missing tensor. Messages
    # name the tensor as the file does, and the shard that holds it.
    kv = cfg.head_count_kv * cfg.key_length
    head_rows = (cfg.head_count * cfg.key_length, kv, kv)  # of a fused attn_qkv
    tensors, types, used = {}, {}, set()
    for name, (shape, allowed) in iter_expected_tensors(cfg):
        found = layouts.locate(reader, layout, name, head_rows)
        if found is None:
            raise ModelError(f"{path}: tensor '{layouts.file_name(layout, name)}' is missing")
        t, raw = found
        where = reader.shard_of(t.name)
        type_name = TYPE_NAMES.get(t.ggml_type, _ggml_type_name(t.ggml_type))
        if t.ggml_type not in allowed:
            raise ModelError(
                f"{where}: tensor '{t.name}' has type {type_name}; expected one of "
                + ", ".join(TYPE_NAMES[a] for a in allowed)
            )
        if t.shape != shape:
            raise ModelError(f"{where}: tensor '{t.name}' has shape {list(t.shape)}, expected {list(shape)}")
        if t.ggml_type == F32 and t.offset % 4:
            raise ModelError(f"{where}: tensor '{t.name}' is not 4-byte aligned")
        tensors[name] = (raw, t.ggml_type, shape)
        types[name] = type_name
        used.add(t.name)
    extra = sorted(set(reader.tensors) - used)
    if extra:
        raise ModelError(f"{reader.shard_of(extra[0])}: unexpected tensor '{extra[0]}' for a "
                         f"gpt-oss model with {cfg.block_count} blocks")
    return tensors, types


def _ggml_type_name(ggml_type: int) -> str:
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"
