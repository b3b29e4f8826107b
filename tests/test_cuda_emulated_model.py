"""tests/test_cuda_model.py's GPU tests on the CPU emulator (cuda/emulator), where no GPU is
present: a subprocess runs that file with OSSRUN_CUDA_EMULATOR=1, which puts ossrun._core_emu and
ossrun._cuda_emu (the core with the CUDA device model, and the CUDA module, compiled against the
emulator) in place of _core and _cuda (python/ossrun/__init__.py). So the CUDA backend, the
device KV cache, the stacked batches, the CPU/GPU splits and the decode graphs run their golden
and CPU-equality checks here, slowly (~8 minutes), and the CPU/GPU hand-overs again with every
stream lazy (~2 minutes); a GPU machine runs the file itself."""

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


def run_on_the_emulator(extra_env: dict, *pytest_args: str) -> tuple[int, str]:
    """(tests passed, report) of tests/test_cuda_model.py on the emulator; skips where it cannot run."""
    if cuda_status().available:
        pytest.skip("a CUDA device is here: tests/test_cuda_model.py runs on it directly")
    if not all(importlib.util.find_spec(f"ossrun.{m}") for m in ("_core_emu", "_cuda_emu")):
        pytest.skip("ossrun was built without the CUDA emulator (OSSRUN_CUDA_EMULATOR=OFF, or not Linux)")
    env = dict(os.environ, OSSRUN_CUDA_EMULATOR="1", **extra_env)
    env.pop("OSSRUN_REQUIRE_CUDA", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda_model.py",
         *pytest_args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    passed = re.search(r"(\d+) passed", run.stdout)
    return (int(passed.group(1)) if passed else 0), report


def test_the_device_model_tests_pass_on_the_emulator():
    passed, report = run_on_the_emulator({})
    # The GPU tests ran, not skipped: the file holds ~20 host tests and ~55 device ones.
    assert passed >= 60, report


def test_the_cpu_gpu_hand_overs_wait_for_their_streams():
    # Every stream lazy (cuda/emulator/emulator.h): its work runs only when a synchronisation, a
    # copy to the host on it or another stream's wait needs it, while the default stream's copies
    # run at once; so a hand-over that copies the GPU's rows (or writes device memory) on the
    # default stream without waiting for the model's stream, as a device would let it, fails here.
    passed, report = run_on_the_emulator({"OSSRUN_EMU_STREAMS": "lazy-all"},
                                         "-k", "hybrid or first_layers or stacked or graphs")
    assert passed >= 10, report
