"""The seam for constrained decoding (structured outputs, forced tool calls).

`token_mask_for(...)` is asked once per request. It may return a callable that, given the ids
generated so far, returns a boolean array over the vocabulary (True = allowed) or None (no
constraint at this step); the scheduler masks the logits with it before sampling.

The grammar is the chat's (ossrun.constrain): reasoning runs free, then the final answer follows
`response_format` / `text.format` (json_schema, json_object), or a call is forced by
`tool_choice` "required" / a named function. The scheduler asks for the mask after the forward
pass, so here it is computed then (not overlapped as in `ossrun.chat`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TokenMask = Callable[[list[int]], "np.ndarray | None"]


class _Tool:
    """A request's function tool as the grammar builder reads it (arguments not strict)."""

    def __init__(self, name: str):
        self.name, self.strict = name, False


class _GrammarMask:
    def __init__(self, constraint, n_vocab: int):
        self.constraint, self.n_vocab, self.consumed = constraint, n_vocab, 0

    def __call__(self, output: list[int]) -> np.ndarray | None:
        from ..constrain import ConstraintError

        if self.constraint is None:
            return None
        new = output[self.consumed:]
        if new:
            self.constraint.advance(new)
            self.consumed = len(output)
        try:
            return self.constraint.allowed(self.n_vocab)
        except ConstraintError:
            # Only a sampler that ignores the mask (a scripted one) gets here: stop masking.
            self.constraint = None
            return None


def token_mask_for(response_format: dict | None, tools: list, tool_choice, tokenizer,
                   n_vocab: int) -> TokenMask | None:
    """A token mask provider for this request's format and tool choice, or None."""
    from ..constrain import Constraint, harmony_grammar
    from ..constrain import response_format as as_format

    fmt = as_format(response_format) if isinstance(response_format, dict) else None
    from .conversation import named_tool_choice

    choice = tool_choice if isinstance(tool_choice, str) else (
        named_tool_choice(tool_choice) or "auto")
    names = [getattr(t, "name", None) for t in tools or ()]
    if fmt is None and choice in ("auto", "none"):
        return None
    if choice not in ("auto", "none", "required") and choice not in names:
        choice = "auto"
    grammar = harmony_grammar(fmt, [_Tool(n) for n in names if n], choice)
    return _GrammarMask(Constraint(tokenizer, grammar), n_vocab)
