"""Constrained decoding with llguidance: structured output on the final channel only, strict tool
arguments and tool_choice, for the chat's sampling loop.

The grammar is harmony itself: analysis (and, before a tool call, commentary preamble) messages
run free, then the model must write `<|channel|>final<|message|>` + text matching the response format +
`<|return|>`, or a tool call whose arguments match the tool's schema + `<|call|>`. Grammar
terminals can be special tokens (llguidance reads their names from the tiktoken encoding).

The mask of the next token is computed on a worker thread while the forward pass runs (both
release the GIL) and applied to the logits in place, one vectorized pass, no copy of the vocabulary.
"""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .tools import closed_schema

TOOL_CHOICES = ("auto", "none", "required")
# Compact JSON: no whitespace between tokens, so a sampler cannot pad a reply forever; unknown
# keywords (format, title, ...) are accepted rather than failing the request.
_JSON_OPTIONS = {"whitespace_flexible": False, "lenient": True}
_LLG_TOKENIZERS: dict[int, Any] = {}
_LLG_LOCK = threading.Lock()


class ConstraintError(ValueError):
    """A grammar that llguidance rejects, or a sampled token that the grammar does not allow."""


# -- response formats --------------------------------------------------------------------------

@dataclass
class ResponseFormat:
    """A normalized `response_format`: kind "json_schema", "json_object", "regex" or "lark"."""

    kind: str
    value: Any  # the JSON Schema, the regex or the Lark grammar
    name: str = "response"
    model: Any = None  # a pydantic model class, to parse the reply into

    def parse(self, text: str) -> Any:
        """The reply as data: a pydantic instance, a decoded JSON value, or the text."""
        if self.model is not None:
            return self.model.model_validate_json(text)
        if self.kind in ("json_schema", "json_object"):
            return json.loads(text)
        return text

    def developer_format(self) -> dict | None:
        """The harmony `# Response Formats` entry (JSON formats only)."""
        if self.kind == "json_schema":
            return {"name": self.name, "schema": self.value}
        if self.kind == "json_object":
            return {"name": self.name, "schema": {"type": "object"}}
        return None


def response_format(fmt: Any) -> ResponseFormat | None:
    """A ResponseFormat from what users pass: None; a pydantic model class; a compiled regex
    (`re.compile(...)`); `{"type": "json_object"}`; `{"type": "json_schema", "json_schema":
    {"name", "schema"}}` (OpenAI's shape); `{"type": "regex", "pattern": ...}`;
    `{"type": "lark", "grammar": ...}`; or any other dict, taken as a JSON Schema."""
    if fmt is None or isinstance(fmt, ResponseFormat):
        return fmt
    if isinstance(fmt, type) and hasattr(fmt, "model_json_schema"):
        return ResponseFormat("json_schema", closed_schema(fmt.model_json_schema()), fmt.__name__, fmt)
    if isinstance(fmt, re.Pattern):
        return ResponseFormat("regex", fmt.pattern)
    if not isinstance(fmt, dict):
        raise ValueError("response_format must be a JSON Schema dict, a pydantic model class, "
                         "re.compile(regex), {'type': 'json_object'}, {'type': 'regex', "
                         "'pattern': ...} or {'type': 'lark', 'grammar': ...}; "
                         f"got {type(fmt).__name__}")
    kind = fmt.get("type")
    if kind == "json_object":
        return ResponseFormat("json_object", {"type": "object"})
    if kind == "text":
        return None
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict):  # Responses' text.format
        return ResponseFormat("json_schema", fmt["schema"], fmt.get("name") or "response")
    if kind == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        inner = fmt["json_schema"]
        if not isinstance(inner.get("schema"), dict):
            raise ValueError("response_format json_schema needs a 'schema' object")
        return ResponseFormat("json_schema", inner["schema"], inner.get("name") or "response")
    if kind == "regex":
        if not isinstance(fmt.get("pattern"), str):
            raise ValueError("response_format {'type': 'regex'} needs a 'pattern' string")
        return ResponseFormat("regex", fmt["pattern"])
    if kind in ("lark", "grammar"):
        if not isinstance(fmt.get("grammar"), str):
            raise ValueError("response_format {'type': 'lark'} needs a 'grammar' string")
        return ResponseFormat("lark", fmt["grammar"])
    return ResponseFormat("json_schema", fmt, fmt.get("title") or "response")


