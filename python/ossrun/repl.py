"""The interactive chat of `ossrun chat`: prompt_toolkit input with history and multi-line editing,
slash commands, and Ctrl-C that stops a reply without breaking the conversation. Also the terminal
rendering of a streamed turn that `ossrun run` shares: reasoning dimmed, the answer plain, and a
one-line summary of tokens and speed.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import threading
import time
from pathlib import Path

from .chat import Chat, ContentDelta, Done, ReasoningDelta, ToolCall, ToolResult
from .errors import ContextOverflowError, OssrunError
from .harmony import REASONING_EFFORTS

DIM, RESET = "\x1b[2m", "\x1b[0m"
BLOCK = '"""'
# Control characters in model text would move the cursor or restyle the terminal: on a terminal
# they are shown in caret notation (C0, DEL) or as U+FFFD (C1); newline and tab pass.
_VISIBLE = {c: f"^{chr(c ^ 0x40)}" for c in [*range(0x20), 0x7F] if c not in (0x09, 0x0A)}
_VISIBLE.update({c: "\ufffd" for c in range(0x80, 0xA0)})


def use_color(stream) -> bool:
    """ANSI styling only on a terminal, never with NO_COLOR set (no-color.org) or TERM=dumb."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def summary_line(stats, n_past: int, n_ctx: int) -> str:
    """One line after a reply: token counts, prefill and decode speed, and the context in use
    (n_past of n_ctx tokens)."""
    def rate(tok_s):
        return f"{tok_s:.1f} tok/s" if tok_s else "-"

    return (f"{stats.prompt_tokens} prompt tokens ({stats.reused_tokens} cached) · "
            f"{stats.completion_tokens} generated · prefill {rate(stats.prefill_tok_s)} · "
            f"decode {rate(stats.decode_tok_s)} · context {n_past}/{n_ctx}")


class Spinner:
    """A spinner line while something slow runs, on a terminal only: drawn after `delay`
    seconds (most waits are shorter) with the time elapsed, erased by `stop()`. The label may
    change while it spins."""

    def __init__(self, label: str = "", stream=None, delay: float = 0.5, style: str = ""):
        self.label = label
        self.stream = stream or sys.stderr
        self.delay = delay
        self.style = style
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False
        utf8 = (getattr(self.stream, "encoding", "") or "").lower().replace("-", "") == "utf8"
        self._frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏" if utf8 else "|/-\\"

    def start(self) -> Spinner:
        if self.stream.isatty() and self._thread is None:
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and erase the line; the caller may write to the stream once this returns."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spin(self) -> None:
        start = time.monotonic()
        if self._done.wait(self.delay):
            return
        i = 0
        while not self._done.is_set():
            label = f"{self.label} " if self.label else ""
            text = f"{self._frames[i % len(self._frames)]} {label}{time.monotonic() - start:.1f}s"
            self.stream.write(f"\r{self.style}{text}{RESET if self.style else ''}\x1b[K")
            self.stream.flush()
            self._drawn = True
            i += 1
            self._done.wait(0.1)


class TurnPrinter:
    """Writes one turn's stream events to `out` as they arrive.

    Reasoning is dimmed (without color it is framed by "Thinking..." / "...done thinking.");
    tool calls and results are dim one-liners. On a terminal a spinner fills the wait for the
    first visible text (prefill, or reasoning while it is hidden).
    """

    def __init__(self, out, color: bool, show_reasoning: bool):
        self.out = out
        self.color = color
        self.show_reasoning = show_reasoning
        self.reply = None
        self._sanitize = out.isatty()
        self._spinner = Spinner(stream=out, style=DIM if color else "").start()
        self._mode = None  # what is being written: None, "reasoning" or "content"
        self._at_line_start = True

    def write(self, event) -> None:
        if isinstance(event, ReasoningDelta):
            if self.show_reasoning:
                self._switch("reasoning")
                self._emit_model(event.text)
            else:
                self._spinner.label = "Thinking"
        elif isinstance(event, ContentDelta):
            self._switch("content")
            self._emit_model(event.text)
        elif isinstance(event, ToolCall):
            args = event.arguments
            self._note_line(f"→ {event.name}({args if isinstance(args, str) else json.dumps(args)})")
        elif isinstance(event, ToolResult):
            flag = " (error)" if event.is_error else ""
            text = event.content if len(event.content) <= 200 else event.content[:200] + "…"
            self._note_line(f"← {event.name}{flag}: {self._visible(text)}")
        elif isinstance(event, Done):
            self.reply = event.reply
        self.out.flush()

    def finish(self):
        """End the turn's output on a fresh line; returns the Reply (None if not done)."""
        self._spinner.stop()
        self._switch(None)
        if not self._at_line_start:
            self._emit("\n")
        self.out.flush()
        return self.reply

    def interrupted(self) -> None:
        self.finish()
        self._emit("[interrupted]\n")
        self.out.flush()

    def _visible(self, text: str) -> str:
        return text.translate(_VISIBLE) if self._sanitize else text

    def _emit_model(self, text: str) -> None:
        self._emit(self._visible(text))

    def _emit(self, text: str) -> None:
        if text:
            self.out.write(text)
            self._at_line_start = text.endswith("\n")

    def _switch(self, mode) -> None:
        if mode == self._mode:
            return
        self._spinner.stop()
        if self._mode == "reasoning":
            if self.color:
                self.out.write(RESET)
            if not self._at_line_start:
                self._emit("\n")
            if not self.color:
                self._emit("...done thinking.\n")
            if mode is not None:
                self._emit("\n")
        if mode == "reasoning":
            if not self._at_line_start:
                self._emit("\n")
            self._emit(f"{DIM}" if self.color else "Thinking...\n")
        self._mode = mode

    def _note_line(self, text: str) -> None:
        self._switch(None)
        if not self._at_line_start:
            self._emit("\n")
        self._emit(f"{DIM}{text}{RESET}\n" if self.color else f"{text}\n")


