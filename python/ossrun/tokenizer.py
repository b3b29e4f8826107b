"""The o200k_harmony tokenizer, built offline from a vocabulary we are given.

Two sources: a GGUF file's own `tokenizer.ggml.*` metadata (the normal case; see MODEL.md §4.2b)
or an `o200k_base.tiktoken` file (tests and the harmony vector runner). Both give a
`tiktoken.Encoding`; ids equal tiktoken's `o200k_harmony`. No network, ever.
"""

from __future__ import annotations

import base64
import os

import tiktoken

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
        return token_id in self.encoding._special_token_set_ids if hasattr(
            self.encoding, "_special_token_set_ids") else token_id in set(self._special_ids.values())


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