# -- grammars ----------------------------------------------------------------------------------

def _lark_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lark string literal


def _json_entry(name: str, schema: dict) -> dict:
    schema = dict(schema)
    schema["x-guidance"] = {**_JSON_OPTIONS, **(schema.get("x-guidance") or {})}
    return {"name": name, "json_schema": schema}


def harmony_grammar(fmt: ResponseFormat | None = None, tools=(), tool_choice: str = "auto",
                    builtin_recipients=(), reasoning: bool = True) -> str:
    """The llguidance grammar (its JSON form) of one assistant generation after the prompt's
    `<|start|>assistant`.

    fmt: the final answer's format (None: free text). tools: `ossrun.tools.Tool`s (strict ones
    get their arguments constrained). tool_choice: "auto", "none", "required" or a tool's name.
    builtin_recipients: e.g. ("python", "browser.search"): calls allowed with free text.
    reasoning: False when the reasoning budget is spent: no more analysis or preamble messages.
    """
    grammars: list[dict] = []
    rules = ['TEXT: /(?s:.*)/',
             'analysis: <|channel|> "analysis" <|message|> TEXT <|end|> <|start|> "assistant"',
             'preamble: <|channel|> "commentary" <|message|> TEXT <|end|> <|start|> "assistant"']
    if fmt is None:
        answer = "TEXT"
    elif fmt.kind in ("json_schema", "json_object"):
        grammars.append(_json_entry("answer", fmt.value))
        answer = "@answer"
    elif fmt.kind == "regex":
        rules.append(f"ANSWER: /{_regex_body(fmt.value)}/")
        answer = "ANSWER"
    else:
        grammars.append({"name": "answer", "lark_grammar": fmt.value})
        answer = "@answer"
    rules.append(f'final: <|channel|> "final" <|message|> {answer} <|return|>')

    if tool_choice not in TOOL_CHOICES:
        tools = [t for t in tools if t.name == tool_choice]
        if not tools:
            raise ValueError(f"tool_choice {tool_choice!r} names no tool of this chat")
    calls = []
    if tool_choice != "none":
        for i, tool in enumerate(tools):
            args = "TEXT"
            if tool.strict:
                grammars.append(_json_entry(f"args{i}", tool.arguments_schema()))
                args = f"@args{i}"
            recipient = _lark_string(f" to=functions.{tool.name}")
            rules.append(f"call{i}: ({recipient} <|channel|> \"commentary\" | <|channel|> "
                         f"\"commentary\" {recipient}) \" \" <|constrain|> \"json\" <|message|> "
                         f"{args} <|call|>")
            calls.append(f"call{i}")
        if tool_choice in ("auto", "required") and builtin_recipients:
            names = " | ".join(_lark_string(f" to={r}") for r in builtin_recipients)
            rules.append(f"builtin_to: {names}")
            rules.append('builtin: (builtin_to <|channel|> CHANNEL | <|channel|> CHANNEL builtin_to)'
                         ' (" " <|constrain|>? /[a-z]+/)? <|message|> TEXT <|call|>')
            rules.append('CHANNEL: "analysis" | "commentary"')
            calls.append("builtin")
    # A preamble (commentary text) announces a tool call: after one, the answer cannot follow
    # (it would join the preamble in the reply's content).
    before_call = "(analysis | preamble)* " if reasoning else ""
    before_answer = "analysis* " if reasoning else ""
    if tool_choice not in TOOL_CHOICES or tool_choice == "required":
        if not calls:
            raise ValueError("tool_choice='required' needs at least one tool")
        start = f"{before_call}({' | '.join(calls)})"
    elif calls:
        start = f"{before_answer}final | {before_call}({' | '.join(calls)})"
    else:
        start = f"{before_answer}final"
    main = "\n".join([f"start: {start}", *rules])
    return json.dumps({"grammars": [{"name": "main", "lark_grammar": main}, *grammars]})


