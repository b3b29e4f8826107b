"""Harmony data model: messages, system/developer contents, tool namespaces (HARMONY.md §2, §5.1, §8).

Every class converts to and from the JSON dicts of the harmony case schema (documented at the top
of shared/tools/harmony_oracle.py), so a chat can be saved and loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import HarmonyError

ROLES = ("system", "developer", "user", "assistant", "tool")
REASONING_EFFORTS = ("low", "medium", "high")
DEFAULT_MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
DEFAULT_KNOWLEDGE_CUTOFF = "2024-06"
DEFAULT_CHANNELS = ("analysis", "commentary", "final")
FUNCTIONS_NAMESPACE = "functions"

_BROWSER_DESCRIPTION = """Tool for browsing.
The `cursor` appears in brackets before each browsing display: `[{cursor}]`.
Cite information from the tool using the following format:
`【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.
Do not quote more than 10 words directly from the tool output.
sources=web (default: web)"""

_BROWSER_OPEN_DESCRIPTION = """\
Opens the link `id` from the page indicated by `cursor` starting at line number `loc`, showing \
`num_lines` lines.
Valid link ids are displayed with the formatting: `【{id}†.*】`.
If `cursor` is not provided, the most recent page is implied.
If `id` is a string, it is treated as a fully qualified URL associated with `source`.
If `loc` is not provided, the viewport will be positioned at the beginning of the document or \
centered on the most relevant passage, if available.
Use this function without `id` to scroll to a new location of an opened page."""

_PYTHON_DESCRIPTION = """\
Use this tool to execute Python code in your chain of thought. The code will not be shown to the \
user. This tool should be used for internal reasoning, but not for code that is intended to be \
visible to the user (e.g. when creating plots, tables, or files).

When you send a message containing Python code to python, it will be executed in a stateful \
Jupyter notebook environment. python will respond with the output of the execution or time out \
after 120.0 seconds. The drive at '/mnt/data' can be used to save and persist user files. \
Internet access for this session is UNKNOWN. Depends on the cluster."""


def _obj(d: Any, what: str) -> dict:
    if not isinstance(d, dict):
        raise HarmonyError(f"{what} must be a JSON object, got {type(d).__name__}")
    return d


def _opt_str(d: dict, key: str, what: str, default: Any = None) -> Any:
    v = d.get(key, default)
    if v is not None and not isinstance(v, str):
        raise HarmonyError(f"{what}: '{key}' must be a string or null")
    return v


@dataclass
class ToolDescription:
    """One tool: name, description (may be empty) and optional JSON-Schema parameters."""

    name: str
    description: str = ""
    parameters: dict | None = None  # a JSON Schema object; None = the tool takes no parameters

    def __post_init__(self):
        # openai-harmony's Python API (our reference) accepts only objects as parameter schemas.
        if self.parameters is not None and not isinstance(self.parameters, dict):
            raise HarmonyError(f"tool {self.name!r}: parameters must be a JSON object")

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.parameters is not None:
            d["parameters"] = self.parameters
        return d

    @classmethod
    def from_dict(cls, d: Any) -> ToolDescription:
        d = _obj(d, "tool")
        if not isinstance(d.get("name"), str):
            raise HarmonyError(f"tool without a string 'name': {d!r}")
        return cls(d["name"], _opt_str(d, "description", "tool", "") or "", d.get("parameters"))


@dataclass
class ToolNamespace:
    """A namespace of tools, rendered as `## name` in a tools section (HARMONY.md §6)."""

    name: str
    description: str | None = None
    tools: list[ToolDescription] = field(default_factory=list)

    @classmethod
    def browser(cls) -> ToolNamespace:
        """The built-in `browser` namespace (HARMONY.md §8.1)."""
        number_default = {"type": "number", "default": -1}
        return cls("browser", _BROWSER_DESCRIPTION, [
            ToolDescription(
                "search",
                "Searches for information related to `query` and displays `topn` results.",
                {"type": "object",
                 "properties": {"query": {"type": "string"},
                                "topn": {"type": "number", "default": 10},
                                "source": {"type": "string"}},
                 "required": ["query"]}),
            ToolDescription(
                "open", _BROWSER_OPEN_DESCRIPTION,
                {"type": "object",
                 "properties": {"id": {"type": ["number", "string"], "default": -1},
                                "cursor": dict(number_default),
                                "loc": dict(number_default),
                                "num_lines": dict(number_default),
                                "view_source": {"type": "boolean", "default": False},
                                "source": {"type": "string"}}}),
            ToolDescription(
                "find",
                "Finds exact matches of `pattern` in the current page, or the page given by "
                "`cursor`.",
                {"type": "object",
                 "properties": {"pattern": {"type": "string"}, "cursor": dict(number_default)},
                 "required": ["pattern"]}),
        ])

    @classmethod
    def python(cls) -> ToolNamespace:
        """The built-in `python` namespace: a description and no tools (HARMONY.md §8.2)."""
        return cls("python", _PYTHON_DESCRIPTION, [])

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description,
                "tools": [t.to_dict() for t in self.tools]}

    @classmethod
    def from_dict(cls, d: Any) -> ToolNamespace:
        """A NAMESPACE object, or the strings "browser" / "python" for the built-in ones."""
        if d == "browser":
            return cls.browser()
        if d == "python":
            return cls.python()
        d = _obj(d, "namespace")
        if not isinstance(d.get("name"), str):
            raise HarmonyError(f"namespace without a string 'name': {d!r}")
        tools = d.get("tools") or []
        if not isinstance(tools, list):
            raise HarmonyError(f"namespace {d['name']!r}: 'tools' must be a list")
        return cls(d["name"], _opt_str(d, "description", "namespace"),
                   [ToolDescription.from_dict(t) for t in tools])

    def _builtin_dict(self) -> Any:
        """The short form ("browser"/"python") if this is exactly a built-in namespace."""
        for builtin in (ToolNamespace.browser(), ToolNamespace.python()):
            if self == builtin:
                return builtin.name
        return self.to_dict()


