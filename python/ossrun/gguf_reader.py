"""A fast, strict reader of the GGUF container (MODEL.md §4.1) over one read-only memory map.

`gguf.GGUFReader` builds numpy views for every element of every metadata array, which takes
~20 s for the 201k-token vocabulary and 446k merges of a real gpt-oss file. This reader parses
the header with `struct` in one pass, skips arrays nobody asked for (the merges) and decodes the
string arrays it keeps in bulk; type ids and block sizes come from the `gguf` library, except
MXFP4's, listed here (see `type_size`). Every read is bounds-checked, so a truncated or hostile
header raises ValueError, never reads past the map.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_NUMPY_TYPES = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "<u1", GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}
# Metadata arrays the runtime never reads; they are skipped, not decoded.
SKIPPED_KEYS = frozenset({"tokenizer.ggml.merges"})
_MAX_DIMS = 4
# (elements, bytes) per block of types whose size this reader must know even where the `gguf`
# library does not: MXFP4 (type 39), and the retired id 4 under which Ollama's gpt-oss blobs of
# August-October 2025 stored MXFP4 (the loader recognises them to refuse them clearly).
_OWN_TYPE_SIZES = {39: (32, 17), 4: (32, 17)}


def type_size(ggml_type: int) -> tuple[int, int]:
    """(elements, bytes) of one block of `ggml_type`; ValueError for an unknown type."""
    if ggml_type in _OWN_TYPE_SIZES:
        return _OWN_TYPE_SIZES[ggml_type]
    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise ValueError(f"unknown ggml type {ggml_type}") from None


def _type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


@dataclass
class TensorInfo:
    name: str
    ne: tuple  # ggml order: ne[0] is the contiguous dimension
    ggml_type: int
    offset: int  # absolute offset of the data in the file
    n_bytes: int

    @property
    def shape(self) -> tuple:
        """numpy order (ne reversed), in elements."""
        return tuple(reversed(self.ne))


class GgufFile:
    """Metadata (`.metadata`: key -> Python value; numeric arrays as numpy arrays, string arrays
    as lists of str) and tensor infos (`.tensors`: name -> TensorInfo) of a GGUF file, with
    zero-copy access to tensor bytes through `.tensor_bytes(name)`."""

    def __init__(self, path):
        with open(path, "rb") as f:
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:
                raise ValueError("the file is empty") from None
        self.size = len(self._map)
        self._buf = memoryview(self._map)
        self._pos = 0
        self.metadata: dict = {}
        self.value_types: dict = {}  # key -> GGUFValueType (or (ARRAY, element type))
        self.tensors: dict[str, TensorInfo] = {}
        self._parse()

    # -- primitive reads, all bounds-checked ------------------------------------------------
    def _take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > self.size:
            raise ValueError(f"truncated header: needs {n} bytes at offset {self._pos}, "
                             f"file has {self.size}")
        view = self._buf[self._pos:self._pos + n]
        self._pos += n
        return view

    def _unpack(self, fmt: str):
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _string(self) -> str:
        n = self._unpack("<Q")
        try:
            return str(self._take(n), "utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"a string at offset {self._pos - n} is not valid UTF-8") from None

    def _value_type(self) -> GGUFValueType:
        raw = self._unpack("<I")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise ValueError(f"unknown metadata value type {raw}") from None

    def _value(self, vtype: GGUFValueType, key: str):
        if vtype == GGUFValueType.STRING:
            return self._string()
        if vtype != GGUFValueType.ARRAY:
            return self._unpack(_SCALAR_FORMATS[vtype])
        etype = self._value_type()
        count = self._unpack("<Q")
        self.value_types[key] = (GGUFValueType.ARRAY, etype)
        if etype == GGUFValueType.STRING:
            return self._string_array(count, keep=key not in SKIPPED_KEYS)
        if etype == GGUFValueType.ARRAY:
            raise ValueError(f"metadata key '{key}': nested arrays are not supported")
        dtype = np.dtype(_NUMPY_TYPES[etype])
        raw = self._take(count * dtype.itemsize)
        return np.frombuffer(raw, dtype=dtype).copy()

    def _string_array(self, count: int, keep: bool):
        if count > self.size // 8:
            raise ValueError(f"string array of {count} entries cannot fit in the file")
        out = [] if keep else None
        buf, pos, size = self._buf, self._pos, self.size
        unpack_len = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > size:
                raise ValueError("truncated header inside a string array")
            (n,) = unpack_len(buf, pos)
            pos += 8
            if pos + n > size:
                raise ValueError("truncated header inside a string array")
            if keep:
                out.append(bytes(buf[pos:pos + n]))
            pos += n
        self._pos = pos
        if not keep:
            return None
        try:
            return [b.decode("utf-8") for b in out]
        except UnicodeDecodeError:
            raise ValueError("a string array holds invalid UTF-8") from None

    # -- the container ----------------------------------------------------------------------
    def _parse(self) -> None:
        if bytes(self._take(4)) != MAGIC:
            raise ValueError("not a GGUF file (bad magic)")
        version = self._unpack("<I")
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"GGUF version {version} is not supported")
        n_tensors = self._unpack("<Q")
        n_kv = self._unpack("<Q")
        # Each entry takes at least a few bytes: reject counts no file of this size could hold.
        if n_tensors > self.size // 16 or n_kv > self.size // 12:
            raise ValueError(f"header claims {n_tensors} tensors and {n_kv} keys, more than fit")
        for _ in range(n_kv):
            key = self._string()
            vtype = self._value_type()
            self.value_types.setdefault(key, vtype)
            self.metadata[key] = self._value(vtype, key)
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._unpack("<I")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise ValueError(f"tensor '{name}' has {n_dims} dimensions")
            ne = tuple(self._unpack("<Q") for _ in range(n_dims))
            raw_type = self._unpack("<I")
            offset = self._unpack("<Q")
            infos.append((name, ne, raw_type, offset))
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment!r} is not a power of two")
        data_start = -(-self._pos // alignment) * alignment
        for name, ne, raw_type, offset in infos:
            if name in self.tensors:
                raise ValueError(f"tensor '{name}' appears twice")
            try:
                block, block_bytes = type_size(raw_type)
            except ValueError:
                raise ValueError(f"tensor '{name}' has unknown ggml type {raw_type}") from None
            if any(d <= 0 or d > (1 << 40) for d in ne):
                raise ValueError(f"tensor '{name}' has invalid dimensions {list(ne)}")
            if ne[0] % block:
                raise ValueError(f"tensor '{name}': rows of {ne[0]} elements are not whole "
                                 f"{_type_name(raw_type)} blocks of {block}")
            n_elems = int(np.prod(ne, dtype=object))
            n_bytes = n_elems // block * block_bytes
            start = data_start + offset
            if offset % alignment or start + n_bytes > self.size:
                raise ValueError(f"tensor '{name}' lies outside the file (offset {offset}, "
                                 f"{n_bytes} bytes, file {self.size} bytes): truncated?")
            self.tensors[name] = TensorInfo(name, ne, int(raw_type), start, n_bytes)

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The raw bytes of a tensor: a read-only uint8 view into the memory map (no copy)."""
        t = self.tensors[name]
        return np.frombuffer(self._map, dtype=np.uint8, count=t.n_bytes, offset=t.offset)
