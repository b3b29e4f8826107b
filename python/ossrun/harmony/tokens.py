"""Special-token lookup by name and byte-exact decoding for the harmony layer (HARMONY.md §1.3, §1.5).

Works with any `ossrun.tokenizer.Tokenizer` (tiktoken file or GGUF): ids are looked up by name,
never hard-coded.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import HarmonyError


class SpecialTokens(NamedTuple):
    """Ids of the formatting tokens harmony uses."""

    start: int
    end: int
    message: int
    channel: int
    constrain: int
    return_: int
    call: int

    @property
    def terminators(self) -> frozenset[int]:
        """Ids that end a message: <|return|>, <|end|>, <|call|> (HARMONY.md §12)."""
        return frozenset((self.return_, self.end, self.call))


def special_tokens(tokenizer) -> SpecialTokens:
    """Look the harmony formatting tokens up in `tokenizer` by name."""
    sid = tokenizer.special_id
    return SpecialTokens(
        start=sid("<|start|>"),
        end=sid("<|end|>"),
        message=sid("<|message|>"),
        channel=sid("<|channel|>"),
        constrain=sid("<|constrain|>"),
        return_=sid("<|return|>"),
        call=sid("<|call|>"),
    )


def _token_bytes(tokenizer, token: int) -> bytes | None:
    n_vocab = tokenizer.n_vocab
    if 0 <= token < n_vocab:
        return tokenizer.decode_bytes([token])
    if token == n_vocab:
        # Quirk (§1.3): openai-harmony knows one reserved id past the model's vocabulary
        # (<|reserved_201088|>); we decode it the same way for parity.
        return f"<|reserved_{token}|>".encode()
    return None


def _unknown_id(tokenizer, ids) -> int | None:
    return next((int(t) for t in ids if _token_bytes(tokenizer, int(t)) is None), None)


def decode_bytes(tokenizer, ids) -> bytes | None:
    """The bytes of `ids` (special ids give their names), or None if an id is unknown."""
    out = bytearray()
    for token in ids:
        data = _token_bytes(tokenizer, int(token))
        if data is None:
            return None
        out += data
    return bytes(out)


def decode_utf8(tokenizer, ids) -> str:
    """Decode `ids` to text; HarmonyError on unknown ids or invalid UTF-8 (§1.5).

    The messages are openai-harmony's (which prints Rust's `Utf8Error`).
    """
    data = decode_bytes(tokenizer, ids)
    if data is None:
        raise HarmonyError("Could not decode tokens: Invalid token error: "
                           f"Invalid token for decoding: {_unknown_id(tokenizer, ids)}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":
            detail = f"incomplete utf-8 byte sequence from index {e.start}"
        else:
            detail = f"invalid utf-8 sequence of {e.end - e.start} bytes from index {e.start}"
        raise HarmonyError(f"Could not decode tokens: Invalid utf-8 sequence: {detail}") from None


def lossy_text(tokenizer, ids) -> str:
    """Informational decode: unknown ids become U+FFFD, invalid UTF-8 is replaced."""
    out = bytearray()
    for token in ids:
        data = _token_bytes(tokenizer, int(token))
        out += "\ufffd".encode() if data is None else data
    return out.decode("utf-8", errors="replace")
