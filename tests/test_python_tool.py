"""The python tool (ossrun.python_tool): a stateful Jupyter kernel in a bubblewrap sandbox.

Skipped (with the reason) where bubblewrap is missing or cannot create namespaces; `.ci/run`
installs it where it can. One kernel is shared by the tests that do not break it, since a
kernel takes a second or two to start.
"""

from __future__ import annotations

import http.server
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from ossrun import sandbox
from ossrun.python_tool import PythonTool, SandboxUnavailable

PROBLEM = sandbox.sandbox_problem()
needs_bwrap = pytest.mark.skipif(PROBLEM is not None, reason=f"no sandbox here: {PROBLEM}")


@pytest.fixture(scope="module")
def kernel():
    if PROBLEM is not None:
        pytest.skip(f"no sandbox here: {PROBLEM}")
    session = PythonTool(timeout_s=4, memory_mb=1024, processes=48, max_output_tokens=200,
                         grace_s=3).open_session()
    yield session
    session.close()


def run(session, code):
    return session.call("python", code)


@needs_bwrap
def test_state_is_kept_and_output_is_truncated(kernel):
    assert run(kernel, "x = 20\ny = x + 1") == ("[no output]", False)
    assert run(kernel, "x * 2 + y") == ("61\n", False)
    assert run(kernel, "print('out'); import sys; print('err', file=sys.stderr)") == (
        "out\nerr\n", False)
    text, is_error = run(kernel, "1 / 0")
    assert is_error and "ZeroDivisionError" in text and "\x1b[" not in text
    text, _ = run(kernel, "print(' '.join(str(i) for i in range(2000)))")
    assert text.startswith("0 1 2 3") and text.rstrip().endswith("1998 1999")
    assert "characters of output cut" in text and len(text) < 2000  # no tokenizer: ~4 a token


@needs_bwrap
def test_cannot_read_the_home_folder(kernel):
    with tempfile.NamedTemporaryFile("w", dir=Path.home(), prefix="ossrun-secret-",
                                     suffix=".txt") as secret:
        secret.write("the secret")
        secret.flush()
        text, is_error = run(kernel, f"open({secret.name!r}).read()")
        assert is_error and "No such file" in text and "the secret" not in text
    text, _ = run(kernel, "import os, json; print(json.dumps(sorted(os.environ)))")
    inside = json.loads(text)
    assert run(kernel, "os.environ['HOME']") == ("'/tmp'\n", False)
    # Nothing of the host's environment comes in but what the sandbox or IPython set.
    own = {"PATH", "HOME", "LANG", "PWD", "TERM", "MPLBACKEND", "IPYTHONDIR", "SHLVL", "_",
           "PYTHONDONTWRITEBYTECODE", "PYDEVD_USE_FRAME_EVAL", "COLUMNS", "LINES", "PAGER",
           "GIT_PAGER", "CLICOLOR", "FORCE_COLOR"}
    assert not (set(inside) & set(os.environ)) - own


@needs_bwrap
def test_cannot_reach_the_host_loopback(kernel):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"reached")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        import urllib.request

        assert urllib.request.urlopen(url, timeout=5).read() == b"reached"  # from the host
        text, is_error = run(kernel, f"import urllib.request\n"
                                     f"urllib.request.urlopen({url!r}, timeout=2).read()")
        assert is_error and "reached" not in text
        assert "Connection refused" in text or "unreachable" in text.lower()
    finally:
        server.shutdown()


@needs_bwrap
def test_writes_only_to_mnt_data(kernel):
    assert run(kernel, "open('/mnt/data/kept.txt', 'w').write('ok')") == ("2\n", False)
    assert (Path(kernel.data_dir) / "kept.txt").read_text() == "ok"
    for target in ["/usr/evil", str(Path.home() / "evil"), f"{sandbox.python_dirs()[0]}/evil",
                   "/etc/evil"]:
        text, is_error = run(kernel, f"open({target!r}, 'w').write('x')")
        assert is_error and ("Read-only" in text or "Permission denied" in text
                             or "No such file" in text), text
        assert not Path(target).exists()
    marker = f"ossrun-marker-{os.getpid()}"
    assert run(kernel, f"open('/tmp/{marker}', 'w').write('x')")[1] is False  # a private /tmp
    assert not (Path("/tmp") / marker).exists()


@needs_bwrap
def test_infinite_loop_is_interrupted_and_the_next_call_works(kernel):
    run(kernel, "kept = 'still here'")
    t0 = time.monotonic()
    text, is_error = run(kernel, "while True:\n    pass")
    assert is_error and "timed out after 4 s" in text and "KeyboardInterrupt" in text
    assert time.monotonic() - t0 < 4 + 3 + 2
    assert run(kernel, "kept") == ("'still here'\n", False)


