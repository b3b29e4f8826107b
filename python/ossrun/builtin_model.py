"""The built-in model that `ossrun chat`, `run` and `serve` use when no model file is named.

A tiny gpt-oss (4 layers, width 128, 8 experts top-2, MXFP4 experts, a 1024-token BPE) trained
by tools/train_nano.py on synthetic harmony conversations: greetings, small sums, unit
conversions, get_weather / get_time / calculator tool calls and JSON answers. It ships inside
the package (python/ossrun/models/), so the first command works offline and shows harmony
behaviour — reasoning, then an answer or a tool call — not noise. It is not gpt-oss: it knows only
those tasks and still makes mistakes on them (tools/eval_nano.py measures how many).
"""

from __future__ import annotations

from pathlib import Path

from .errors import OssrunError

BUILTIN_MODEL_FILE = "nano-gpt-oss.gguf"

# Replies of a model this small can loop; cap them so that a turn always ends quickly.
BUILTIN_MAX_TOKENS = 512

BANNER = (
    "This is ossrun's built-in nano model: a 2-million-parameter demo of the gpt-oss\n"
    "architecture, trained for 95 minutes on a few synthetic tasks (greetings, small sums, unit\n"
    "conversions, get_weather/get_time/calculator tool calls, JSON answers). It is not gpt-oss:\n"
    "it knows nothing else, and even on those tasks it makes mistakes.\n"
    "For the real gpt-oss: `ossrun chat ggml-org/gpt-oss-20b-GGUF` (downloads 12 GiB once;\n"
    "needs 16 GB of RAM), or `ossrun chat path/to/gpt-oss-20b-mxfp4.gguf`."
)


def builtin_model_path() -> Path:
    """The path of the built-in nano model file; OssrunError if the install lacks it."""
    path = Path(__file__).resolve().parent / "models" / BUILTIN_MODEL_FILE
    if not path.is_file():
        raise OssrunError(f"the built-in model {path} is missing from this installation; "
                          "name a gpt-oss .gguf file instead")
    return path
