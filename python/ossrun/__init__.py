"""ossrun: run OpenAI's gpt-oss models locally, exact to the reference.

    import ossrun
    model = ossrun.load("gpt-oss-20b-mxfp4.gguf")
    ids = model.tokenizer.encode("Hello")
    logits = model.logits(ids)
"""

import os as _os
import sys as _sys

if _os.environ.get("OSSRUN_CUDA_EMULATOR") == "1":
    # Tests only (tests/test_cuda_emulated_model.py): the core and the CUDA module built against
    # the CPU emulator (cuda/emulator) stand in for _core and _cuda, so device="cuda" runs the
    # CUDA backend's code on the CPU, slowly.
    from . import _core_emu as _core
    from . import _cuda_emu as _cuda

    _sys.modules[__name__ + "._core"] = _core
    _sys.modules[__name__ + "._cuda"] = _cuda

from .errors import ContextOverflowError, DeviceError, ModelError, OssrunError  # noqa: E402

__all__ = ["Browser", "ContextOverflowError", "DeviceError", "ModelError", "OssrunError", "PythonTool",
           "cuda_status", "load"]
__version__ = "0.1.0"


def load(path, n_ctx: int = 4096, threads=None, precision: str = "fast", **kwargs):
    """Load a gpt-oss GGUF file; see `ossrun.model.Model` (device="cpu"|"cuda"|"auto",
    gpu_layers=, cpu_moe=N|"all" among the keyword arguments)."""
    from .model import Model

    return Model(path, n_ctx=n_ctx, threads=threads, precision=precision, **kwargs)


def cuda_status():
    """What CUDA can do here (`ossrun.device.CudaStatus`): the device's name and free/total VRAM,
    or why CUDA is unavailable (not built, no driver, no device). Needs no GPU to answer."""
    from .device import cuda_status as status

    return status()


def __getattr__(name: str):
    """The built-in tools' settings, imported on first use (they bring httpx, jupyter_client)."""
    if name == "Browser":
        from .browser import Browser

        return Browser
    if name == "PythonTool":
        from .python_tool import PythonTool

        return PythonTool
    raise AttributeError(f"module 'ossrun' has no attribute {name!r}")