def _namespace_map(namespaces) -> dict[str, ToolNamespace]:
    """Namespaces keyed by name; a later namespace with the same name replaces the earlier."""
    out: dict[str, ToolNamespace] = {}
    for ns in namespaces:
        ns = ns if isinstance(ns, ToolNamespace) else ToolNamespace.from_dict(ns)
        out[ns.name] = ns
    return out


@dataclass
class SystemContent:
    """Structured content of the system message (HARMONY.md §4). None = the line is omitted."""

    model_identity: str | None = DEFAULT_MODEL_IDENTITY
    knowledge_cutoff: str | None = DEFAULT_KNOWLEDGE_CUTOFF
    conversation_start_date: str | None = None
    reasoning_effort: str | None = "medium"
    valid_channels: list[str] | None = field(default_factory=lambda: list(DEFAULT_CHANNELS))
    channel_required: bool = True
    tools: dict[str, ToolNamespace] = field(default_factory=dict)

    def __post_init__(self):
        if self.reasoning_effort is not None and self.reasoning_effort not in REASONING_EFFORTS:
            raise HarmonyError(f"reasoning_effort must be one of {REASONING_EFFORTS} or None, "
                               f"got {self.reasoning_effort!r}")

    def with_tools(self, *namespaces: ToolNamespace | str) -> SystemContent:
        """Add namespaces ("browser", "python" or ToolNamespace); same name replaces. Returns self."""
        self.tools.update(_namespace_map(namespaces))
        return self

    _KEYS = ("model_identity", "knowledge_cutoff", "conversation_start_date", "reasoning_effort",
             "valid_channels", "channel_required")

    def to_dict(self) -> dict:
        d: dict[str, Any] = {k: getattr(self, k) for k in self._KEYS}
        if self.conversation_start_date is None:
            del d["conversation_start_date"]
        if self.tools:
            d["tools"] = [ns._builtin_dict() for ns in self.tools.values()]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SystemContent:
        what = "system message"
        channels = d.get("valid_channels", list(DEFAULT_CHANNELS))
        if channels is not None and not (isinstance(channels, list)
                                         and all(isinstance(c, str) for c in channels)):
            raise HarmonyError(f"{what}: 'valid_channels' must be a list of strings or null")
        sc = cls(
            model_identity=_opt_str(d, "model_identity", what, DEFAULT_MODEL_IDENTITY),
            knowledge_cutoff=_opt_str(d, "knowledge_cutoff", what, DEFAULT_KNOWLEDGE_CUTOFF),
            conversation_start_date=_opt_str(d, "conversation_start_date", what),
            reasoning_effort=_opt_str(d, "reasoning_effort", what, "medium"),
            valid_channels=None if channels is None else list(channels),
            channel_required=bool(d.get("channel_required", True)),
        )
        return sc.with_tools(*(d.get("tools") or []))


@dataclass
class ResponseFormat:
    """A structured-output format for the developer message (project convention, HARMONY.md §5.1)."""

    name: str
    schema: Any
    description: str | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            d["description"] = self.description
        d["schema"] = self.schema
        return d

    @classmethod
    def from_dict(cls, d: Any) -> ResponseFormat:
        d = _obj(d, "response format")
        if not isinstance(d.get("name"), str) or "schema" not in d:
            raise HarmonyError(f"response format needs 'name' and 'schema': {d!r}")
        return cls(d["name"], d["schema"], _opt_str(d, "description", "response format"))


