"""JSON Schema -> TypeScript-like declarations for tool parameters (HARMONY.md §7).

Reproduces openai-harmony 0.0.8 character for character, quirks included, and prints default
values the way its serde_json does (compact JSON, Rust-style shortest floats).
"""

from __future__ import annotations

import json
import math
from typing import Any

_MISSING = object()


def _get(schema: Any, key: str) -> Any:
    """schema[key], or _MISSING when schema is not an object or lacks the key."""
    return schema.get(key, _MISSING) if isinstance(schema, dict) else _MISSING


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_enum(schema: Any) -> bool:
    enum = _get(schema, "enum")
    return isinstance(enum, list) and len(enum) > 0


def format_float(x: float) -> str:
    """A binary64 number as serde_json prints it (shortest round-trip digits, §7)."""
    if not math.isfinite(x):
        return "null"  # serde_json cannot hold NaN/inf; it would print null
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    # repr gives the shortest round-trip digits; re-layout them as value = 0.D x 10^k.
    mantissa, _, exp = repr(abs(x)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    k = len(int_part) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    k -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    n = len(digits)
    if n <= k <= 16:
        body = digits + "0" * (k - n) + ".0"
    elif 0 < k < n:
        body = digits[:k] + "." + digits[k:]
    elif -5 < k <= 0:
        body = "0." + "0" * (-k) + digits
    else:
        body = digits[0] + ("." + digits[1:] if n > 1 else "") + "e" + str(k - 1)
    return sign + body


def json_compact(value: Any) -> str:
    """Compact JSON as serde_json's Display writes it (D3 of §7)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if -(2**63) <= value < 2**64:
            return str(value)
        try:
            return format_float(float(value))  # serde_json keeps bigger integers as floats
        except OverflowError:
            return "null"
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(json_compact(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=False) + ":" + json_compact(v)
                              for k, v in value.items()) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def format_default(value: Any, holder: Any) -> str:
    """D(v) of §7: enum strings raw (D1), other strings quoted unescaped (D2), else JSON (D3)."""
    if isinstance(value, str):
        return value if _is_enum(holder) else f'"{value}"'
    return json_compact(value)


def _with_nullable(schema: Any, ts: str) -> str:
    if _get(schema, "nullable") is True and "null" not in ts:
        return ts + " | null"
    return ts


def schema_to_typescript(schema: Any, indent: str = "") -> str:
    """TS(schema, indent) of HARMONY.md §7 (rules applied in order, first match wins)."""
    one_of = _get(schema, "oneOf")
    if isinstance(one_of, list):
        return "".join("\n" + indent + " | " + _one_of_variant(v, indent, top_level=True)
                       for v in one_of)
    type_ = _get(schema, "type")
    if isinstance(type_, list):
        names = ["number" if t == "integer" else t for t in type_ if _is_str(t)]
        return " | ".join(names) if names else "any"
    if type_ == "object":
        return _object(schema, indent)
    if type_ == "string":
        enum = _get(schema, "enum")
        items = [f'"{e}"' for e in enum if _is_str(e)] if isinstance(enum, list) else []
        return " | ".join(items) if items else "string"
    if type_ in ("number", "integer"):
        return "number"
    if type_ == "boolean":
        return "boolean"
    if type_ == "array":
        items = _get(schema, "items")
        return "Array<any>" if items is _MISSING else schema_to_typescript(items, indent) + "[]"
    return "any"


def _one_of_variant(variant: Any, indent: str, *, top_level: bool, skip_desc=False,
                    prop_desc: str | None = None) -> str:
    """One ` | ` alternative: its type plus trailing `// description default: …` comments."""
    out = _with_nullable(variant, schema_to_typescript(variant, indent + "   "))
    comments = []
    desc = _get(variant, "description")
    if _is_str(desc) and not skip_desc and desc != prop_desc:
        comments.append(desc)
    default = _get(variant, "default")
    if default is not _MISSING:
        if top_level:
            # Quirk: at the top level an enum's string default is JSON-quoted.
            shown = f'"{default}"' if _is_str(default) and not _is_enum(variant) \
                else json_compact(default)
        else:
            shown = format_default(default, variant)
        comments.append("default: " + shown)
    return out + (" // " + " ".join(comments) if comments else "")


def _object(schema: dict, indent: str) -> str:
    out = []
    desc = _get(schema, "description")
    if _is_str(desc):
        out.append(f"{indent}// {desc}\n")
    out.append("{\n")
    props = _get(schema, "properties")
    if isinstance(props, dict):
        required_list = _get(schema, "required")
        required = {r for r in required_list if _is_str(r)} \
            if isinstance(required_list, list) else set()
        for key, prop in props.items():
            out.append(_property(key, prop, "" if key in required else "?", indent))
    out.append(indent + "}")
    return "".join(out)


def _property(key: str, prop: Any, opt: str, indent: str) -> str:
    out = []
    title = _get(prop, "title")
    if _is_str(title):
        out.append(f"{indent}// {title}\n{indent}//\n")
    has_one_of_key = _get(prop, "oneOf") is not _MISSING
    desc = _get(prop, "description")
    if not has_one_of_key and _is_str(desc):
        out.append(f"{indent}// {desc}\n")  # Quirk: a multi-line description is written as-is
    examples = _get(prop, "examples")
    if isinstance(examples, list) and examples:
        out.append(f"{indent}// Examples:\n")
        out.extend(f'{indent}// - "{e}"\n' for e in examples if _is_str(e))
    one_of = _get(prop, "oneOf")
    if isinstance(one_of, list):
        out.append(_one_of_property(key, prop, one_of, opt, indent))
        return "".join(out)
    ts = _with_nullable(prop, schema_to_typescript(prop, indent + "    "))
    out.append(f"{indent}{key}{opt}: {ts},")
    default = _get(prop, "default")
    if not has_one_of_key and default is not _MISSING:
        out.append(" // default: " + format_default(default, prop))
    out.append("\n")
    return "".join(out)


def _one_of_property(key: str, prop: dict, variants: list, opt: str, indent: str) -> str:
    out = []
    prop_desc = prop.get("description")
    prop_desc = prop_desc if _is_str(prop_desc) else None
    first_desc = _get(variants[0], "description") if variants else _MISSING
    written_above = prop_desc is not None and prop_desc != first_desc
    if written_above:
        out.append(f"{indent}// {prop_desc}\n")
    if "default" in prop:
        out.append(f"{indent}// default: {format_default(prop['default'], prop)}\n")
    out.append(f"{indent}{key}{opt}:\n")
    for i, variant in enumerate(variants):
        out.append(indent + " | " + _one_of_variant(
            variant, indent, top_level=False, skip_desc=(i == 0 and written_above),
            prop_desc=prop_desc) + "\n")
    out.append(f"{indent},\n")
    return "".join(out)