def _regex_body(pattern: str) -> str:
    """A regex for a Lark /.../ terminal: anchors dropped (the whole answer must match), slashes
    escaped."""
    body = pattern.removeprefix("^").removesuffix("$") if not pattern.endswith("\\$") else pattern
    return body.replace("/", "\\/")


# -- the matcher -------------------------------------------------------------------------------

def llg_tokenizer(tokenizer):
    """The llguidance tokenizer of an `ossrun.tokenizer.Tokenizer` (built once: ~2 s for the
    201k-token vocabulary)."""
    from llguidance.tiktoken import lltokenizer_from_encoding

    key = id(tokenizer.encoding)
    with _LLG_LOCK:
        entry = _LLG_TOKENIZERS.get(key)
        if entry is None or entry[0] is not tokenizer.encoding:
            llt = lltokenizer_from_encoding(tokenizer.encoding,
                                            eos_token=tokenizer.special_id("<|return|>"))
            entry = _LLG_TOKENIZERS[key] = (tokenizer.encoding, llt)
    return entry[1]


class Constraint:
    """An llguidance matcher over one generation, computing each next-token mask on a worker
    thread: `advance(tokens)` after sampling (returns at once), `apply(logits)` before the next
    sample (waits for the mask, then sets disallowed logits to -inf in place)."""

    _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ossrun-mask")

    def __init__(self, tokenizer, grammar: str):
        import llguidance

        self._llt = llg_tokenizer(tokenizer)
        error = llguidance.LLMatcher.validate_grammar(grammar, self._llt)
        if error and not error.startswith("WARNING"):
            raise ConstraintError(f"the response format is not a valid grammar: {error}")
        self.matcher = llguidance.LLMatcher(self._llt, grammar, log_level=0)
        if self.matcher.is_error():
            raise ConstraintError(f"the response format is not a valid grammar: "
                                  f"{self.matcher.get_error()}")
        words = (self._llt.vocab_size + 31) // 32
        self._mask = np.full(words, -1, dtype=np.int32)
        self._pending: Future = self._pool.submit(self._fill)

    def _fill(self) -> None:
        if not self.matcher.is_error():
            self.matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)

    def _consume_and_fill(self, tokens: list[int]) -> None:
        for t in tokens:
            if not self.matcher.consume_token(int(t)):
                return
        if not self.matcher.is_stopped():
            self._fill()

    def advance(self, tokens: list[int]) -> None:
        """Consume the sampled (or forced) tokens and start computing the next mask."""
        self._pending.result()
        self._pending = self._pool.submit(self._consume_and_fill, list(tokens))

    def wait(self) -> None:
        self._pending.result()
        if self.matcher.is_error():
            raise ConstraintError(f"the output left the response format: "
                                  f"{self.matcher.get_error()}")

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Set the logits of disallowed ids to -inf, in place; returns `logits`."""
        self.wait()
        n = logits.shape[-1]
        allowed = np.unpackbits(self._mask.view(np.uint8), count=min(n, self._mask.size * 32),
                                bitorder="little").view(bool)
        if allowed.size < n:
            logits[allowed.size:] = -np.inf
        np.copyto(logits[:allowed.size], -np.inf, where=~allowed)
        return logits

    def allowed(self, n_vocab: int) -> np.ndarray:
        """The mask as a boolean array over `n_vocab` ids (True = allowed)."""
        self.wait()
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little").view(bool)
        out = np.zeros(n_vocab, dtype=bool)
        out[:min(n_vocab, bits.size)] = bits[:n_vocab]
        return out

    def forced_tokens(self) -> list[int]:
        """Tokens the grammar forces next (possibly none); not consumed."""
        self.wait()
        return list(self.matcher.compute_ff_tokens())

    def allows(self, token: int) -> bool:
        self.wait()
        return bool((int(self._mask[token // 32]) >> (token % 32)) & 1)
