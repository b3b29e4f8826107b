"""`--no-mmap`: the MoE expert weights copied into anonymous memory backed by 2 MiB pages.

By default the core reads every weight straight from the file's memory map. Kernels without
large page-cache folios for the file's filesystem (most distribution kernels with ext4) map
that file with 4 KiB pages, and the MXFP4 expert GEMV then streams ~15 % slower than from the
same bytes in memory mapped with 2 MiB pages (TLB misses on every 4 KiB of a multi-MB expert;
docs/PERFORMANCE.md, seventh session). With `mmap=False` the expert tensors (ffn_gate_exps,
ffn_up_exps, ffn_down_exps: ~95 % of a gpt-oss file) are read with pread, two threads, into one
anonymous mapping madvise(MADV_HUGEPAGE)'d before it is touched, and the model's views point
there. One copy only: the file map's pages of those tensors are never touched by the core (and
are released, MADV_DONTNEED, in case something did); the page cache the reads fill belongs to
the kernel, which reclaims it, not to this process. It costs load time (reading the whole
experts up front) and commits their size in RAM, so it pays for long-running serve/chat. On the
AVX-512 variants the model then repacks the copy in place into 16-row groups
(csrc/mxfp4_interleave.h), which its decode GEMV and prefill GEMM read with fewer instructions.
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError

EXPERT_WEIGHTS = ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")
HUGE_PAGE = 2 << 20
TENSOR_ALIGN = 4096  # each tensor starts on a page of its own: the views stay 64-byte aligned
READ_CHUNK = 32 << 20  # bytes per pread: large enough to stream, small enough to share out
READ_THREADS = 2
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MEMINFO = Path("/proc/meminfo")


def add_no_mmap_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-mmap", action="store_true",
                   help="copy the expert weights into RAM backed by 2 MiB pages instead of reading "
                        "them from the file's memory map: faster decoding, slower load")


def thp_mode(path: Path = THP_ENABLED) -> str:
    """The kernel's transparent huge page mode ('always', 'madvise', 'never'), or 'unavailable'."""
    try:
        text = path.read_text()
    except OSError:
        return "unavailable"
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else "unavailable"


