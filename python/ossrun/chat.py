"""The chat API: multi-turn conversations with gpt-oss over one KV session (HARMONY.md §9–§14).

Each generation renders system + developer + conversation with the harmony layer (§11, dropping
earlier analysis per §11.4), reuses the longest common prefix of the cached tokens (§11.5),
samples until <|return|> or <|call|> (§12), streams the parsed text and runs function tools (§10).
"""

from __future__ import annotations

import datetime
import json
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .constrain import TOOL_CHOICES, Constraint, ConstraintError, harmony_grammar
from .constrain import response_format as as_response_format
from .errors import ContextOverflowError
from .harmony import (
    CONTENT,
    DEFAULT_MODEL_IDENTITY,
    HEADER,
    REASONING_EFFORTS,
    HarmonyError,
    Message,
    StreamParser,
    developer_message,
    render_conversation,
    stop_token_ids,
    system_message,
)
from .sampler import Sampler
from .tools import Tool, as_tool

FUNCTIONS_PREFIX = "functions."
_UNSET: Any = object()  # a per-call setting that was not given
SAVE_FORMAT = "ossrun.chat/1"
_SEPARATOR = "\n\n"  # between two analysis (or two final) messages of one turn


# -- events and results ------------------------------------------------------------------------

@dataclass
class ReasoningDelta:
    """New text of the model's chain of thought (analysis channel; not for end users)."""

    text: str


@dataclass
class ContentDelta:
    """New text of the answer (final channel)."""

    text: str


@dataclass
class ToolCall:
    """The model called a tool. `arguments` is the decoded JSON object, or the raw text if the
    model wrote something else. `name` drops the `functions.` prefix."""

    name: str
    arguments: dict | str
    call_id: str | None = None


@dataclass
class ToolResult:
    """What was sent back to the model for a call: the result, or an error text."""

    name: str
    content: str
    is_error: bool = False


@dataclass
class TurnStats:
    """Work of one `send`/`stream`, summed over its generations (one per tool round), so that
    prompt_tokens == prefilled_tokens + reused_tokens."""

    prompt_tokens: int = 0
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    completion_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prefilled_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.completion_tokens / self.decode_seconds if self.decode_seconds else 0.0


@dataclass
class Reply:
    """The outcome of one turn.

    content: the final answer (final-channel messages joined by a blank line); reasoning: the
    analysis text likewise; tool_calls: the calls made; messages: the messages the model and the
    tools added to the conversation this turn (the user message excluded).
    finish_reason: "stop" (the model finished), "length" (max_tokens or the end of the context
    reached; what was generated is kept), "tool_limit" (max_tool_rounds reached) or "malformed"
    (output that is not harmony); `note` explains any reason but "stop".
    """

    content: str
    reasoning: str
    tool_calls: list[ToolCall]
    messages: list[Message]
    stats: TurnStats
    finish_reason: str = "stop"
    note: str | None = None
    parsed: Any = None  # with a response_format: the answer as data (pydantic instance, JSON)
    citations: list = field(default_factory=list)  # browser citations in the answer


@dataclass
class Done:
    """The last event of a stream: the whole reply."""

    reply: Reply


Event = ReasoningDelta | ContentDelta | ToolCall | ToolResult | Done


@dataclass
class ChatStats:
    """Totals over the completed turns of a chat."""

    prefilled_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    turns: int = 0


class _StreamedText:
    """Text of one kind (reasoning or content) of a turn, as emitted: messages are separated by a
    blank line, so the concatenated deltas always equal the reply's text."""

    def __init__(self):
        self.parts: list[str] = []
        self.current = ""

    def delta(self, text: str) -> str:
        """Record streamed text; returns what to emit (with a separator before a new message)."""
        out = _SEPARATOR + text if text and not self.current and self.parts else text
        self.current += text
        return out

    def finish(self, full: str) -> str:
        """A message ended with text `full`; returns what the stream has not shown yet."""
        out = self.delta(full[len(self.current):]) if full.startswith(self.current) else ""
        if self.current:
            self.parts.append(self.current)
        self.current = ""
        return out

    @property
    def text(self) -> str:
        return _SEPARATOR.join(self.parts + ([self.current] if self.current else []))


