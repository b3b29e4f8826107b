"""The seam for constrained decoding (structured outputs, forced tool calls).

`token_mask_for(...)` is asked once per request. It may return a callable that, given the ids
generated so far, returns a boolean array over the vocabulary (True = allowed) or None (no
constraint at this step); the scheduler masks the logits with it before sampling.

The grammar is the chat's (ossrun.constrain): reasoning runs free, then the final answer follows
`response_format` / `text.format` (json_schema, json_object), or a call is forced by
`tool_choice` "required" / a named function. The scheduler calls `prepare(output)` before each
forward pass: the matcher consumes the new tokens and computes the next mask on its worker thread
while the forward runs (as in `ossrun.chat`); calling the mask after the forward waits for it.

The extension field `max_reasoning_tokens` (both APIs) is a reasoning budget: once the analysis
reaches it, the mask forces `<|end|><|start|>assistant<|channel|>final<|message|>` one token a
step, as `ossrun.chat` does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TokenMask = Callable[[list[int]], "np.ndarray | None"]


class _Tool:
    """A request's function tool as the grammar builder reads it: with `strict`, its arguments
    are constrained to its `parameters` schema (objects closed, as OpenAI's strict mode)."""

    def __init__(self, name: str, strict: bool = False, parameters: dict | None = None):
        self.name, self.strict, self.parameters = name, strict, parameters

    def arguments_schema(self) -> dict:
        from ..tools import closed_schema

        if not self.parameters:
            return {"type": "object", "properties": {}, "additionalProperties": False}
        return closed_schema(self.parameters)


class _GrammarMask:
    def __init__(self, constraint, n_vocab: int):
        self.constraint, self.n_vocab, self.consumed = constraint, n_vocab, 0

    def prepare(self, output: list[int]) -> None:
        """Start computing the mask after `output` (returns at once)."""
        new = output[self.consumed:]
        if self.constraint is not None and new:
            self.constraint.advance(new)
            self.consumed = len(output)

    def __call__(self, output: list[int]) -> np.ndarray | None:
        from ..constrain import ConstraintError

        if self.constraint is None:
            return None
        self.prepare(output)  # a no-op when the scheduler prepared it before the forward
        try:
            return self.constraint.allowed(self.n_vocab)
        except ConstraintError:
            # Only a sampler that ignores the mask (a scripted one) gets here: stop masking.
            self.constraint = None
            return None


def reasoning_budget(body) -> int | None:
    """The request's `max_reasoning_tokens` extension field (None: no budget)."""
    from .errors import APIError

    value = (body.model_extra or {}).get("max_reasoning_tokens")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise APIError(400, "Invalid value for 'max_reasoning_tokens': it must be an integer >= 0.",
                       param="max_reasoning_tokens")
    return value


class _BudgetMask:
    """Counts the reasoning tokens of the output; at the budget, forces the tokens that close
    the analysis and open the final channel (unless the grammar under it forbids them)."""

    def __init__(self, inner, tokenizer, budget: int, n_vocab: int):
        from ..harmony import StreamParser

        self.inner, self.budget, self.n_vocab = inner, budget, n_vocab
        self.parser = StreamParser(tokenizer, role="assistant", strict=False)
        self.close = tokenizer.encode("<|end|><|start|>assistant<|channel|>final<|message|>",
                                      allowed_special="all")
        self.fed = self.used = 0
        self.forcing_from: int | None = None

    def prepare(self, output: list[int]) -> None:
        if self.inner is not None:
            self.inner.prepare(output)

    def __call__(self, output: list[int]) -> np.ndarray | None:
        from ..chat import _in_reasoning
        from ..harmony import HarmonyError

        for t in output[self.fed:]:
            was = _in_reasoning(self.parser)
            try:
                self.parser.process(t)
            except HarmonyError:
                self.budget = None  # not harmony: nothing to count
                break
            if was and _in_reasoning(self.parser):
                self.used += 1
        self.fed = len(output)
        allowed = self.inner(output) if self.inner is not None else None
        if self.budget is None:
            return allowed
        if self.forcing_from is None and self.used >= self.budget and _in_reasoning(self.parser):
            self.forcing_from = len(output)
        if self.forcing_from is not None:
            step = len(output) - self.forcing_from
            if step < len(self.close):
                token = self.close[step]
                if allowed is None or allowed[token]:
                    forced = np.zeros(self.n_vocab, dtype=bool)
                    forced[token] = True
                    return forced
                self.budget = None  # the grammar leads from here (e.g. a required call)
        return allowed


def token_mask_for(response_format: dict | None, tools: list, tool_choice, tokenizer,
                   n_vocab: int, max_reasoning_tokens: int | None = None,
                   builtin_recipients=(), calls_allowed: bool = True, strict_tools=(),
                   format_param: str = "response_format") -> TokenMask | None:
    """A token mask provider for this request's format, tool choice and reasoning budget, or
    None. builtin_recipients: the built-in tools' recipients ("python", "browser.search"), whose
    calls the grammar allows (only those, with tool_choice "builtin"). calls_allowed=False: the
    built-in tool calls of this response reached their limit, none may follow. strict_tools:
    names of the function tools whose arguments must match their schema. A format or schema
    the grammar compiler rejects is a 400 (naming `format_param` or the tools)."""
    from ..constrain import ConstraintError
    from .errors import APIError

    try:
        grammar = _grammar_mask(response_format, tools, tool_choice, tokenizer, n_vocab,
                                builtin_recipients, calls_allowed, frozenset(strict_tools))
    except ConstraintError as e:
        param = "tools" if strict_tools else format_param
        raise APIError(400, f"Invalid value for '{param}': {e}", param=param) from None
    if max_reasoning_tokens is None:
        return grammar
    return _BudgetMask(grammar, tokenizer, max_reasoning_tokens, n_vocab)


def _grammar_mask(response_format, tools, tool_choice, tokenizer, n_vocab, builtin_recipients=(),
                  calls_allowed=True, strict_tools=frozenset()):
    from ..constrain import Constraint, harmony_grammar
    from ..constrain import response_format as as_format

    fmt = as_format(response_format) if isinstance(response_format, dict) else None
    from .conversation import named_tool_choice

    choice = tool_choice if isinstance(tool_choice, str) else (
        named_tool_choice(tool_choice) or "auto")
    names = [getattr(t, "name", None) for t in tools or ()]
    schemas = {getattr(t, "name", None): getattr(t, "parameters", None) for t in tools or ()}
    builtins = list(builtin_recipients)
    if not calls_allowed:
        if not builtins:
            calls_allowed = True  # nothing to exclude
        else:
            builtins = []
            choice = "auto" if choice in ("builtin", "required") else choice
    if choice == "builtin":  # a built-in tool named by tool_choice: one of its calls, nothing else
        if not builtins:
            choice = "auto"
        else:
            names, choice = [], "required"
    strict = choice != "none" and any(n in strict_tools for n in names)
    if fmt is None and choice in ("auto", "none") and calls_allowed and not strict:
        return None
    if choice not in ("auto", "none", "required") and choice not in names:
        choice = "auto"
    if choice == "required" and not names and not builtins:
        choice = "auto"
    grammar = harmony_grammar(fmt, [_Tool(n, n in strict_tools, schemas.get(n)) for n in names if n],
                              choice, builtins)
    return _GrammarMask(Constraint(tokenizer, grammar), n_vocab)
