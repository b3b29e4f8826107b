"""The `ossrun chat` REPL: driven in a pseudo-terminal with pexpect (prompt_toolkit input, slash
commands, Ctrl-C, Ctrl-D, history, /save and /load), plus the turn rendering and the piped-input
mode in process.

The tiny model has random weights: tests check structure (the prompt returns, the summary line,
files), never content. Its 8192-token vocabulary is mostly padding, so a reply rarely ends by
itself and a generation without max_tokens runs long enough to be interrupted.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

import ossrun
import pexpect
import pytest
from ossrun.chat import ContentDelta, Done, ReasoningDelta, Reply, ToolCall, TurnStats
from ossrun.repl import Repl, Spinner, TurnPrinter, summary_line

PROMPT = ">>>"  # prompt_toolkit draws the trailing space as a cursor move
SUMMARY = "generated ·"  # in every per-reply summary line


@pytest.fixture(scope="session")
def model_path(tiny_gguf):
    return tiny_gguf


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def spawn(model_path, home):
    """Start `ossrun chat` on the tiny model in a pseudo-terminal; closes it afterwards."""
    children = []

    def start(*flags):
        env = dict(os.environ, OSSRUN_HOME=str(home), TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1")
        env.pop("NO_COLOR", None)
        args = ["-m", "ossrun", "chat", str(model_path), "--seed", "1", "--ctx", "32768",
                "--max-tokens", "24", *flags]
        child = pexpect.spawn(sys.executable, args, env=env, encoding="utf-8", timeout=30,
                              dimensions=(50, 200))
        children.append(child)
        child.expect_exact(PROMPT)
        return child

    yield start
    for child in children:
        child.close(force=True)


def say(child, text: str) -> None:
    """Type a message and Enter; wait for the reply's summary line and the next prompt."""
    child.send(text + "\r")
    child.expect_exact(SUMMARY)
    child.expect_exact(PROMPT)


def command(child, text: str, answer: str) -> None:
    child.send(text + "\r")
    child.expect_exact(answer)
    child.expect_exact(PROMPT)


def quit_with_ctrl_d(child) -> None:
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def saved(path) -> dict:
    """A /save file, plus "texts": the user messages' texts."""
    data = json.loads(path.read_text())
    texts = [m["content"] if isinstance(m["content"], str)
             else "".join(part["text"] for part in m["content"])
             for m in data["messages"] if m["role"] == "user"]
    return data | {"texts": texts}


# -- in a pseudo-terminal -------------------------------------------------------------------


def test_turns_effort_and_exit(spawn, home, tmp_path):
    child = spawn()
    say(child, "Hello there")
    command(child, "/effort high", "Reasoning effort: high.")
    say(child, "Think hard about this")
    command(child, "/effort", "Reasoning effort: high.")
    command(child, f"/save {tmp_path / 'c.json'}", "Saved")
    quit_with_ctrl_d(child)
    data = saved(tmp_path / "c.json")
    assert data["texts"] == ["Hello there", "Think hard about this"]
    assert data["settings"]["reasoning"] == "high"
    history = (home / "data" / "history").read_text()
    assert "Hello there" in history and "/effort high" in history


