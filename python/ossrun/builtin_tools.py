"""The built-in tools gpt-oss was trained with (harmony's `browser` and `python` namespaces):
names given to `model.chat(tools=[...])` resolve here to their default configurations."""

from __future__ import annotations


def default_builtin(name: str):
    """The built-in tool named `name` with its default settings."""
    raise ValueError(f"unknown built-in tool {name!r} (built-in tools: none in this version)")
