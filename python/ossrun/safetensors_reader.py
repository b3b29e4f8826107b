"""A strict, zero-copy reader of `.safetensors` files (the container of Hugging Face and OpenAI
checkpoints), so converting needs neither torch nor the safetensors package.

A file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte range)
and the raw data. Every tensor is handed out as a numpy view into one read-only memory map, so a
converter touches one slice at a time and a 120b checkpoint never has to fit in RAM. BF16 has no
numpy dtype: its views are uint16 bit patterns.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ModelError

# safetensors dtype -> numpy dtype of the view (BF16 as its raw bits).
DTYPES = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
_MAX_HEADER = 100 << 20  # the format's own limit on the JSON header


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str  # safetensors name: "BF16", "U8", ...
    shape: tuple[int, ...]
    file: Path
    array: np.ndarray  # read-only view into the file's map, `shape` in numpy order
    mapping: mmap.mmap = field(repr=False, compare=False)  # the file's map, for `release_pages`


def read_safetensors(path: str | Path) -> dict[str, StoredTensor]:
    """name -> StoredTensor for one file; ModelError naming the file on anything malformed."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 8:
                raise ModelError(f"{path}: too short to be a safetensors file")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e})") from None
    (n,) = struct.unpack_from("<Q", mapped, 0)
    if n > min(_MAX_HEADER, size - 8):
        raise ModelError(f"{path}: not a safetensors file (header length {n} of a {size}-byte file)")
    try:
        header = json.loads(bytes(mapped[8:8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{path}: not a safetensors file (the header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: not a safetensors file (the header is not a JSON object)")
    data_start = 8 + n
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            if not all(isinstance(d, int) and d >= 0 for d in (*shape, begin, end)):
                raise TypeError
        except (TypeError, KeyError, ValueError):
            raise ModelError(f"{path}: tensor '{name}' has a malformed header entry") from None
        if dtype not in DTYPES:
            raise ModelError(f"{path}: tensor '{name}' has dtype {dtype}, which ossrun cannot read")
        np_dtype = DTYPES[dtype]
        count = math.prod(shape)
        if end - begin != count * np_dtype.itemsize or data_start + end > size:
            raise ModelError(f"{path}: tensor '{name}' has a byte range that does not fit its "
                             f"shape {list(shape)} or lies outside the file (truncated?)")
        array = np.frombuffer(mapped, dtype=np_dtype, count=count, offset=data_start + begin)
        tensors[name] = StoredTensor(name, dtype, shape, path, array.reshape(shape), mapped)
    return tensors


def release_pages(tensors) -> None:
    """Drop the pages of these tensors' files from this process's memory (they stay in the page
    cache and fault back in when read again). A converter that calls this after each chunk keeps
    its resident set at one chunk instead of growing to the whole checkpoint."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    for mapping in {id(t.mapping): t.mapping for t in tensors}.values():
        mapping.madvise(mmap.MADV_DONTNEED)


def read_folder(folder: str | Path) -> dict[str, StoredTensor]:
    """Every tensor of every `*.safetensors` file in a folder (sharded checkpoints included)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder}: no .safetensors files")
    tensors: dict[str, StoredTensor] = {}
    for f in files:
        for name, t in read_safetensors(f).items():
            if name in tensors:
                raise ModelError(f"{folder}: tensor '{name}' is in both {tensors[name].file.name} "
                                 f"and {f.name}")
            tensors[name] = t
    return tensors
