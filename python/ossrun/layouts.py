"""The on-disk layouts of gpt-oss GGUF files, and where each tensor of MODEL.md §4.3 lies in them.

- **ggml-org** (llama.cpp's converter): arch `gpt-oss`, keys `gpt-oss.*`, the names of §4.3.
- **ollama** (Ollama's converter, the blobs it serves since late 2025): arch `gptoss`, keys
  `gptoss.*` without `expert_feed_forward_length` and `rope.scaling.type` (both follow from the
  tensors and the architecture), `tokenizer.ggml.pre` absent or "default" (always o200k's split
  regex for this architecture), and four names of its own: `attn_out.weight` / `.bias`,
  `attn_sinks` (no `.weight`) and `ffn_norm.weight` for the post-attention norm. Converted from
  OpenAI's `original/` checkpoint it keeps the fused `attn_qkv` (rows q | k | v): q, k and v are
  then three row ranges of it, handed to the core as views, not copies.
- Ollama's blobs of **August-October 2025** fuse `ffn_gate_up_exps` with gate and up rows
  interleaved and store MXFP4 as ggml type 4 in OpenAI's pair nibble order. Using them would take
  a re-encoded second copy of every expert matrix, so they are refused with a ModelError that
  says to re-pull the model. So is llama.cpp's `--fuse-gate-up-exps` output, whose per-expert
  gate and up halves are not one contiguous range either.

Either layout's names are accepted in either kind of file (Ollama's own loader does the same);
error messages use the names of the file's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .gguf_reader import TensorInfo, type_size

LEGACY_OLLAMA_MXFP4 = 4  # ggml type id of MXFP4 in Ollama's Aug-Oct 2025 blobs


@dataclass(frozen=True)
class Layout:
    name: str  # what `ossrun info` prints
    arch: str  # general.architecture
    key_prefix: str  # of the hyperparameter keys
    default_pre: str | None  # tokenizer.ggml.pre to assume when absent or "default"
    names: dict  # suffix of a §4.3 name -> the suffix this layout writes instead


GGML_ORG = Layout("ggml-org", "gpt-oss", "gpt-oss.", None, {})
OLLAMA = Layout(
    "ollama", "gptoss", "gptoss.", "gpt-4o",
    {
        "attn_output.weight": "attn_out.weight",
        "attn_output.bias": "attn_out.bias",
        "attn_sinks.weight": "attn_sinks",
        "post_attention_norm.weight": "ffn_norm.weight",
    },
)
LAYOUTS = {layout.arch: layout for layout in (GGML_ORG, OLLAMA)}
_QKV = {"attn_q": 0, "attn_k": 1, "attn_v": 2}

REPULL = ("ossrun cannot use it without a second, re-encoded copy of the expert weights. "
          "Re-pull the model with a newer Ollama (`ollama pull gpt-oss:20b`, or :120b) and load "
          "the new blob")


def detect(reader, path: Path) -> Layout:
    """The layout of an opened file (from its architecture), refusing the fused expert layouts."""
    arch = reader.metadata.get("general.architecture")
    if arch is None:
        raise ModelError(f"{path}: metadata key 'general.architecture' is missing")
    layout = LAYOUTS.get(arch)
    if layout is None:
        raise ModelError(f"{path}: architecture is {arch!r}, but ossrun runs only 'gpt-oss' models")
    for name, info in reader.tensors.items():
        if info.ggml_type == LEGACY_OLLAMA_MXFP4:
            raise ModelError(f"{path}: tensor '{name}' holds MXFP4 as ggml type 4 in OpenAI's "
                             f"nibble order: this is an Ollama gpt-oss blob of August-October "
                             f"2025, and {REPULL}")
        if name.endswith("ffn_gate_up_exps.weight"):
            if layout is OLLAMA:
                raise ModelError(f"{path}: tensor '{name}' fuses gate and up rows, interleaved: "
                                 f"this is an Ollama gpt-oss blob of August-October 2025, and "
                                 f"{REPULL}")
            raise ModelError(f"{path}: tensor '{name}' fuses the gate and up experts (llama.cpp's "
                             "--fuse-gate-up-exps), which ossrun does not map; convert the model "
                             "without that flag")
    return layout


def file_name(layout: Layout, name: str) -> str:
    """The name `layout` gives the §4.3 tensor `name`."""
    prefix, suffix = _split(name)
    return prefix + layout.names.get(suffix, suffix)


def _split(name: str) -> tuple[str, str]:
    """'blk.3.attn_q.weight' -> ('blk.3.', 'attn_q.weight'); 'output.weight' -> ('', 'output.weight')."""
    if name.startswith("blk."):
        n, _, rest = name[4:].partition(".")
        return f"blk.{n}.", rest
    return "", name


def locate(reader, layout: Layout, name: str, head_rows: tuple[int, int, int] | None = None):
    """(TensorInfo as the file stores it, its raw bytes) of the §4.3 tensor `name`, or None.

    Looks under the layout's name, then the other layout's; attn_q/k/v (weight and bias) also
    as a row range of a fused attn_qkv, when head_rows = (q rows, k rows, v rows) is given.
    Raises ModelError when a tensor is present under two names.
    """
    prefix, suffix = _split(name)
    candidates = dict.fromkeys(prefix + s for s in (layout.names.get(suffix, suffix), suffix,
                                                    OLLAMA.names.get(suffix, suffix)))
    present = [c for c in candidates if c in reader.tensors]
    if len(present) > 1:
        raise ModelError(f"{_where(reader, present[1])}: tensor '{name}' is present twice, as "
                         f"'{present[0]}' and '{present[1]}'")
    if present:
        return reader.tensors[present[0]], reader.tensor_bytes(present[0])
    part, _, kind = suffix.partition(".")
    if part in _QKV and head_rows is not None:
        return _qkv_rows(reader, f"{prefix}attn_qkv.{kind}", _QKV[part], head_rows)
    return None


def _qkv_rows(reader, fused: str, which: int, head_rows):
    info = reader.tensors.get(fused)
    if info is None:
        return None
    rows = sum(head_rows)
    if info.ne[-1] != rows or len(info.ne) > 2:
        expected = [rows] + ([] if len(info.ne) == 1 else [info.ne[0]])
        raise ModelError(f"{_where(reader, fused)}: tensor '{fused}' has shape "
                         f"{list(info.shape)}, expected {expected} (q | k | v rows)")
    block, block_bytes = type_size(info.ggml_type)
    row_bytes = (info.ne[0] // block * block_bytes) if len(info.ne) == 2 else block_bytes // block
    first = sum(head_rows[:which])
    n = head_rows[which]
    ne = (info.ne[0], n) if len(info.ne) == 2 else (n,)
    raw = reader.tensor_bytes(fused)[first * row_bytes:(first + n) * row_bytes]
    part = TensorInfo(fused, ne, info.ggml_type, info.offset + first * row_bytes, n * row_bytes)
    return part, raw


def _where(reader, name: str) -> Path | str:
    """The file holding tensor `name` (the shard, for a split model)."""
    shard_of = getattr(reader, "shard_of", None)
    return shard_of(name) if shard_of is not None else getattr(reader, "path", "")