def common_prefix(a, b) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(diff[0]) if diff.size else n


def _sampling_property(name: str) -> property:
    def get(self):
        return getattr(self._sampler, name)

    def set_(self, value):
        old = self._sampler
        settings = {k: getattr(old, k) for k in ("temperature", "top_p", "top_k")}
        self._sampler = Sampler(**{**settings, name: value})  # validates
        self._sampler.rng = old.rng
    return property(get, set_, doc=f"Sampling {name}; may be changed between turns.")


# -- the chat ----------------------------------------------------------------------------------

class Chat:
    """A conversation with a gpt-oss model, keeping one KV session across turns.

    Args:
        model: an `ossrun.Model` with a tokenizer.
        system: model identity line of the system message (default: harmony's ChatGPT line).
        instructions: developer instructions (the developer message).
        reasoning: reasoning effort "low", "medium" or "high" (HARMONY.md §14).
        tools: function tools: callables, `{"name", "description", "parameters", "function"}`
            dicts or `ossrun.tools.Tool`s (declared in the developer message, §5).
        date: conversation start date for the system message (default today, YYYY-MM-DD).
        temperature, top_p, top_k, seed: sampling (`ossrun.sampler.Sampler`).
        max_tokens: cap on one assistant generation (None: until the context is full).
        max_tool_rounds: tool calls run per turn before the turn is stopped.
        response_format: constrain the final answer (not the reasoning) to a JSON Schema dict, a
            pydantic model class, {"type": "json_object"}, re.compile(regex) or
            {"type": "lark", "grammar": ...} (see `ossrun.constrain.response_format`).
        tool_choice: "auto", "none", "required" or a function tool's name (constrained).
        max_reasoning_tokens: reasoning budget per turn; when the analysis channel reaches it,
            the runtime closes it and opens the final channel (None: no budget).
        n_ctx: context length of the session (default: the model's).
        sampler: a callable logits -> token id that replaces sampling (for tests and scripts).

    `system`, `instructions`, `reasoning`, `tools` and the sampling settings may be changed
    between turns; the next prompt is rendered with them (and reuses less of the cache if the
    system or developer message changed).
    """

    def __init__(self, model, *, system: str | None = None, instructions: str | None = None,
                 reasoning: str = "medium", tools=(), date: str | datetime.date | None = None,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed=None,
                 max_tokens: int | None = None, max_tool_rounds: int = 8,
                 n_ctx: int | None = None, sampler: Callable[[np.ndarray], int] | None = None,
                 response_format=None, tool_choice: str = "auto",
                 max_reasoning_tokens: int | None = None):
        if getattr(model, "tokenizer", None) is None:
            raise ValueError(f"{getattr(model, 'path', model)}: the model has no tokenizer")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
        if not isinstance(max_tool_rounds, int) or max_tool_rounds < 0:
            raise ValueError(f"max_tool_rounds must be an integer >= 0, got {max_tool_rounds!r}")
        self.model = model
        self.tokenizer = model.tokenizer
        self.system = system
        self.instructions = instructions
        self.reasoning = reasoning
        self._tool_sessions: dict[str, Any] = {}  # built-in tools' per-chat state, opened lazily
        self._builtins: dict[str, Any] = {}
        self.tools = tools
        self.date = date.isoformat() if isinstance(date, datetime.date) else (
            date or datetime.date.today().isoformat())
        self._sampler = Sampler(temperature, top_p, top_k, seed)
        self.seed = seed
        self.max_tokens = max_tokens
        self.max_tool_rounds = max_tool_rounds
        self.session = model.session(n_ctx)
        self._sample = sampler
        self.response_format = response_format
        self.tool_choice = tool_choice
        self.max_reasoning_tokens = max_reasoning_tokens
        self._turn_format = self._response_format  # what the current turn renders
        self._stops = frozenset(stop_token_ids(self.tokenizer))
        self._call_id = self.tokenizer.special_id("<|call|>")
        self.messages: list[Message] = []
        self.stats = ChatStats()
        # The unfinished turn's generator, weakly: a stream the consumer drops is closed (and
        # rolled back) by the garbage collector, not kept alive by the chat.
        self._active: weakref.ref | None = None

    temperature = _sampling_property("temperature")
    top_p = _sampling_property("top_p")
    top_k = _sampling_property("top_k")

    @property
    def response_format(self):
        """The default response format of a turn (None: free text)."""
        return self._response_format

    @response_format.setter
    def response_format(self, value) -> None:
        self._response_format = as_response_format(value)

    @property
    def max_reasoning_tokens(self) -> int | None:
        return self._max_reasoning_tokens

    @max_reasoning_tokens.setter
    def max_reasoning_tokens(self, value: int | None) -> None:
        self._max_reasoning_tokens = _check_budget(value)

    @property
    def tool_choice(self) -> str:
        return self._tool_choice

    @tool_choice.setter
    def tool_choice(self, value: str) -> None:
        self._tool_choice = _check_tool_choice(value)

    @property
    def reasoning(self) -> str:
        """Reasoning effort: "low", "medium" or "high"."""
        return self._reasoning

    @reasoning.setter
    def reasoning(self, value: str) -> None:
        if value not in REASONING_EFFORTS:
            raise ValueError(f"reasoning must be one of {', '.join(REASONING_EFFORTS)}, "
                             f"got {value!r}")
        self._reasoning = value

    @property
    def tools(self) -> list:
        """The tools: function tools as `ossrun.tools.Tool`s, then the built-in ones (browser,
        python) as configured objects; assign a list to replace them."""
        return [*self._tools.values(), *self._builtins.values()]

    @tools.setter
    def tools(self, tools) -> None:
        converted: dict[str, Tool] = {}
        builtins: dict[str, Any] = {}
        for t in tools or ():
            builtin = builtin_tool(t)
            if builtin is False:
                continue  # a built-in tool that cannot run here (a warning said why)
            if builtin is not None:
                if builtin.name in builtins:
                    raise ValueError(f"two {builtin.name} tools were given")
                builtins[builtin.name] = builtin
                continue
            t = as_tool(t)
            if t.name in converted:
                raise ValueError(f"two tools are named {t.name!r}")
            converted[t.name] = t
        self.close_tools(keep=builtins.values())
        self._tools, self._builtins = converted, builtins

    def close_tools(self, keep=()) -> None:
        """End the built-in tools' per-chat state (the python kernel, the browser's pages)."""
        keep = {id(k) for k in keep}
        for name, session in list(getattr(self, "_tool_sessions", {}).items()):
            if id(self._builtins.get(name)) not in keep:
                session.close()
                del self._tool_sessions[name]

    # -- rendering ---------------------------------------------------------------------------

    def header_messages(self) -> list[Message]:
        """The system message and, if instructions or tools are set, the developer message."""
        out = [system_message(
            model_identity=DEFAULT_MODEL_IDENTITY if self.system is None else self.system,
            conversation_start_date=self.date, reasoning_effort=self.reasoning,
            tools=[b.namespace() for b in self._builtins.values()])]
        fmt = self._turn_format.developer_format() if self._turn_format else None
        if self.instructions is not None or self._tools or fmt:
            functions = [t.description_for_model() for t in self._tools.values()] or None
            out.append(developer_message(instructions=self.instructions, function_tools=functions,
                                         response_formats=[fmt] if fmt else ()))
        return out

    def render(self, messages: list[Message] | None = None) -> list[int]:
        """Prompt ids for the assistant's next message after `messages` (default the
        conversation): system, developer, kept messages, `<|start|>assistant` (§11.1, §11.4)."""
        conversation = self.messages if messages is None else messages
        return render_conversation(self.header_messages() + list(conversation), self.tokenizer)

    # -- turns -------------------------------------------------------------------------------

    def send(self, text: str, *, response_format=_UNSET, tool_choice=_UNSET,
             max_reasoning_tokens=_UNSET) -> Reply:
        """Send a user message and return the reply (tool calls run in between).

        Raises ContextOverflowError if the prompt or the reply does not fit the context. On any
        exception, including KeyboardInterrupt, the turn is rolled back: `messages` is as it was
        before the call and the chat stays usable.
        """
        events = self.stream(text, response_format=response_format, tool_choice=tool_choice,
                             max_reasoning_tokens=max_reasoning_tokens)
        try:
            for event in events:
                if isinstance(event, Done):
                    return event.reply
        finally:
            events.close()
        raise AssertionError("a turn always ends with Done")

    def stream(self, text: str, *, response_format=_UNSET, tool_choice=_UNSET,
               max_reasoning_tokens=_UNSET) -> Iterator[Event]:
        """Send a user message; yields ReasoningDelta / ContentDelta as text is sampled,
        ToolCall and ToolResult around each tool run, and finally Done(reply).

        response_format, tool_choice and max_reasoning_tokens override the chat's settings for
        this turn (see `Chat`).

        Rollback: if the generator is closed before Done (`close()`, or the consumer drops it,
        e.g. by leaving its for loop), or an exception such as KeyboardInterrupt or
        ContextOverflowError interrupts the turn, the conversation is restored to what it was
        before this message. Starting another turn or `reset()` first closes an unfinished
        stream. While a turn runs, `messages` already holds its user message.
        """
        if not isinstance(text, str):
            raise TypeError(f"the message must be a str, got {type(text).__name__}")
        options = _TurnOptions(
            as_response_format(self.response_format if response_format is _UNSET
                            else response_format),
            _check_tool_choice(self.tool_choice if tool_choice is _UNSET else tool_choice),
            _check_budget(self.max_reasoning_tokens if max_reasoning_tokens is _UNSET
                          else max_reasoning_tokens))
        if options.tool_choice not in TOOL_CHOICES and options.tool_choice not in self._tools:
            raise ValueError(f"tool_choice {options.tool_choice!r} names no function tool of "
                             f"this chat (tools: {', '.join(self._tools) or 'none'})")
        self._close_active()
        events = self._turn(text, options)
        self._active = weakref.ref(events)
        return events

    def reset(self) -> None:
        """Forget the conversation; settings, statistics and the KV cache are kept (the cached
        system prompt is reused by the next turn)."""
        self._close_active()
        self.messages.clear()
        self.close_tools()

    def _close_active(self) -> None:
        events = self._active() if self._active is not None else None
        if events is not None:
            events.close()

    def _turn(self, text: str, options: _TurnOptions) -> Iterator[Event]:
        start = len(self.messages)
        committed = False
        self._turn_format = options.response_format
        try:
            self.messages.append(Message("user", text))
            stats, texts = TurnStats(), {"reasoning": _StreamedText(), "content": _StreamedText()}
            calls: list[ToolCall] = []
            finish, note, rounds = "stop", None, 0
            while True:
                parsed, reason, error = yield from self._generate(self.render(), stats, texts,
                                                                  options)
                options.generations += 1
                if reason == "length" and parsed and parsed[-1].recipient is not None:
                    parsed.pop()  # a cut-off tool call is not run, and not kept
                self.messages += parsed
                if reason == "malformed":
                    finish = reason
                    note = f"The model's output is not valid harmony ({error}); reply truncated."
                    break
                if reason == "length":
                    finish = reason
                    note = (f"The reply was cut off at max_tokens = {self.max_tokens}."
                            if error == "max_tokens" else
                            f"The reply was cut off: the context (n_ctx = {self.session.n_ctx}) is "
                            "full; reset the chat or use a larger context.")
                    break
                call = parsed[-1] if reason == "call" and parsed else None
                if call is None or call.recipient is None:
                    break
                event = ToolCall(call.recipient.removeprefix(FUNCTIONS_PREFIX),
                                 _arguments(call.text), call_id=f"call_{len(calls)}")
                calls.append(event)
                yield event
                if rounds >= self.max_tool_rounds:
                    finish = "tool_limit"
                    note = (f"Stopped: the model made more than max_tool_rounds = "
                            f"{self.max_tool_rounds} tool calls in this turn.")
                    result, is_error = (f"Error: the limit of {self.max_tool_rounds} tool calls "
                                        "per turn is reached; the call was not run."), True
                else:
                    rounds += 1
                    result, is_error = self._run_tool(call)
                # The result goes to the assistant on the call's channel (HARMONY.md §10).
                self.messages.append(Message("tool", result, name=call.recipient,
                                             recipient="assistant",
                                             channel=call.channel or "commentary"))
                yield ToolResult(event.name, result, is_error)
                if finish == "tool_limit":
                    break
            reply = Reply(texts["content"].text, texts["reasoning"].text, calls,
                          self.messages[start + 1:], stats, finish, note)
            fmt = options.response_format
            if fmt is not None and finish == "stop" and reply.messages \
                    and reply.messages[-1].channel == "final":
                try:
                    reply.parsed = fmt.parse(reply.content)
                except ValueError as e:  # only a custom sampler can leave the grammar
                    reply.note = f"The answer does not parse as the response format: {e}"
            browser = self._tool_sessions.get("browser")
            if browser is not None:
                reply.content, reply.citations = browser.resolve_citations(reply.content)
            self.stats.prefilled_tokens += stats.prefilled_tokens
            self.stats.reused_tokens += stats.reused_tokens
            self.stats.generated_tokens += stats.completion_tokens
            self.stats.turns += 1
            committed = True
            yield Done(reply)
        finally:
            self._turn_format = self._response_format
            if not committed:
                del self.messages[start:]

    def _generate(self, prompt: list[int], stats: TurnStats, texts: dict, options: _TurnOptions):
        """One assistant generation after `prompt`; yields deltas and returns
        (parsed messages, reason, detail) with reason "stop", "call", "length" (detail: what cut
        it, "max_tokens" or "context") or "malformed" (detail: the parse error)."""
        session = self.session
        if len(prompt) > session.n_ctx:
            raise ContextOverflowError(
                f"the conversation needs {len(prompt)} tokens but the context holds "
                f"n_ctx = {session.n_ctx}; reset the chat or use a larger n_ctx")
        constraint = self._constraint(options)
        # Reuse the cached prefix (§11.5); keep one token to prefill, since we need its logits.
        reused = min(common_prefix(prompt, session.tokens), len(prompt) - 1)
        t0 = time.perf_counter()
        session.truncate(reused)
        logits = session.prefill(prompt[reused:])
        stats.prefill_seconds += time.perf_counter() - t0
        stats.prompt_tokens += len(prompt)
        stats.reused_tokens += reused
        stats.prefilled_tokens += len(prompt) - reused

        sample = self._sample or self._sampler
        parser = StreamParser(self.tokenizer, role="assistant", strict=False)
        n, cut_by = 0, "max_tokens"
        try:
            while True:
                t0 = time.perf_counter()
                if constraint is not None:
                    constraint.apply(logits)
                token = int(sample(logits))
                stats.decode_seconds += time.perf_counter() - t0
                tokens = [token]
                was_reasoning = _in_reasoning(parser)
                yield from self._feed(parser, texts, token)
                if token in self._stops:
                    n += 1
                    stats.completion_tokens += 1
                    if constraint is not None:
                        constraint.advance(tokens)
                        constraint.wait()  # a custom sampler's token may break the grammar
                    return parser.messages, "call" if token == self._call_id else "stop", None
                if was_reasoning and _in_reasoning(parser):
                    options.reasoning_used += 1
                if constraint is not None:
                    constraint.advance(tokens)  # the next mask is computed during the forward
                if options.budget_spent and _in_reasoning(parser):
                    forced, constraint = self._close_reasoning(options, constraint)
                    for t in forced:
                        yield from self._feed(parser, texts, t)
                    tokens += forced
                n += len(tokens)
                stats.completion_tokens += len(tokens)
                if self.max_tokens is not None and n >= self.max_tokens:
                    break
                if session.n_past + len(tokens) > session.n_ctx:
                    cut_by = "context"  # the reply is kept as far as it got
                    break
                t0 = time.perf_counter()
                logits = session.decode(token) if len(tokens) == 1 else session.prefill(tokens)
                stats.decode_seconds += time.perf_counter() - t0
            if parser.state != HEADER:  # a half-written header is dropped (§12)
                yield from self._feed(parser, texts, None)
            return parser.messages, "length", cut_by
        except (HarmonyError, ConstraintError) as e:
            return parser.messages, "malformed", str(e)

    def _constraint(self, options: _TurnOptions) -> Constraint | None:
        """The grammar of this generation, or None when nothing is constrained."""
        strict = any(t.strict for t in self._tools.values())
        if options.response_format is None and options.choice_now == "auto" and not strict:
            return None
        grammar = harmony_grammar(options.response_format, list(self._tools.values()),
                                  options.choice_now, self._builtin_recipients(),
                                  reasoning=not options.budget_spent)
        return Constraint(self.tokenizer, grammar)

    def _close_reasoning(self, options: _TurnOptions, constraint: Constraint | None
                         ) -> tuple[list[int], Constraint | None]:
        """The reasoning budget is spent: the tokens that close the analysis message and open
        the final channel (under a grammar: those it forces once reasoning is over), and the
        constraint for the rest of the generation."""
        tok = self.tokenizer
        close = tok.encode("<|end|><|start|>assistant", allowed_special="all")
        if constraint is None:
            return close + tok.encode("<|channel|>final<|message|>", allowed_special="all"), None
        constraint = self._constraint(options)  # the same grammar without analysis
        forced = constraint.forced_tokens()
        constraint.advance(forced)
        return close + forced, constraint

    def _builtin_recipients(self) -> list[str]:
        return [r for b in self._builtins.values() for r in b.recipients()]

    def _feed(self, parser: StreamParser, texts: dict, token: int | None) -> Iterator[Event]:
        """Give the parser one token (None: end of stream) and yield the text it releases."""
        n_done = len(parser.messages)
        if token is None:
            parser.process_eos()
        else:
            parser.process(token)
        delta = parser.last_content_delta
        if delta and parser.state == CONTENT:
            kind = _text_kind(parser.current_role, parser.current_channel,
                              parser.current_recipient)
            if kind:
                yield _event(kind, texts[kind].delta(delta))
        for m in parser.messages[n_done:]:
            kind = _text_kind(m.role, m.channel, m.recipient)
            rest = texts[kind].finish(m.text) if kind else ""
            if rest:
                yield _event(kind, rest)

    def _run_tool(self, call: Message) -> tuple[str, bool]:
        """Run the function the model called: (result text, is_error)."""
        recipient = call.recipient or ""
        namespace = recipient.split(".")[0]
        if namespace in self._builtins:
            try:
                session = self._tool_sessions.get(namespace)
                if session is None:
                    session = self._tool_sessions[namespace] = \
                        self._builtins[namespace].open_session(self.tokenizer)
                return session.call(recipient, call.text)
            except Exception as e:  # noqa: BLE001 -- e.g. a kernel that cannot start: tell the model
                return f"Error: the {namespace} tool failed: {type(e).__name__}: {e}", True
        tool = None
        if recipient.startswith(FUNCTIONS_PREFIX):
            tool = self._tools.get(recipient[len(FUNCTIONS_PREFIX):])
        if tool is None:
            known = ", ".join(FUNCTIONS_PREFIX + n for n in self._tools) or "none"
            return f"Error: unknown tool '{recipient}'. Available tools: {known}.", True
        return tool.run(call.text)

    # -- persistence -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Settings and messages as JSON-ready data (tools, the response format and the
        sampler's state are not saved: pass `tools=` / `response_format=` again to
        `from_dict`)."""
        settings = {"system": self.system, "instructions": self.instructions,
                    "reasoning": self.reasoning, "date": self.date,
                    "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                    "seed": self.seed, "max_tokens": self.max_tokens,
                    "max_tool_rounds": self.max_tool_rounds, "n_ctx": self.session.n_ctx,
                    "tool_choice": self.tool_choice,
                    "max_reasoning_tokens": self.max_reasoning_tokens}
        return {"format": SAVE_FORMAT, "settings": settings, "stats": asdict(self.stats),
                "messages": [m.to_dict() for m in self.messages]}

    @classmethod
    def from_dict(cls, model, data: dict, **overrides: Any) -> Chat:
        """A chat from `to_dict()` data; keyword arguments override the saved settings."""
        if not isinstance(data, dict) or data.get("format") != SAVE_FORMAT:
            raise ValueError(f"not a saved ossrun chat (expected format {SAVE_FORMAT!r})")
        chat = cls(model, **{**data["settings"], **overrides})
        messages = [Message.from_dict(m) for m in data["messages"]]
        bad = [m.role for m in messages if m.role not in ("user", "assistant", "tool")]
        if bad:
            raise ValueError(f"a saved conversation holds no {bad[0]} messages")
        chat.messages = messages
        chat.stats = ChatStats(**data.get("stats", {}))
        return chat

    def save(self, path) -> None:
        """Write `to_dict()` as JSON (UTF-8)."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n",
                              encoding="utf-8")

    @classmethod
    def load(cls, model, path, **overrides: Any) -> Chat:
        """A chat saved with `save`; keyword arguments override the saved settings."""
        return cls.from_dict(model, json.loads(Path(path).read_text(encoding="utf-8")),
                             **overrides)


