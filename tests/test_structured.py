"""Constrained decoding (ossrun.constrain): structured output on the final channel only, strict
tool arguments, tool_choice, and the reasoning budget.

The tiny model has random weights, so its unconstrained output is noise: whatever parses and
validates below does so because of the grammar. A reasoning budget ends the (otherwise endless)
reasoning of the random model; JSON schemas bound their strings and numbers so that replies end.
"""

from __future__ import annotations

import json
import re
from typing import Literal

import jsonschema
import numpy as np
import pydantic
import pytest
from ossrun.chat import ToolCall, ToolResult
from ossrun.constrain import Constraint, ConstraintError, harmony_grammar, response_format
from ossrun.sampler import Sampler
from test_chat import tiny_chat_model


@pytest.fixture(scope="session")
def model(vocab_file, tiny_gguf):
    return tiny_chat_model(vocab_file, tiny_gguf)


SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "person": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 10},
                "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                "required": ["name", "age"], "additionalProperties": False},
            "ok": {"type": "boolean"}},
        "required": ["person", "ok"], "additionalProperties": False},
    "enum_array": {
        "type": "object",
        "properties": {"colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                                  "minItems": 2, "maxItems": 4},
                       "mode": {"enum": ["fast", "slow", 3]}},
        "required": ["colors", "mode"], "additionalProperties": False},
    "pattern": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                       "score": {"type": "integer", "minimum": -5, "maximum": 5}},
        "required": ["code", "score"], "additionalProperties": False},
    "array_root": {
        "type": "array", "minItems": 1, "maxItems": 3,
        "items": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1,
                                                          "maximum": 9}},
                  "required": ["id"], "additionalProperties": False}},
}


def chat(model, seed, **kwargs):
    kwargs.setdefault("max_reasoning_tokens", 6)
    kwargs.setdefault("max_tokens", 400)
    return model.chat(seed=seed, date="2025-06-28", **kwargs)


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_reply_parses_and_validates(model, name):
    schema = SCHEMAS[name]
    for seed in range(6):
        reply = chat(model, seed).send("Answer in JSON.", response_format=schema)
        assert reply.finish_reason == "stop", (seed, reply.note)
        jsonschema.validate(json.loads(reply.content), schema)
        assert reply.parsed == json.loads(reply.content)
        final = reply.messages[-1]
        assert (final.channel, final.text) == ("final", reply.content)


class Weather(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=8)
    celsius: int = pydantic.Field(ge=-50, le=50)
    sky: str = pydantic.Field(pattern="^(clear|cloudy|rain)$")


def test_pydantic_model_and_chat_level_format(model):
    c = chat(model, 3, response_format=Weather)
    prompt = model.tokenizer.decode(c.render())
    assert "# Response Formats\n\n## Weather" in prompt  # the model is told the format
    for _ in range(3):
        reply = c.send("Weather?")
        assert isinstance(reply.parsed, Weather), reply.note
        assert Weather.model_validate_json(reply.content) == reply.parsed
    free = c.send("And now?", response_format=None, max_reasoning_tokens=4)
    assert free.parsed is None  # a per-call override


def test_regex_lark_and_json_object(model):
    for seed in range(3):
        reply = chat(model, seed).send("Code?", response_format=re.compile(r"^[A-Z][a-z]{2,5}-\d{2}$"))
        assert re.fullmatch(r"[A-Z][a-z]{2,5}-\d{2}", reply.content), reply
        lark = 'start: "yes" | "no" | "maybe " NUM\nNUM: /[0-9]{1,2}/'
        reply = chat(model, seed).send("Y/N?", response_format={"type": "lark", "grammar": lark})
        assert re.fullmatch(r"yes|no|maybe [0-9]{1,2}", reply.content), reply
    c = chat(model, 0, max_tokens=60)
    reply = c.send("JSON", response_format={"type": "json_object"})
    # An unbounded object may run past max_tokens; whatever was written is a JSON prefix.
    assert reply.content.startswith("{")
    if reply.finish_reason == "stop":
        assert isinstance(json.loads(reply.content), dict)


def _normal_ids(tokenizer) -> int:
    return sum(1 for i in range(tokenizer.n_vocab) if not tokenizer.is_special(i))


