"""Writes gpt-oss GGUF files in exactly llama.cpp's layout (MODEL.md §4.2, §4.2b, §4.3).

Used by tests, benchmarks (20b/120b-shaped files without downloading weights) and
tools/train_nano.py. Random weights are seeded values of realistic scale, streamed one tensor
chunk at a time, so even a 120b-shaped file needs little RAM (`tools/make_model.py` is the CLI);
`write_trained_model` writes given weights instead, quantizing experts to MXFP4.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION
from gguf import GGMLQuantizationType as GGMLType
from gguf import GGUFValueType as VT

from .quantize import QUANTIZERS, quantize
from .tokenizer import (
    N_VOCAB_HARMONY,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNUSED,
    gpt2_byte_to_unicode,
    load_tiktoken_ranks,
)


@dataclass(frozen=True)
class HParams:
    """Model shape. Comments name the GGUF key (`gpt-oss.` prefix) each field is written to."""

    layers: int  # block_count
    hidden: int  # embedding_length
    intermediate: int  # expert_feed_forward_length and feed_forward_length
    heads: int  # attention.head_count
    kv_heads: int  # attention.head_count_kv
    head_dim: int  # attention.key_length and attention.value_length
    experts: int  # expert_count
    top_k: int  # expert_used_count
    vocab: int  # rows of token_embd / output (not a key)
    sliding_window: int  # attention.sliding_window
    context_length: int = 131072  # context_length
    rope_freq_base: float = 150000.0  # rope.freq_base
    rope_scaling_factor: float = 32.0  # rope.scaling.factor
    rope_original_context: int = 4096  # rope.scaling.original_context_length
    rms_eps: float = 1e-5  # attention.layer_norm_rms_epsilon


PRESETS = {
    # The shape of the tiny-w4 fixture (H != I != heads*d, so swapped matrices fail shape checks).
    "tiny": HParams(
        layers=2,
        hidden=64,
        intermediate=96,
        heads=4,
        kv_heads=2,
        head_dim=64,
        experts=4,
        top_k=2,
        vocab=512,
        sliding_window=4,
    ),
    "20b": HParams(
        layers=24,
        hidden=2880,
        intermediate=2880,
        heads=64,
        kv_heads=8,
        head_dim=64,
        experts=32,
        top_k=4,
        vocab=N_VOCAB_HARMONY,
        sliding_window=128,
    ),
    "120b": HParams(
        layers=36,
        hidden=2880,
        intermediate=2880,
        heads=64,
        kv_heads=8,
        head_dim=64,
        experts=128,
        top_k=4,
        vocab=N_VOCAB_HARMONY,
        sliding_window=128,
    ),
}

MATRIX_TYPES = {
    "f32": GGMLType.F32,
    "f16": GGMLType.F16,
    "bf16": GGMLType.BF16,
    "q8_0": GGMLType.Q8_0,
    # the dense quants of community files (python/ossrun/quantize.py)
    **{name.lower(): GGMLType[name] for name in QUANTIZERS},
}
# Matrix roles whose type can be chosen apart from --matrix-type (the router defaults to f32).
MATRIX_ROLES = ("embd", "output", "attn_qkv", "attn_output", "router")


def _role_type(role: str, matrix_type: str, role_types: dict | None) -> str:
    default = "f32" if role == "router" else matrix_type
    return (role_types or {}).get(role) or default

# The 21 named specials that follow the BPE tokens (MODEL.md §4.2b), by offset from the first one.
# GGUF files name 200018 <|endofprompt|> (tiktoken does too; openai-harmony calls it reserved).
_SPECIAL_NAMES = {
    0: "<|startoftext|>",
    1: "<|endoftext|>",
    4: "<|return|>",
    5: "<|constrain|>",
    7: "<|channel|>",
    8: "<|start|>",
    9: "<|end|>",
    10: "<|message|>",
    14: "<|call|>",
    20: "<|endofprompt|>",
}
N_NAMED_SPECIALS = 21


def preset(name: str, **overrides) -> HParams:
    """A preset's hyperparameters with some fields replaced, e.g. preset("tiny", layers=4)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return dataclasses.replace(PRESETS[name], **overrides)