def _tool_kind(tool) -> str:
    return {"browser": "built-in: search, open and find pages",
            "python": "built-in: run Python in a sandboxed kernel"}.get(tool.name, "function")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _block_open(text: str) -> bool:
    """True while a message started with \"\"\" has not been closed by another \"\"\"."""
    s = text.strip()
    return s.startswith(BLOCK) and (len(s) < 2 * len(BLOCK) or not s.endswith(BLOCK))


def _message_text(text: str) -> str:
    """The input without surrounding whitespace and without the quotes of a \"\"\" block."""
    s = text.strip()
    if s.startswith(BLOCK):
        s = s[len(BLOCK):].removesuffix(BLOCK).strip("\n")
    return s


HELP = """\
Commands:
  /think show|hide          show or hide the reasoning as it streams
  /effort low|medium|high   reasoning effort for the next replies
  /system TEXT              set the instructions (system prompt); alone: show them
  /set NAME VALUE           sampling: temperature, top_p, top_k, max_tokens (none = no cap)
  /reset                    start a new conversation
  /save FILE                save the conversation as JSON
  /load FILE                continue a conversation saved with /save
  /stats                    model, context use and speed so far
  /tools [enable|disable NAME]  list the tools, or turn one on or off
  /help                     this help
  /exit                     quit (also Ctrl-D)
Keys:
  Enter sends · Esc-Enter or Ctrl-J adds a line · \"\"\" starts and ends a multi-line message
  Ctrl-C stops a reply or clears the line · Up/Down walk the history · Ctrl-D quits
  A message that starts with "/" is sent as such when written with "//"."""


