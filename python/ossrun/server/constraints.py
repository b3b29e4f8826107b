"""The seam for constrained decoding (structured outputs, forced tool calls).

`token_mask_for(...)` is asked once per request. It may return a callable that, given the ids
generated so far, returns a boolean array over the vocabulary (True = allowed) or None (no
constraint at this step); the scheduler masks the logits with it before sampling. Today it
returns None: `response_format` and `tool_choice` only steer the model through the developer
message (HARMONY.md §5.1). A grammar engine (e.g. llguidance) plugs in here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TokenMask = Callable[[list[int]], "np.ndarray | None"]


def token_mask_for(response_format: dict | None, tools: list, tool_choice, tokenizer,
                   n_vocab: int) -> TokenMask | None:
    """A token mask provider for this request's format and tool choice, or None."""
    return None
