"""tests/test_cuda_model.py's GPU tests on the CPU emulator (cuda/emulator), where no GPU is
present: a subprocess runs that file with OSSRUN_CUDA_EMULATOR=1, which puts ossrun._core_emu and
ossrun._cuda_emu (the core with the CUDA device model, and the CUDA module, compiled against the
emulator) in place of _core and _cuda (python/ossrun/__init__.py). So the CUDA backend, the
device KV cache, the stacked batches, the CPU/GPU splits and the decode graphs run their golden
and CPU-equality checks here, slowly (~4 minutes); a GPU machine runs the file itself."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ossrun.device import cuda_status

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_model_tests_pass_on_the_emulator():
    if cuda_status().available:
        pytest.skip("a CUDA device is here: tests/test_cuda_model.py runs on it directly")
    if not all(importlib.util.find_spec(f"ossrun.{m}") for m in ("_core_emu", "_cuda_emu")):
        pytest.skip("ossrun was built without the CUDA emulator (OSSRUN_CUDA_EMULATOR=OFF, or not Linux)")
    env = dict(os.environ, OSSRUN_CUDA_EMULATOR="1")
    env.pop("OSSRUN_REQUIRE_CUDA", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda_model.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    passed = re.search(r"(\d+) passed", run.stdout)
    # The GPU tests ran, not skipped: the file holds ~20 host tests and ~55 device ones.
    assert passed and int(passed.group(1)) >= 60, report
