"""Between OpenAI's request shapes and harmony: the prompt a request renders to, and the pieces
(reasoning, answer text, tool calls) that sampled ids parse into.

Both APIs reduce to the same `Turn` list; system and developer texts become the developer
message's instructions (HARMONY.md §5), an assistant turn sent back with its reasoning and tool
calls renders as the analysis and the call it was (§10), so tool loops keep their chain of thought.
"""

from __future__ import annotations

import datetime
import json
import secrets
from dataclasses import dataclass, field

from ..harmony import (
    CONTENT,
    HarmonyError,
    Message,
    ResponseFormat,
    StreamParser,
    ToolDescription,
    developer_message,
    render_conversation,
    system_message,
)
from ..harmony.tokens import lossy_text, special_tokens
from .errors import APIError

FUNCTIONS = "functions."
# OpenAI's effort names onto the three the model was trained with (HARMONY.md §14).
EFFORTS = {"none": "low", "minimal": "low", "low": "low", "medium": "medium", "high": "high",
           "xhigh": "high", "max": "high"}


def new_id(prefix: str, sep: str = "_") -> str:
    return f"{prefix}{sep}{secrets.token_hex(12)}"


@dataclass
class ToolCallOut:
    """A function call: from the model, or sent back by the client in the history."""

    call_id: str
    name: str
    arguments: str = ""
    complete: bool = True  # False while the model writes it, and if it was cut off
    builtin: bool = False  # a call of a built-in tool (name: its recipient, e.g. "python")


@dataclass
class Turn:
    """One message of the conversation, already in harmony's terms."""

    role: str                       # user, assistant, tool
    content: str = ""               # user/tool text, or the assistant's answer
    reasoning: str = ""             # assistant: the analysis that preceded it
    tool_calls: list[ToolCallOut] = field(default_factory=list)
    tool_name: str | None = None    # tool: the function whose result this is
    builtin: bool = False           # tool: the result of a built-in tool (tool_name: its recipient)


@dataclass
class PromptSpec:
    """Everything of a request that shapes the prompt."""

    turns: list[Turn]
    instructions: list[str] = field(default_factory=list)
    effort: str = "medium"
    tools: list[ToolDescription] = field(default_factory=list)
    tool_choice: object = "auto"    # "auto" | "none" | "required" | a function name (str in a dict)
    response_format: ResponseFormat | None = None
    builtins: list = field(default_factory=list)  # ToolNamespaces of the built-in tools offered


def effort_of(value, param: str) -> str:
    if value is None:
        return "medium"
    if value not in EFFORTS:
        raise APIError(400, f"Invalid value for '{param}': {value!r} (expected one of "
                            f"{', '.join(EFFORTS)})", param=param)
    return EFFORTS[value]


def named_tool_choice(choice) -> str | None:
    """The function name of a named tool_choice (Chat's {"function": {"name"}} or Responses'
    {"name"}), else None."""
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
        if isinstance(name, str):
            return name
    return None


def response_format_of(fmt, param: str) -> ResponseFormat | None:
    """json_schema / json_object as a harmony Response Format (§5.1); text as none."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise APIError(400, f"Invalid value for '{param}': type must be text, json_object or "
                            "json_schema", param=f"{param}.type")
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return ResponseFormat("json_object", {"type": "object"}, "Reply with one JSON object.")
    spec = fmt.get("json_schema", fmt)  # Chat nests it; Responses' text.format is flat
    if not isinstance(spec, dict) or not isinstance(spec.get("name", "response"), str) \
            or not isinstance(spec.get("schema", {}), dict):
        raise APIError(400, f"Invalid value for '{param}': json_schema needs a name and a schema "
                            "object", param=f"{param}.json_schema")
    return ResponseFormat(spec.get("name", "response"), spec.get("schema", {}),
                          spec.get("description"))


def render_prompt(spec: PromptSpec, tokenizer, date: str | None = None) -> list[int]:
    """Prompt ids for the assistant's next message (system, developer, turns, §11.1)."""
    tools = spec.tools
    instructions = list(spec.instructions)
    named = spec.tool_choice if isinstance(spec.tool_choice, str) and spec.tool_choice not in (
        "auto", "none", "required") else None
    if spec.tool_choice == "none":
        tools = []
    elif named is not None:
        tools = [t for t in tools if t.name == named]
        instructions.append(f"Call the function {named} now.")
    elif spec.tool_choice == "required" and tools:
        instructions.append("Call one of the functions now; do not answer directly.")
    messages = [system_message(conversation_start_date=date or datetime.date.today().isoformat(),
                               reasoning_effort=spec.effort, tools=spec.builtins)]
    if instructions or tools or spec.response_format:
        messages.append(developer_message(
            instructions="\n\n".join(instructions) if instructions else None,
            function_tools=tools or None,
            response_formats=[spec.response_format] if spec.response_format else ()))
    names: dict[str, str] = {}
    for turn in spec.turns:
        messages += _turn_messages(turn, names)
    return render_conversation(messages, tokenizer)


