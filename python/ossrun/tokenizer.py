"""The o200k_harmony tokenizer, built offline from a vocabulary we are given.

Two sources: a GGUF file's own `tokenizer.ggml.*` metadata (the normal case; see MODEL.md §4.2b)
or an `o200k_base.tiktoken` file (tests and the harmony vector runner). Both give a
`tiktoken.Encoding`; ids equal tiktoken's `o200k_harmony`. No network, ever.
"""

from __future__ import annotations

import base64
import functools
import os

import numpy as np
import tiktoken
from gguf import GGUFValueType

from .errors import ModelError

# The o200k split regex (HARMONY.md §1.2). tiktoken is right where llama.cpp drops \p{M}.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

N_VOCAB_HARMONY = 201088

_NAMED_SPECIALS = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200012: "<|call|>",
}


def harmony_special_tokens(first: int = 199998, end: int = N_VOCAB_HARMONY) -> dict[str, int]:
    """Special-token names -> ids of o200k_harmony (HARMONY.md §1.3); unnamed ids are reserved."""
    return {_NAMED_SPECIALS.get(i, f"<|reserved_{i}|>"): i for i in range(first, end)}


class Tokenizer:
    """A tiktoken encoding plus the by-name special-token lookups the runtime needs."""

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding
        self._special_ids = dict(encoding._special_tokens)
        self._special_id_set = frozenset(self._special_ids.values())

    @property
    def n_vocab(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str, allowed_special=frozenset()) -> list[int]:
        """Encode text; special-token names in it are ordinary text unless allowed."""
        return self.encoding.encode(text, allowed_special=allowed_special, disallowed_special=())

    def decode(self, ids) -> str:
        return self.encoding.decode([int(i) for i in ids])

    def decode_bytes(self, ids) -> bytes:
        return self.encoding.decode_bytes([int(i) for i in ids])

    def special_id(self, name: str) -> int:
        """Id of a special token by its name, e.g. special_id('<|end|>')."""
        try:
            return self._special_ids[name]
        except KeyError:
            raise KeyError(f"the vocabulary has no special token {name!r}") from None

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_id_set


def load_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Read a `.tiktoken` file (`<base64 bytes> <rank>` per line) without any network access."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                token_b64, rank = line.split()
                ranks[base64.b64decode(token_b64)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}: line {line_no} is not '<base64> <rank>'") from e
    return ranks


def o200k_harmony_from_tiktoken_file(path: str | os.PathLike) -> Tokenizer:
    """o200k_harmony from a local o200k_base.tiktoken file (HARMONY.md §1)."""
    ranks = load_tiktoken_ranks(path)
    encoding = tiktoken.Encoding(
        name="o200k_harmony",
        pat_str=O200K_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=harmony_special_tokens(first=len(ranks)),
    )
    return Tokenizer(encoding)


@functools.cache
def gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, used by GGUF `tokenizer.ggml.tokens` strings.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (space, control characters,
    …) move to U+0100 and up, so that space is 'Ġ' and newline 'Ċ'.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in mapping)
    for n, b in enumerate(shifted):
        mapping[b] = chr(256 + n)
    return mapping


# llama.cpp's token types (enum llama_token_type) in `tokenizer.ggml.token_type`; 2 = unknown is
# not used by byte-level BPE vocabularies.
TOKEN_NORMAL = 1
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# tokenizer.ggml.pre -> split regex. Only o200k's is needed for gpt-oss.
_PRE_TOKENIZERS = {"gpt-4o": O200K_PATTERN}
_BPE_TYPES = (TOKEN_NORMAL, TOKEN_BYTE)
_SPECIAL_TYPES = (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED)
ARRAY, STRING = GGUFValueType.ARRAY, GGUFValueType.STRING
_INT_TYPES = frozenset(t for t in GGUFValueType if t.name.startswith(("INT", "UINT")))
_TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
)


