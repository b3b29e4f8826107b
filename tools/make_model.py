#!/usr/bin/env python3
"""Write a random gpt-oss GGUF in llama.cpp's layout (MODEL.md §4) — CLI for ossrun.model_maker.

    python tools/make_model.py OUT.gguf --preset tiny|20b|120b [--layers N ... --seed S]

Importable too (tests add tools/ to sys.path): re-exports the model_maker API.
"""

import sys
from pathlib import Path

# This checkout's package, even when another ossrun is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from ossrun.model_maker import (  # noqa: F401
    PRESETS,
    HParams,
    byte_vocab,
    main,
    make_model,
    o200k_vocab,
    preset,
    tensor_plans,
    write_model,
)

if __name__ == "__main__":
    sys.exit(main())
