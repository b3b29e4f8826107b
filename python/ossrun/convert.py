"""`ossrun convert`: a gpt-oss checkpoint folder -> a GGUF file in ggml-org's layout (MODEL.md §4).

Two source layouts (MODEL.md §1, §7.2):
- transformers (`openai/gpt-oss-20b` on the Hub): config.json with model_type "gpt_oss",
  `model.layers.N.*` tensors; experts either MXFP4 (`*_blocks` / `*_scales`, OpenAI's pair
  nibble order) or BF16 (`gate_up_proj` [E, H, 2I], `down_proj` [E, I, H]); tokenizer.json.
- OpenAI's own (`original/`): config.json with the reference's ModelConfig keys, `block.N.*`
  tensors with a fused QKV and MXFP4 experts.

MXFP4 experts are repacked bit for bit (pair order -> GGUF's split order, the E8M0 scale in
front of each block); gate and up rows, interleaved in both layouts, become two tensors. BF16
experts are written in the dense type (the loader takes BF16/F16/F32/Q8_0 experts, so nothing is
requantized to MXFP4). Dense matrices (embedding, output, attention) take `dense`; norms,
biases, sinks and the router stay F32, as llama.cpp's converter writes them; values are encoded
with the `gguf` package's quantizers, the same code llama.cpp's converter calls, so the bytes match.

Tensors are streamed one expert or ~4M values at a time from the memory-mapped safetensors
files, so converting 120b needs little RAM.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as GGMLType
from gguf import GGUFValueType as VT
from gguf import quants

from . import model_maker as mm
from .errors import ModelError
from .safetensors_reader import StoredTensor, read_folder, release_pages
from .tokenizer import N_VOCAB_HARMONY, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED

DENSE_TYPES = {"q8_0": GGMLType.Q8_0, "bf16": GGMLType.BF16, "f16": GGMLType.F16, "f32": GGMLType.F32}
FLOAT_DTYPES = ("BF16", "F16", "F32")
_CHUNK_VALUES = 1 << 22  # values per chunk of a dense tensor


# ---------------------------------------------------------------------------------------------
# Finding the layout


@dataclass
class Checkpoint:
    folder: Path
    layout: str  # "transformers" or "openai"
    config: dict
    tensors: dict[str, StoredTensor]
    tokenizer_json: Path | None


def open_checkpoint(src: str | Path) -> Checkpoint:
    """The checkpoint in `src` (or in `src/original`); ModelError when there is none."""
    src = Path(src).expanduser()
    if not src.exists():
        raise ModelError(f"{src}: no such folder")
    if not src.is_dir():
        raise ModelError(f"{src}: not a folder (give the checkpoint folder, with config.json "
                         "and *.safetensors)")
    folder = src
    if not (src / "config.json").is_file() and (src / "original" / "config.json").is_file():
        folder = src / "original"
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{src}: no config.json (neither a transformers checkpoint nor OpenAI's "
                         "original/ layout)")
    try:
        config = json.loads(cfg_path.read_text())
        if not isinstance(config, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise ModelError(f"{cfg_path}: not a JSON object") from None
    if config.get("model_type") == "gpt_oss" or "GptOssForCausalLM" in config.get("architectures", []):
        layout = "transformers"
    elif "num_experts" in config and "experts_per_token" in config:
        layout = "openai"
    else:
        kind = config.get("model_type") or ", ".join(config.get("architectures", [])) or "unknown"
        raise ModelError(f"{cfg_path}: not a gpt-oss checkpoint (model type {kind!r}; expected "
                         "model_type 'gpt_oss' or OpenAI's original config keys)")
    candidates = [folder / "tokenizer.json"]
    if folder.name == "original":  # the Hub repo keeps tokenizer.json beside original/
        candidates.append(folder.parent / "tokenizer.json")
    tokenizer_json = next((p for p in candidates if p.is_file()), None)
    return Checkpoint(folder, layout, config, read_folder(folder), tokenizer_json)


# ---------------------------------------------------------------------------------------------
# Hyperparameters


def _get(config: dict, path: Path, *keys, default=None):
    for k in keys:
        if k in config:
            return config[k]
    if default is not None:
        return default
    raise ModelError(f"{path}: config key '{keys[0]}' is missing")


def hparams_of(ck: Checkpoint) -> tuple[mm.HParams, dict[str, float]]:
    """The model's shape and the YaRN β values (written as rope.scaling.yarn_beta_*)."""
    c, path = ck.config, ck.folder / "config.json"
    if ck.layout == "openai":
        original = int(_get(c, path, "initial_context_length"))
        factor = float(_get(c, path, "rope_scaling_factor"))
        hp = dict(
            layers=_get(c, path, "num_hidden_layers"), experts=_get(c, path, "num_experts"),
            top_k=_get(c, path, "experts_per_token"), context_length=int(original * factor),
            rope_freq_base=float(_get(c, path, "rope_theta")), rope_scaling_factor=factor,
            rope_original_context=original, rms_eps=1e-5,  # hard-coded in the reference
        )
        beta = {"yarn_beta_fast": float(_get(c, path, "rope_ntk_beta", default=32.0)),
                "yarn_beta_slow": float(_get(c, path, "rope_ntk_alpha", default=1.0))}
    else:
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type"))
        if rope_type != "yarn":
            raise ModelError(f"{path}: rope type is {rope_type!r}; gpt-oss uses 'yarn'")
        layer_types = c.get("layer_types")
        if layer_types is not None:
            expected = ["sliding_attention" if n % 2 == 0 else "full_attention"
                        for n in range(len(layer_types))]
            if list(layer_types) != expected:
                raise ModelError(f"{path}: layer_types is not sliding/full alternating from layer 0, "
                                 "the only pattern a gpt-oss GGUF can express")
        hp = dict(
            layers=_get(c, path, "num_hidden_layers"), experts=_get(c, path, "num_local_experts"),
            top_k=_get(c, path, "num_experts_per_tok", "experts_per_token"),
            context_length=_get(c, path, "max_position_embeddings"),
            rope_freq_base=float(rope["rope_theta"] if "rope_theta" in rope else _get(c, path, "rope_theta")),
            rope_scaling_factor=float(_get(rope, path, "factor")),
            rope_original_context=_get(rope, path, "original_max_position_embeddings"),
            rms_eps=float(_get(c, path, "rms_norm_eps")),
        )
        beta = {"yarn_beta_fast": float(rope.get("beta_fast", 32.0)),
                "yarn_beta_slow": float(rope.get("beta_slow", 1.0))}
    limit = c.get("swiglu_limit", 7.0)
    if limit != 7.0:
        raise ModelError(f"{path}: swiglu_limit is {limit}; the GGUF layout fixes it at 7")
    hp.update(
        hidden=_get(c, path, "hidden_size"), intermediate=_get(c, path, "intermediate_size"),
        heads=_get(c, path, "num_attention_heads"), kv_heads=_get(c, path, "num_key_value_heads"),
        head_dim=_get(c, path, "head_dim"), vocab=_get(c, path, "vocab_size"),
        sliding_window=_get(c, path, "sliding_window"),
    )
    for k, v in hp.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ModelError(f"{path}: hyperparameter {k} is {v!r}, not a number")
    try:
        hparams = mm.HParams(**hp)
        mm.check_hparams(hparams, "f32")
    except (TypeError, ValueError) as e:
        raise ModelError(f"{path}: {e}") from None
    return hparams, beta