def check_hparams(hp: HParams, matrix_type: str = "q8_0", role_types: dict | None = None) -> None:
    """Raise ValueError with a sentence when the shape cannot be a gpt-oss GGUF.

    role_types: optional per-role matrix types (keys of MATRIX_ROLES) over matrix_type."""
    for f in dataclasses.fields(hp):
        value = getattr(hp, f.name)
        if not value > 0:
            raise ValueError(f"{f.name} must be positive, got {value}")
    if matrix_type not in MATRIX_TYPES:
        raise ValueError(f"matrix type {matrix_type!r} is not one of {', '.join(MATRIX_TYPES)}")
    for role in role_types or {}:
        if role not in MATRIX_ROLES:
            raise ValueError(f"matrix role {role!r} is not one of {', '.join(MATRIX_ROLES)}")
    if hp.heads % hp.kv_heads:
        raise ValueError(f"heads ({hp.heads}) must be a multiple of kv_heads ({hp.kv_heads})")
    if hp.head_dim % 2:
        raise ValueError(f"head_dim ({hp.head_dim}) must be even (half-split RoPE)")
    if hp.top_k > hp.experts:
        raise ValueError(f"top_k ({hp.top_k}) cannot exceed experts ({hp.experts})")
    # MXFP4 and Q8_0 rows are whole 32-element blocks.
    if hp.hidden % 32 or hp.intermediate % 32:
        raise ValueError(
            f"hidden ({hp.hidden}) and intermediate ({hp.intermediate}) must be "
            "multiples of 32 (MXFP4 blocks)"
        )
    # Each quantized matrix's rows (ne0) are whole blocks of its type: 32, or 256 for K-quants.
    row_length = {"embd": ("hidden", hp.hidden), "output": ("hidden", hp.hidden),
                  "attn_qkv": ("hidden", hp.hidden), "router": ("hidden", hp.hidden),
                  "attn_output": ("heads*head_dim", hp.heads * hp.head_dim)}
    for role, (what, n) in row_length.items():
        t = _role_type(role, matrix_type, role_types)
        if t not in MATRIX_TYPES:
            raise ValueError(f"{role} type {t!r} is not one of {', '.join(MATRIX_TYPES)}")
        block = GGML_QUANT_SIZES[MATRIX_TYPES[t]][0]
        if n % block:
            raise ValueError(f"{what} ({n}) must be a multiple of {block} for {t} ({role})")


# ---------------------------------------------------------------------------------------------
# Vocabulary (tokenizer.ggml.* metadata)


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """The tokenizer.ggml.* arrays of one file, as llama.cpp's converter writes them."""

    tokens: list[str]
    token_types: np.ndarray  # int32, one per token
    merges: list[str]
    bos_id: int  # <|startoftext|>
    eos_id: int  # <|return|>
    pad_id: int  # <|endoftext|>

    @functools.cached_property
    def kv(self) -> dict[str, bytes]:
        """Key -> serialised KV entry; cached because packing 650k strings takes a while."""
        t = "tokenizer.ggml."
        scalars = [
            (t + "model", VT.STRING, "gpt2"),
            (t + "pre", VT.STRING, "gpt-4o"),
            (t + "bos_token_id", VT.UINT32, self.bos_id),
            (t + "eos_token_id", VT.UINT32, self.eos_id),
            (t + "padding_token_id", VT.UINT32, self.pad_id),
        ]
        return {key: _kv(key, vtype, value) for key, vtype, value in scalars} | {
            t + "tokens": _kv_string_array(t + "tokens", self.tokens),
            t + "token_type": _kv_int32_array(t + "token_type", self.token_types),
            t + "merges": _kv_string_array(t + "merges", self.merges),
        }


def _with_specials(normal: list[str], merges: list[str], n_vocab: int) -> Vocabulary:
    """Append the 21 named specials and `[PADn]` fillers (type unused) up to n_vocab tokens."""
    first = len(normal)
    need = first + N_NAMED_SPECIALS
    if n_vocab < need:
        raise ValueError(
            f"vocab size {n_vocab} is too small: this vocabulary needs at least {need} "
            f"tokens ({first} ordinary tokens + {N_NAMED_SPECIALS} harmony specials)"
        )
    specials = [_SPECIAL_NAMES.get(k, f"<|reserved_{first + k}|>") for k in range(N_NAMED_SPECIALS)]
    pads = [f"[PAD{i}]" for i in range(need, n_vocab)]
    types = np.full(n_vocab, TOKEN_UNUSED, dtype=np.int32)
    types[:first] = TOKEN_NORMAL
    types[first:need] = TOKEN_CONTROL
    return Vocabulary(
        tokens=normal + specials + pads,
        token_types=types,
        merges=merges,
        bos_id=first,
        eos_id=first + 4,
        pad_id=first + 1,
    )


