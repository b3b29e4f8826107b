"""The Responses API's built-in tools run by `ossrun serve` itself: web_search on the browser tool
(a local index of documents written here, pages on a loopback HTTP server) and code_interpreter on
the python tool (a real sandboxed kernel; skipped without bubblewrap), driven through the real
server subprocess by the official `openai` client, streaming and not, with scripted model output.

Each scripted completion is chosen by a marker that only the previous tool result contains, so a
reply after a call proves that the call ran and its result reached the prompt.
"""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from ossrun.sandbox import sandbox_problem  # noqa: E402
from server_util import Server  # noqa: E402
from static_site import serve_folder  # noqa: E402

NO_SANDBOX = sandbox_problem()
needs_bwrap = pytest.mark.skipif(NO_SANDBOX is not None, reason=f"no sandbox here: {NO_SANDBOX}")


def _call(recipient: str, body: str, thought: str = "Next step.") -> str:
    return (f"<|channel|>analysis<|message|>{thought}<|end|>"
            f"<|start|>assistant<|channel|>analysis to={recipient} code<|message|>{body}<|call|>")


def _answer(text: str) -> str:
    return (f"<|channel|>analysis<|message|>Done.<|end|>"
            f"<|start|>assistant<|channel|>final<|message|>{text}<|return|>")


SCRIPT = {
    # web_search: search the index, open the hit, follow its link (loopback), find, cite.
    "WEB-Q": _call("browser.search", '{"query":"zebra stripes"}', "Let me search."),
    "Search results for `zebra": _call("browser.open", '{"id":0}'),
    "[1] Zebra notes(": _call("browser.open", '{"id":0}'),
    "[2] Savanna(": _call("browser.find", '{"pattern":"lions"}'),
    "Find results for `lions`": _answer("Lions hunt zebras at dawn 【2†L2】."),
    # code_interpreter: two calls in one response share the kernel; a later response too.
    "CODE-Q": _call("python", 'x = 6 * 7\nprint("py" + "out", x)', "Compute it."),
    "pyout 42": _call("python", 'print("again", x + 1)'),
    "again 43": _answer("The answer is 42."),
    "CODE-LATER": _call("python", 'print("still", x)'),
    "still 42": _answer("x is still 42."),
    "CALLS-Q": _call("python", 'print("one" + "call")'),
    "onecall": _call("python", 'print("two" + "calls")'),
}
SAVANNA = ("<html><head><title>Savanna</title></head><body><p>Grass covers the savanna.</p>"
           "<p>Lions hunt zebras at dawn.</p></body></html>")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "savanna.html").write_text(SAVANNA)
    with serve_folder(root) as url:
        yield url


@pytest.fixture(scope="module")
def docs(tmp_path_factory, site):
    folder = tmp_path_factory.mktemp("docs")
    (folder / "zebras.md").write_text(f"# Zebra notes\n\nZebras have black and white stripes.\n"
                                      f"See [the savanna page]({site}/savanna.html).\n")
    (folder / "bread.txt").write_text("Bread needs flour, water, salt and time.\n")
    return folder


@pytest.fixture(scope="module")
def server(tiny_gguf, vocab_file, docs, tmp_path_factory):
    s = Server(tiny_gguf, tmp_path_factory.mktemp("serve-tools"), "--ctx", 4096, "--parallel", 1,
               "--precision", "f32", "--docs", docs, "--allow-private", "--python", script=SCRIPT)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client(timeout=180)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def test_web_search_runs_on_the_server(client, model_id, docs, site):
    r = client.responses.create(model=model_id, input="WEB-Q", tools=[{"type": "web_search"}])
    assert r.status == "completed"
    calls = [o for o in r.output if o.type == "web_search_call"]
    assert [c.action.type for c in calls] == ["search", "open_page", "open_page", "find_in_page"]
    assert all(c.status == "completed" and c.id.startswith("ws_") for c in calls)
    search, hit, page, find = (c.action for c in calls)
    doc = (docs / "zebras.md").resolve().as_uri()
    assert search.query == "zebra stripes" and [s.url for s in search.sources][0] == doc
    assert hit.url == doc
    assert page.url == f"{site}/savanna.html"  # link 0 of the document, fetched over HTTP
    assert (find.pattern, find.url) == ("lions", f"{site}/savanna.html")
    assert r.output_text == "Lions hunt zebras at dawn 【2†L2】."
    (note,) = r.output[-1].content[0].annotations
    assert note.type == "url_citation" and note.title == "Savanna"
    assert note.url == f"{site}/savanna.html#L2-L2"
    assert r.output_text[note.start_index:note.end_index] == "【2†L2】"
    kinds = [o.type for o in r.output]
    assert kinds == ["reasoning", "web_search_call"] * 4 + ["reasoning", "message"]
    assert r.usage.input_tokens > 5 * r.usage.output_tokens  # five generations' prompts


