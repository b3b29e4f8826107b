"""The built-in demo model that `ossrun chat` runs when given no model file.

A small gpt-oss-shaped GGUF with random weights, made deterministically by `model_maker` on first
use and cached, so the command works offline on a fresh machine. It shows the interface working;
its replies are noise.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# Bump when the shape, seed or generator changes, so an old cached file is not reused.
DEMO_VERSION = 1
DEMO_SEED = 0
# gpt-oss proportions, small: made in ~3 s (mostly the o200k vocabulary's merges), fast to run.
DEMO_SHAPE = {"layers": 4, "hidden": 128, "intermediate": 128, "heads": 4, "kv_heads": 2,
              "head_dim": 64, "experts": 4, "top_k": 2, "sliding_window": 128}

# Random weights rarely sample a stop token: replies are capped so that a turn ends quickly.
DEMO_MAX_TOKENS = 256

NOTICE = (
    "This is ossrun's built-in demo model: its weights are random, so its replies are empty\n"
    "or noise; it shows that ossrun works on this machine and how fast.\n"
    "For a real model, download a gpt-oss GGUF such as ggml-org/gpt-oss-20b-GGUF and run\n"
    "`ossrun chat path/to/gpt-oss-20b-mxfp4.gguf`."
)


def vocab_file() -> Path | None:
    """The o200k_base.tiktoken file to build the demo's vocabulary from, if one is available.

    $OSSRUN_VOCAB (an error when it names a missing file), else model_maker's default: the
    project's shared/vocab copy beside a source checkout. None means a byte-level vocabulary.
    """
    env = os.environ.get("OSSRUN_VOCAB")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"OSSRUN_VOCAB={env}: no such file")
        return path
    from .model_maker import default_vocab_file

    return default_vocab_file()


def demo_model(cache_dir: Path, on_create: Callable[[str], None] | None = None) -> Path:
    """The demo model's path in `cache_dir`, creating the file first when it is not there.

    on_create(message) is called before a (one-time) creation, so the caller can say why it waits.
    The file is written under a unique temporary name and renamed into place, so an interrupted
    or concurrent creation never leaves a broken file under the final name.
    """
    vocab = vocab_file()
    path = Path(cache_dir) / f"demo-v{DEMO_VERSION}-{'o200k' if vocab else 'byte'}.gguf"
    if path.is_file():
        return path
    if on_create:
        on_create(f"Creating the demo model in {path} (one time only)...")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".demo-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        from .model_maker import make_model

        make_model(tmp, "tiny", seed=DEMO_SEED, vocab_file=vocab, use_byte_vocab=vocab is None,
                   progress=False, **DEMO_SHAPE)
        os.replace(tmp, path)
    finally:
        # make_model writes `<name>.part` before renaming it to `<name>`; leave neither behind.
        for leftover in (tmp, tmp.with_name(tmp.name + ".part")):
            leftover.unlink(missing_ok=True)
    return path