# ---------------------------------------------------------------------------------------------
# Tensor sources: what each GGUF tensor is made of


@dataclass(frozen=True)
class Dense:
    """A float tensor: `view` is a (lazily sliced) view of the source in the output's logical
    shape; `dtype` its safetensors dtype."""

    view: np.ndarray
    dtype: str


@dataclass(frozen=True)
class Mxfp4:
    """MXFP4 experts in OpenAI's layout: blocks [E, R, G, 16] (pair order), scales [E, R, G]."""

    blocks: np.ndarray
    scales: np.ndarray


class _Sources:
    """Checked access to the checkpoint's tensors: each is fetched with its expected shape and
    dtype, so a wrong checkpoint fails before anything is written."""

    def __init__(self, ck: Checkpoint):
        self.ck = ck
        self.used: set[str] = set()

    def get(self, name: str, shape: tuple, dtypes=FLOAT_DTYPES) -> StoredTensor:
        t = self.ck.tensors.get(name)
        if t is None:
            raise ModelError(f"{self.ck.folder}: tensor '{name}' is missing")
        if t.shape != tuple(shape):
            raise ModelError(f"{t.file}: tensor '{name}' has shape {list(t.shape)}, "
                             f"expected {list(shape)}")
        if t.dtype not in dtypes:
            raise ModelError(f"{t.file}: tensor '{name}' has dtype {t.dtype}, expected "
                             + " or ".join(dtypes))
        self.used.add(name)
        return t

    def dense(self, name: str, shape: tuple) -> Dense:
        t = self.get(name, shape)
        return Dense(t.array, t.dtype)

    def has(self, name: str) -> bool:
        return name in self.ck.tensors