def test_reasoning_runs_free_under_the_grammar(model):
    """While the model reasons, the mask allows every ordinary token (plus <|end|>); a grammar
    that constrains everything allows only JSON from the first token."""
    tok = model.tokenizer
    schema = SCHEMAS["nested"]
    allowed_counts, analysis = [], []
    inner = Sampler(1.0, seed=11)

    analysis_id = tok.encode("analysis")[0]

    def recording(logits):
        allowed_counts.append(int(np.isfinite(logits).sum()))
        if len(allowed_counts) == 2:  # choose the analysis channel (the grammar allows it)
            assert np.isfinite(logits[analysis_id])
            return analysis_id
        return inner(logits)

    c = model.chat(sampler=recording, date="2025-06-28", max_reasoning_tokens=12, max_tokens=400)
    reply = c.send("Think, then answer.", response_format=schema)
    jsonschema.validate(json.loads(reply.content), schema)
    n_normal = _normal_ids(tok)
    # Every ordinary token is allowed but those that would make the text invalid UTF-8 (a lone
    # continuation byte, 0xC0, 0xF5..: 321 of 199998 ids at the start of a message).
    in_reasoning = [n for n in allowed_counts if n_normal - 400 < n <= n_normal + 1]
    assert len(in_reasoning) == 12, allowed_counts[:20]  # <|message|> .. the 11th token
    analysis = reply.messages[0].text if reply.messages[0].channel in ("analysis", "commentary") \
        else ""
    assert analysis and not analysis.lstrip().startswith("{")

    # The anchor's failure: the same schema applied from the first token constrains reasoning.
    everything = json.dumps({"grammars": [{"name": "main", "json_schema": {
        **schema, "x-guidance": {"whitespace_flexible": False}}}]})
    constrained = Constraint(tok, everything)
    logits = np.zeros(model.n_vocab, np.float32)
    assert np.isfinite(constrained.apply(logits)).sum() < 100
    ours = Constraint(tok, harmony_grammar(response_format(schema)))
    head = tok.encode("<|channel|>analysis<|message|>", allowed_special="all")
    ours.advance(head)
    free = np.isfinite(ours.apply(np.zeros(model.n_vocab, np.float32)))
    assert n_normal - 400 < free.sum() <= n_normal + 1
    assert np.flatnonzero(free[n_normal:]).tolist() == [tok.special_id("<|end|>") - n_normal]
    constrained_reply = model.chat(sampler=Sampler(1.0, seed=11), date="2025-06-28",
                                   max_tokens=60)
    # A run constrained everywhere writes JSON where the reasoning should be.
    orig = constrained_reply._constraint
    constrained_reply._constraint = lambda options: Constraint(tok, everything)
    r = constrained_reply.send("Think, then answer.")
    assert r.reasoning != reply.reasoning
    constrained_reply._constraint = orig


def test_bad_formats_are_clear_errors(model):
    with pytest.raises(ValueError, match="response_format"):
        model.chat(response_format="json")
    with pytest.raises(ConstraintError, match="not a valid grammar"):
        chat(model, 0).send("x", response_format={"type": "lark", "grammar": "start: @@@"})
    with pytest.raises(ValueError, match="tool_choice"):
        chat(model, 0).send("x", tool_choice="nope")