def _text_kind(role: str | None, channel: str | None, recipient: str | None) -> str | None:
    """Which streamed text an assistant message feeds: analysis → reasoning; final (or no
    channel, as recovered from a malformed header) → content; calls and preambles → none."""
    if role != "assistant" or recipient is not None:
        return None
    if channel == "analysis":
        return "reasoning"
    return "content" if channel in ("final", None) else None


def _event(kind: str, text: str) -> Event:
    return ReasoningDelta(text) if kind == "reasoning" else ContentDelta(text)


def _arguments(text: str) -> dict | str:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


@dataclass
class _TurnOptions:
    """Per-turn settings and the turn's reasoning count."""

    response_format: Any
    tool_choice: str
    max_reasoning_tokens: int | None
    reasoning_used: int = 0
    generations: int = 0

    @property
    def choice_now(self) -> str:
        """The tool choice of the next generation: "required" or a name apply to the turn's
        first one (then the model may answer), "none" to all."""
        return self.tool_choice if self.generations == 0 or self.tool_choice == "none" else "auto"

    @property
    def budget_spent(self) -> bool:
        return self.max_reasoning_tokens is not None and \
            self.reasoning_used >= self.max_reasoning_tokens


def _in_reasoning(parser: StreamParser) -> bool:
    """True while the parser reads the content of an analysis message or a commentary preamble
    (text before the answer that is not a tool call): what the reasoning budget counts."""
    return (parser.state == CONTENT and parser.current_channel in ("analysis", "commentary")
            and parser.current_recipient is None and parser.current_role == "assistant")


def _check_budget(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"max_reasoning_tokens must be an integer >= 0 or None, got {value!r}")
    return value


def _check_tool_choice(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"tool_choice must be 'auto', 'none', 'required' or a tool's name, "
                         f"got {value!r}")
    return value


def builtin_tool(obj: Any):
    """The built-in tool an entry of `tools=` names ("browser", "python", or a configured
    `ossrun.Browser` / `ossrun.PythonTool`); False for one that cannot run here; None for a
    function tool."""
    from .builtin_tools import default_builtin, offered

    if isinstance(obj, str):
        return default_builtin(obj) or False
    if hasattr(obj, "namespace") and hasattr(obj, "open_session"):
        return offered(obj) or False
    return None
