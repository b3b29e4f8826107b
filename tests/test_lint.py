"""The Python sources pass ruff with the project's settings (pyproject.toml [tool.ruff]): a change
that breaks the style guide's lint fails here rather than in review."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO as ROOT


def _ruff() -> list[str] | None:
    exe = shutil.which("ruff")
    if exe:
        return [exe]
    try:
        import ruff  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "ruff"]


@pytest.mark.skipif(_ruff() is None, reason="ruff is not installed (pip install '.[test]')")
@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")
def test_ruff_finds_nothing():
    run = subprocess.run([*_ruff(), "check", "--no-cache", "python", "tests", "tools"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
