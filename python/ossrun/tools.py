"""Function tools for the chat API: a JSON Schema from a Python callable's signature, type hints and
docstring, checking of the arguments the model sends, and running the call (HARMONY.md §5–§7, §10).

pydantic builds the arguments model of a callable (its JSON Schema and its validation, with Enum
values turned back into members), docstring_parser reads Google, numpy and Sphinx docstrings, and
jsonschema checks the arguments of tools declared with a raw schema. The schema the model is shown
is pydantic's reduced to the keywords harmony renders (§7: type, enum, items, properties,
required, default, description, nullable, oneOf).
"""

from __future__ import annotations

import copy
import enum
import inspect
import json
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import docstring_parser
import jsonschema
import pydantic

from .harmony import ToolDescription

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Keywords pydantic writes that harmony does not render and the model does not need.
_DROPPED = ("title", "$defs", "definitions")


class ToolArgumentError(ValueError):
    """The model's arguments do not match a tool's schema (the message is shown to the model)."""


# -- schemas -----------------------------------------------------------------------------------

def harmony_schema(schema: dict) -> dict:
    """A pydantic JSON Schema in harmony's subset: $refs inlined, titles dropped,
    `anyOf [X, null]` as X with `nullable`, other unions as `oneOf`."""
    defs = schema.get("$defs") or schema.get("definitions") or {}

    def simplify(node: Any) -> Any:
        if isinstance(node, list):
            return [simplify(n) for n in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.split("/")[-1] in defs:
            node = {**defs[ref.split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
        out = {k: simplify(v) for k, v in node.items() if k not in _DROPPED}
        union = out.pop("anyOf", None)
        if union is not None:
            rest = [u for u in union if u != {"type": "null"}]
            inner = dict(rest[0]) if len(rest) == 1 else {"oneOf": rest}
            if len(rest) < len(union):
                inner["nullable"] = True  # rendered as `| null` (HARMONY.md §7)
            out = {**inner, **out}
        if out.get("additionalProperties") is True:
            del out["additionalProperties"]
        if out.get("default", 0) is None:
            del out["default"]
        return out

    return simplify(schema)


def json_schema(schema: dict) -> dict:
    """A harmony-subset schema as standard JSON Schema (`nullable` → a union with null), for
    validators and grammars."""
    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: convert(v) for k, v in node.items() if k != "nullable"}
        if "oneOf" in out:
            out["anyOf"] = out.pop("oneOf")  # harmony's oneOf means "one of these types"
        if node.get("nullable") is True:
            kind = out.get("type")
            if isinstance(kind, str):  # a type list keeps errors about the value precise
                out["type"] = [kind, "null"]
                if isinstance(out.get("enum"), list):
                    out["enum"] = [*out["enum"], None]
            else:
                out = {"anyOf": [out, {"type": "null"}]}
        return out

    return convert(schema)


def closed_schema(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to other ones (unless it
    says otherwise), as OpenAI's strict mode reads schemas: what strict decoding generates."""
    if isinstance(schema, list):
        return [closed_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed_schema(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


# -- docstrings --------------------------------------------------------------------------------

def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a Google-, numpy- or Sphinx-style docstring;
    a parameter's continuation lines are joined with spaces."""
    parsed = docstring_parser.parse(inspect.cleandoc(doc or ""))
    description = "\n\n".join(p for p in (parsed.short_description, parsed.long_description) if p)
    params = {p.arg_name.lstrip("*"): " ".join((p.description or "").split())
              for p in parsed.params}
    return description.strip(), params


# -- tools -------------------------------------------------------------------------------------

@dataclass
class Tool:
    """A function the model may call: name, description, JSON-Schema parameters, the callable.

    `strict=True` constrains the model's arguments to the schema while they are sampled
    (constrained decoding), so they always parse and validate. `arguments_model` (a pydantic
    model, set by `function_tool`) validates and converts the arguments; without it they are
    checked against `parameters` with jsonschema.
    """

    name: str
    description: str
    parameters: dict | None
    function: Callable[..., Any]
    strict: bool = False
    arguments_model: type[pydantic.BaseModel] | None = None

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must be an identifier (letters, digits, _)")
        if not callable(self.function):
            raise TypeError(f"tool {self.name!r}: 'function' is not callable")

    def description_for_model(self) -> ToolDescription:
        """The harmony declaration of this tool (rendered in the developer message)."""
        return ToolDescription(self.name, self.description, self.parameters)

    def arguments_schema(self) -> dict:
        """The arguments as standard JSON Schema, objects closed (what strict decoding
        constrains them to)."""
        if self.parameters is None:
            return {"type": "object", "properties": {}, "additionalProperties": False}
        return closed_schema(json_schema(self.parameters))

    def parse_arguments(self, text: str) -> dict:
        """Decode and check the JSON arguments the model wrote; ToolArgumentError if invalid.
        Returns the arguments converted for the call (e.g. Enum values as members)."""
        text = text.strip() or "{}"
        try:
            args = json.loads(text)
        except json.JSONDecodeError as e:
            raise ToolArgumentError(f"the arguments are not valid JSON ({e})") from None
        if not isinstance(args, dict):
            raise ToolArgumentError(f"the arguments must be a JSON object, got {_json_type(args)}")
        if self.arguments_model is not None:
            try:
                parsed = self.arguments_model.model_validate_json(text, strict=True)
            except pydantic.ValidationError as e:
                raise ToolArgumentError("; ".join(_pydantic_message(x) for x in e.errors())) \
                    from None
            return {k: getattr(parsed, k) for k in parsed.model_fields_set}
        if self.parameters is not None:
            errors = validate(args, self.parameters)
            if errors:
                raise ToolArgumentError("; ".join(errors))
        _bind(self.function, args)
        return args

    def run(self, text: str) -> tuple[str, bool]:
        """Run the tool on the model's argument text: (result text, is_error).

        Bad arguments and exceptions raised by the function become an error text for the model;
        results that are not strings are JSON-encoded.
        """
        try:
            args = self.parse_arguments(text)
        except ToolArgumentError as e:
            return f"Error: invalid arguments for {self.name}: {e}", True
        try:
            result = self.function(**args)
        except Exception as e:  # noqa: BLE001 -- the model learns what went wrong; the chat goes on
            return f"Error: {self.name} raised {type(e).__name__}: {e}", True
        if isinstance(result, str):
            return result, False
        return json.dumps(result, ensure_ascii=False, default=_json_default), False


def _json_default(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


def _pydantic_message(error: dict) -> str:
    """One pydantic error as a sentence for the model, naming the argument."""
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
    if error["type"] == "missing" and len(error["loc"]) == 1:
        return f"missing required argument '{loc}'"
    if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
        return f"unexpected keyword argument '{loc}'"
    return f"{loc or 'arguments'}: {error['msg']}"


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


def function_tool(fn: Callable, name: str | None = None, description: str | None = None,
                  strict: bool = False) -> Tool:
    """A Tool from a Python callable: parameters from its signature and type hints (a pydantic
    model), descriptions from its docstring. Parameters without a default are required;
    *args/**kwargs are skipped."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except (NameError, TypeError):  # unresolvable forward references: fall back to untyped
        hints = {}
    summary, param_docs = parse_docstring(inspect.getdoc(fn))
    fields: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = hints.get(p.name, p.annotation)
        hint = Any if hint is p.empty else hint
        doc = param_docs.get(p.name) or None
        if p.default is p.empty:
            info = pydantic.Field(description=doc)
        elif _jsonable(p.default):
            info = pydantic.Field(p.default, description=doc)
        else:  # shown without a default; the function's own default applies
            info = pydantic.Field(default_factory=lambda d=p.default: d, description=doc)
        fields[p.name] = (hint, info)
    tool_name = name or fn.__name__
    model = pydantic.create_model(f"{tool_name}_arguments",
                                  __config__=pydantic.ConfigDict(extra="forbid",
                                                                 arbitrary_types_allowed=True),
                                  **fields)
    parameters = None
    if fields:
        schema = harmony_schema(model.model_json_schema())
        schema.pop("additionalProperties", None)
        parameters = {"type": "object", "properties": schema.get("properties", {})}
        if schema.get("required"):
            parameters["required"] = schema["required"]
    return Tool(tool_name, summary if description is None else description, parameters, fn,
                strict=strict, arguments_model=model)


_TOOL_KEYS = {"name", "description", "parameters", "function", "strict"}


def as_tool(obj: Any) -> Tool:
    """A Tool from a Tool, a callable, or a dict {"name", "description", "parameters",
    "function", "strict"}."""
    if isinstance(obj, Tool):
        return obj
    if isinstance(obj, Mapping):
        unknown = set(obj) - _TOOL_KEYS
        if unknown or "function" not in obj:
            raise ValueError("a tool dict needs 'function' and may have 'name', 'description', "
                             f"'parameters', 'strict'; got keys {sorted(obj)}")
        fn, strict = obj["function"], bool(obj.get("strict", False))
        if "parameters" not in obj:
            return function_tool(fn, obj.get("name"), obj.get("description"), strict)
        return Tool(obj.get("name") or fn.__name__, obj.get("description") or "",
                    obj["parameters"], fn, strict=strict)
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


def validate(value: Any, schema: dict) -> list[str]:
    """Errors (empty if none) of a decoded JSON value against a JSON Schema (harmony's
    `nullable` understood), each naming the argument, e.g. "city: 1 is not of type 'string'"."""
    validator = jsonschema.Draft202012Validator(json_schema(copy.deepcopy(schema)))
    errors = []
    for e in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path))):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        if e.validator == "required" and not e.absolute_path:
            missing = e.message.split("'")[1] if "'" in e.message else e.message
            errors.append(f"missing required argument '{missing}'")
        else:
            errors.append(f"{where.lstrip('.') or 'arguments'}: {e.message}")
    return errors