@dataclass
class DeveloperContent:
    """Structured content of the developer message (HARMONY.md §5, §5.1)."""

    instructions: str | None = None
    tools: dict[str, ToolNamespace] = field(default_factory=dict)
    response_formats: list[ResponseFormat] = field(default_factory=list)

    def with_function_tools(self, tools) -> DeveloperContent:
        """Set the `functions` namespace to `tools` (ToolDescription or TOOL dicts). Returns self."""
        return self.with_tools(ToolNamespace(FUNCTIONS_NAMESPACE, None, [
            t if isinstance(t, ToolDescription) else ToolDescription.from_dict(t) for t in tools]))

    def with_tools(self, *namespaces: ToolNamespace | str) -> DeveloperContent:
        """Add namespaces; one with an existing name replaces it. Returns self."""
        self.tools.update(_namespace_map(namespaces))
        return self

    @property
    def has_function_tools(self) -> bool:
        """True if the `functions` namespace has at least one tool (HARMONY.md §4)."""
        ns = self.tools.get(FUNCTIONS_NAMESPACE)
        return ns is not None and bool(ns.tools)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {}
        if self.instructions is not None:
            d["instructions"] = self.instructions
        functions = self.tools.get(FUNCTIONS_NAMESPACE)
        if functions is not None and functions.description is None:
            d["tools"] = [t.to_dict() for t in functions.tools]
        others = [ns.to_dict() for name, ns in self.tools.items()
                  if name != FUNCTIONS_NAMESPACE or "tools" not in d]
        if others:
            d["namespaces"] = others
        if self.response_formats:
            d["response_formats"] = [f.to_dict() for f in self.response_formats]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DeveloperContent:
        dc = cls(instructions=_opt_str(d, "instructions", "developer message"))
        if d.get("tools") is not None:
            if not isinstance(d["tools"], list):
                raise HarmonyError("developer message: 'tools' must be a list")
            dc.with_function_tools(d["tools"])
        dc.with_tools(*(d.get("namespaces") or []))
        dc.response_formats = [ResponseFormat.from_dict(f) for f in d.get("response_formats") or []]
        return dc


Part = str | SystemContent | DeveloperContent


@dataclass
class Message:
    """One harmony message (HARMONY.md §2). `content` is a list of parts; a str is one text part.

    `name` is the author name (required for role "tool": the fully qualified tool name).
    """

    role: str
    content: list[Part] | Part = field(default_factory=list)
    name: str | None = None
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise HarmonyError(f"unknown role {self.role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(self.content, list):
            self.content = [self.content]
        for part in self.content:
            if not isinstance(part, (str, SystemContent, DeveloperContent)):
                raise HarmonyError(f"unsupported content part {type(part).__name__}")

    @property
    def text(self) -> str:
        """The text parts joined (structured parts are left out)."""
        return "".join(p for p in self.content if isinstance(p, str))

    def to_dict(self) -> dict:
        """The case-schema MESSAGE dict (structured system/developer keys, or `content`)."""
        d: dict[str, Any] = {"role": self.role}
        if self.name is not None:
            d["name"] = self.name
        for key in ("channel", "recipient", "content_type"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if len(self.content) == 1 and isinstance(self.content[0], (SystemContent, DeveloperContent)):
            d.update(self.content[0].to_dict())
        elif all(isinstance(p, str) for p in self.content):
            d["content"] = self.content[0] if len(self.content) == 1 else list(self.content)
        else:
            raise HarmonyError("only a single structured part or text parts can be serialised")
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Message:
        """Build a message from a case-schema MESSAGE dict."""
        d = _obj(d, "message")
        role = d.get("role")
        if role not in ROLES:
            raise HarmonyError(f"message 'role' must be one of {', '.join(ROLES)}, got {role!r}")
        what = f"{role} message"
        if "content" not in d and role == "system":
            content: list[Part] = [SystemContent.from_dict(d)]
        elif "content" not in d and role == "developer":
            content = [DeveloperContent.from_dict(d)]
        else:
            c = d.get("content", "")
            content = c if isinstance(c, list) else [c]
            if not all(isinstance(p, str) for p in content):
                raise HarmonyError(f"{what}: 'content' must be a string or a list of strings")
        return cls(role, content, name=_opt_str(d, "name", what),
                   channel=_opt_str(d, "channel", what),
                   recipient=_opt_str(d, "recipient", what),
                   content_type=_opt_str(d, "content_type", what))


def system_message(*, model_identity: str | None = DEFAULT_MODEL_IDENTITY,
                   knowledge_cutoff: str | None = DEFAULT_KNOWLEDGE_CUTOFF,
                   conversation_start_date: str | None = None,
                   reasoning_effort: str | None = "medium",
                   valid_channels=DEFAULT_CHANNELS, channel_required: bool = True,
                   tools=()) -> Message:
    """A system message (HARMONY.md §4); `tools` holds "browser", "python" or ToolNamespace."""
    sc = SystemContent(model_identity, knowledge_cutoff, conversation_start_date,
                       reasoning_effort, None if valid_channels is None else list(valid_channels),
                       channel_required)
    return Message("system", [sc.with_tools(*tools)])


def developer_message(*, instructions: str | None = None, function_tools=None, namespaces=(),
                      response_formats=()) -> Message:
    """A developer message (HARMONY.md §5): instructions, function tools, response formats.

    `function_tools` is a list of ToolDescription (or TOOL dicts); None = no `functions` namespace.
    """
    dc = DeveloperContent(instructions)
    if function_tools is not None:
        dc.with_function_tools(function_tools)
    dc.with_tools(*namespaces)
    dc.response_formats = [f if isinstance(f, ResponseFormat) else ResponseFormat.from_dict(f)
                           for f in response_formats]
    return Message("developer", [dc])