def test_web_search_stream_events_in_order(client, model_id):
    events = list(client.responses.create(model=model_id, input="WEB-Q",
                                          tools=[{"type": "web_search_preview"}], stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    web = [i for i, t in enumerate(types) if t.startswith("response.web_search_call.")]
    assert len(web) == 12
    for k in range(4):
        i = web[3 * k]
        added = events[i - 1]
        assert added.type == "response.output_item.added" and added.item.type == "web_search_call"
        assert types[i:i + 4] == ["response.web_search_call.in_progress",
                                  "response.web_search_call.searching",
                                  "response.web_search_call.completed",
                                  "response.output_item.done"]
        item_id = added.item.id
        assert all(events[j].item_id == item_id for j in range(i, i + 3))
        assert events[i + 3].item.id == item_id and events[i + 3].item.status == "completed"
        assert events[i].output_index == added.output_index == events[i + 3].output_index
    final = events[-1].response
    assert [o.type for o in final.output].count("web_search_call") == 4
    i = types.index("response.output_text.annotation.added")
    assert types[i + 1] == "response.output_text.done"
    assert events[i].annotation.url == final.output[-1].content[0].annotations[0].url


def test_a_builtin_tool_the_server_was_not_started_with_is_a_400(tiny_gguf, vocab_file, tmp_path):
    s = Server(tiny_gguf, tmp_path, "--ctx", 1024, "--parallel", 1, "--precision", "f32")
    try:
        c = s.client()
        for tool, flag in (({"type": "web_search"}, "--browser"),
                           ({"type": "code_interpreter", "container": {"type": "auto"}}, "--python")):
            with pytest.raises(openai.BadRequestError) as e:
                c.responses.create(model="tiny", input="hi", tools=[tool])
            assert tool["type"] in str(e.value) and flag in str(e.value)
            assert e.value.body["param"] == "tools[0].type"
        with pytest.raises(openai.BadRequestError, match="file_search"):
            c.responses.create(model="tiny", input="hi", tools=[{"type": "file_search"}])
    finally:
        s.stop()


@needs_bwrap
def test_code_interpreter_runs_in_the_sandboxed_kernel(client, model_id):
    tools = [{"type": "code_interpreter", "container": {"type": "auto"}}]
    r = client.responses.create(model=model_id, input="CODE-Q", tools=tools)
    assert r.status == "completed" and r.output_text == "The answer is 42."
    calls = [o for o in r.output if o.type == "code_interpreter_call"]
    assert [c.code for c in calls] == ['x = 6 * 7\nprint("py" + "out", x)', 'print("again", x + 1)']
    assert [c.outputs[0].logs.strip() for c in calls] == ["pyout 42", "again 43"]  # state kept
    assert all(c.status == "completed" and c.outputs[0].type == "logs" for c in calls)
    assert calls[0].container_id == calls[1].container_id
    # A later response of the conversation finds the container, its kernel and its state.
    later = client.responses.create(model=model_id, input="CODE-LATER", tools=tools,
                                    previous_response_id=r.id)
    (call,) = [o for o in later.output if o.type == "code_interpreter_call"]
    assert call.container_id == calls[0].container_id and call.outputs[0].logs.strip() == "still 42"
    assert later.output_text == "x is still 42."
    # So does a request naming the container.
    again = client.responses.create(
        model=model_id, input="CODE-LATER",
        tools=[{"type": "code_interpreter", "container": calls[0].container_id}])
    assert again.output_text == "x is still 42."
    with pytest.raises(openai.BadRequestError, match="cntr_nope"):
        client.responses.create(model=model_id, input="CODE-LATER",
                                tools=[{"type": "code_interpreter", "container": "cntr_nope"}])


@needs_bwrap
def test_code_interpreter_stream_events_in_order(client, model_id):
    tools = [{"type": "code_interpreter", "container": {"type": "auto"}}]
    events = list(client.responses.create(model=model_id, input="CODE-Q", tools=tools, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    starts = [i for i, e in enumerate(events) if e.type == "response.output_item.added"
              and e.item.type == "code_interpreter_call"]
    assert len(starts) == 2
    codes = []
    for i in starts:
        item_id = events[i].item.id
        assert events[i].item.status == "in_progress" and events[i].item.code == ""
        j = types.index("response.output_item.done", i)
        run = types[i + 1:j + 1]
        deltas = run.count("response.code_interpreter_call_code.delta")
        assert deltas >= 1
        assert run == ["response.code_interpreter_call.in_progress",
                       *["response.code_interpreter_call_code.delta"] * deltas,
                       "response.code_interpreter_call_code.done",
                       "response.code_interpreter_call.interpreting",
                       "response.code_interpreter_call.completed",
                       "response.output_item.done"]
        assert all(events[k].item_id == item_id for k in range(i + 1, j))
        code = "".join(events[k].delta for k in range(i + 1, j)
                       if types[k] == "response.code_interpreter_call_code.delta")
        assert code == events[i + 2 + deltas].code == events[j].item.code
        codes.append(code)
        assert events[j].item.status == "completed"
    assert codes == ['x = 6 * 7\nprint("py" + "out", x)', 'print("again", x + 1)']
    assert events[starts[1]].item.container_id == events[starts[0]].item.container_id
    final = events[-1]
    assert final.type == "response.completed" and final.response.output_text == "The answer is 42."
    logs = [o.outputs[0].logs.strip() for o in final.response.output if o.type == "code_interpreter_call"]
    assert logs == ["pyout 42", "again 43"]


@needs_bwrap
def test_max_tool_calls_bounds_the_builtin_calls(client, model_id):
    tools = [{"type": "code_interpreter", "container": {"type": "auto"}}]
    r = client.responses.create(model=model_id, input="CALLS-Q", tools=tools,
                                extra_body={"max_tool_calls": 1})
    calls = [o for o in r.output if o.type == "code_interpreter_call"]
    # The scripted model ignores the grammar that forbids a second call: it is not run.
    assert [c.status for c in calls] == ["completed", "incomplete"]
    assert calls[0].outputs[0].logs.strip() == "onecall" and calls[1].outputs is None
