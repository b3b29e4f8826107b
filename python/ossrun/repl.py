"""The interactive chat of `ossrun chat`: prompt_toolkit input with history and multi-line editing,
slash commands, and Ctrl-C that stops a reply without breaking the conversation. Also the terminal
rendering of a streamed turn that `ossrun run` shares: reasoning dimmed, the answer plain, and a
one-line summary of tokens and speed.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

from .chat import Chat, ContentDelta, Done, ReasoningDelta, ToolCall, ToolResult
from .errors import ContextOverflowError

DIM, RESET = "\x1b[2m", "\x1b[0m"
EFFORTS = ("low", "medium", "high")
BLOCK = '"""'


def use_color(stream) -> bool:
    """ANSI styling only on a terminal, never with NO_COLOR set (no-color.org) or TERM=dumb."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def summary_line(stats, n_ctx: int) -> str:
    """One line after a reply: token counts, prefill and decode speed, context use."""
    def rate(tok_s):
        return f"{tok_s:.1f} tok/s" if tok_s else "-"

    used = stats.prompt_tokens + stats.completion_tokens
    return (f"{stats.prompt_tokens} prompt tokens ({stats.reused_tokens} cached) · "
            f"{stats.completion_tokens} generated · prefill {rate(stats.prefill_tok_s)} · "
            f"decode {rate(stats.decode_tok_s)} · context {used}/{n_ctx}")


class TurnPrinter:
    """Writes one turn's stream events to `out` as they arrive.

    Reasoning is dimmed (without color it is framed by "Thinking..." / "...done thinking.");
    when hidden, a dim "Thinking..." stands in for it on a color terminal until the answer
    starts (`indicate_thinking`). Tool calls and results are dim one-liners.
    """

    def __init__(self, out, color: bool, show_reasoning: bool, indicate_thinking: bool = True):
        self.out = out
        self.color = color
        self.show_reasoning = show_reasoning
        self.indicate_thinking = indicate_thinking and color
        self.reply = None
        self._mode = None  # what is being written: None, "thinking", "reasoning", "content"
        self._at_line_start = True

    def write(self, event) -> None:
        if isinstance(event, ReasoningDelta):
            if self.show_reasoning:
                self._switch("reasoning")
                self._emit(event.text)
            elif self.indicate_thinking and self._mode is None:
                self._switch("thinking")
        elif isinstance(event, ContentDelta):
            self._switch("content")
            self._emit(event.text)
        elif isinstance(event, ToolCall):
            self._note_line(f"→ {event.name}({event.arguments})")
        elif isinstance(event, ToolResult):
            flag = " (error)" if event.is_error else ""
            text = event.content if len(event.content) <= 200 else event.content[:200] + "…"
            self._note_line(f"← {event.name}{flag}: {text}")
        elif isinstance(event, Done):
            self.reply = event.reply
        self.out.flush()

    def finish(self):
        """End the turn's output on a fresh line; returns the Reply (None if not done)."""
        self._switch(None)
        if not self._at_line_start:
            self._emit("\n")
        self.out.flush()
        return self.reply

    def interrupted(self) -> None:
        self.finish()
        self._emit("[interrupted]\n")
        self.out.flush()

    def _emit(self, text: str) -> None:
        if text:
            self.out.write(text)
            self._at_line_start = text.endswith("\n")

    def _switch(self, mode) -> None:
        if mode == self._mode:
            return
        if self._mode == "thinking":
            self.out.write("\r\x1b[K")  # erase the placeholder
        elif self._mode == "reasoning":
            if self.color:
                self.out.write(RESET)
            if not self._at_line_start:
                self._emit("\n")
            if not self.color:
                self._emit("...done thinking.\n")
            if mode is not None:
                self._emit("\n")
        if mode == "thinking":
            self.out.write(f"{DIM}Thinking...{RESET}")
        elif mode == "reasoning":
            if not self._at_line_start:
                self._emit("\n")
            self._emit(f"{DIM}" if self.color else "Thinking...\n")
        self._mode = mode

    def _note_line(self, text: str) -> None:
        self._switch(None)
        if not self._at_line_start:
            self._emit("\n")
        self._emit(f"{DIM}{text}{RESET}\n" if self.color else f"{text}\n")


def _block_open(text: str) -> bool:
    """True while a message started with \"\"\" has not been closed by another \"\"\"."""
    s = text.strip()
    return s.startswith(BLOCK) and (len(s) < 2 * len(BLOCK) or not s.endswith(BLOCK))


def _message_text(text: str) -> str:
    """The input without surrounding whitespace and without the quotes of a \"\"\" block."""
    s = text.strip()
    if s.startswith(BLOCK):
        s = s[len(BLOCK):]
        if s.endswith(BLOCK):
            s = s[: -len(BLOCK)]
        s = s.strip("\n")
    return s


HELP = """\
Commands:
  /think show|hide          show or hide the reasoning as it streams
  /effort low|medium|high   reasoning effort for the next replies
  /system TEXT              set the instructions (system prompt); alone: show them
  /reset                    start a new conversation
  /save FILE                save the conversation as JSON
  /load FILE                continue a conversation saved with /save
  /stats                    model, context use and speed so far
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
            "reset": self._cmd_reset, "save": self._cmd_save, "load": self._cmd_load,
            "stats": self._cmd_stats, "help": self._cmd_help,
        }

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
            else:
                self._send(text[1:] if text.startswith("//") else text)

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
        if reply is not None:
            self._note(summary_line(reply.stats, self._n_ctx()))

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
        if arg in EFFORTS:
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

    def _cmd_reset(self, arg: str) -> None:
        self.chat.reset()
        self._say("Started a new conversation.")

    def _cmd_save(self, arg: str) -> None:
        if not arg:
            self._say("Usage: /save FILE")
            return
        path = Path(arg).expanduser()
        self.chat.save(path)
        self._say(f"Saved {len(self.chat.messages)} messages to {path}.")

    def _cmd_load(self, arg: str) -> None:
        if not arg:
            self._say("Usage: /load FILE")
            return
        path = Path(arg).expanduser()
        self.chat = Chat.load(self.model, path)
        self._say(f"Loaded {len(self.chat.messages)} messages from {path} "
                  f"(reasoning effort {self.chat.reasoning}).")

    def _cmd_stats(self, arg: str) -> None:
        m = self.model
        lines = [f"model      {m.path}", f"compute    {m.threads} threads, {m.isa}, {m.precision}",
                 f"messages   {len(self.chat.messages)}"]
        stats = self.chat.stats
        if stats is not None:
            lines.append(f"last turn  {summary_line(stats, self._n_ctx())}")
        self._say("\n".join(lines))

    def _cmd_help(self, arg: str) -> None:
        self._say(HELP)

    # -- output -----------------------------------------------------------------------------

    def _n_ctx(self) -> int:
        return getattr(self.chat, "n_ctx", None) or self.model.n_ctx

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
            msg = (f"{e}. The conversation no longer fits the context: /reset to start over, "
                   "or restart with a larger --ctx.")
        elif isinstance(e, OSError) and e.strerror and e.filename is not None:
            msg = f"{e.filename}: {e.strerror}"
        else:
            msg = str(e) or type(e).__name__
        sys.stderr.write(f"error: {msg}\n")
        sys.stderr.flush()