def tokenizer_from_gguf(reader, default_pre: str | None = None) -> Tokenizer | None:
    """The file's own vocabulary (MODEL.md §4.2b) as a tiktoken encoding; None without one.

    reader: an `ossrun.gguf_reader.GgufFile` (the loader's fast reader) or a `gguf.GGUFReader`.
    Normal tokens become mergeable ranks (rank = id: o200k's ids are its merge priorities, so the
    merges list is not needed); control / user-defined / unused tokens become special tokens
    named by their strings, except llama.cpp's `[PAD…]` fillers, which get o200k_harmony's
    `<|reserved_N|>` names. Raises ModelError naming the key on malformed metadata.
    default_pre: the pre-tokenizer to assume when `tokenizer.ggml.pre` is absent or "default"
    (Ollama's files, whose architecture implies it); without it such a file is refused.
    """
    values, types = _tokenizer_metadata(reader)
    if "tokenizer.ggml.model" not in values and "tokenizer.ggml.tokens" not in values:
        return None
    model = _typed(values, types, "tokenizer.ggml.model", {STRING}, "a string")
    if model != "gpt2":
        raise ModelError(f"tokenizer.ggml.model {model!r} is not supported (only 'gpt2')")
    if default_pre is not None and values.get("tokenizer.ggml.pre") in (None, "default"):
        pre = default_pre
    else:
        pre = _typed(values, types, "tokenizer.ggml.pre", {STRING}, "a string")
    if pre not in _PRE_TOKENIZERS:
        known = ", ".join(_PRE_TOKENIZERS)
        raise ModelError(f"tokenizer.ggml.pre {pre!r} is not supported (known: {known})")

    tokens = _typed(
        values, types, "tokenizer.ggml.tokens", {(ARRAY, STRING)}, "an array of strings"
    )
    token_types = _typed(
        values,
        types,
        "tokenizer.ggml.token_type",
        {(ARRAY, t) for t in _INT_TYPES},
        "an array of integers",
    )
    token_types = np.asarray(token_types, dtype=np.int64)
    if not tokens:
        raise ModelError("tokenizer.ggml.tokens is empty")
    if len(token_types) != len(tokens):
        raise ModelError(
            f"tokenizer.ggml.token_type has {len(token_types)} entries "
            f"but tokenizer.ggml.tokens has {len(tokens)}"
        )
    unsupported = np.flatnonzero(~np.isin(token_types, _BPE_TYPES + _SPECIAL_TYPES))
    if len(unsupported):
        i = int(unsupported[0])
        raise ModelError(f"tokenizer.ggml.token_type[{i}] = {token_types[i]} is not supported")

    ranks = _mergeable_ranks(tokens, np.flatnonzero(np.isin(token_types, _BPE_TYPES)).tolist())
    specials: dict[str, int] = {}
    for i in np.flatnonzero(np.isin(token_types, _SPECIAL_TYPES)).tolist():
        name = tokens[i]
        if token_types[i] == TOKEN_UNUSED and name.startswith("[PAD"):
            name = f"<|reserved_{i}|>"
        if name in specials:
            raise ModelError(
                f"tokenizer.ggml.tokens has the special token {name!r} twice "
                f"(ids {specials[name]} and {i})"
            )
        specials[name] = i

    encoding = tiktoken.Encoding(
        name=f"gguf_{pre}",
        pat_str=_PRE_TOKENIZERS[pre],
        mergeable_ranks=ranks,
        special_tokens=specials,
    )
    return Tokenizer(encoding)


def _mergeable_ranks(tokens: list[str], ids: list[int]) -> dict[bytes, int]:
    """bytes -> id of the given tokens, undoing the GPT-2 byte map on all of them at once."""
    key = "tokenizer.ggml.tokens"
    to_byte = {ord(c): b for b, c in gpt2_byte_to_unicode().items()}
    strings = [tokens[i] for i in ids]
    joined = "".join(strings)
    # One set check and one translate over the concatenation is far faster than 200k small ones.
    if not set(joined) <= set(gpt2_byte_to_unicode().values()):
        i, c = next((i, c) for i, s in zip(ids, strings) for c in s if ord(c) not in to_byte)
        raise ModelError(
            f"{key}[{i}] = {tokens[i]!r} has {c!r}, which is not in the GPT-2 byte map"
        )
    raw = joined.translate(to_byte).encode("latin-1")  # one byte per character
    ranks: dict[bytes, int] = {}
    start = 0
    for i, s in zip(ids, strings):
        if not s:
            raise ModelError(f"{key}[{i}] is an empty normal token")
        ranks[raw[start : start + len(s)]] = i
        start += len(s)
    if len(ranks) != len(strings):
        first: dict[str, int] = {}
        for i, s in zip(ids, strings):
            if s in first:
                raise ModelError(f"{key} has the token {s!r} twice (ids {first[s]} and {i})")
            first[s] = i
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ModelError(
            f"{key} lacks single-byte tokens (e.g. byte 0x{missing[0]:02x}); "
            "byte-level BPE needs all 256"
        )
    return ranks


def _tokenizer_metadata(reader) -> tuple[dict, dict]:
    """(key -> value, key -> type) as `GgufFile` holds them; array types are (ARRAY, element)."""
    if hasattr(reader, "metadata"):  # ossrun.gguf_reader.GgufFile: already decoded
        return reader.metadata, reader.value_types
    values, types = {}, {}  # gguf.GGUFReader: decode the few keys used here from its parts
    for key in _TOKENIZER_KEYS:
        field = reader.fields.get(key)
        if field is None:
            continue
        kind = list(field.types)
        parts = [field.parts[i] for i in field.data]
        if kind[0] != ARRAY:
            types[key] = kind[0]
            values[key] = _decode(key, parts[0]) if kind[0] == STRING else parts[0][0]
        elif len(kind) == 1:  # an empty array has no element type
            types[key], values[key] = (ARRAY, None), []
        else:
            types[key] = (ARRAY, kind[1])
            if kind[1] == STRING:
                values[key] = [_decode(key, p) for p in parts]
            else:  # one 1-element array per entry; concatenate gathers them in C
                values[key] = np.concatenate(parts)
    return values, types


def _decode(key: str, raw) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"GGUF key {key} holds a string that is not valid UTF-8") from None


def _typed(values: dict, types: dict, key: str, allowed: set, what: str):
    if key not in values:
        raise ModelError(f"GGUF tokenizer metadata lacks {key}")
    if types.get(key) not in allowed:
        raise ModelError(f"GGUF key {key} must be {what}")
    return values[key]
