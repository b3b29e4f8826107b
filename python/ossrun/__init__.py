"""ossrun: run OpenAI's gpt-oss models locally, exact to the reference.

    import ossrun
    model = ossrun.load("gpt-oss-20b-mxfp4.gguf")
    ids = model.tokenizer.encode("Hello")
    logits = model.logits(ids)
"""

from .errors import ContextOverflowError, ModelError, OssrunError

__all__ = ["Browser", "ContextOverflowError", "ModelError", "OssrunError", "PythonTool", "load"]
__version__ = "0.1.0"


def load(path, n_ctx: int = 4096, threads=None, precision: str = "fast", **kwargs):
    """Load a gpt-oss GGUF file; see `ossrun.model.Model`."""
    from .model import Model

    return Model(path, n_ctx=n_ctx, threads=threads, precision=precision, **kwargs)


def __getattr__(name: str):
    """The built-in tools' settings, imported on first use (they bring httpx, jupyter_client)."""
    if name == "Browser":
        from .browser import Browser

        return Browser
    if name == "PythonTool":
        from .python_tool import PythonTool

        return PythonTool
    raise AttributeError(f"module 'ossrun' has no attribute {name!r}")
