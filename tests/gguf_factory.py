"""Test helpers that write GGUF files: copies of a fixture with one thing changed (for the
bad-input tests), fixture weights re-encoded in another matrix type, and raw byte surgery for
hostile headers. Blocks follow MODEL.md §3.3 (MXFP4) and §4.3 (Q8_0); the container §4.1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

F32, F16, Q8_0, BF16, MXFP4 = 0, 1, 8, 30, 39


@dataclass
class Tensor:
    """One tensor: logical numpy shape (ggml ne reversed), ggml type, and its raw bytes."""

    shape: tuple[int, ...]
    ggml_type: int
    raw: np.ndarray  # uint8, flat

    def row_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        return self.shape[-1] // block * size


@dataclass
class GgufContents:
    """Metadata (key -> (value, value type, array element type)) and tensors, in file order."""

    kv: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)

    def set(self, key, value, vtype=GGUFValueType.UINT32, sub_type=None):
        self.kv[key] = (value, vtype, sub_type)


def read_gguf(path) -> GgufContents:
    reader = GGUFReader(str(path))
    out = GgufContents()
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # version / counts: the writer recomputes them
        vtype = GGUFValueType(f.types[0])
        sub = GGUFValueType(f.types[1]) if vtype == GGUFValueType.ARRAY else None
        out.kv[key] = (f.contents(), vtype, sub)
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        out.tensors[t.name] = Tensor(
            shape,
            int(t.tensor_type),
            np.ascontiguousarray(t.data).view(np.uint8).reshape(-1).copy(),
        )
    return out


def write_gguf(path, contents: GgufContents) -> Path:
    """Write `contents` with gguf.GGUFWriter (keys and tensors in dict order)."""
    path = Path(path)
    w = GGUFWriter(str(path), arch="unused")
    w.kv_data[0].clear()  # drop the architecture key the constructor adds; ours comes from kv
    for key, (value, vtype, sub) in contents.kv.items():
        w.add_key_value(key, value, vtype, sub)
    for name, t in contents.tensors.items():
        w.add_tensor(
            name,
            t.raw.reshape(*t.shape[:-1], -1) if t.shape else t.raw,
            raw_shape=(*t.shape[:-1], t.row_bytes()),
            raw_dtype=GGMLQuantizationType(t.ggml_type),
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def modified_copy(src, dst, edit) -> Path:
    """Copy GGUF `src` to `dst` after `edit(contents)` changed it in place."""
    c = read_gguf(src)
    edit(c)
    return write_gguf(dst, c)


# --------------------------------------------------------------------------- encoders


def f32_to_bf16_bits(x) -> np.ndarray:
    """Round float32 to bf16 (nearest even), as uint16 bits."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def quantize_q8_0(x) -> np.ndarray:
    """float [rows, cols] -> Q8_0 bytes [rows, cols/32·34]: d = fp16(max|x|/127), q = round(x/d)."""
    x = np.asarray(x, dtype=np.float64)
    rows, cols = x.shape
    b = x.reshape(rows, cols // 32, 32)
    d = (np.abs(b).max(axis=-1, keepdims=True) / 127).astype(np.float16)
    df = d.astype(np.float64)
    q = np.where(df > 0, np.round(b / np.where(df > 0, df, 1)), 0).clip(-127, 127).astype(np.int8)
    out = np.empty((rows, cols // 32, 34), dtype=np.uint8)
    out[:, :, :2] = d.view(np.uint8)
    out[:, :, 2:] = q.view(np.uint8)
    return out.reshape(rows, -1)


def mxfp4_block_bytes(codes, scale_bytes) -> np.ndarray:
    """E2M1 codes [rows, nb, 32] and E8M0 bytes [rows, nb] -> GGUF block_mxfp4 [rows, nb·17].

    Split order: byte k holds element k (low nibble) and element k+16 (high nibble).
    """
    codes = np.asarray(codes, dtype=np.uint8)
    rows, nb, _ = codes.shape
    out = np.empty((rows, nb, 17), dtype=np.uint8)
    out[:, :, 0] = scale_bytes
    out[:, :, 1:] = codes[:, :, :16] | (codes[:, :, 16:] << 4)
    return out.reshape(rows, nb * 17)


def encode_matrix(values, ggml_type: int) -> np.ndarray:
    """Float matrix [rows, cols] -> raw bytes [rows, row_bytes] of a dense or Q8_0 type."""
    v = np.asarray(values)
    if ggml_type == F32:
        return v.astype("<f4").view(np.uint8).reshape(v.shape[0], -1)
    if ggml_type == F16:
        return v.astype("<f2").view(np.uint8).reshape(v.shape[0], -1)
    if ggml_type == BF16:
        return f32_to_bf16_bits(v).view(np.uint8).reshape(v.shape[0], -1)
    if ggml_type == Q8_0:
        return quantize_q8_0(v)
    raise ValueError(f"no encoder for ggml type {ggml_type}")


def retype_matrices(src, dst, ggml_type: int, names=None) -> Path:
    """Copy a GGUF with some matrices (default: every non-expert 2-D weight) re-encoded; expert
    stacks [E, rows, cols] are encoded row by row.

    The values change by the new type's rounding; tests compare against the reference run on the
    new file, so that is fine.
    """
    from reference import dequantize

    def edit(c: GgufContents):
        for name, t in c.tensors.items():
            pick = names is not None and name in names
            pick |= (
                names is None
                and len(t.shape) == 2
                and name.endswith(".weight")
                and "exps" not in name
            )
            if pick:
                vals = dequantize(t.raw, t.ggml_type, t.shape).reshape(-1, t.shape[-1])
                c.tensors[name] = Tensor(
                    t.shape, ggml_type, encode_matrix(vals, ggml_type).reshape(-1)
                )

    return modified_copy(src, dst, edit)


# --------------------------------------------------------------------------- raw byte surgery


def tensor_info_offsets(path) -> dict:
    """name -> byte position (in the file) of the u64 `offset` field of its tensor info; the
    u32 ggml type sits in the 4 bytes before it."""
    reader = GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        f = t.field  # ReaderField of the tensor info; its last part is the offset
        out[t.name] = int(f.offset) + sum(int(p.nbytes) for p in f.parts[:-1])
    return out


def patch(path, pos: int, fmt: str, value) -> None:
    """Overwrite the bytes at `pos` with struct-packed `value`."""
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(struct.pack(fmt, value))