@functools.lru_cache(maxsize=8)
def byte_vocab(n_vocab: int) -> Vocabulary:
    """256 single-byte tokens, the harmony specials right after them (ids 256..276), then padding.

    Small models can still speak harmony with it. Every token is one byte, so there are no merges.
    """
    byte_map = gpt2_byte_to_unicode()
    return _with_specials([byte_map[b] for b in range(256)], [], n_vocab)


def bpe_vocab(tokens: list[bytes], merges: list[tuple[bytes, bytes]], n_vocab: int) -> Vocabulary:
    """A small byte-level BPE vocabulary: `tokens` in rank order (the 256 single bytes first),
    the merges that made them, then the harmony specials and padding."""
    if sorted(tokens[:256]) != [bytes([b]) for b in range(256)]:
        raise ValueError("a BPE vocabulary starts with the 256 single bytes")
    byte_map = gpt2_byte_to_unicode()

    def text(t: bytes) -> str:
        return t.decode("latin-1").translate(byte_map)

    return _with_specials([text(t) for t in tokens],
                          [f"{text(a)} {text(b)}" for a, b in merges], n_vocab)


def o200k_vocab(vocab_file: str | os.PathLike, n_vocab: int = N_VOCAB_HARMONY) -> Vocabulary:
    """o200k_harmony from an `o200k_base.tiktoken` file, as in ggml-org's gpt-oss GGUFs."""
    return _o200k_vocab(str(Path(vocab_file).resolve()), n_vocab)


@functools.lru_cache(maxsize=2)
def _o200k_vocab(path: str, n_vocab: int) -> Vocabulary:
    ranks = load_tiktoken_ranks(path)
    by_rank = sorted(ranks, key=ranks.__getitem__)
    if any(ranks[t] != i for i, t in enumerate(by_rank)):
        raise ValueError(f"{path}: ranks are not 0..{len(by_rank) - 1}")
    # Latin-1 turns each byte into the character of the same number, which the map translates.
    strings = [t.decode("latin-1").translate(gpt2_byte_to_unicode()) for t in by_rank]
    # Every split of token t into two tokens a, b, ordered by rank(t), rank(a), rank(b).
    merges = []
    for t in by_rank:
        splits = []
        for i in range(1, len(t)):
            a = ranks.get(t[:i])
            if a is not None:
                b = ranks.get(t[i:])
                if b is not None:
                    splits.append((a, b))
        splits.sort()
        merges.extend(f"{strings[a]} {strings[b]}" for a, b in splits)
    return _with_specials(strings, merges, n_vocab)


def default_vocab_file() -> Path | None:
    """$OSSRUN_VOCAB, else the project's shared/vocab copy next to a source checkout."""
    env = os.environ.get("OSSRUN_VOCAB")
    candidates = [Path(env)] if env else []
    candidates.append(
        Path(__file__).resolve().parents[3] / "shared" / "vocab" / "o200k_base.tiktoken"
    )
    return next((p for p in candidates if p.is_file()), None)


# ---------------------------------------------------------------------------------------------
# GGUF serialisation (MODEL.md §4.1). Written by hand rather than with gguf.GGUFWriter so that
# tensor data can be streamed in chunks and an empty merges array (byte vocabulary) is allowed.


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


_SCALAR_FORMATS = {VT.UINT16: "<H", VT.UINT32: "<I", VT.INT32: "<i", VT.FLOAT32: "<f", VT.BOOL: "<?"}


def _kv(key: str, vtype: VT, value) -> bytes:
    """One serialised KV entry with a scalar or string value."""
    packed = _str(value) if vtype == VT.STRING else struct.pack(_SCALAR_FORMATS[vtype], value)
    return _str(key) + struct.pack("<I", vtype) + packed


def _kv_string_array(key: str, values: list[str]) -> bytes:
    head = _str(key) + struct.pack("<IIQ", VT.ARRAY, VT.STRING, len(values))
    return head + b"".join([_str(v) for v in values])


def _kv_int32_array(key: str, values: np.ndarray) -> bytes:
    head = _str(key) + struct.pack("<IIQ", VT.ARRAY, VT.INT32, len(values))
    return head + np.asarray(values, dtype="<i4").tobytes()


