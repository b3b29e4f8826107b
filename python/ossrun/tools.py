"""Function tools for the chat API: a JSON Schema from a Python callable's signature, type hints and
docstring, checking of the arguments the model sends, and running the call (HARMONY.md §5–§7, §10).

Schemas use only the keywords harmony renders (§7: type, enum, items, properties, required,
default, description, nullable, oneOf), so what the model is shown is what we check.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .harmony import ToolDescription

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ToolArgumentError(ValueError):
    """The model's arguments do not match a tool's schema (the message is shown to the model)."""


# -- schemas from type hints -------------------------------------------------------------------

def type_schema(hint: Any) -> dict:
    """JSON Schema of a type hint: str, int, float, bool, list[X], tuple, dict, dict[str, X],
    Optional[X] (→ `nullable`), other unions (→ `oneOf`), Literal[...] and Enum classes.
    A missing or unknown hint gives `{}` (any value)."""
    if hint is inspect.Parameter.empty or hint is Any:
        return {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return type_schema(args[0])
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if origin is typing.Literal:
        return _enum_schema(list(args))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_schema([m.value for m in hint])
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = type_schema(rest[0]) if len(rest) == 1 else {"oneOf": [type_schema(a) for a in rest]}
        if len(rest) < len(args):
            inner["nullable"] = True  # rendered as `| null` (HARMONY.md §7)
        return inner
    if hint in (list, tuple, set, frozenset) or origin in (list, tuple, set, frozenset):
        schema: dict = {"type": "array"}
        if args and args[0] is not Ellipsis:
            schema["items"] = type_schema(args[0])
        return schema
    if hint is dict or origin in (dict, Mapping):
        schema = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            schema["additionalProperties"] = type_schema(args[1])
        return schema
    return {}


def _enum_schema(values: list) -> dict:
    kinds = {_json_type(v) for v in values}
    schema: dict = {"type": kinds.pop()} if len(kinds) == 1 else {}
    schema["enum"] = values
    return schema


# -- docstrings --------------------------------------------------------------------------------

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args|Returns?|Yields?|Raises|"
                      r"Examples?|Notes?|See Also|Attributes|Other Parameters)\s*:?\s*$")
_PARAM_SECTIONS = ("args", "arguments", "parameters", "params", "keyword args")
_SPHINX_PARAM = re.compile(r"^:param\s+(?:\S+\s+)?(\w+)\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a Google-, numpy- or Sphinx-style docstring.

    The description is the text before the first section; a parameter's continuation lines are
    joined with spaces.
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    sections: list[tuple[str, list[str]]] = [("", [])]
    i = 0
    while i < len(lines):
        line, nxt = lines[i], lines[i + 1] if i + 1 < len(lines) else ""
        numpy = bool(line.strip()) and set(nxt.strip()) == {"-"}
        google = not line[:1].isspace() and line.rstrip().endswith(":") and _SECTION.match(line)
        if (numpy and _SECTION.match(line)) or google:
            sections.append((line.strip().rstrip(":").lower() + ("/numpy" if numpy else ""), []))
            i += 2 if numpy else 1
            continue
        sections[-1][1].append(line)
        i += 1
    params: dict[str, str] = {}
    for name, body in sections:
        if name.removesuffix("/numpy") in _PARAM_SECTIONS:
            _parse_entries(body, name.endswith("/numpy"), params)
    lead = sections[0][1]
    first_field = next((i for i, ln in enumerate(lead) if ln.startswith(":")), len(lead))
    _parse_sphinx(lead[first_field:], params)
    return "\n".join(lead[:first_field]).strip(), params


def _parse_entries(body: list[str], numpy: bool, params: dict[str, str]) -> None:
    """Entries of an Args/Parameters section: `name (type): text` (Google) or `name : type`
    with the text indented below (numpy); deeper-indented lines continue the entry."""
    indents = [_indent(ln) for ln in body if ln.strip()]
    base = min(indents, default=0)
    current: list[str] = []
    for line in body:
        text = line.strip()
        if not text:
            continue
        if _indent(line) == base:
            if numpy:
                names, desc = text.split(":")[0].split(","), ""
            else:
                m = re.match(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", text)
                if not m:
                    current = []
                    continue
                names, desc = [m.group(1)], m.group(2)
            current = [n.strip().lstrip("*") for n in names]
            for n in current:
                params[n] = desc.strip()
        else:
            for n in current:
                params[n] = f"{params[n]} {text}".strip()


def _parse_sphinx(lines: list[str], params: dict[str, str]) -> None:
    """`:param [type] name: text` fields; indented lines continue the field."""
    current = None
    for line in lines:
        if line.startswith(":"):
            m = _SPHINX_PARAM.match(line)
            current = m.group(1) if m else None
            if m:
                params[current] = m.group(2).strip()
        elif current and line[:1].isspace() and line.strip():
            params[current] = f"{params[current]} {line.strip()}"
        else:
            current = None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


# -- tools -------------------------------------------------------------------------------------

@dataclass
class Tool:
    """A function the model may call: name, description, JSON-Schema parameters, the callable."""

    name: str
    description: str
    parameters: dict | None
    function: Callable[..., Any]
    # Per-argument conversions applied before the call, e.g. an Enum's value back to its member.
    converters: dict[str, Callable[[Any], Any]] = field(default_factory=dict)

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must be an identifier (letters, digits, _)")
        if not callable(self.function):
            raise TypeError(f"tool {self.name!r}: 'function' is not callable")

    def description_for_model(self) -> ToolDescription:
        """The harmony declaration of this tool (rendered in the developer message)."""
        return ToolDescription(self.name, self.description, self.parameters)

    def parse_arguments(self, text: str) -> dict:
        """Decode and check the JSON arguments the model wrote; ToolArgumentError if invalid."""
        if not text.strip():
            args: Any = {}
        else:
            try:
                args = json.loads(text)
            except json.JSONDecodeError as e:
                raise ToolArgumentError(f"the arguments are not valid JSON ({e})") from None
        if not isinstance(args, dict):
            raise ToolArgumentError(f"the arguments must be a JSON object, got {_json_type(args)}")
        if self.parameters is not None:
            errors = validate(args, self.parameters)
            if errors:
                raise ToolArgumentError("; ".join(errors))
        return args

    def run(self, text: str) -> tuple[str, bool]:
        """Run the tool on the model's argument text: (result text, is_error).

        Bad arguments and exceptions raised by the function become an error text for the model;
        results that are not strings are JSON-encoded.
        """
        try:
            args = self.parse_arguments(text)
            _bind(self.function, args)
            args = {k: self._convert(k, v) for k, v in args.items()}
        except ToolArgumentError as e:
            return f"Error: invalid arguments for {self.name}: {e}", True
        try:
            result = self.function(**args)
        except Exception as e:  # noqa: BLE001 -- the model learns what went wrong; the chat goes on
            return f"Error: {self.name} raised {type(e).__name__}: {e}", True
        if isinstance(result, str):
            return result, False
        return json.dumps(result, ensure_ascii=False, default=str), False

    def _convert(self, key: str, value: Any) -> Any:
        if value is None or key not in self.converters:
            return value
        try:
            return self.converters[key](value)
        except (TypeError, ValueError) as e:
            raise ToolArgumentError(f"{key}: {e}") from None


def _bind(fn: Callable, args: dict) -> None:
    """Check that `fn(**args)` binds (unknown or missing names) without calling it."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: let the call decide
    try:
        sig.bind(**args)
    except TypeError as e:
        raise ToolArgumentError(str(e)) from None


