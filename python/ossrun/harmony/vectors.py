"""Runs harmony test-vector cases (HARMONY.md §16) and produces the oracle's expected.json shape.

The case schema is documented at the top of shared/tools/harmony_oracle.py; the output of
`run_cases` has the same structure as that script's `expected` command, case for case.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import HarmonyError
from .messages import Message
from .parse import StreamParser, parse_messages
from .render import render_conversation, stop_token_ids, terminator_token_ids
from .tokens import decode_utf8, lossy_text

SCHEMA_VERSION = 1
NAMED_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>",
                        "<|channel|>", "<|start|>", "<|end|>", "<|message|>", "<|call|>")
# Keys of the `encoding` block that must equal the oracle's (its other keys are versions).
COMPARED_ENCODING_KEYS = ("named_special_tokens", "stop_tokens",
                          "stop_tokens_for_assistant_actions")


def load_cases(path: str | Path) -> list[dict]:
    """Cases of a case file: {"cases": [...]}, a bare list, or a single case object."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and "cases" in data:
        data = data["cases"]
    cases = data if isinstance(data, list) else [data]
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or not isinstance(case.get("id"), str):
            raise TypeError(f"case #{i} is not an object with a string 'id'")
    ids = [c["id"] for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate case ids")
    return cases


def message_json(message: Message) -> dict:
    """A parsed message in the case schema, with its text parts joined into one string."""
    d = message.to_dict()
    d["content"] = message.text
    return d


def completion_tokens(completion: dict, tokenizer) -> list[int]:
    """The ids of a COMPLETION: `tokens`, or `parts`/`text` with <|...|> markers as special ids."""
    if "tokens" in completion:
        return [int(t) for t in completion["tokens"]]
    if "parts" in completion:
        out: list[int] = []
        for p in completion["parts"]:
            out += [p] if isinstance(p, int) else tokenizer.encode(p, allowed_special="all")
        return out
    return tokenizer.encode(completion.get("text", ""), allowed_special="all")


def _render(messages: list[dict], opts: dict, tokenizer) -> list[int]:
    return render_conversation([Message.from_dict(m) for m in messages], tokenizer, **opts)


def stream_trace(tokens: list[int], tokenizer, role, strict: bool) -> dict:
    """Per-id snapshots of a StreamParser, as the oracle's `stream` field."""
    p = StreamParser(tokenizer, role, strict)
    steps = []
    for i, t in enumerate(tokens):
        try:
            p.process(t)
        except HarmonyError as e:
            return {"steps": steps, "error": {"index": i, "token": t, "message": str(e)}}
        steps.append({
            "i": i, "token": t, "state": p.state, "role": p.current_role,
            "channel": p.current_channel, "recipient": p.current_recipient,
            "content_type": p.current_content_type, "delta": p.last_content_delta,
            "content": p.current_content, "n_messages": len(p.messages),
        })
    try:
        p.process_eos()
    except HarmonyError as e:
        return {"steps": steps, "error": {"index": len(tokens), "token": None, "message": str(e)}}
    return {"steps": steps, "messages_after_eos": [message_json(m) for m in p.messages]}


def _run_completion(case: dict, c: dict, opts: dict, tokenizer) -> dict:
    role = c.get("role", "assistant")
    strict = bool(c.get("strict", True))
    toks = completion_tokens(c, tokenizer)
    r: dict[str, Any] = {"id": c.get("id"), "role": role, "strict": strict, "tokens": toks,
                         "text": lossy_text(tokenizer, toks)}
    try:
        parsed = [message_json(m) for m in parse_messages(toks, tokenizer, role, strict)]
        r["messages"] = parsed
    except HarmonyError as e:
        parsed = None
        r["error"] = str(e)
    r["stream"] = stream_trace(toks, tokenizer, role, strict)
    if c.get("then") is not None and parsed is not None:
        follow_up = list(case.get("messages", [])) + parsed + list(c["then"])
        try:
            ids = _render(follow_up, opts, tokenizer)
            r["next_prompt_text"] = decode_utf8(tokenizer, ids)
            r["next_prompt_tokens"] = ids
        except HarmonyError as e:
            r["next_prompt_error"] = str(e)
    return r


def run_case(case: dict, tokenizer) -> dict:
    """Render a case's messages and parse its completions; errors are reported as strings."""
    opts = dict(case.get("render") or {})
    opts.setdefault("mode", "completion")
    opts.setdefault("auto_drop_analysis", True)
    if opts["mode"] == "completion":
        opts.setdefault("next_role", "assistant")
    out: dict[str, Any] = {"id": case["id"], "render": opts}
    try:
        ids = _render(case.get("messages", []), opts, tokenizer)
        out["prompt_text"] = decode_utf8(tokenizer, ids)
        out["prompt_tokens"] = ids
    except HarmonyError as e:
        out["render_error"] = str(e)
    completions = [_run_completion(case, c, opts, tokenizer)
                   for c in case.get("completions") or []]
    if completions:
        out["completions"] = completions
    return out


def encoding_info(tokenizer) -> dict:
    """The named special tokens and both stop-token lists."""
    return {
        "named_special_tokens": {name: tokenizer.special_id(name) for name in NAMED_SPECIAL_TOKENS},
        "stop_tokens": terminator_token_ids(tokenizer),
        "stop_tokens_for_assistant_actions": stop_token_ids(tokenizer),
    }


def run_cases(cases: list[dict], tokenizer) -> dict:
    """The whole expected.json document for `cases`."""
    return {"schema_version": SCHEMA_VERSION, "generator": "ossrun.harmony",
            "encoding": encoding_info(tokenizer),
            "cases": [run_case(c, tokenizer) for c in cases]}


def compare(expected: dict, got: dict) -> list[str]:
    """Names of the cases (and encoding keys) where `got` differs from `expected`."""
    bad = []
    exp_cases = {c["id"]: c for c in expected.get("cases", [])}
    got_cases = {c["id"]: c for c in got.get("cases", [])}
    bad += [f"case {i}" for i in exp_cases if exp_cases[i] != got_cases.get(i)]
    bad += [f"case {i} (unexpected)" for i in got_cases if i not in exp_cases]
    for key in COMPARED_ENCODING_KEYS:
        if expected.get("encoding", {}).get(key) != got.get("encoding", {}).get(key):
            bad.append(f"encoding.{key}")
    return bad
