"""Exceptions raised by ossrun. Every user-facing failure is one of these."""


class OssrunError(Exception):
    """Base class of every error ossrun raises on purpose."""


class ModelError(OssrunError, ValueError):
    """A model file is missing, truncated, hostile or not a gpt-oss GGUF."""


class ContextOverflowError(OssrunError, ValueError):
    """A request needs more tokens than the session's context holds."""


class DeviceError(OssrunError, RuntimeError):
    """A device was asked for that cannot be used: CUDA missing, no GPU, too little memory."""
