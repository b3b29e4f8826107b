"""tokenizer_from_gguf: a file's own tokenizer.ggml.* metadata gives o200k_harmony's ids.

A tiny model with the real vocabulary is written once per session by ossrun.model_maker and its
tokenizer compared with tiktoken's o200k_harmony built from the .tiktoken file (HARMONY.md §1,
MODEL.md §4.2b). Malformed metadata is written with gguf.GGUFWriter, independently of our
writer, and read with both readers tokenizer_from_gguf accepts.
"""

from __future__ import annotations

import gguf
import pytest
from ossrun import model_maker as mm
from ossrun.errors import ModelError
from ossrun.gguf_reader import GgufFile
from ossrun.tokenizer import (
    gpt2_byte_to_unicode,
    o200k_harmony_from_tiktoken_file,
    tokenizer_from_gguf,
)

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog's back; it's 12:45 — isn't it?",
    "नमस्ते दुनिया, आप कैसे हैं?",  # Devanagari combining marks (the \p{M} llama.cpp drops)
    "ជំរាបសួរ ពិភពលោក",  # Khmer
    "你好，世界！今日は良い天気ですね。안녕하세요",
    "emoji 🎉👩‍👩‍👧‍👦🏳️‍🌈 and flags 🇩🇪",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\n\tif x != 0: pass\r\n",
    "   leading and trailing spaces   \n\n\n   ",
    "numbers 1234567890 3.14159 -42 1e-5 0x1F",
    "<|start|>user<|message|>Hi<|end|> looks like specials but is text <|reserved_200013|>",
    "ÀÉÎÕÜ ß Ǆǅǆ ΑΒΓ αβγ Кириллица ÆØÅ",
    "",
]


@pytest.fixture(scope="session")
def reference(vocab_file):
    return o200k_harmony_from_tiktoken_file(vocab_file)


@pytest.fixture(scope="session")
def real_tokenizer(vocab_file, tmp_path_factory):
    # The loader's GgufFile: gguf.GGUFReader needs ~25 s for the 650k strings of this file.
    path = tmp_path_factory.mktemp("tok") / "o200k.gguf"
    mm.write_model(path, mm.preset("tiny", vocab=201088), vocab=mm.o200k_vocab(vocab_file))
    return tokenizer_from_gguf(GgufFile(path))


@pytest.fixture(params=[GgufFile, gguf.GGUFReader], ids=["GgufFile", "GGUFReader"])
def open_gguf(request):
    return request.param


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_tiktoken(real_tokenizer, reference, text):
    ids = real_tokenizer.encode(text)
    assert ids == reference.encode(text)
    assert real_tokenizer.decode(ids) == text


def test_all_texts_at_once(real_tokenizer, reference):
    text = "\n".join(TEXTS) * 3
    assert real_tokenizer.encode(text) == reference.encode(text)


def test_known_ids(real_tokenizer):
    # HARMONY.md §1.4 and §1.5 rule 1
    assert real_tokenizer.encode("assistant") == [173781]
    assert real_tokenizer.encode(" to=assistant") == [316, 28, 173781]
    assert real_tokenizer.encode("Hi <|end|>") == [12194, 464, 91, 419, 91, 29]


def test_special_tokens_by_name(real_tokenizer):
    t = real_tokenizer
    names = {
        "<|startoftext|>": 199998,
        "<|endoftext|>": 199999,
        "<|return|>": 200002,
        "<|constrain|>": 200003,
        "<|channel|>": 200005,
        "<|start|>": 200006,
        "<|end|>": 200007,
        "<|message|>": 200008,
        "<|call|>": 200012,
        "<|reserved_200000|>": 200000,
        "<|reserved_200013|>": 200013,
        "<|reserved_201087|>": 201087,
        "<|endofprompt|>": 200018,
    }  # the GGUF's name for 200018 (MODEL.md §4.2b)
    assert {n: t.special_id(n) for n in names} == names
    assert t.n_vocab == 201088
    assert t.is_special(200006) and t.is_special(201087) and not t.is_special(199997)
    assert t.decode([200006, 1428, 200008]) == "<|start|>user<|message|>"
    assert t.encode("<|start|>", allowed_special={"<|start|>"}) == [200006]
    with pytest.raises(KeyError, match="no special token"):
        t.special_id("<|refusal|>")