def _rows(d: Dense, start: int, stop: int, step: int = 1) -> Dense:
    return Dense(d.view[..., start:stop:step, :] if d.view.ndim > 1 else d.view[start:stop:step],
                 d.dtype)


def _tensor_sources(ck: Checkpoint, hp: mm.HParams) -> dict[str, Dense | Mxfp4]:
    """GGUF tensor name -> its source, for every tensor of `mm.tensor_plans`."""
    s = _Sources(ck)
    H, I, E, V = hp.hidden, hp.intermediate, hp.experts, hp.vocab
    Q, KV = hp.heads * hp.head_dim, hp.kv_heads * hp.head_dim
    out: dict[str, Dense | Mxfp4] = {}

    def mxfp4(prefix: str, rows: int, cols: int) -> Mxfp4:
        blocks = s.get(prefix + "blocks", (E, rows, cols // 32, 16), ("U8",))
        scales = s.get(prefix + "scales", (E, rows, cols // 32), ("U8",))
        return Mxfp4(blocks.array, scales.array)

    def gate_up(m: Mxfp4 | Dense):
        """Rows interleave gate (even) and up (odd) in both layouts (MODEL.md §2.6)."""
        if isinstance(m, Mxfp4):
            return Mxfp4(m.blocks[:, 0::2], m.scales[:, 0::2]), Mxfp4(m.blocks[:, 1::2], m.scales[:, 1::2])
        return _rows(m, 0, None, 2), _rows(m, 1, None, 2)

    if ck.layout == "openai":
        out["token_embd.weight"] = s.dense("embedding.weight", (V, H))
        out["output_norm.weight"] = s.dense("norm.scale", (H,))
        out["output.weight"] = s.dense("unembedding.weight", (V, H))
        for n in range(hp.layers):
            p, b = f"block.{n}.", f"blk.{n}."
            qkv = s.dense(p + "attn.qkv.weight", (Q + 2 * KV, H))
            qkv_b = s.dense(p + "attn.qkv.bias", (Q + 2 * KV,))
            gate, up = gate_up(mxfp4(p + "mlp.mlp1_weight.", 2 * I, H))
            bias = s.dense(p + "mlp.mlp1_bias", (E, 2 * I))
            gate_b, up_b = gate_up(Dense(bias.view[..., None], bias.dtype))
            out |= {
                b + "attn_norm.weight": s.dense(p + "attn.norm.scale", (H,)),
                b + "attn_q.weight": _rows(qkv, 0, Q),
                b + "attn_q.bias": _rows(qkv_b, 0, Q),
                b + "attn_k.weight": _rows(qkv, Q, Q + KV),
                b + "attn_k.bias": _rows(qkv_b, Q, Q + KV),
                b + "attn_v.weight": _rows(qkv, Q + KV, Q + 2 * KV),
                b + "attn_v.bias": _rows(qkv_b, Q + KV, Q + 2 * KV),
                b + "attn_output.weight": s.dense(p + "attn.out.weight", (H, Q)),
                b + "attn_output.bias": s.dense(p + "attn.out.bias", (H,)),
                b + "attn_sinks.weight": s.dense(p + "attn.sinks", (hp.heads,)),
                b + "post_attention_norm.weight": s.dense(p + "mlp.norm.scale", (H,)),
                b + "ffn_gate_inp.weight": s.dense(p + "mlp.gate.weight", (E, H)),
                b + "ffn_gate_inp.bias": s.dense(p + "mlp.gate.bias", (E,)),
                b + "ffn_gate_exps.weight": gate,
                b + "ffn_gate_exps.bias": _squeeze(gate_b),
                b + "ffn_up_exps.weight": up,
                b + "ffn_up_exps.bias": _squeeze(up_b),
                b + "ffn_down_exps.weight": mxfp4(p + "mlp.mlp2_weight.", H, I),
                b + "ffn_down_exps.bias": s.dense(p + "mlp.mlp2_bias", (E, H)),
            }
    else:
        out["token_embd.weight"] = s.dense("model.embed_tokens.weight", (V, H))
        out["output_norm.weight"] = s.dense("model.norm.weight", (H,))
        out["output.weight"] = s.dense("lm_head.weight", (V, H))
        for n in range(hp.layers):
            p, b = f"model.layers.{n}.", f"blk.{n}."
            a, x = p + "self_attn.", p + "mlp.experts."
            if s.has(x + "gate_up_proj_blocks"):
                gate, up = gate_up(mxfp4(x + "gate_up_proj_", 2 * I, H))
                down = mxfp4(x + "down_proj_", H, I)
            else:  # BF16 experts, stored [E, in, out]: transposed to GGUF's [E, out, in]
                gu = s.dense(x + "gate_up_proj", (E, H, 2 * I))
                gate, up = gate_up(Dense(gu.view.transpose(0, 2, 1), gu.dtype))
                dn = s.dense(x + "down_proj", (E, I, H))
                down = Dense(dn.view.transpose(0, 2, 1), dn.dtype)
            bias = s.dense(x + "gate_up_proj_bias", (E, 2 * I))
            gate_b, up_b = gate_up(Dense(bias.view[..., None], bias.dtype))
            out |= {
                b + "attn_norm.weight": s.dense(p + "input_layernorm.weight", (H,)),
                b + "attn_q.weight": s.dense(a + "q_proj.weight", (Q, H)),
                b + "attn_q.bias": s.dense(a + "q_proj.bias", (Q,)),
                b + "attn_k.weight": s.dense(a + "k_proj.weight", (KV, H)),
                b + "attn_k.bias": s.dense(a + "k_proj.bias", (KV,)),
                b + "attn_v.weight": s.dense(a + "v_proj.weight", (KV, H)),
                b + "attn_v.bias": s.dense(a + "v_proj.bias", (KV,)),
                b + "attn_output.weight": s.dense(a + "o_proj.weight", (H, Q)),
                b + "attn_output.bias": s.dense(a + "o_proj.bias", (H,)),
                b + "attn_sinks.weight": s.dense(a + "sinks", (hp.heads,)),
                b + "post_attention_norm.weight": s.dense(p + "post_attention_layernorm.weight", (H,)),
                b + "ffn_gate_inp.weight": s.dense(p + "mlp.router.weight", (E, H)),
                b + "ffn_gate_inp.bias": s.dense(p + "mlp.router.bias", (E,)),
                b + "ffn_gate_exps.weight": gate,
                b + "ffn_gate_exps.bias": _squeeze(gate_b),
                b + "ffn_up_exps.weight": up,
                b + "ffn_up_exps.bias": _squeeze(up_b),
                b + "ffn_down_exps.weight": down,
                b + "ffn_down_exps.bias": s.dense(x + "down_proj_bias", (E, H)),
            }
    unused = sorted(set(ck.tensors) - s.used)
    if unused:
        raise ModelError(f"{ck.folder}: tensor '{unused[0]}' is not part of a gpt-oss model with "
                         f"{hp.layers} layers ({len(unused)} such tensors)")
    return out


def _squeeze(d: Dense) -> Dense:
    return Dense(d.view[..., 0], d.dtype)


# ---------------------------------------------------------------------------------------------
# Encoding


def _as_f32(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (np.ascontiguousarray(a).astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(a, dtype=np.float32)


def encode(values: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """float32 rows -> their bytes in `ggml_type`, by the gguf package's quantizers."""
    return np.ascontiguousarray(quants.quantize(values, ggml_type))


def repack_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """OpenAI blocks [..., G, 16] (byte j = elements 2j low, 2j+1 high) and E8M0 scales [..., G]
    -> GGUF block_mxfp4 bytes [..., G, 17]: the scale, then byte k = elements k low, k+16 high."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    out = np.empty((*blocks.shape[:-1], 17), dtype=np.uint8)
    out[..., 0] = scales
    out[..., 1:] = codes[..., :16] | (codes[..., 16:] << 4)
    return out


def _chunks(src: Dense | Mxfp4, ggml_type: GGMLType) -> Iterator[np.ndarray]:
    if isinstance(src, Mxfp4):
        for e in range(src.blocks.shape[0]):  # one expert at a time
            yield repack_mxfp4(src.blocks[e], src.scales[e])
        return
    view = src.view
    if view.ndim == 3:  # experts: one at a time
        for e in range(view.shape[0]):
            yield encode(_as_f32(view[e], src.dtype), ggml_type)
        return
    rows = view.reshape(-1, view.shape[-1]) if view.ndim == 2 else view.reshape(1, -1)
    step = max(1, _CHUNK_VALUES // rows.shape[1])
    for r in range(0, rows.shape[0], step):
        yield encode(_as_f32(rows[r:r + step], src.dtype), ggml_type)


# ---------------------------------------------------------------------------------------------
# Vocabulary


def vocabulary(ck: Checkpoint, n_vocab: int, vocab_file: str | Path | None) -> mm.Vocabulary | None:
    """tokenizer.json when the checkpoint has one, else o200k_harmony from an o200k_base.tiktoken
    file; None (with a note) when neither fits a vocabulary of n_vocab rows."""
    if ck.tokenizer_json is not None:
        return vocab_from_tokenizer_json(ck.tokenizer_json, n_vocab)
    if n_vocab < N_VOCAB_HARMONY - mm.N_NAMED_SPECIALS - 69:  # cannot hold o200k's 199998 tokens
        print(f"ossrun convert: note: no tokenizer.json and {n_vocab} vocabulary rows are too few "
              "for o200k_harmony; the file gets no tokenizer (logits work, chat does not)",
              file=sys.stderr)
        return None
    path = Path(vocab_file) if vocab_file else mm.default_vocab_file()
    if path is None or not path.is_file():
        raise ModelError(f"{ck.folder}: no tokenizer.json; give o200k_harmony's vocabulary with "
                         "--vocab-file o200k_base.tiktoken (or set OSSRUN_VOCAB)")
    return mm.o200k_vocab(path, n_vocab)


_SPECIAL_LOOK = re.compile(r"^<\|.*\|>$")


def vocab_from_tokenizer_json(path: Path, n_vocab: int) -> mm.Vocabulary:
    """A Hugging Face byte-level BPE tokenizer.json as GGUF tokenizer.ggml.* metadata, the way
    llama.cpp's converter writes it: ids without a token become `[PADn]` (unused), added special
    tokens are control tokens, merges keep their order."""
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
        model = tok["model"]
        vocab, merges = model["vocab"], model.get("merges", [])
        added = tok.get("added_tokens", [])
    except (ValueError, KeyError, TypeError):
        raise ModelError(f"{path}: not a tokenizer.json (needs model.vocab)") from None
    if model.get("type", "BPE") != "BPE" or not isinstance(vocab, dict):
        raise ModelError(f"{path}: tokenizer model {model.get('type')!r} is not byte-level BPE")
    tokens: list[str | None] = [None] * n_vocab
    types = np.full(n_vocab, TOKEN_UNUSED, dtype=np.int32)

    def place(text, i, token_type):
        if not isinstance(i, int) or not 0 <= i < n_vocab:
            raise ModelError(f"{path}: token {text!r} has id {i}, outside the model's "
                             f"{n_vocab} vocabulary rows")
        tokens[i], types[i] = text, token_type

    for text, i in vocab.items():
        place(text, i, TOKEN_NORMAL)
    for entry in added:
        text, i = entry.get("content"), entry.get("id")
        special = entry.get("special") or _SPECIAL_LOOK.match(text or "")
        place(text, i, TOKEN_CONTROL if special else TOKEN_USER_DEFINED)
    names = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    ids = {t: i for i, t in enumerate(names)}
    config = _tokenizer_config(path.parent)

    def special_id(role: str, default: str) -> int:
        name = config.get(role, default)
        name = name.get("content") if isinstance(name, dict) else name
        if name not in ids:
            raise ModelError(f"{path}: the vocabulary lacks the {role} {name!r}")
        return ids[name]

    return mm.Vocabulary(
        tokens=names, token_types=types, merges=merges,
        bos_id=special_id("bos_token", "<|startoftext|>"),
        eos_id=special_id("eos_token", "<|return|>"),
        pad_id=special_id("pad_token", "<|endoftext|>"),
    )


def _tokenizer_config(folder: Path) -> dict:
    p = folder / "tokenizer_config.json"
    try:
        config = json.loads(p.read_text()) if p.is_file() else {}
    except ValueError:
        raise ModelError(f"{p}: not JSON") from None
    return {k: v for k, v in config.items() if k in ("bos_token", "eos_token", "pad_token") and v}


# ---------------------------------------------------------------------------------------------
# The conversion


def plans_and_sources(ck: Checkpoint, hp: mm.HParams, dense: str):
    """(TensorPlan, source) per GGUF tensor, in file order."""
    sources = _tensor_sources(ck, hp)
    dense_type = DENSE_TYPES[dense]
    out = []
    for plan in mm.tensor_plans(hp, "f32"):
        src = sources[plan.name]
        if isinstance(src, Mxfp4):
            ggml_type = GGMLType.MXFP4
        elif plan.name.endswith("_exps.weight") or _is_dense_matrix(plan.name):
            ggml_type = dense_type
        else:  # norms, biases, sinks and the router: F32, as llama.cpp's converter keeps them
            ggml_type = GGMLType.F32
        row = plan.ne[0]
        if ggml_type == GGMLType.Q8_0 and row % 32:
            raise ModelError(f"tensor '{plan.name}' has rows of {row} values; q8_0 needs a "
                             "multiple of 32 (use --dense bf16)")
        out.append((mm.TensorPlan(plan.name, plan.ne, ggml_type, 0.0), src))
    return out


def _is_dense_matrix(name: str) -> bool:
    return name in ("token_embd.weight", "output.weight") or name.endswith(
        ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight"))


def convert(src: str | Path, out: str | Path, *, dense: str = "bf16",
            vocab_file: str | Path | None = None, progress: bool | None = None) -> Path:
    """Convert the checkpoint folder `src` into the GGUF file `out`; returns its path."""
    if dense not in DENSE_TYPES:
        raise ValueError(f"dense type {dense!r} is not one of {', '.join(DENSE_TYPES)}")
    ck = open_checkpoint(src)
    hp, beta = hparams_of(ck)
    planned = plans_and_sources(ck, hp, dense)
    vocab = vocabulary(ck, hp.vocab, vocab_file)
    name = ck.folder.parent.name if ck.folder.name == "original" else ck.folder.name
    kv = mm._model_kv(hp, name) | {
        f"gpt-oss.rope.scaling.{k}": mm._kv(f"gpt-oss.rope.scaling.{k}", VT.FLOAT32, v)
        for k, v in beta.items()
    }
    if vocab is not None:
        kv |= vocab.kv
    sources = {plan.name: s for plan, s in planned}

    def chunks(plan):
        for chunk in _chunks(sources[plan.name], plan.ggml_type):
            yield chunk
            release_pages(ck.tensors.values())  # the chunk is written: its source pages can go

    return mm.write_gguf(out, kv, [p for p, _ in planned], chunks=chunks, progress=progress)