def _model_kv(hp: HParams, name: str) -> dict[str, bytes]:
    a = "gpt-oss."
    entries = [
        ("general.architecture", VT.STRING, "gpt-oss"),
        ("general.name", VT.STRING, name),
        (a + "block_count", VT.UINT32, hp.layers),
        (a + "context_length", VT.UINT32, hp.context_length),
        (a + "embedding_length", VT.UINT32, hp.hidden),
        (a + "feed_forward_length", VT.UINT32, hp.intermediate),
        (a + "expert_feed_forward_length", VT.UINT32, hp.intermediate),
        (a + "attention.head_count", VT.UINT32, hp.heads),
        (a + "attention.head_count_kv", VT.UINT32, hp.kv_heads),
        (a + "attention.key_length", VT.UINT32, hp.head_dim),
        (a + "attention.value_length", VT.UINT32, hp.head_dim),
        (a + "attention.layer_norm_rms_epsilon", VT.FLOAT32, hp.rms_eps),
        (a + "attention.sliding_window", VT.UINT32, hp.sliding_window),
        (a + "expert_count", VT.UINT32, hp.experts),
        (a + "expert_used_count", VT.UINT32, hp.top_k),
        (a + "rope.freq_base", VT.FLOAT32, hp.rope_freq_base),
        (a + "rope.scaling.type", VT.STRING, "yarn"),
        (a + "rope.scaling.factor", VT.FLOAT32, hp.rope_scaling_factor),
        (a + "rope.scaling.original_context_length", VT.UINT32, hp.rope_original_context),
    ]
    return {key: _kv(key, vtype, value) for key, vtype, value in entries}


# ---------------------------------------------------------------------------------------------
# Tensors


@dataclass(frozen=True)
class TensorPlan:
    """One tensor: name, ggml ne (fastest dimension first), type, and its value distribution."""

    name: str
    ne: tuple[int, ...]
    ggml_type: GGMLType
    std: float
    mean: float = 0.0
    # Other layouts (ossrun.layout_writers): the name whose seed gives the values, so a renamed
    # tensor holds the same weights; tensors whose rows are those of `parts` in turn (a fused
    # attn_qkv); the type id written when it is not ggml_type's (a retired id of the same format).
    seed_name: str = ""
    parts: tuple = ()
    stored_type: int | None = None

    @property
    def nbytes(self) -> int:
        if self.parts:
            return sum(p.nbytes for p in self.parts)
        block, size = GGML_QUANT_SIZES[self.ggml_type]
        return math.prod(self.ne) // block * size

    @property
    def rows_per_chunk(self) -> int:
        # One expert per chunk for expert tensors, about 4M values otherwise. Fixed by the shape
        # alone, so the values do not depend on how much memory the writer may use.
        if len(self.ne) == 3:
            return self.ne[1]
        return max(1, (1 << 22) // self.ne[0])


def tensor_plans(
    hp: HParams, matrix_type: str = "q8_0", role_types: dict | None = None
) -> list[TensorPlan]:
    """Every tensor of the file in write order, with names, ne and types of MODEL.md §4.3."""
    embd_t, output_t, mt, attn_out_t, router_t = (
        MATRIX_TYPES[_role_type(r, matrix_type, role_types)] for r in MATRIX_ROLES
    )
    H, I, E, V = hp.hidden, hp.intermediate, hp.experts, hp.vocab
    q, kv = hp.heads * hp.head_dim, hp.kv_heads * hp.head_dim
    f32 = GGMLType.F32
    # Matrices get std 1/sqrt(fan-in), so unit-RMS inputs give unit-RMS outputs; the embedding
    # gets std 1 (RMSNorm follows). Biases are small, norms near 1, sinks ~N(0, 1).
    plans = [
        TensorPlan("token_embd.weight", (H, V), embd_t, 1.0),
        TensorPlan("output_norm.weight", (H,), f32, 0.1, 1.0),
        TensorPlan("output.weight", (H, V), output_t, H**-0.5),
    ]
    for n in range(hp.layers):
        b = f"blk.{n}."
        plans += [
            TensorPlan(b + "attn_norm.weight", (H,), f32, 0.1, 1.0),
            TensorPlan(b + "attn_q.weight", (H, q), mt, H**-0.5),
            TensorPlan(b + "attn_q.bias", (q,), f32, 0.1),
            TensorPlan(b + "attn_k.weight", (H, kv), mt, H**-0.5),
            TensorPlan(b + "attn_k.bias", (kv,), f32, 0.1),
            TensorPlan(b + "attn_v.weight", (H, kv), mt, H**-0.5),
            TensorPlan(b + "attn_v.bias", (kv,), f32, 0.1),
            TensorPlan(b + "attn_output.weight", (q, H), attn_out_t, q**-0.5),
            TensorPlan(b + "attn_output.bias", (H,), f32, 0.1),
            TensorPlan(b + "attn_sinks.weight", (hp.heads,), f32, 1.0),
            TensorPlan(b + "post_attention_norm.weight", (H,), f32, 0.1, 1.0),
            TensorPlan(b + "ffn_gate_inp.weight", (H, E), router_t, H**-0.5),
            TensorPlan(b + "ffn_gate_inp.bias", (E,), f32, 0.1),
            TensorPlan(b + "ffn_gate_exps.weight", (H, I, E), GGMLType.MXFP4, H**-0.5),
            TensorPlan(b + "ffn_gate_exps.bias", (I, E), f32, 0.1),
            TensorPlan(b + "ffn_up_exps.weight", (H, I, E), GGMLType.MXFP4, H**-0.5),
            TensorPlan(b + "ffn_up_exps.bias", (I, E), f32, 0.1),
            TensorPlan(b + "ffn_down_exps.weight", (I, H, E), GGMLType.MXFP4, I**-0.5),
            TensorPlan(b + "ffn_down_exps.bias", (H, E), f32, 0.1),
        ]
    return plans


_E2M1_RMS = math.sqrt(sum(v * v for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6)) / 8)  # of uniform codes
_Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", 32)])


