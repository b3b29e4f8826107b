"""Model files and other large binaries never enter git (STYLE.md, habits)."""

from __future__ import annotations

import subprocess

import pytest
from conftest import REPO

MAX_TRACKED_BYTES = 2 * 1024 * 1024


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / name for name in out.stdout.decode().split("\0") if name]


def test_no_model_files_or_large_binaries_are_tracked():
    files = tracked_files()
    assert not [f for f in files if f.suffix in (".gguf", ".safetensors", ".bin")]
    big = [(f.name, f.stat().st_size) for f in files if f.is_file() and f.stat().st_size > MAX_TRACKED_BYTES]
    assert not big, f"tracked files over 2 MiB: {big}"