def _turn_messages(turn: Turn, names: dict[str, str]) -> list[Message]:
    if turn.role == "user":
        return [Message("user", turn.content)]
    if turn.role == "tool" and turn.builtin:
        return [Message("tool", turn.content, name=turn.tool_name, recipient="assistant",
                        channel="analysis")]
    if turn.role == "tool":
        name = turn.tool_name if turn.tool_name.startswith(FUNCTIONS) else FUNCTIONS + turn.tool_name
        return [Message("tool", turn.content, name=name, recipient="assistant", channel="commentary")]
    out = []
    if turn.reasoning:
        out.append(Message("assistant", turn.reasoning, channel="analysis"))
    if turn.content:
        # Text beside tool calls is a preamble (commentary), else the answer.
        out.append(Message("assistant", turn.content,
                           channel="commentary" if turn.tool_calls else "final"))
    for call in turn.tool_calls:
        if call.builtin:
            out.append(Message("assistant", call.arguments, channel="analysis", recipient=call.name,
                               content_type="code"))
            continue
        out.append(Message("assistant", call.arguments, channel="commentary",
                           recipient=FUNCTIONS + call.name, content_type="<|constrain|>json"))
    return out


# -- output ------------------------------------------------------------------------------------

@dataclass
class Piece:
    """Something the reply gained: kind "reasoning" / "content" (text), "call_start" (a call's
    name is known), "call_args" (text of its arguments), "call_done"."""

    kind: str
    text: str = ""
    call: ToolCallOut | None = None