def _chunk_bytes(plan: TensorPlan, rng: np.random.Generator, rows: int) -> np.ndarray:
    """`rows` rows (ne[0] values each) of random data, encoded in the plan's ggml type."""
    n = rows * plan.ne[0]
    t = plan.ggml_type
    if t == GGMLType.MXFP4:
        # Uniform codes; per-block scale bytes within ±1 of the exponent that gives `std`.
        blocks = np.empty((n // 32, 17), dtype=np.uint8)
        centre = min(251, max(2, round(127 + math.log2(plan.std / _E2M1_RMS))))
        blocks[:, 0] = _random_bytes(rng, n // 32) % 3 + (centre - 1)
        blocks[:, 1:] = _random_bytes(rng, n // 2).reshape(-1, 16)
        return blocks
    if t == GGMLType.Q8_0:
        # Uniform int8 quants; d = std·√3/127 matches the std, jittered ±25 % per block. One
        # block in 64 gets a subnormal fp16 scale, as the published files have (MODEL.md §6.9).
        blocks = np.empty(n // 32, dtype=_Q8_0)
        blocks["qs"] = np.maximum(_random_bytes(rng, n).view(np.int8), -127).reshape(-1, 32)
        d = plan.std * math.sqrt(3) / 127 * rng.uniform(0.75, 1.25, n // 32)
        tiny = rng.random(n // 32) < 1 / 64
        d[tiny] = rng.uniform(2.0**-20, 2.0**-14, np.count_nonzero(tiny))
        blocks["d"] = d
        return blocks
    values = rng.standard_normal(n, dtype=np.float32) * np.float32(plan.std) + np.float32(plan.mean)
    if t.name in QUANTIZERS:
        return quantize(values, t.name)
    if t == GGMLType.F32:
        return values
    if t == GGMLType.F16:
        return values.astype(np.float16)
    if t == GGMLType.BF16:
        bits = values.view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(
            np.uint16
        )  # round to nearest even
    raise AssertionError(f"no generator for {t.name}")


def _random_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    # The raw 64-bit PCG64 stream: several times faster than rng.bytes or rng.integers.
    return rng.bit_generator.random_raw(-(-n // 8)).view(np.uint8)[:n]


def tensor_chunks(plan: TensorPlan, seed: int):
    """Yield the tensor's bytes chunk by chunk; chunk k is seeded by (seed, name, k)."""
    if plan.parts:
        for part in plan.parts:
            yield from tensor_chunks(part, seed)
        return
    n_rows = math.prod(plan.ne[1:])
    name_key = zlib.crc32((plan.seed_name or plan.name).encode())
    for k, row in enumerate(range(0, n_rows, plan.rows_per_chunk)):
        rng = np.random.default_rng([seed, name_key, k])
        yield _chunk_bytes(plan, rng, min(plan.rows_per_chunk, n_rows - row))


def write_model(
    path: str | os.PathLike,
    hparams: HParams,
    *,
    seed: int = 0,
    matrix_type: str = "q8_0",
    vocab: Vocabulary | None = None,
    progress: bool | None = None,
    layout: str = "ggml-org",
    split_max_size: int | None = None,
    role_types: dict | None = None,
) -> Path:
    """Write a random gpt-oss GGUF; returns its path (the first shard's, when split).

    vocab: the tokenizer metadata, default `byte_vocab(hparams.vocab)`; its size must equal
    hparams.vocab. progress: see `write_gguf`. layout: "ggml-org", "ollama", "ollama-qkv" or
    "ollama-fused" (ossrun.layout_writers). split_max_size: bytes of tensor data per shard,
    written as gguf-split does (`path` without .gguf names the shards). role_types: per-role
    matrix types over matrix_type, e.g. {"attn_output": "q4_k", "router": "q8_0"} (MATRIX_ROLES).
    """
    check_hparams(hparams, matrix_type, role_types)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if vocab is None:
        vocab = byte_vocab(hparams.vocab)
    if len(vocab.tokens) != hparams.vocab:
        raise ValueError(
            f"the vocabulary has {len(vocab.tokens)} tokens but hparams.vocab is {hparams.vocab}"
        )
    from . import layout_writers

    kv, plans = layout_writers.layout_model(layout, hparams, vocab,
                                            f"ossrun random gpt-oss (seed {seed})",
                                            tensor_plans(hparams, matrix_type, role_types))
    if split_max_size is not None:
        return layout_writers.write_split(path, kv, plans, split_max_size, seed=seed,
                                          progress=progress)[0]
    return write_gguf(path, kv, plans, seed=seed, progress=progress)


def write_gguf(
    path: str | os.PathLike,
    kv: dict[str, bytes],
    plans: list[TensorPlan],
    *,
    seed: int = 0,
    progress: bool | None = None,
    chunks=None,
) -> Path:
    """Write a GGUF v3 file from serialised KV entries and tensor plans, streaming the data.

    The file appears under its name only when complete. progress: a percentage line on stderr
    (default: for files over 1 GiB). chunks: plan -> iterable of arrays holding the tensor's bytes
    (default: seeded random values, `tensor_chunks`); ossrun.convert passes a checkpoint's.
    """
    infos, offset = [], 0
    for p in plans:
        infos.append(
            _str(p.name) + struct.pack(f"<I{len(p.ne)}QIQ", len(p.ne), *p.ne,
                                       p.ggml_type if p.stored_type is None else p.stored_type, offset)
        )
        offset += -(-p.nbytes // GGUF_DEFAULT_ALIGNMENT) * GGUF_DEFAULT_ALIGNMENT
    total = offset
    show = total > (1 << 30) if progress is None else progress

    path = Path(path)
    partial = path.with_name(path.name + ".part")
    try:
        with open(partial, "wb") as f:
            f.write(struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(plans), len(kv)))
            f.write(b"".join(kv.values()) + b"".join(infos))
            _pad(f)
            done, shown = 0, -1
            for p in plans:
                written = 0
                for chunk in tensor_chunks(p, seed) if chunks is None else chunks(p):
                    f.write(chunk.data)
                    written += chunk.nbytes
                    done += chunk.nbytes
                    if show and done * 100 // total != shown:
                        shown = done * 100 // total
                        percent = f"{shown:3d}% of {total / 2**30:.2f} GiB"
                        print(f"\r{path.name}: {percent}", end="", file=sys.stderr)
                if written != p.nbytes:  # a wrong chunk source would shift every later tensor
                    raise AssertionError(f"{p.name}: wrote {written} bytes, expected {p.nbytes}")
                _pad(f)
    except BaseException:  # also Ctrl-C: never leave a partial multi-GiB file behind
        partial.unlink(missing_ok=True)
        raise
    if show:
        print(file=sys.stderr)
    os.replace(partial, path)
    return path


def _pad(f) -> None:
    f.write(b"\0" * (-f.tell() % GGUF_DEFAULT_ALIGNMENT))


# ---------------------------------------------------------------------------------------------
# Given weights (tools/train_nano.py)

_E2M1_MAGNITUDES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)


def quantize_mxfp4(values: np.ndarray) -> np.ndarray:
    """GGUF block_mxfp4 bytes [..., K/32, 17] of float values [..., K], blocks along K.

    OCP rule: scale 2^(floor(log2 amax) - 2), so the largest element falls in [4, 8) (6 and up
    clip to 6); each element rounds to the nearest E2M1 value, ties to the larger magnitude.
    Values already on an MXFP4 grid come back unchanged. Bytes hold elements (k, k+16) (§3.3).
    """
    v = np.asarray(values, dtype=np.float32)
    if v.shape[-1] % 32:
        raise ValueError(f"the last dimension ({v.shape[-1]}) is not a multiple of 32")
    blocks = v.reshape(*v.shape[:-1], -1, 32)
    amax = np.abs(blocks).max(axis=-1)
    with np.errstate(divide="ignore"):
        exp = np.where(amax > 0, np.floor(np.log2(np.maximum(amax, 2.0**-126))) - 2, -127)
    exp = np.clip(exp, -127, 127)
    scaled = np.abs(blocks) / np.exp2(exp)[..., None].astype(np.float32)
    midpoints = (_E2M1_MAGNITUDES[1:] + _E2M1_MAGNITUDES[:-1]) / 2
    mag = np.searchsorted(midpoints, np.minimum(scaled, 6.0), side="right").astype(np.uint8)
    codes = np.where((blocks < 0) & (mag > 0), mag + 8, mag).astype(np.uint8)
    out = np.empty((*blocks.shape[:-1], 17), dtype=np.uint8)
    out[..., 0] = (exp + 127).astype(np.uint8)
    out[..., 1:] = codes[..., :16] | (codes[..., 16:] << 4)
    return out


def encode_tensor(values: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """The bytes of a float tensor in a ggml type (F32, F16 or MXFP4)."""
    if ggml_type == GGMLType.F32:
        return np.ascontiguousarray(values, dtype="<f4")
    if ggml_type == GGMLType.F16:
        return np.ascontiguousarray(values, dtype="<f2")
    if ggml_type == GGMLType.MXFP4:
        return quantize_mxfp4(values)
    raise ValueError(f"no encoder for {ggml_type.name}")


def write_trained_model(
    path: str | os.PathLike,
    hparams: dict,
    tensors: dict[str, np.ndarray],
    tokens: list[bytes],
    merges: list[tuple[bytes, bytes]],
    *,
    name: str,
    matrix_type: str = "f32",
) -> Path:
    """Write given weights: `tensors` maps every GGUF name of `tensor_plans` to a float array in
    numpy order (ne reversed); experts are quantized to MXFP4, other matrices take matrix_type
    (f32 or f16), norms and biases F32. The vocabulary is a small BPE (`bpe_vocab`)."""
    hp = HParams(**hparams)
    check_hparams(hp, "f32")
    if matrix_type not in ("f32", "f16"):
        raise ValueError(f"matrix_type must be f32 or f16 for given weights, got {matrix_type!r}")
    plans = tensor_plans(hp, matrix_type)
    missing = {p.name for p in plans} ^ set(tensors)
    if missing:
        raise ValueError(f"tensors missing or unexpected: {', '.join(sorted(missing))}")
    data = {}
    for p in plans:
        value = np.asarray(tensors[p.name], dtype=np.float32)
        if value.shape != tuple(reversed(p.ne)):
            raise ValueError(f"{p.name}: shape {value.shape}, expected {tuple(reversed(p.ne))}")
        data[p.name] = encode_tensor(value, p.ggml_type)
    vocab = bpe_vocab(tokens, merges, hp.vocab)
    kv = _model_kv(hp, name) | vocab.kv
    return write_gguf(path, kv, plans, progress=False, chunks=lambda p: [data[p.name]])


def make_model(
    path: str | os.PathLike,
    preset_name: str = "tiny",
    *,
    seed: int = 0,
    matrix_type: str = "q8_0",
    vocab_file: str | os.PathLike | None = None,
    use_byte_vocab: bool = False,
    progress: bool | None = None,
    layout: str = "ggml-org",
    split_max_size: int | None = None,
    role_types: dict | None = None,
    **overrides,
) -> Path:
    """A preset plus overrides, with the vocabulary chosen as the CLI does (layout and
    split_max_size: see `write_model`).

    The real o200k vocabulary comes from vocab_file, or for the 20b/120b presets from
    `default_vocab_file()` when one exists; otherwise (and with use_byte_vocab) a byte vocabulary.
    With the real vocabulary the tiny preset's vocab size becomes 201088 unless overridden.
    """
    if vocab_file is not None and use_byte_vocab:
        raise ValueError("give either a vocab file or the byte vocabulary, not both")
    if vocab_file is None and not use_byte_vocab and preset_name != "tiny":
        vocab_file = default_vocab_file()
    hp = preset(preset_name, **overrides)
    if vocab_file is not None and "vocab" not in overrides:
        hp = dataclasses.replace(hp, vocab=N_VOCAB_HARMONY)
    check_hparams(hp, matrix_type, role_types)
    vocab = o200k_vocab(vocab_file, hp.vocab) if vocab_file is not None else byte_vocab(hp.vocab)
    return write_model(path, hp, seed=seed, matrix_type=matrix_type, vocab=vocab, progress=progress,
                       layout=layout, split_max_size=split_max_size, role_types=role_types)


_CLI_FLAGS = {  # flag -> HParams field
    "--layers": "layers",
    "--hidden": "hidden",
    "--intermediate": "intermediate",
    "--heads": "heads",
    "--kv-heads": "kv_heads",
    "--head-dim": "head_dim",
    "--experts": "experts",
    "--top-k": "top_k",
    "--vocab": "vocab",
    "--sliding-window": "sliding_window",
    "--context-length": "context_length",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="make_model.py", description="Write a random gpt-oss GGUF in llama.cpp's layout."
    )
    ap.add_argument("out", help="output .gguf path")
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny")
    for flag, field in _CLI_FLAGS.items():
        ap.add_argument(flag, dest=field, type=int, help=f"override the preset's {field}")
    ap.add_argument(
        "--matrix-type",
        "--dense-type",
        choices=list(MATRIX_TYPES),
        default="q8_0",
        help="type of token_embd/output/attention matrices (default q8_0)",
    )
    for role in MATRIX_ROLES:
        ap.add_argument(
            f"--{role.replace('_', '-')}-type",
            dest=f"{role}_type",
            choices=list(MATRIX_TYPES),
            help=f"type of the {role} matrices (default: --matrix-type"
            + (", f32 for the router)" if role == "router" else ")"),
        )
    ap.add_argument("--seed", type=int, default=0)
    vocab = ap.add_mutually_exclusive_group()
    vocab.add_argument("--vocab-file", help="o200k_base.tiktoken for the real vocabulary")
    vocab.add_argument(
        "--byte-vocab", action="store_true", help="byte-level vocabulary even for 20b/120b"
    )
    ap.add_argument("--layout", choices=("ggml-org", "ollama", "ollama-qkv", "ollama-fused"),
                    default="ggml-org",
                    help="ggml-org's (default), Ollama's gptoss blob (-qkv: with a fused "
                         "attn_qkv), or Ollama's refused Aug-Oct 2025 fused blob")
    ap.add_argument("--split-max-size", metavar="SIZE",
                    help="write shards of at most SIZE of tensor data (e.g. 100M, 2G), as "
                         "llama.cpp's gguf-split names them: OUT-00001-of-0000N.gguf")
    a = ap.parse_args(argv)
    overrides = {f: getattr(a, f) for f in _CLI_FLAGS.values() if getattr(a, f) is not None}
    try:
        from .layout_writers import parse_size

        split = None if a.split_max_size is None else parse_size(a.split_max_size)
        out = make_model(
            a.out,
            a.preset,
            seed=a.seed,
            matrix_type=a.matrix_type,
            vocab_file=a.vocab_file,
            use_byte_vocab=a.byte_vocab,
            layout=a.layout,
            split_max_size=split,
            role_types={r: getattr(a, f"{r}_type") for r in MATRIX_ROLES if getattr(a, f"{r}_type")},
            **overrides,
        )
    except (ValueError, OSError) as e:
        ap.error(str(e))
    if split is None:
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    else:
        from .gguf_split import shard_path, split_name

        prefix, _, count = split_name(out)
        sizes = [shard_path(prefix, i, count).stat().st_size for i in range(count)]
        print(f"wrote {count} shards, {out} and the {count - 1} beside it "
              f"({sum(sizes) / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
