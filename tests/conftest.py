"""Shared test fixtures: where ../shared is, and clean skips when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("OSSRUN_SHARED", REPO.parent / "shared"))
VOCAB_FILE = SHARED / "vocab" / "o200k_base.tiktoken"
FIXTURES = SHARED / "spec" / "fixtures"
HARMONY_VECTORS = SHARED / "testdata" / "harmony"


@pytest.fixture(scope="session")
def vocab_file() -> Path:
    if not VOCAB_FILE.is_file():
        pytest.skip("../shared/vocab/o200k_base.tiktoken is not present")
    return VOCAB_FILE


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip("../shared/spec/fixtures is not present")
    return FIXTURES


@pytest.fixture(scope="session")
def harmony_vectors() -> Path:
    if not HARMONY_VECTORS.is_dir():
        pytest.skip("../shared/testdata/harmony is not present")
    return HARMONY_VECTORS


@pytest.fixture
def rng(request):
    """A fresh random generator per test; its seed is printed (shown on failure) and can be
    forced with OSSRUN_TEST_SEED=<int> to reproduce a failure."""
    import numpy as np

    seed = int(os.environ.get("OSSRUN_TEST_SEED", np.random.SeedSequence().entropy % 2**63))
    print(f"{request.node.nodeid}: OSSRUN_TEST_SEED={seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, request) -> Path:
    """The tiny preset as a GGUF, written once per test session: with the real vocabulary when the
    vocab file exists (chat tests need it), else a byte-level vocabulary of 8192 ids."""
    from ossrun import model_maker

    try:
        vocab = request.getfixturevalue("vocab_file")
    except pytest.skip.Exception:
        vocab = None
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    return model_maker.make_model(path, "tiny", seed=1, vocab_file=vocab, use_byte_vocab=vocab is None,
                                  **({} if vocab else {"vocab": 8192}))


def load_tool(name: str):
    """tools/<name>.py as a module (the tools are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