def mem_available(path: Path = MEMINFO) -> int | None:
    """MemAvailable in bytes, or None where the kernel does not say."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass
class WeightsInRam:
    """The anonymous mapping holding the copied tensors (the views keep it alive too)."""

    buffer: mmap.mmap
    start: int  # offset of the first tensor in `buffer` (2 MiB aligned in memory)
    n_bytes: int  # tensor bytes copied
    n_tensors: int
    thp: str
    seconds: float

    @property
    def address(self) -> int:
        return np.frombuffer(self.buffer, dtype=np.uint8, count=1, offset=self.start).ctypes.data

    def huge_page_bytes(self) -> int:
        """AnonHugePages of this mapping per /proc/self/smaps (bytes backed by 2 MiB pages)."""
        base = np.frombuffer(self.buffer, dtype=np.uint8, count=1).ctypes.data
        total = 0
        inside = False
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    inside = base <= lo and hi <= base + len(self.buffer)
                elif inside and head == "AnonHugePages:":
                    total += int(line.split()[1]) * 1024
        return total

    def summary(self) -> str:
        return (f"{self.n_tensors} expert tensors ({self.n_bytes / 2**30:.2f} GiB) copied into "
                f"anonymous memory in {self.seconds:.1f} s (transparent huge pages: {self.thp})")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _padded(n: int) -> int:
    """A tensor's bytes in the copy: rounded up to TENSOR_ALIGN, where the next one starts."""
    return -(-n // TENSOR_ALIGN) * TENSOR_ALIGN


def _map_address(shard) -> int:
    return np.frombuffer(shard._map, dtype=np.uint8, count=1).ctypes.data


def _layer_of(name: str) -> int | None:
    """The block index of a tensor named blk.<i>.*, else None."""
    parts = name.split(".", 2)
    return int(parts[1]) if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() else None


def _sources(g, layers: int | None = None):
    """(name, array, shard index, file offset) of each expert weight that lies in a file map; with
    `layers`, only those of blocks 0 .. layers - 1 (the ones a device load runs on the CPU)."""
    maps = [(i, _map_address(s), s.size) for i, s in enumerate(g.reader.shards)]
    for name, (arr, _, _) in g.tensors.items():
        if not name.endswith(EXPERT_WEIGHTS) or not arr.flags.c_contiguous:
            continue
        if layers is not None and not (_layer_of(name) is not None and _layer_of(name) < layers):
            continue
        addr = arr.ctypes.data
        for i, base, size in maps:
            if base <= addr and addr + arr.nbytes <= base + size:
                yield name, arr, i, addr - base
                break


def _read_into(fd: int, dest: memoryview, offset: int, path: Path) -> None:
    done = 0
    while done < len(dest):
        n = os.preadv(fd, [dest[done:]], offset + done)  # releases the GIL
        if n == 0:
            raise ModelError(f"{path}: corrupt or truncated GGUF file (ends inside a tensor at "
                             f"offset {offset + done})")
        done += n


# What "auto" (serve's default) leaves free after the copy: the KV caches, the repacked dense
# weights, the Python process and everything else on the machine.
AUTO_HEADROOM = 2 << 30


def copy_fits(g, headroom: int = AUTO_HEADROOM, layers: int | None = None) -> tuple[bool, str]:
    """Whether mmap="auto" copies the expert weights of the opened GgufModel `g` (with `layers`,
    those of its first `layers` blocks): when they fit in MemAvailable with `headroom` to spare.
    Returns (copy, why) for the load's description."""
    need = sum(_padded(arr.nbytes) for _, arr, _, _ in _sources(g, layers))
    if not need:
        return False, "no expert weights in the file map" + ("" if layers is None else " that run on the CPU")
    available = mem_available()
    if available is None:
        return False, "the kernel does not report MemAvailable"
    if need + headroom > available:
        return False, (f"the experts' {_size(need)} and {_size(headroom)} to spare exceed the "
                       f"{_size(available)} available: read from the file's memory map")
    return True, f"the experts' {_size(need)} fit in the {_size(available)} available"


class _Progress:
    """A percentage line on stderr while a copy of over 1 GiB runs (seconds to minutes, by how
    much of the file is in the page cache), only where stderr is a terminal (not in a server's log)."""

    def __init__(self, total: int):
        self.total, self.done, self.shown = total, 0, -1
        self.show = total > (1 << 30) and sys.stderr.isatty()
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        if not self.show:
            return
        with self.lock:
            self.done += n
            percent = self.done * 100 // self.total
            if percent != self.shown:
                self.shown = percent
                print(f"\rossrun: copying the expert weights into RAM: {percent:3d}% of "
                      f"{self.total / 2**30:.1f} GiB", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.show and self.shown >= 0:
            print(file=sys.stderr)


def copy_experts_to_ram(g, layers: int | None = None) -> WeightsInRam | None:
    """Copy the expert weights of the opened GgufModel `g` (with `layers`, only those of its first
    `layers` blocks) into one 2 MiB-page anonymous mapping and point `g.tensors` at the copies.
    None when there is nothing to copy."""
    t0 = time.perf_counter()
    sources = list(_sources(g, layers))
    if not sources:
        return None
    placed, total = [], 0
    for name, arr, shard, offset in sources:
        placed.append((name, arr, shard, offset, total))
        total += _padded(arr.nbytes)
    n_bytes = sum(arr.nbytes for _, arr, _, _ in sources)
    available = mem_available()
    if available is not None and total > available:
        raise ModelError(
            f"{g.path}: --no-mmap needs {_size(total)} of memory for the expert weights "
            f"but only {_size(available)} is available (MemAvailable); load without "
            "--no-mmap (mmap=True) to read them from the file's memory map")
    thp = thp_mode()
    if thp in ("never", "unavailable"):
        warnings.warn(f"transparent huge pages are {thp} on this kernel: --no-mmap copies the "
                      "expert weights into 4 KiB pages, which gains nothing over the file map",
                      RuntimeWarning, stacklevel=3)
    buffer = mmap.mmap(-1, total + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buffer.madvise(mmap.MADV_HUGEPAGE)  # before the first touch, so faults take 2 MiB
        except OSError:
            pass
    base = np.frombuffer(buffer, dtype=np.uint8, count=1).ctypes.data
    start = -base % HUGE_PAGE
    paths = g.reader.paths
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    try:
        whole = memoryview(buffer)
        jobs = [(fds[shard], offset + k, start + dest + k, min(READ_CHUNK, arr.nbytes - k), paths[shard])
                for _, arr, shard, offset, dest in placed for k in range(0, arr.nbytes, READ_CHUNK)]
        progress = _Progress(total)

        def read(job):
            fd, offset, dest, n, path = job
            _read_into(fd, whole[dest:dest + n], offset, path)
            progress.add(n)

        with ThreadPoolExecutor(READ_THREADS) as pool:
            list(pool.map(read, jobs))
        progress.close()
        whole.release()
    finally:
        for fd in fds:
            os.close(fd)
    for name, arr, shard, offset, dest in placed:
        copy = np.frombuffer(buffer, dtype=arr.dtype, count=arr.size, offset=start + dest)
        copy = copy.reshape(arr.shape)
        copy.flags.writeable = False
        _, ggml_type, shape = g.tensors[name]
        g.tensors[name] = (copy, ggml_type, shape)
        _release(g.reader.shards[shard]._map, offset, arr.nbytes)
    return WeightsInRam(buffer, start, n_bytes, len(placed), thp, time.perf_counter() - t0)


def _release(file_map: mmap.mmap, offset: int, n: int) -> None:
    """Drop this process's pages of the file map over the whole pages of [offset, offset + n)."""
    lo = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
    hi = (offset + n) // mmap.PAGESIZE * mmap.PAGESIZE
    if hi > lo and hasattr(mmap, "MADV_DONTNEED"):
        try:
            file_map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):
            pass
