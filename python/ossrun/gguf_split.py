"""A GGUF model that may be split into shards, as llama.cpp's gguf-split writes them.

gguf-split names shard n of N `PREFIX-0000n-of-0000N.gguf`. The first shard holds all metadata
plus its tensors; the others hold only their tensors and three keys every shard carries:
`split.no` (u16, 0-based), `split.count` (u16) and `split.tensors.count` (i32, tensors in all
shards together). Opening any shard opens all of them; each stays memory-mapped for as long as
this object lives (the core's weight views point into the maps).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .errors import ModelError
from .gguf_reader import GgufFile, TensorInfo

SPLIT_NO = "split.no"
SPLIT_COUNT = "split.count"
SPLIT_TENSORS_COUNT = "split.tensors.count"
SPLIT_KEYS = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT)
MAX_SHARDS = 99999  # the 5-digit numbers of the file names

_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def shard_path(prefix: str | Path, no: int, count: int) -> Path:
    """The file name gguf-split gives shard `no` (0-based) of `count`."""
    return Path(f"{prefix}-{no + 1:05d}-of-{count:05d}.gguf")


def split_name(path: Path) -> tuple[Path, int, int] | None:
    """(prefix, 0-based shard number, shard count) when `path` is named like a shard, else None."""
    m = _SHARD_NAME.match(path.name)
    if m is None:
        return None
    return path.with_name(m["prefix"]), int(m["no"]) - 1, int(m["count"])


def _open_one(path: Path) -> GgufFile:
    try:
        return GgufFile(path)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except (ValueError, OverflowError, OSError) as e:
        raise ModelError(f"{path}: corrupt or truncated GGUF file ({e})") from None


def _split_int(shard: GgufFile, key: str, path: Path) -> int | None:
    value = shard.metadata.get(key)
    if value is None:
        return None
    if isinstance(value, (bool, str, list, np.ndarray)) or not isinstance(value, (int, np.integer)):
        raise ModelError(f"{path}: metadata key '{key}' must be an integer, got {value!r}")
    return int(value)


class GgufShards:
    """The shards of one model seen as one GGUF file: `.metadata` and `.value_types` of the first
    shard, `.tensors` (name -> TensorInfo) of all, `.tensor_bytes(name)` zero-copy from the shard
    that holds it. A file that is not split is a set of one shard."""

    def __init__(self, shards: list[GgufFile], paths: list[Path]):
        self.shards = shards  # keeps every memory map alive
        self.paths = paths
        self.metadata = shards[0].metadata
        self.value_types = shards[0].value_types
        self.size = sum(s.size for s in shards)
        self.tensors: dict[str, TensorInfo] = {}
        self._holder: dict[str, int] = {}  # tensor name -> index of its shard
        for i, shard in enumerate(shards):
            for name, info in shard.tensors.items():
                if name in self._holder:
                    raise ModelError(f"{paths[i]}: tensor '{name}' is also in "
                                     f"{paths[self._holder[name]]}")
                self._holder[name] = i
                self.tensors[name] = info

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    def shard_of(self, name: str) -> Path:
        """The file that holds tensor `name`."""
        return self.paths[self._holder[name]]

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The raw bytes of a tensor: a read-only uint8 view into its shard's map (no copy)."""
        return self.shards[self._holder[name]].tensor_bytes(name)


def open_shards(path: str | Path) -> GgufShards:
    """Open `path` and, when it is a shard of a split model, every shard beside it.

    Raises ModelError naming the file (and the tensor or key) when a shard is missing, truncated
    or does not belong: its split.no, split.count or split.tensors.count disagree, or a tensor
    lies in two shards.
    """
    path = Path(path)
    given = _open_one(path)
    count = _split_int(given, SPLIT_COUNT, path)
    if count is None or count == 1 and _split_int(given, SPLIT_NO, path) in (None, 0):
        shards = GgufShards([given], [path])
        _check_tensor_total(shards, path, given)
        return shards
    if not 1 <= count <= MAX_SHARDS:
        raise ModelError(f"{path}: metadata key '{SPLIT_COUNT}' = {count} is out of range")
    named = split_name(path)
    if named is None:
        raise ModelError(f"{path}: this is one shard of a model split in {count}, but its name does "
                         "not end in -NNNNN-of-MMMMM.gguf, so the other shards cannot be found")
    prefix, _, named_count = named
    if named_count != count:
        raise ModelError(f"{path}: metadata key '{SPLIT_COUNT}' = {count}, but the file name says "
                         f"{named_count} shards")
    paths = [shard_path(prefix, i, count) for i in range(count)]
    shards = []
    for i, p in enumerate(paths):
        if p == path:
            shard = given
        elif not p.is_file():
            raise ModelError(f"{p}: shard {i + 1} of {count} is missing (opened from {path})")
        else:
            shard = _open_one(p)
        no, n = _split_int(shard, SPLIT_NO, p), _split_int(shard, SPLIT_COUNT, p)
        if n is None or no is None:
            missing = SPLIT_COUNT if n is None else SPLIT_NO
            raise ModelError(f"{p}: metadata key '{missing}' is missing (shard {i + 1} of {count})")
        if n != count:
            raise ModelError(f"{p}: metadata key '{SPLIT_COUNT}' = {n}, but {paths[0]} and the file "
                             f"names say {count}")
        if no != i:
            raise ModelError(f"{p}: metadata key '{SPLIT_NO}' = {no}, expected {i} for shard "
                             f"{i + 1} of {count}")
        shards.append(shard)
    result = GgufShards(shards, paths)
    for shard, p in zip(shards, paths):
        _check_tensor_total(result, p, shard)
    return result


def _check_tensor_total(shards: GgufShards, path: Path, shard: GgufFile) -> None:
    total = _split_int(shard, SPLIT_TENSORS_COUNT, path)
    if total is not None and total != len(shards.tensors):
        raise ModelError(f"{path}: metadata key '{SPLIT_TENSORS_COUNT}' = {total}, but the "
                         f"{shards.n_shards} shard(s) hold {len(shards.tensors)} tensors")
