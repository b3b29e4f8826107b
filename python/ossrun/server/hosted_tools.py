"""The Responses API's built-in tool types, run by the server itself on ossrun's tools.

`web_search` / `web_search_preview` is the browser tool (ossrun.browser: harmony's `browser`
namespace, searching the index or SearXNG instance the server was started with) and
`code_interpreter` the python tool (ossrun.python_tool: a sandboxed Jupyter kernel). The server
is started with them (`ossrun serve --browser --docs DIR --python`, or `EngineOptions(tools=
[ossrun.Browser(...), ossrun.PythonTool(...)])`); a request naming one it was not started with is
a 400 that says so.

A code_interpreter `container` is a kernel kept between responses: `{"type": "auto"}` reuses the
container of the conversation's last code_interpreter_call while it is alive, else starts a new
one (lazily, at its first call); a container id continues that one. Idle containers are stopped
after `CONTAINER_IDLE_S`, and at most `MAX_CONTAINERS` are kept.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from .conversation import new_id
from .errors import APIError

WEB_SEARCH_TYPES = ("web_search", "web_search_preview", "web_search_2025_08_26",
                    "web_search_preview_2025_03_11")
CODE_TYPES = ("code_interpreter",)
CONTAINER_IDLE_S = 20 * 60
MAX_CONTAINERS = 8
HOW_TO_ENABLE = {"browser": "start the server with `ossrun serve --browser --docs DIR` "
                            "(or --searx URL)",
                 "python": "start the server with `ossrun serve --python`"}


def namespace_of(tool_type: str) -> str | None:
    """The ossrun tool a Responses tool type maps to ("browser", "python"), or None."""
    if tool_type in WEB_SEARCH_TYPES:
        return "browser"
    if tool_type in CODE_TYPES:
        return "python"
    return None


class Container:
    """A code_interpreter container: one python-tool session (kernel), used by one call at a
    time."""

    def __init__(self, tool, tokenizer):
        self.id = new_id("cntr")
        self.tool, self.tokenizer = tool, tokenizer
        self.session = None
        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        self.closed = False

    def call(self, code: str) -> tuple[str, bool]:
        with self.lock:
            if self.closed:
                return "Error: the container was stopped; state is lost.", True
            self.last_used = time.monotonic()
            try:
                if self.session is None:
                    self.session = self.tool.open_session(self.tokenizer)
                return self.session.call("python", code)
            except Exception as e:  # noqa: BLE001 - e.g. a kernel that cannot start: tell the model
                return f"Error: the python tool failed: {type(e).__name__}: {e}", True
            finally:
                self.last_used = time.monotonic()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.session is not None:
                self.session.close()
                self.session = None


class HostedTools:
    """The built-in tools this server was started with, and the live containers."""

    def __init__(self, tools=()):
        self.tools: dict[str, object] = {}
        self.problems: dict[str, str] = {}  # configured but cannot run here: why
        for tool in tools:
            name = getattr(tool, "name", None)
            if name not in HOW_TO_ENABLE:
                raise ValueError(f"not a built-in tool: {tool!r} (ossrun.Browser, ossrun.PythonTool)")
            problem = tool.unavailable()
            if problem:
                self.problems[name] = problem
            else:
                self.tools[name] = tool
        self.containers: dict[str, Container] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return ", ".join(self.tools) or "none"

    def for_request(self, tools: list[dict], history: list[dict], tokenizer) -> RequestTools:
        """The built-in tools of a request's `tools` (400 for one this server does not run)."""
        req = RequestTools(self, tokenizer)
        for i, t in enumerate(tools):
            name = namespace_of(t.get("type"))
            if name is None:
                continue
            tool = self.tools.get(name)
            if tool is None:
                why = (f"it cannot run here: {self.problems[name]}" if name in self.problems
                       else f"to enable it, {HOW_TO_ENABLE[name]}")
                raise APIError(400, f"The built-in tool '{t.get('type')}' is not enabled on this "
                                    f"server ({why}).", param=f"tools[{i}].type",
                               code="tool_not_enabled")
            req.tools[name] = tool
            if name == "python":
                req.container_spec = (t.get("container", {"type": "auto"}), f"tools[{i}].container")
        if "python" in req.tools:
            req.container = self._container(*req.container_spec, history, tokenizer)
        return req

    def _container(self, spec, param: str, history: list[dict], tokenizer) -> Container:
        with self._lock:
            self._expire()
            if isinstance(spec, str):
                found = self.containers.get(spec)
                if found is None:
                    raise APIError(400, f"No container with id '{spec}' is running (containers "
                                        f"stop after {CONTAINER_IDLE_S // 60} idle minutes).",
                                   param=param, code="container_not_found")
                return found
            if not isinstance(spec, dict) or spec.get("type", "auto") != "auto":
                raise APIError(400, f"Invalid value for '{param}': a container id or "
                                    "{\"type\": \"auto\"}.", param=param)
            if spec.get("file_ids"):
                raise APIError(400, f"Invalid value for '{param}.file_ids': this server has no "
                                    "files API.", param=f"{param}.file_ids")
            for item in reversed(history):  # the conversation's container, while it is alive
                if item.get("type") == "code_interpreter_call":
                    found = self.containers.get(item.get("container_id"))
                    if found is not None:
                        return found
            container = Container(self.tools["python"], tokenizer)
            self.containers[container.id] = container
            while len(self.containers) > MAX_CONTAINERS:
                idle = [c for c in self.containers.values() if not c.lock.locked()]
                if not idle:
                    break
                self._stop(min(idle, key=lambda c: c.last_used))
            return container

    def _expire(self) -> None:
        now = time.monotonic()
        for c in list(self.containers.values()):
            if now - c.last_used > CONTAINER_IDLE_S and not c.lock.locked():
                self._stop(c)

    def _stop(self, container: Container) -> None:
        self.containers.pop(container.id, None)
        threading.Thread(target=container.close, name="ossrun-container-stop", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            containers, self.containers = list(self.containers.values()), {}
        for c in containers:
            c.close()


@dataclass
class RequestTools:
    """One response's built-in tools: its browser session (pages, cursors) and container."""

    hosted: HostedTools
    tokenizer: object
    tools: dict[str, object] = field(default_factory=dict)
    container_spec: tuple = ()
    container: Container | None = None
    browser_session: object = None

    def namespaces(self) -> list:
        return [tool.namespace() for tool in self.tools.values()]

    def recipients(self, only: str | None = None) -> list[str]:
        return [r for name, tool in self.tools.items() if only in (None, name)
                for r in tool.recipients()]

    def handles(self, recipient: str | None) -> str | None:
        """The tool ("browser", "python") that runs calls to `recipient`, or None."""
        if recipient is None:
            return None
        return next((name for name, tool in self.tools.items() if recipient in tool.recipients()),
                    None)

    def call(self, recipient: str, text: str) -> tuple[str, bool]:
        """Run one call (blocking: the caller runs it on a worker thread)."""
        if self.handles(recipient) == "python":
            return self.container.call(text)
        try:
            if self.browser_session is None:
                self.browser_session = self.tools["browser"].open_session(self.tokenizer)
            return self.browser_session.call(recipient, text)
        except Exception as e:  # noqa: BLE001
            return f"Error: the browser tool failed: {type(e).__name__}: {e}", True

    def page(self, cursor: int = -1):
        """The page at `cursor` (-1: the last) of this response's browser, or None."""
        pages = self.browser_session.pages if self.browser_session is not None else []
        if not pages or cursor >= len(pages):
            return None
        return pages[cursor if cursor >= 0 else -1]

    def run_web_call(self, recipient: str, text: str) -> tuple[str, bool, dict]:
        """Run a browser call: (result, is_error, the web_search_call's `action`)."""
        args = _json_object(text)
        name = recipient.removeprefix("browser.")
        before = self.page(_int(args.get("cursor"), -1))
        n_pages = len(self.browser_session.pages) if self.browser_session is not None else 0
        result, is_error = self.call(recipient, text)
        after = self.page() if self.browser_session is not None and \
            len(self.browser_session.pages) > n_pages else None
        if name == "search":
            action = {"type": "search", "query": str(args.get("query", "")),
                      "sources": [{"type": "url", "url": u} for u in
                                  (after.links.values() if after is not None else ())]}
        elif name == "find":
            action = {"type": "find_in_page", "pattern": str(args.get("pattern", "")),
                      "url": before.url if before is not None else ""}
        else:
            target = args.get("id")
            url = after.url if after is not None else (target if isinstance(target, str) else None)
            action = {"type": "open_page", "url": url}
        return result, is_error, action

    def close(self) -> None:
        if self.browser_session is not None:
            self.browser_session.close()
            self.browser_session = None


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
