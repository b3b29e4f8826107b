"""The server's pieces without a server: request -> harmony prompt, sampled ids -> reply pieces,
stop strings across deltas."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from ossrun.server.conversation import OutputParser, PromptSpec, ToolCallOut, Turn, render_prompt  # noqa: E402
from ossrun.server.sse import StopMatcher  # noqa: E402
from ossrun.tokenizer import o200k_harmony_from_tiktoken_file  # noqa: E402


@pytest.fixture(scope="module")
def tok(vocab_file):
    return o200k_harmony_from_tiktoken_file(vocab_file)


def test_assistant_turn_with_reasoning_and_call_renders_as_analysis_and_call(tok):
    spec = PromptSpec(turns=[
        Turn("user", "Weather?"),
        Turn("assistant", reasoning="Need it.", tool_calls=[ToolCallOut("call_1", "get_weather", '{"c":1}')]),
        Turn("tool", "sunny", tool_name="get_weather")], instructions=["Be brief."], effort="high")
    text = tok.decode(render_prompt(spec, tok, date="2025-01-01"))
    assert ("<|start|>assistant<|channel|>analysis<|message|>Need it.<|end|>"
            "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json"
            '<|message|>{"c":1}<|call|>'
            "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>sunny<|end|>"
            "<|start|>assistant") in text
    assert "Reasoning: high" in text and "# Instructions\n\nBe brief." in text


def test_tool_choice_none_drops_the_tools(tok):
    from ossrun.harmony import ToolDescription

    tools = [ToolDescription("f", "does f")]
    with_tools = tok.decode(render_prompt(PromptSpec([Turn("user", "x")], tools=tools), tok, "2025-01-01"))
    without = tok.decode(render_prompt(PromptSpec([Turn("user", "x")], tools=tools, tool_choice="none"),
                                       tok, "2025-01-01"))
    assert "namespace functions" in with_tools and "namespace functions" not in without


def feed_all(parser, text, tok):
    pieces = []
    for t in tok.encode(text, allowed_special="all"):
        pieces += parser.feed(t)
    return pieces + parser.finish()


def test_output_parser_separates_reasoning_content_and_calls(tok):
    p = OutputParser(tok)
    text = ("<|channel|>analysis<|message|>one<|end|><|start|>assistant<|channel|>analysis"
            "<|message|>two<|end|><|start|>assistant<|channel|>final<|message|>answer<|return|>")
    pieces = feed_all(p, text, tok)
    assert "".join(x.text for x in pieces if x.kind == "reasoning") == "one\n\ntwo" == p.reasoning_text
    assert "".join(x.text for x in pieces if x.kind == "content") == "answer" == p.content_text
    p = OutputParser(tok)
    text = '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a":1}<|call|>'
    pieces = feed_all(p, text, tok)
    assert [x.kind for x in pieces if x.kind != "call_args"] == ["call_start", "call_done"]
    assert p.calls[0].name == "f" and p.calls[0].arguments == '{"a":1}'


def test_output_parser_never_raises_on_bad_output(tok):
    for text in ("<|channel|>final a b c<|message|>kept<|return|>", "plain text<|end|>more text",
                 "<|message|><|message|>x", "<|channel|>", "<|end|><|end|>"):
        p = OutputParser(tok)
        feed_all(p, text, tok)
    p = OutputParser(tok)
    feed_all(p, "<|channel|>final a b c<|message|>kept<|return|>", tok)
    assert "kept" in p.content_text


def test_stop_matcher_holds_back_a_possible_stop():
    m = StopMatcher(["END", "xy"])
    out = [m.feed(t) for t in ("ab", "cE", "N", "x", "D more")]
    assert out == ["ab", "c", "", "EN", "xD more"]  # held while it could still be a stop
    m = StopMatcher(["END"])
    assert m.feed("abE") == "ab" and m.feed("N") == "" and m.feed("Dzz") == "" and m.stopped
    m = StopMatcher(["END"])
    assert m.feed("abE") == "ab" and m.feed("x") == "Ex" and m.flush() == ""
    m = StopMatcher(["END"])
    assert m.feed("abEN") == "ab" and m.flush() == "EN"


def test_a_call_cut_off_is_not_complete(tok):
    p = OutputParser(tok)
    feed_all(p, '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a":', tok)
    assert p.calls and not p.calls[0].complete


def test_code_interpreter_history_renders_as_the_call_and_its_output(tok):
    """A code_interpreter_call sent back (or stored) renders as the python call and its result;
    a web_search_call (whose pages are not kept) is skipped; the system message lists the
    built-in tools offered."""
    from ossrun.harmony import ToolNamespace
    from ossrun.server.responses import items_to_spec

    spec = PromptSpec(turns=[], builtins=[ToolNamespace.python()])
    items_to_spec([{"role": "user", "content": "Compute."},
                   {"type": "web_search_call", "id": "ws_1", "status": "completed",
                    "action": {"type": "search", "query": "q"}},
                   {"type": "code_interpreter_call", "id": "ci_1", "code": "print(2 + 2)",
                    "container_id": "cntr_1", "outputs": [{"type": "logs", "logs": "4\n"}],
                    "status": "completed"}], spec)
    text = tok.decode(render_prompt(spec, tok, date="2025-01-01"))
    assert ("<|start|>assistant to=python<|channel|>analysis code<|message|>print(2 + 2)<|call|>"
            "<|start|>python to=assistant<|channel|>analysis<|message|>4\n<|end|>"
            "<|start|>assistant") in text
    assert "## python" in text and "browser" not in text


def test_a_builtin_tool_that_cannot_run_here_is_a_400_that_says_why(monkeypatch, tok):
    from ossrun import sandbox
    from ossrun.python_tool import PythonTool
    from ossrun.server.errors import APIError
    from ossrun.server.hosted_tools import HostedTools

    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    sandbox.sandbox_problem.cache_clear()
    try:
        hosted = HostedTools([PythonTool()])
    finally:
        sandbox.sandbox_problem.cache_clear()
    assert "python" in hosted.problems and hosted.describe() == "none"
    with pytest.raises(APIError) as e:
        hosted.for_request([{"type": "function", "name": "f"}, {"type": "code_interpreter"}], [], tok)
    assert e.value.status == 400 and e.value.param == "tools[1].type"
    assert "code_interpreter" in e.value.message and "bubblewrap" in e.value.message
    with pytest.raises(ValueError, match="not a built-in tool"):
        HostedTools([object()])
    assert HostedTools().for_request([{"type": "function", "name": "f"}], [], tok).tools == {}