def function_tool(fn: Callable, name: str | None = None, description: str | None = None) -> Tool:
    """A Tool from a Python callable: parameters from its signature and type hints, descriptions
    from its docstring. Parameters without a default are required; *args/**kwargs are skipped."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except (NameError, TypeError):  # unresolvable forward references: fall back to untyped
        hints = {}
    summary, param_docs = parse_docstring(inspect.getdoc(fn))
    properties: dict[str, dict] = {}
    required: list[str] = []
    converters = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = hints.get(p.name, p.annotation)
        enum_cls = _enum_class(hint)
        if enum_cls is not None:
            converters[p.name] = enum_cls
        schema = type_schema(hint)
        if param_docs.get(p.name):
            schema = {"description": param_docs[p.name], **schema}
        if p.default is p.empty:
            required.append(p.name)
        elif p.default is not None and _jsonable(p.default):
            schema["default"] = p.default.value if isinstance(p.default, enum.Enum) else p.default
        properties[p.name] = schema
    parameters = None
    if properties:
        parameters = {"type": "object", "properties": properties}
        if required:
            parameters["required"] = required
    return Tool(name or fn.__name__, summary if description is None else description,
                parameters, fn, converters)


def _enum_class(hint: Any) -> type[enum.Enum] | None:
    """The Enum class of a hint `E` or `Optional[E]`, if any."""
    candidates = [hint] + [a for a in typing.get_args(hint) if a is not type(None)]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, enum.Enum)), None)


def as_tool(obj: Any) -> Tool:
    """A Tool from a Tool, a callable, or a dict {"name", "description", "parameters", "function"}."""
    if isinstance(obj, Tool):
        return obj
    if isinstance(obj, Mapping):
        unknown = set(obj) - {"name", "description", "parameters", "function"}
        if unknown or "function" not in obj:
            raise ValueError("a tool dict needs 'function' and may have 'name', 'description', "
                             f"'parameters'; got keys {sorted(obj)}")
        fn = obj["function"]
        if "parameters" not in obj:
            return function_tool(fn, obj.get("name"), obj.get("description"))
        return Tool(obj.get("name") or fn.__name__, obj.get("description") or "",
                    obj["parameters"], fn)
    if callable(obj):
        return function_tool(obj)
    raise TypeError(f"a tool must be a callable, a dict or a Tool, got {type(obj).__name__}")


# -- validation --------------------------------------------------------------------------------

def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):  # before int: JSON true is not a number
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v.value if isinstance(v, enum.Enum) else v)
    except (TypeError, ValueError):
        return False
    return True


def _type_matches(value: Any, name: str) -> bool:
    actual = _json_type(value)
    return actual == name or (name == "number" and actual == "integer")


def validate(value: Any, schema: dict, path: str = "") -> list[str]:
    """Errors (empty if none) of a decoded JSON value against the schema subset we generate:
    type (a name or a list), nullable, enum, oneOf, required, properties, additionalProperties
    (as a schema) and items. Unknown keywords are ignored."""
    where = path or "arguments"
    if value is None and schema.get("nullable"):
        return []
    if isinstance(schema.get("oneOf"), list):
        if any(not validate(value, s, path) for s in schema["oneOf"]):
            return []
        return [f"{where}: {json.dumps(value)} matches none of the allowed types"]
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_type_matches(value, n) for n in names):
            wanted = " or ".join(map(str, names))
            return [f"{where} must be of type {wanted}, got {_json_type(value)}"]
    if isinstance(schema.get("enum"), list) and value not in schema["enum"]:
        return [f"{where} must be one of {json.dumps(schema['enum'])}, got {json.dumps(value)}"]
    errors: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        errors += [f"missing required argument '{k}'" if not path else f"{path}.{k} is required"
                   for k in schema.get("required") or [] if k not in value]
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            sub = f"{path}.{k}" if path else k
            if k in props:
                errors += validate(v, props[k], sub)
            elif isinstance(extra, dict):
                errors += validate(v, extra, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            errors += validate(v, schema["items"], f"{where}[{i}]")
    return errors