class OutputParser:
    """Sampled ids -> pieces, with harmony's non-strict parser; never raises on bad output.

    Output that stops being harmony (a header that does not parse, text where a message should
    start) is kept: from there on, the decoded text goes to the answer as it is.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.parser = StreamParser(tokenizer, role="assistant", strict=False)
        self.reasoning: list[str] = []   # one entry per analysis message
        self.content: list[str] = []
        self.calls: list[ToolCallOut] = []
        self.reasoning_tokens = 0
        self.malformed: str | None = None
        self._open = None       # (kind, call) of the message being read
        self._at_eos = False
        self._emitted = ""      # its text emitted so far

    @property
    def reasoning_text(self) -> str:
        return "\n\n".join(self.reasoning)

    @property
    def content_text(self) -> str:
        return "\n\n".join(self.content)

    def feed(self, token: int) -> list[Piece]:
        if self.malformed is not None:
            return self._raw(token)
        p = self.parser
        n_done = len(p.messages)
        try:
            p.process(token)
        except HarmonyError as e:
            self.malformed = str(e)
            out = self._close_open(None)
            return out + self._raw_header()
        return self._after(n_done)

    def finish(self) -> list[Piece]:
        """End of output (a stop token was fed, or generation was cut)."""
        if self.malformed is not None:
            return []
        self._at_eos = True  # a call that ends here, without <|call|>, was cut off
        n_done = len(self.parser.messages)
        try:
            self.parser.process_eos()
        except HarmonyError:
            return self._close_open(None)  # a half-written header is dropped (§12)
        return self._after(n_done)

    def _after(self, n_done: int) -> list[Piece]:
        p = self.parser
        out: list[Piece] = []
        for m in p.messages[n_done:]:
            out += self._close_open(m)
        if p.state == CONTENT:
            if self._open is None:
                self._open = (self._kind(p.current_role, p.current_channel, p.current_recipient), None)
                self._emitted = ""
                if self._open[0] == "call":
                    recipient = p.current_recipient
                    call = ToolCallOut(new_id("call"), recipient.removeprefix(FUNCTIONS), complete=False)
                    self._open = ("call", call)
                    self.calls.append(call)
                    out.append(Piece("call_start", call=call))
            if self._open[0] == "reasoning":
                self.reasoning_tokens += 1
            if p.last_content_delta:
                out += self._text(p.last_content_delta)
        return out

    def _kind(self, role, channel, recipient) -> str | None:
        if role != "assistant":
            return None
        if recipient is not None:
            return "call"
        return "reasoning" if channel == "analysis" else "content"

    def _text(self, delta: str) -> list[Piece]:
        kind, call = self._open
        if kind is None:
            return []
        first = not self._emitted
        self._emitted += delta
        if kind == "call":
            call.arguments += delta
            return [Piece("call_args", delta, call)]
        parts = self.reasoning if kind == "reasoning" else self.content
        shown = "\n\n" + delta if first and parts else delta  # between two messages of one kind
        if first:
            parts.append("")
        parts[-1] += delta
        return [Piece(kind, shown)]

    def _close_open(self, message: Message | None) -> list[Piece]:
        """A message ended (None: cut off): emit what its deltas have not shown yet."""
        out: list[Piece] = []
        if message is not None and self._open is None:
            # Recovered without entering Content (§13.5): a header read as text.
            self._open = (self._kind(message.role, message.channel, message.recipient), None)
            self._emitted = ""
            if self._open[0] == "call":
                call = ToolCallOut(new_id("call"), message.recipient.removeprefix(FUNCTIONS))
                self.calls.append(call)
                self._open = ("call", call)
                out.append(Piece("call_start", call=call))
        if self._open is None:
            return out
        kind, call = self._open
        if message is not None:
            shown = self._emitted
            if message.text.startswith(shown) and len(message.text) > len(shown):
                out += self._text(message.text[len(shown):])
        if kind == "call":
            call.complete = message is not None and not self._at_eos
            out.append(Piece("call_done", call=call))
        self._open, self._emitted = None, ""
        return out

    def _raw_header(self) -> list[Piece]:
        """After a parse error: the ids of the broken message so far become answer text."""
        ids = self.parser.tokens
        s = special_tokens(self.tokenizer)
        start = max((i for i, t in enumerate(ids) if t == s.start or t in s.terminators), default=-1)
        return self._raw_text(lossy_text(self.tokenizer, [t for t in ids[start + 1:]
                                                          if not self.tokenizer.is_special(t)]))

    def _raw(self, token: int) -> list[Piece]:
        if self.tokenizer.is_special(token):
            return []
        return self._raw_text(self.tokenizer.decode_bytes([token]).decode("utf-8", errors="replace"))

    def _raw_text(self, text: str) -> list[Piece]:
        if not text:
            return []
        if self._open is None or self._open[0] != "content":
            self._open, self._emitted = ("content", None), ""
        return self._text(text)


def arguments_json(text: str) -> str:
    """A call's arguments as the model wrote them (clients parse them; not validated here)."""
    return text if text else "{}"


def tool_description(name, description, parameters, param: str) -> ToolDescription:
    if not isinstance(name, str) or not name:
        raise APIError(400, f"Missing required parameter: '{param}.name'", param=f"{param}.name")
    if parameters is not None and not isinstance(parameters, dict):
        raise APIError(400, f"Invalid value for '{param}.parameters': must be a JSON object",
                       param=f"{param}.parameters")
    return ToolDescription(name, description or "", parameters)


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
