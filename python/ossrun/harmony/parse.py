"""Parsing model output into messages: the streaming state machine (HARMONY.md §13).

Header grammar (§13.3), byte-exact UTF-8 content streaming (§13.4), non-strict recovery (§13.5)
and the observable properties of §13.6, matching openai-harmony 0.0.8's StreamableParser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import HarmonyError
from .messages import ROLES, Message
from .tokens import decode_bytes, decode_utf8, special_tokens

EXPECT_START = "ExpectStart"
HEADER = "Header"
CONTENT = "Content"

_CHANNEL_MARKER = "<|channel|>"
_CONSTRAIN_MARKER = "<|constrain|>"
# Unicode White_Space (Rust's char::is_whitespace / str::trim); differs from str.isspace().
_WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
               + "\u2028\u2029\u202f\u205f\u3000")
_ASCII_WHITESPACE = re.compile(r"[ \t\n\x0c\r]+")  # Rust's split_ascii_whitespace
_REPLACEMENT = "\ufffd"


@dataclass
class _Header:
    role: str
    name: str | None
    channel: str | None
    recipient: str | None = None
    content_type: str | None = None


def _split_header(text: str, preset_role: str | None) -> tuple[_Header, list[str]]:
    """Steps 1–6 of §13.3: channel, role and author; returns the header and the words left."""
    channel = None
    idx = text.find(_CHANNEL_MARKER)
    if idx >= 0:
        after = text[idx + len(_CHANNEL_MARKER):]
        end = next((i for i, c in enumerate(after) if c in _WHITESPACE or c == "<"), len(after))
        if end == 0:
            raise HarmonyError("channel marker present but no channel value found in header")
        channel = after[:end]
        text = text[:idx] + after[end:]
    text = text.strip(_WHITESPACE)
    if _CONSTRAIN_MARKER in text:
        text = text.replace(_CONSTRAIN_MARKER, " " + _CONSTRAIN_MARKER).strip(_WHITESPACE)
    words = [w for w in _ASCII_WHITESPACE.split(text) if w]

    name = None
    role = preset_role
    if role is None:
        if not words:
            raise HarmonyError("message header did not contain a role")
        first = words[0]
        if first in ROLES:
            role = first
            name = "tool" if first == "tool" else None
        elif len(words) > 1 or first.startswith("to="):
            # e.g. "functions.get_weather to=assistant": a tool's result message.
            role, name = "tool", first
            words.pop(0)
        else:
            raise HarmonyError(f"Unknown role: {first}")
    if words and words[0] == role:
        words.pop(0)
    return _Header(role, name, channel), words


def parse_header(text: str, preset_role: str | None) -> _Header:
    """Parse a decoded header text (§13.3) into role, author name, channel, recipient, type."""
    header, words = _split_header(text, preset_role)
    if words:
        last = words.pop()
        if last.startswith("to="):
            header.recipient = last[3:]
        elif not words:
            header.recipient = last  # Quirk: a lone word is the recipient (even "<|constrain|>json")
        else:
            header.content_type = last
            raw = words.pop()
            header.recipient = raw.removeprefix("to=")
    if words:
        raise HarmonyError(
            f'unexpected tokens remaining in message header: Some("{" ".join(words)}")')
    return header


class StreamParser:
    """Incremental harmony parser: feed sampled ids with `process`, then `process_eos`.

    `role` is the role assumed for the first message (`"assistant"` after a completion prompt),
    or None when the ids start with `<|start|>`. With `strict=False` a terminator inside a header
    is recovered from as in §13.5 instead of failing later. Errors raise HarmonyError.
    """

    def __init__(self, tokenizer, role: str | None = None, strict: bool = True):
        if role is not None and role not in ROLES:
            raise HarmonyError(f"unknown role {role!r}")
        self._tokenizer = tokenizer
        self._special = special_tokens(tokenizer)
        self._strict = strict
        self._preset_role = role
        self._state = EXPECT_START if role is None else HEADER
        self._header_ids: list[int] = []
        self._header: _Header | None = None
        self._content: list[str] = []
        self._pending_ids: list[int] = []
        self._pending_bytes = bytearray()
        self._delta: str | None = None
        self._messages: list[Message] = []
        self._tokens: list[int] = []

    # -- observable properties (§13.6) ------------------------------------------------------

    @property
    def state(self) -> str:
        """"ExpectStart", "Header" or "Content"."""
        return self._state

    @property
    def current_role(self) -> str | None:
        """The header's role in Content; otherwise the preset role while it is still unused."""
        return self._header.role if self._state == CONTENT else self._preset_role

    @property
    def current_channel(self) -> str | None:
        return self._header.channel if self._state == CONTENT else None

    @property
    def current_recipient(self) -> str | None:
        return self._header.recipient if self._state == CONTENT else None

    @property
    def current_content_type(self) -> str | None:
        return self._header.content_type if self._state == CONTENT else None

    @property
    def last_content_delta(self) -> str | None:
        """Text decoded by the last id, or None (header ids, terminators, incomplete UTF-8)."""
        return self._delta

    @property
    def current_content(self) -> str:
        """The content decoded so far of the message being read ('' outside Content)."""
        return "".join(self._content) if self._state == CONTENT else ""

    @property
    def messages(self) -> list[Message]:
        """The finished messages."""
        return self._messages

    @property
    def tokens(self) -> list[int]:
        """Every id fed so far."""
        return self._tokens

    # -- state machine (§13.2) --------------------------------------------------------------

    def process(self, token: int) -> StreamParser:
        """Consume one id. Returns self."""
        token = int(token)
        self._tokens.append(token)
        self._delta = None
        s = self._special
        if self._state == EXPECT_START:
            if token != s.start:
                raise HarmonyError(
                    f"Unexpected token {token} while expecting start token {s.start}")
            self._state, self._header_ids = HEADER, []
        elif self._state == HEADER:
            if token == s.message:
                self._header = parse_header(self._decode_header(), self._preset_role)
                self._preset_role = None
                self._state, self._content = CONTENT, []
            elif not self._strict and token in s.terminators:
                self._recover_header()
                self._preset_role = None
                self._state = EXPECT_START
            else:
                self._header_ids.append(token)
        elif token in s.terminators:
            self._finish_message()
        else:
            self._decode_content(token)
        return self

    def process_eos(self) -> StreamParser:
        """Signal end of stream: finishes a message being read; fails inside a header."""
        if self._state == HEADER:
            raise HarmonyError("Unexpected EOS while waiting for message header to complete")
        if self._state == CONTENT:
            self._finish_message()
        return self

    def _decode_header(self) -> str:
        try:
            return decode_utf8(self._tokenizer, self._header_ids)
        except HarmonyError:
            raise HarmonyError("could not decode header") from None

    def _recover_header(self) -> None:
        """§13.5: a first message without <|message|>: its header words become the content."""
        if self._preset_role is None or not self._header_ids:
            return  # a later malformed message is silently discarded
        # Unlike at <|message|>, a decoding error keeps the decoder's own message here.
        text = decode_utf8(self._tokenizer, self._header_ids)
        header, words = _split_header(text, self._preset_role)
        self._messages.append(Message(header.role, [" ".join(words)], name=header.name,
                                      channel=header.channel))

    def _decode_content(self, token: int) -> None:
        """§13.4: append the id's text to the content, keeping incomplete UTF-8 pending."""
        self._pending_ids.append(token)
        data = decode_bytes(self._tokenizer, self._pending_ids)
        if data is None:
            return  # Quirk: an unknown id stays pending for the rest of the message
        self._pending_ids.clear()
        pending = self._pending_bytes
        pending += data
        try:
            text = pending.decode("utf-8")
        except UnicodeDecodeError as e:
            text = pending[:e.start].decode("utf-8")
            del pending[:e.start]
            if e.reason != "unexpected end of data":
                # An invalid sequence: replace it; the bytes after it wait for the next id.
                text += _REPLACEMENT
                del pending[:e.end - e.start]
        else:
            pending.clear()
        if text:
            self._content.append(text)
            self._delta = text

    def _finish_message(self) -> None:
        tail_ids = ""
        if self._pending_ids:
            data = decode_bytes(self._tokenizer, self._pending_ids)
            try:
                tail_ids = data.decode("utf-8") if data is not None else _REPLACEMENT
            except UnicodeDecodeError:
                tail_ids = _REPLACEMENT
        text = ("".join(self._content) + tail_ids
                + self._pending_bytes.decode("utf-8", errors="replace"))
        h = self._header
        self._messages.append(Message(h.role, [text], name=h.name, channel=h.channel,
                                      recipient=h.recipient, content_type=h.content_type))
        self._state, self._header, self._content = EXPECT_START, None, []
        self._pending_ids, self._pending_bytes = [], bytearray()
        self._delta = None


def parse_messages(tokens, tokenizer, role: str | None = "assistant",
                   strict: bool = True) -> list[Message]:
    """Parse completion ids into messages (§13.1); any error raises HarmonyError.

    `role` is the role of the first message (`"assistant"` for ids sampled after the prompt's
    `<|start|>assistant`), or None when the ids begin with `<|start|>`.
    """
    parser = StreamParser(tokenizer, role, strict)
    for token in tokens:
        parser.process(token)
    parser.process_eos()
    return parser.messages
