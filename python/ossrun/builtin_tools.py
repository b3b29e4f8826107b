"""The built-in tools gpt-oss was trained with (harmony's `browser` and `python` namespaces):
names given to `model.chat(tools=[...])` resolve here to their default configurations, and a
tool that cannot run here is not offered, with a warning that says why."""

from __future__ import annotations

import warnings

BUILTIN_NAMES = ("browser", "python")


def default_builtin(name: str):
    """The built-in tool named `name` with its default settings (None if it cannot run here:
    a warning says why)."""
    if name == "python":
        from .python_tool import PythonTool

        tool = PythonTool()
    elif name == "browser":
        from .browser import Browser

        tool = Browser()
    else:
        raise ValueError(f"unknown built-in tool {name!r} (built-in tools: "
                         f"{', '.join(BUILTIN_NAMES)})")
    return offered(tool)


def offered(tool):
    """`tool` if it can run here, else None with a warning naming the reason."""
    problem = tool.unavailable()
    if problem:
        warnings.warn(f"the {tool.name} tool is not offered: {problem}", RuntimeWarning,
                      stacklevel=3)
        return None
    return tool