class Repl:
    """The chat loop over `chat` (an ossrun.chat.Chat on `model`).

    Reads with prompt_toolkit when stdin is a terminal (history in `history_path`), else plain
    lines from stdin, so `echo hi | ossrun chat` works too.
    """

    PROMPT = ">>> "

    def __init__(self, model, chat, *, history_path: Path | None = None,
                 show_reasoning: bool = True, stdin=None, stdout=None):
        self.model = model
        self.chat = chat
        self.show_reasoning = show_reasoning
        self.stdin = stdin or sys.stdin
        self.out = stdout or sys.stdout
        self.color = use_color(self.out)
        self._prompt = self._prompt_session(history_path) if self.stdin.isatty() else None
        self._commands = {
            "think": self._cmd_think, "effort": self._cmd_effort, "system": self._cmd_system,
            "set": self._cmd_set, "reset": self._cmd_reset, "save": self._cmd_save,
            "load": self._cmd_load, "stats": self._cmd_stats, "help": self._cmd_help,
            "tools": self._cmd_tools,
        }
        self._disabled_tools: dict[str, object] = {}  # name -> tool taken out by /tools disable
        self._last_stats = None  # TurnStats of the last completed reply

    # -- loop -------------------------------------------------------------------------------

    def run(self) -> int:
        """Chat until /exit or end of input; returns the exit status."""
        self._banner()
        while True:
            try:
                text = self._read()
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt only clears the line
            if text is None:
                return 0
            text = _message_text(text)
            if not text:
                continue
            if text.startswith("/") and not text.startswith("//"):
                name, _, arg = text[1:].partition(" ")
                if name in ("exit", "quit", "bye"):
                    return 0
                self._command(name, arg.strip())
                continue
            try:
                self._send(text[1:] if text.startswith("//") else text)
            except KeyboardInterrupt:
                # A second Ctrl-C while the first was handled: the chat rolls the turn back
                # when its stream is closed, at the latest when the next turn starts.
                self._say(f"{RESET if self.color else ''}\n[interrupted]")

    def _read(self) -> str | None:
        if self._prompt is not None:
            try:
                return self._prompt.prompt(self.PROMPT)
            except EOFError:
                return None
        line = self.stdin.readline()
        if not line:
            return None
        text = line
        while _block_open(text):
            more = self.stdin.readline()
            if not more:
                break
            text += more
        return text

    def _prompt_session(self, history_path: Path | None):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings

        history = InMemoryHistory()
        if history_path is not None:
            try:
                history_path.parent.mkdir(parents=True, exist_ok=True)
                history_path.touch()
                history = FileHistory(str(history_path))
            except OSError as e:
                self._note(f"(history is not saved: {e})")

        keys = KeyBindings()

        @keys.add("enter")
        def _enter(event):
            buf = event.current_buffer
            if _block_open(buf.text):
                buf.insert_text("\n")
            else:
                buf.validate_and_handle()

        @keys.add("escape", "enter")
        @keys.add("c-j")
        def _newline(event):
            event.current_buffer.insert_text("\n")

        return PromptSession(history=history, key_bindings=keys, multiline=True,
                             prompt_continuation="... ", enable_open_in_editor=False)

    def _send(self, text: str) -> None:
        printer = TurnPrinter(self.out, self.color, self.show_reasoning)
        events = self.chat.stream(text)
        try:
            for event in events:
                printer.write(event)
        except KeyboardInterrupt:
            events.close()  # the chat rolls the unfinished turn back
            printer.interrupted()
            return
        except Exception as e:
            events.close()
            printer.finish()
            if os.environ.get("OSSRUN_DEBUG"):
                raise
            self._error(e)
            return
        reply = printer.finish()
        if reply.note:
            self._note(f"[{reply.note}]")
        self._last_stats = reply.stats
        self._note(self._summary(reply.stats))

    # -- commands ---------------------------------------------------------------------------

    def _command(self, name: str, arg: str) -> None:
        handler = self._commands.get(name)
        if handler is None:
            names = [*self._commands, "exit"]
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" Did you mean /{close[0]}?" if close else ""
            self._say(f"Unknown command '/{name}'.{hint} Type /help for the commands.")
            return
        try:
            handler(arg)
        except (OSError, ValueError) as e:
            self._error(e)

    def _cmd_think(self, arg: str) -> None:
        if arg in ("show", "hide"):
            self.show_reasoning = arg == "show"
        elif arg:
            self._say("Usage: /think show|hide")
            return
        self._say(f"Reasoning is {'shown' if self.show_reasoning else 'hidden'}.")

    def _cmd_effort(self, arg: str) -> None:
        if arg in REASONING_EFFORTS:
            self.chat.reasoning = arg
        elif arg:
            self._say("Usage: /effort low|medium|high")
            return
        self._say(f"Reasoning effort: {self.chat.reasoning}.")

    def _cmd_system(self, arg: str) -> None:
        if arg:
            self.chat.instructions = arg
            self._say("Instructions set.")
        else:
            self._say(f"Instructions: {self.chat.instructions}" if self.chat.instructions
                      else "No instructions set. Usage: /system TEXT")

    def _cmd_set(self, arg: str) -> None:
        name, _, value = arg.partition(" ")
        name, value = name.replace("-", "_"), value.strip()
        parse = {"temperature": float, "top_p": float, "top_k": int,
                 "max_tokens": lambda v: None if v.lower() in ("none", "off") else int(v)}
        if name not in parse:
            self._say("Usage: /set temperature|top_p|top_k|max_tokens VALUE")
            return
        if value:
            try:
                parsed = parse[name](value)
            except ValueError:
                raise ValueError(f"{name}: {value!r} is not a number") from None
            if name == "max_tokens" and parsed is not None and parsed < 1:
                raise ValueError(f"max_tokens must be a positive integer or none, got {value!r}")
            setattr(self.chat, name, parsed)  # the chat's sampler checks the other values
        self._say(f"{name} = {getattr(self.chat, name)}")

    def _cmd_reset(self, arg: str) -> None:
        self.chat.reset()
        self._say("Started a new conversation.")

    def _cmd_save(self, arg: str) -> None:
        if not arg:
            self._say("Usage: /save FILE")
            return
        path = Path(arg).expanduser()
        self.chat.save(path)
        self._say(f"Saved {_plural(len(self.chat.messages), 'message')} to {path}.")

    def _cmd_load(self, arg: str) -> None:
        if not arg:
            self._say("Usage: /load FILE")
            return
        path = Path(arg).expanduser()
        self.chat = Chat.load(self.model, path)
        self._say(f"Loaded {_plural(len(self.chat.messages), 'message')} from {path} "
                  f"(reasoning effort {self.chat.reasoning}).")

    def _cmd_stats(self, arg: str) -> None:
        m, chat, total = self.model, self.chat, self.chat.stats
        lines = [
            f"model       {m.path}",
            f"compute     {m.threads} threads, {m.isa}, precision {m.precision}",
            (f"context     {chat.session.n_past} of {self._n_ctx()} tokens cached, "
             f"{_plural(len(chat.messages), 'message')}"),
            (f"sampling    temperature {chat.temperature}, top_p {chat.top_p}, "
             f"top_k {chat.top_k}, max_tokens {chat.max_tokens}, reasoning {chat.reasoning}"),
            (f"all turns   {_plural(total.turns, 'turn')}: {total.prefilled_tokens} tokens "
             f"prefilled, {total.reused_tokens} reused, {total.generated_tokens} generated"),
        ]
        if self._last_stats is not None:
            lines.append(f"last turn   {self._summary(self._last_stats)}")
        self._say("\n".join(lines))

    def _cmd_tools(self, arg: str) -> None:
        action, _, name = arg.partition(" ")
        name = name.strip()
        current = {t.name: t for t in self.chat.tools}
        if action in ("enable", "disable") and name:
            if action == "disable" and name in current:
                self._disabled_tools[name] = current.pop(name)
            elif action == "enable" and name in self._disabled_tools:
                current[name] = self._disabled_tools.pop(name)
            elif name not in current and name not in self._disabled_tools:
                known = ", ".join([*current, *self._disabled_tools]) or "none"
                self._say(f"No tool named {name!r} (tools: {known}).")
                return
            self.chat.tools = list(current.values())
        elif arg:
            self._say("Usage: /tools, /tools enable NAME, /tools disable NAME")
            return
        if not current and not self._disabled_tools:
            self._say("No tools. Start with --browser --docs DIR, --searx URL or --python.")
            return
        lines = [f"  {n:12s} on   {getattr(t, 'description', '') or _tool_kind(t)}"
                 for n, t in current.items()]
        lines += [f"  {n:12s} off  {getattr(t, 'description', '') or _tool_kind(t)}"
                  for n, t in self._disabled_tools.items()]
        self._say("Tools:\n" + "\n".join(lines))

    def _cmd_help(self, arg: str) -> None:
        self._say(HELP)

    # -- output -----------------------------------------------------------------------------

    def _n_ctx(self) -> int:
        return self.chat.session.n_ctx

    def _summary(self, stats) -> str:
        return summary_line(stats, self.chat.session.n_past, self._n_ctx())

    def _banner(self) -> None:
        m = self.model
        self._note(f"ossrun · {Path(m.path).name} · context {self._n_ctx()} · {m.threads} threads "
                   f"({m.isa}) · reasoning {self.chat.reasoning}")
        self._note('Type /help for commands, """ for a multi-line message, Ctrl-D to quit.')

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _note(self, text: str) -> None:
        self._say(f"{DIM}{text}{RESET}" if self.color else text)

    def _error(self, e: BaseException) -> None:
        if isinstance(e, ContextOverflowError):
            msg = f"{e} (/reset starts over; --ctx sets the context at startup)"
        elif isinstance(e, OSError) and e.strerror and e.filename is not None:
            msg = f"{e.filename}: {e.strerror}"
        elif isinstance(e, (OssrunError, ValueError, OSError)):
            msg = str(e)
        else:  # unexpected: name the type, keep one line
            msg = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        sys.stderr.write(f"error: {msg}\n")
        sys.stderr.flush()