def test_the_builtin_model_shows_reasoning_and_an_answer(home):
    """`ossrun chat` without a model: the trained nano model reasons (dimmed) and answers."""
    env = dict(os.environ, OSSRUN_HOME=str(home), TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1")
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(sys.executable, ["-m", "ossrun", "chat", "--temperature", "0"], env=env,
                          encoding="utf-8", timeout=30, dimensions=(50, 200))
    try:
        child.expect_exact("built-in nano model")
        child.expect_exact(PROMPT)
        child.send("Hi\r")
        child.expect_exact("greets me")  # the reasoning
        child.expect_exact("Hello")  # the answer
        child.expect_exact(SUMMARY)
        child.expect_exact(PROMPT)
        child.send("What is 386 + 457?\r")
        child.expect_exact("Ones: 7 + 6 = 13, write 3 carry 1.")  # worked out in the reasoning
        child.expect_exact("386 + 457 = 843")  # the answer
        child.expect_exact(SUMMARY)
        child.expect_exact(PROMPT)
        quit_with_ctrl_d(child)
    finally:
        child.close(force=True)


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(spawn, tmp_path):
    child = spawn()
    say(child, "First")
    command(child, "/set max_tokens none", "max_tokens = None")
    completed = []
    # A random reply may end by itself before the Ctrl-C: the tiny model writes a few thousand
    # tokens a second and reaches a stop token after ~2500 on average, so interrupt early.
    for attempt in range(8):
        child.send(f"Long story {attempt}\r")
        time.sleep(0.2)
        child.send("\x03")
        if child.expect_exact(["[interrupted]", SUMMARY]) == 0:
            break
        completed.append(f"Long story {attempt}")
    else:
        pytest.fail("every reply ended before Ctrl-C")
    child.expect_exact(PROMPT)
    command(child, "/set max_tokens 24", "max_tokens = 24")
    say(child, "Still there?")
    command(child, f"/save {tmp_path / 'c.json'}", "Saved")
    quit_with_ctrl_d(child)
    # The interrupted turn left nothing behind.
    assert saved(tmp_path / "c.json")["texts"] == ["First", *completed, "Still there?"]


def test_save_and_load(spawn, tmp_path):
    child = spawn()
    say(child, "Remember this")
    command(child, f"/save {tmp_path / 'a.json'}", "Saved 1 message ")
    command(child, "/reset", "Started a new conversation.")
    command(child, f"/save {tmp_path / 'empty.json'}", "Saved 0 messages")
    command(child, f"/load {tmp_path / 'a.json'}", "Loaded 1 message ")
    say(child, "And this")
    command(child, f"/save {tmp_path / 'b.json'}", "Saved 2 messages")
    command(child, f"/load {tmp_path / 'missing.json'}", "No such file")
    command(child, "/exit", "")
    child.expect(pexpect.EOF)
    assert saved(tmp_path / "b.json")["texts"] == ["Remember this", "And this"]
    assert saved(tmp_path / "empty.json")["messages"] == []


def test_help_unknown_commands_and_line_editing(spawn):
    child = spawn("--hide-reasoning")
    command(child, "/help", "/effort low|medium|high")
    command(child, "/efort low", "Unknown command '/efort'. Did you mean /effort?")
    command(child, "/frobnicate", "Type /help for the commands.")
    command(child, "/think", "Reasoning is hidden.")
    command(child, "/think show", "Reasoning is shown.")
    child.send("half-typed line")
    child.send("\x03")  # Ctrl-C at the prompt clears the line and sends nothing
    child.expect_exact(PROMPT)
    child.send("\x03")
    child.expect_exact(PROMPT)
    child.send('"""\rfirst line\rsecond line\r"""\r')  # a multi-line block
    child.expect_exact(SUMMARY)
    child.expect_exact(PROMPT)
    child.send("one\x1b\rtwo\x0athree\r")  # Esc-Enter and Ctrl-J add lines
    child.expect_exact(SUMMARY)
    child.expect_exact(PROMPT)
    command(child, "/stats", "all turns   2 turns")
    quit_with_ctrl_d(child)


# -- in process -----------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def render(events, *, color, show, tty=False):
    out = FakeTTY() if tty else io.StringIO()
    printer = TurnPrinter(out, color=color, show_reasoning=show)
    for e in events:
        printer.write(e)
    printer.finish()
    return out.getvalue()


STATS = TurnStats(prompt_tokens=10, prefilled_tokens=6, reused_tokens=4, completion_tokens=5,
                  prefill_seconds=0.5, decode_seconds=0.25)
EVENTS = [ReasoningDelta("Let me "), ReasoningDelta("think."), ContentDelta("The answer"),
          ContentDelta(" is 4."), Done(Reply("The answer is 4.", "Let me think.", [], [], STATS))]


def test_reasoning_is_dimmed_and_the_answer_plain():
    assert render(EVENTS, color=True, show=True) == (
        "\x1b[2mLet me think.\x1b[0m\n\nThe answer is 4.\n")


def test_reasoning_without_color_is_framed():
    assert render(EVENTS, color=False, show=True) == (
        "Thinking...\nLet me think.\n...done thinking.\n\nThe answer is 4.\n")


def test_hidden_reasoning():
    assert render(EVENTS, color=True, show=False) == "The answer is 4.\n"
    assert render(EVENTS, color=False, show=False) == "The answer is 4.\n"


def test_control_characters_are_made_visible_on_a_terminal():
    events = [ContentDelta("a\x1b[2Jb\tc\x07\x9b\n")]
    assert render(events, color=False, show=True, tty=True) == "a^[[2Jb\tc^G\ufffd\n"
    assert render(events, color=False, show=True) == "a\x1b[2Jb\tc\x07\x9b\n"  # files get it all


def test_tool_calls_are_one_liners():
    out = render([ContentDelta("Checking"), ToolCall("get_weather", {"city": "Paris"})],
                 color=False, show=True)
    assert out == 'Checking\n→ get_weather({"city": "Paris"})\n'


def test_spinner_draws_after_its_delay_and_erases_itself():
    out = FakeTTY()
    with Spinner("Loading", stream=out, delay=0):
        time.sleep(0.3)
    assert "Loading" in out.getvalue() and out.getvalue().endswith("\r\x1b[K")
    quick = FakeTTY()
    with Spinner("Loading", stream=quick, delay=5):
        pass
    assert quick.getvalue() == ""
    with Spinner("Loading", stream=io.StringIO(), delay=0) as not_a_tty:
        time.sleep(0.2)
    assert not_a_tty.stream.getvalue() == ""


def test_summary_line():
    assert summary_line(STATS, 14, 4096) == (
        "10 prompt tokens (4 cached) · 5 generated · prefill 12.0 tok/s · decode 20.0 tok/s · "
        "context 14/4096")


def test_piped_input(model_path, monkeypatch, capsys):
    """Without a terminal the REPL reads plain lines: messages, \"\"\" blocks and commands."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    model = ossrun.load(model_path, n_ctx=2048)
    chat = model.chat(seed=0, max_tokens=8)
    script = ('Hi\n"""\nline 1\nline 2\n"""\n/system Be brief.\n/system\n/set top_k 40\n'
              "/set temperature hot\n/set max_tokens 0\n/set top_p 2\n//slash message\n/exit\n"
              "never read\n")
    out = io.StringIO()
    assert Repl(model, chat, stdin=io.StringIO(script), stdout=out).run() == 0
    text = out.getvalue()
    assert text.count(SUMMARY) == 3 and "\x1b[" not in text
    assert "Instructions: Be brief." in text and "top_k = 40" in text
    assert [m.text for m in chat.messages if m.role == "user"] == [
        "Hi", "line 1\nline 2", "/slash message"]
    assert chat.instructions == "Be brief." and chat.top_k == 40
    assert chat.temperature == 1.0 and chat.max_tokens == 8 and chat.top_p == 1.0
    errors = capsys.readouterr().err.splitlines()
    assert [e.split()[:2] for e in errors] == [["error:", "temperature:"],
                                               ["error:", "max_tokens"], ["error:", "top_p"]]


def test_tools_command_lists_enables_and_disables(model_path, tmp_path):
    model = ossrun.load(model_path, n_ctx=512)
    from ossrun.browser import Browser

    (tmp_path / "note.md").write_text("# A note\n")

    def ping() -> str:
        """Answer pong."""
        return "pong"

    chat = model.chat(tools=[ping, Browser(docs=str(tmp_path))], max_tokens=4)
    script = "/tools\n/tools disable browser\n/tools\n/tools enable browser\n/tools disable nope\n"
    out = io.StringIO()
    assert Repl(model, chat, stdin=io.StringIO(script), stdout=out).run() == 0
    text = out.getvalue()
    assert "ping         on   Answer pong." in text
    assert "browser      on   built-in: search, open and find pages" in text
    assert "browser      off" in text and "No tool named 'nope'" in text
    assert [t.name for t in chat.tools] == ["ping", "browser"]