def test_decode_bytes_of_partial_utf8(real_tokenizer, reference):
    ids = real_tokenizer.encode("🎉")
    assert real_tokenizer.decode_bytes(ids[:1]) == reference.decode_bytes(ids[:1])
    assert b"".join(real_tokenizer.decode_bytes([i]) for i in ids) == "🎉".encode()


def test_byte_vocab_model_file(tmp_path, open_gguf):
    path = mm.write_model(tmp_path / "tiny.gguf", mm.preset("tiny", layers=1))
    t = tokenizer_from_gguf(open_gguf(path))
    text = "héllo <|end|> 🎉\n"
    assert t.encode(text) == list(text.encode())
    assert t.decode(t.encode(text)) == text
    assert t.special_id("<|start|>") == 264 and t.special_id("<|end|>") == 265
    assert t.special_id("<|reserved_300|>") == 300  # [PAD300]
    assert t.n_vocab == 512 and t.is_special(511) and not t.is_special(255)


def test_no_tokenizer_metadata_gives_none(tmp_path, open_gguf):
    assert tokenizer_from_gguf(open_gguf(write_gguf(tmp_path / "none.gguf"))) is None


# ----------------------------------------------------------------------------------------------
# Malformed metadata


def byte_tokens() -> tuple[list[str], list[int]]:
    """A minimal valid vocabulary: 256 byte tokens and two specials."""
    byte_map = gpt2_byte_to_unicode()
    return [byte_map[b] for b in range(256)] + ["<|start|>", "[PAD257]"], [1] * 256 + [3, 5]


def write_gguf(path, **kv):
    """A GGUF with only the given keys (values typed as GGUFWriter infers them)."""
    w = gguf.GGUFWriter(path, arch="gpt-oss")
    for key, value in kv.items():
        key = "tokenizer.ggml." + key
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, list):
            w.add_array(key, value)
        else:
            w.add_uint32(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def tokenizer_with(tmp_path, open_gguf, **changes):
    tokens, types = byte_tokens()
    kv = {"model": "gpt2", "pre": "gpt-4o", "tokens": tokens, "token_type": types} | changes
    kv = {k: v for k, v in kv.items() if v is not None}
    return tokenizer_from_gguf(open_gguf(write_gguf(tmp_path / "t.gguf", **kv)))


def test_minimal_valid_vocabulary(tmp_path, open_gguf):
    t = tokenizer_with(tmp_path, open_gguf)
    assert t.special_id("<|start|>") == 256 and t.special_id("<|reserved_257|>") == 257
    assert t.encode("ab") == [97, 98]


def with_token(i, s):
    tokens, _ = byte_tokens()
    tokens[i] = s
    return tokens


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"model": "llama"}, "tokenizer.ggml.model 'llama' is not supported"),
        ({"model": 7}, "tokenizer.ggml.model must be a string"),
        ({"pre": "qwen2"}, "tokenizer.ggml.pre 'qwen2' is not supported"),
        ({"pre": None}, "lacks tokenizer.ggml.pre"),
        (
            {"tokens": list(range(258))},
            "tokenizer.ggml.tokens must be an array of strings",
        ),
        ({"tokens": "abc"}, "tokenizer.ggml.tokens must be an array of strings"),
        ({"token_type": None}, "lacks tokenizer.ggml.token_type"),
        (
            {"token_type": ["1"] * 258},
            "tokenizer.ggml.token_type must be an array of integers",
        ),
        (
            {"token_type": [1] * 257},
            "token_type has 257 entries but tokenizer.ggml.tokens has 258",
        ),
        (
            {"token_type": [1] * 256 + [2, 5]},
            r"tokenizer.ggml.token_type\[256\] = 2 is not supported",
        ),
        ({"tokens": with_token(65, "a b")}, r"tokenizer.ggml.tokens\[65\] = 'a b' has ' '"),
        ({"tokens": with_token(65, "a")}, "tokenizer.ggml.tokens has the token 'a' twice"),
        (
            {"tokens": with_token(257, "<|start|>"), "token_type": [1] * 256 + [3, 3]},
            "tokenizer.ggml.tokens has the special token '<|start|>' twice",
        ),
        ({"token_type": [1] * 255 + [3, 3, 5]}, "lacks single-byte tokens .*0xff"),
    ],
)
def test_malformed_metadata(tmp_path, open_gguf, changes, message):
    with pytest.raises(ModelError, match=message):
        tokenizer_with(tmp_path, open_gguf, **changes)