def test_strict_tool_arguments_and_tool_choice(model):
    seen = []

    def book(city: str, nights: int, breakfast: bool = False) -> str:
        """Book a hotel."""
        seen.append((city, nights, breakfast))
        return "booked"

    schema = {"type": "object",
              "properties": {"city": {"type": "string", "maxLength": 6},
                             "nights": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["city", "nights"], "additionalProperties": False}

    def lookup(key: Literal["a", "b"]) -> str:
        """Look up."""
        return "value"

    tools = [{"name": "book", "function": book, "strict": True, "parameters": schema},
             {"function": lookup, "strict": True}]
    for seed in range(4):
        c = chat(model, seed, tools=tools, max_tool_rounds=1, max_tokens=120)
        events = list(c.stream("Book it", tool_choice="book"))
        call = next(e for e in events if isinstance(e, ToolCall))
        result = next(e for e in events if isinstance(e, ToolResult))
        assert call.name == "book" and isinstance(call.arguments, dict), events[-1].reply
        jsonschema.validate(call.arguments, schema)
        assert (result.content, result.is_error) == ("booked", False)
    assert len(seen) == 4
    # required: some tool is called, first thing after reasoning.
    c = chat(model, 5, tools=tools, max_tool_rounds=0, max_tokens=120)
    reply = c.send("Do something", tool_choice="required")
    assert reply.tool_calls and reply.tool_calls[0].name in ("book", "lookup")
    # none: no call even when tools exist.
    c = chat(model, 6, tools=tools, max_tokens=40)
    reply = c.send("Talk", tool_choice="none")
    assert reply.tool_calls == []


def _budget_sampler(tokenizer):
    """Writes an endless analysis; once the final channel is open, "OK" and <|return|>."""
    final = tokenizer.encode("<|channel|>final<|message|>", allowed_special="all")
    header = tokenizer.encode("<|channel|>analysis<|message|>", allowed_special="all")
    word, ok, ret = tokenizer.encode(" think")[0], tokenizer.encode("OK")[0], \
        tokenizer.special_id("<|return|>")
    state = {"i": 0, "session": None}

    def sample(logits):
        tokens = state["session"].tokens
        i = state["i"]
        state["i"] += 1
        if tokens[-len(final):] == final:
            return ok
        if tokens[-1] == ok:
            return ret
        return header[i] if i < len(header) else word
    return sample, state


def test_reasoning_budget_closes_analysis_and_opens_final(model):
    tok = model.tokenizer
    sample, state = _budget_sampler(tok)
    c = model.chat(sampler=sample, date="2025-06-28", max_reasoning_tokens=5)
    state["session"] = c.session
    reply = c.send("Hi")
    assert reply.finish_reason == "stop"
    assert reply.reasoning == " think" * 5
    assert reply.content == "OK"
    assert [m.channel for m in reply.messages] == ["analysis", "final"]
    forced = tok.encode("<|end|><|start|>assistant<|channel|>final<|message|>",
                        allowed_special="all")
    text = tok.decode(c.session.tokens)
    assert text.endswith(tok.decode(forced) + "OK")  # <|return|> is sampled, not fed back
    # Per call, and 0 = answer at once.
    sample, state = _budget_sampler(tok)
    c = model.chat(sampler=sample, date="2025-06-28", max_reasoning_tokens=50)
    state["session"] = c.session
    reply = c.send("Hi", max_reasoning_tokens=0)
    assert (reply.reasoning, reply.content) == ("", "OK")
    with pytest.raises(ValueError, match="max_reasoning_tokens"):
        model.chat(max_reasoning_tokens=-1)


def test_server_seam_masks_by_the_same_grammar(model):
    """ossrun serve's constraints.token_mask_for: the request's json_schema (both APIs' shapes)
    and tool_choice, over the ids generated so far."""
    from ossrun.harmony import ToolDescription
    from ossrun.server.constraints import token_mask_for

    tok = model.tokenizer
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    assert token_mask_for(None, [], "auto", tok, model.n_vocab) is None
    assert token_mask_for({"type": "text"}, [], "auto", tok, model.n_vocab) is None
    ids = tok.encode('<|channel|>analysis<|message|>free {text<|end|><|start|>assistant'
                     '<|channel|>final<|message|>{"n":12}<|return|>', allowed_special="all")
    for fmt in ({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
                {"type": "json_schema", "name": "x", "schema": schema}):
        mask = token_mask_for(fmt, [], "auto", tok, model.n_vocab)
        for i, t in enumerate(ids):
            allowed = mask(ids[:i])
            assert allowed.shape == (model.n_vocab,) and allowed[t], (i, tok.decode([t]))
        bad = tok.encode('<|channel|>final<|message|>{"m"', allowed_special="all")
        mask = token_mask_for(fmt, [], "auto", tok, model.n_vocab)
        first_refused = next(i for i in range(len(bad)) if not mask(bad[:i])[bad[i]])
        assert tok.decode(bad[first_refused:first_refused + 1]) in ('m', '"m', 'm"')
    tools = [ToolDescription("get_weather", "", {"type": "object"})]
    mask = token_mask_for(None, tools, {"type": "function", "function": {"name": "get_weather"}},
                          tok, model.n_vocab)
    final = tok.encode("<|channel|>final", allowed_special="all")
    assert mask([])[final[0]] and not mask(final[:1])[final[1]]  # no answer: a call is forced


def test_a_preamble_leads_to_a_call_never_to_the_answer(model):
    """Commentary text (a preamble) announces a tool call; under a response format the answer
    never follows one, so the reply's content is the final channel's text alone."""
    tok = model.tokenizer

    def allows(grammar, text):
        c = Constraint(tok, grammar)
        for t in tok.encode(text, allowed_special="all"):
            if not c.allows(t):
                return False
            c.advance([t])
        return True

    fmt = response_format({"type": "json_object"})
    assert allows(harmony_grammar(fmt), "<|channel|>analysis")
    assert not allows(harmony_grammar(fmt), "<|channel|>commentary")
    tools = [type("T", (), {"name": "f", "strict": False})()]
    grammar = harmony_grammar(fmt, tools)
    preamble = "<|channel|>commentary<|message|>Let me check.<|end|><|start|>assistant"
    assert allows(grammar, preamble + " to=functions.f")
    assert not allows(grammar, preamble + "<|channel|>final")
    assert allows(grammar, "<|channel|>analysis<|message|>Hm.<|end|><|start|>assistant<|channel|>final")


def test_server_seam_builtin_tool_calls(model):
    """The built-in tools the server runs: tool_choice naming one forces its call; once the
    response's built-in calls reached max_tool_calls, none may follow."""
    from ossrun.server.constraints import token_mask_for

    tok = model.tokenizer
    call = tok.encode(" to=python<|channel|>analysis code<|message|>print(1)<|call|>",
                      allowed_special="all")
    final = tok.encode("<|channel|>final", allowed_special="all")
    mask = token_mask_for(None, [], "builtin", tok, model.n_vocab, builtin_recipients=["python"])
    assert mask([])[final[0]] and not mask(final[:1])[final[1]]  # no answer: the call is forced
    mask = token_mask_for(None, [], "builtin", tok, model.n_vocab, builtin_recipients=["python"])
    for i, t in enumerate(call):
        assert mask(call[:i])[t], (i, tok.decode([t]))
    assert token_mask_for(None, [], "auto", tok, model.n_vocab, builtin_recipients=["python"]) is None
    mask = token_mask_for(None, [], "auto", tok, model.n_vocab, builtin_recipients=["python"],
                          calls_allowed=False)
    assert not mask([])[call[0]] and mask([])[final[0]]
    answer = tok.encode("<|channel|>final<|message|>free text<|return|>", allowed_special="all")
    mask = token_mask_for(None, [], "auto", tok, model.n_vocab, builtin_recipients=["python"],
                          calls_allowed=False)
    for i, t in enumerate(answer):
        assert mask(answer[:i])[t]


def test_server_reasoning_budget_forces_the_final_channel(model):
    from ossrun.server.constraints import token_mask_for

    tok = model.tokenizer
    mask = token_mask_for(None, [], "auto", tok, model.n_vocab, max_reasoning_tokens=3)
    output = tok.encode("<|channel|>analysis<|message|>", allowed_special="all")
    word = tok.encode(" hmm")[0]
    for _ in range(3):
        assert mask(output) is None  # free while under the budget
        output.append(word)
    close = tok.encode("<|end|><|start|>assistant<|channel|>final<|message|>",
                       allowed_special="all")
    for t in close:
        allowed = mask(output)
        assert np.flatnonzero(allowed).tolist() == [t]
        output.append(t)
    assert mask(output + [word]) is None  # the answer is free again
    mask = token_mask_for({"type": "json_object"}, [], "auto", tok, model.n_vocab,
                          max_reasoning_tokens=0)
    output = tok.encode("<|channel|>analysis<|message|>", allowed_special="all")
    for t in close:
        assert np.flatnonzero(mask(output)).tolist() == [t]
        output.append(t)
    assert mask(output)[tok.encode("{")[0]] and not mask(output)[word]
