"""Continuous batching: one core forward over several sessions of one model.

Each session appends its own tokens (one to decode, or a chunk of a new prompt) at its own
positions in its own KV cache; the rows are stacked so that every matmul reads its weights once
per step for all sessions and each expert once for all tokens routed to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _core
from .errors import ContextOverflowError, ModelError
from .model import Model, Session, _check_ids

MAX_ROWS = 256  # tokens per step in all (csrc/session.h kMaxChunk)


class Batch:
    """Runs steps over sessions of `model`; holds the activation scratch of one step."""

    def __init__(self, model: Model, rows: int = MAX_ROWS):
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= MAX_ROWS:
            raise ValueError(f"rows must be an integer in [1, {MAX_ROWS}], got {rows!r}")
        self.model = model
        self.rows = rows
        self._core = (_core.DeviceBatch if model.device == "cuda" else _core.Batch)(model._core, rows)

    def step(self, work: Sequence[tuple[Session, Sequence[int], bool]]) -> list[np.ndarray]:
        """One forward over (session, ids, all_logits) triples, each session at most once.

        Every session appends its ids; returns each one's logits: [len(ids), n_vocab] when
        all_logits, else the last position's [n_vocab] (as Session.prefill).
        """
        sessions, ids, flags = [], [], []
        total = 0
        for session, toks, all_logits in work:
            if session.model is not self.model:
                raise ValueError("a batch runs sessions of its own model only")
            arr = _check_ids(toks, self.model.n_vocab)
            if arr.size == 0:
                raise ValueError("every session of a step needs at least one token")
            if session.n_past + arr.size > session.n_ctx:
                raise ContextOverflowError(f"{arr.size} more tokens do not fit: {session.n_past} of "
                                           f"n_ctx = {session.n_ctx} used")
            total += arr.size
            sessions.append(session._core)
            ids.append(arr)
            flags.append(bool(all_logits))
        if total > self.rows:
            raise ValueError(f"a step holds at most {self.rows} tokens, got {total}")
        if not sessions:
            return []
        out = self._core.step(sessions, ids, flags)
        for logits in out:
            if not np.isfinite(logits).all():
                raise ModelError(f"{self.model.path}: the model produced non-finite logits")
        return out