@needs_bwrap
def test_memory_hog_fails_inside(kernel):
    text, is_error = run(kernel, "hog = bytearray(3 * 1024 ** 3)")
    assert is_error and "MemoryError" in text
    assert run(kernel, "1 + 1") == ("2\n", False)


def _sandbox_processes(session) -> int:
    return len(psutil.Process(session._km.provisioner.process.pid).children(recursive=True))


@needs_bwrap
def test_uninterruptible_code_and_fork_bomb_restart_the_kernel():
    session = PythonTool(timeout_s=3, memory_mb=1024, processes=48, grace_s=2).open_session()
    try:
        assert run(session, "state = 1") == ("[no output]", False)
        baseline = _sandbox_processes(session)
        text, is_error = run(session, "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)"
                                      "\nwhile True:\n    pass")
        assert is_error and "restarted" in text
        text, is_error = run(session, "state")
        assert is_error and "NameError" in text  # a new kernel
        bomb = ("import os\nwhile True:\n    try:\n        os.fork()\n"
                "    except OSError:\n        pass")
        t0 = time.monotonic()
        text, is_error = run(session, bomb)
        assert is_error and "restarted" in text, text
        assert time.monotonic() - t0 < 3 + 2 + 60  # a restart is slow on a loaded machine
        assert run(session, "2 + 2") == ("4\n", False)
        assert _sandbox_processes(session) == baseline  # the bomb's processes are gone
        nobody = [p for p in psutil.process_iter(["uids"]) if p.info["uids"]
                  and p.info["uids"].real == session.uid]
        assert len(nobody) < 48  # (as root: the session's own uid; else ours, limited)
    finally:
        session.close()


def test_without_bubblewrap_the_tool_is_not_offered(monkeypatch, vocab_file, tiny_gguf):
    from test_chat import tiny_chat_model

    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    sandbox.sandbox_problem.cache_clear()
    try:
        assert "apt-get install bubblewrap" in PythonTool().unavailable()
        with pytest.raises(SandboxUnavailable, match="bubblewrap"):
            PythonTool().open_session()
        model = tiny_chat_model(vocab_file, tiny_gguf)
        with pytest.warns(RuntimeWarning, match="python tool is not offered.*bubblewrap"):
            chat = model.chat(tools=["python"])
        assert chat.tools == []
        assert "## python" not in model.tokenizer.decode(chat.render())
        assert PythonTool(sandbox="none").unavailable() is None  # explicit and dangerous
    finally:
        sandbox.sandbox_problem.cache_clear()


@needs_bwrap
def test_tool_loop_end_to_end_with_scripted_output(vocab_file, tiny_gguf):
    from ossrun.chat import ToolCall, ToolResult
    from test_chat import Script, tiny_chat_model

    model = tiny_chat_model(vocab_file, tiny_gguf)
    script = Script(model.tokenizer,
                    "<|channel|>analysis to=python code<|message|>x = 6 * 7\nprint(x)<|call|>",
                    "<|channel|>analysis to=python code<|message|>x + 1<|call|>",
                    "<|channel|>final<|message|>It is 42.<|return|>")
    tool = PythonTool(timeout_s=10)
    chat = script.attach(model.chat(sampler=script, date="2025-06-28", tools=[tool]))
    prompt = model.tokenizer.decode(chat.render())
    assert "## python\n\nUse this tool to execute Python code" in prompt
    assert "time out after 10.0 seconds" in prompt
    events = list(chat.stream("What is 6 times 7?"))
    assert [e.name for e in events if isinstance(e, ToolCall)] == ["python", "python"]
    assert [(e.content, e.is_error) for e in events if isinstance(e, ToolResult)] == [
        ("42\n", False), ("43\n", False)]  # one kernel, its state kept across calls
    assert events[-1].reply.content == "It is 42."
    text = model.tokenizer.decode(script.prompts[1])
    assert "<|start|>python to=assistant<|channel|>analysis<|message|>42\n<|end|>" in text
    chat.reset()  # a new conversation gets a new kernel
    assert chat._tool_sessions == {}


def test_a_tool_that_fails_to_start_reaches_the_model_as_an_error(vocab_file, tiny_gguf):
    from ossrun.chat import ToolResult
    from test_chat import Script, tiny_chat_model

    class Broken(PythonTool):
        def open_session(self, tokenizer=None):
            raise RuntimeError("the python kernel did not start: no ipykernel")

    model = tiny_chat_model(vocab_file, tiny_gguf)
    script = Script(model.tokenizer, "<|channel|>analysis to=python code<|message|>1<|call|>",
                    "<|channel|>final<|message|>Sorry.<|return|>")
    chat = script.attach(model.chat(sampler=script, tools=[Broken(sandbox="none")]))
    events = list(chat.stream("Compute"))
    result = next(e for e in events if isinstance(e, ToolResult))
    assert result.is_error and "no ipykernel" in result.content
    assert events[-1].reply.content == "Sorry."
