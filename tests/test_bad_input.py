"""Bad input, one test per kind: files that are missing, not GGUF, truncated, of another
architecture, with missing / mistyped / absurd hyperparameters or tensors, hostile offsets; and
bad arguments to load / sessions / generate. Each must raise a clear error (ossrun.ModelError for
files, ValueError / TypeError / ossrun.ContextOverflowError for arguments) whose message names
the key, tensor or argument - never a crash. Hostile files run in a child process, so a
segfault or a runaway allocation fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf_factory as G
import numpy as np
import ossrun
import pytest
from gguf import GGUFValueType as VT

A = "gpt-oss."


@pytest.fixture(scope="module")
def src(fixtures_dir) -> Path:
    return fixtures_dir / "tiny-w4" / "tiny.gguf"


@pytest.fixture(scope="module")
def model(src):
    return ossrun.load(src, precision="f32", n_ctx=64)


def load_error(path, *needles, **kw) -> str:
    """ossrun.load(path) must raise ModelError whose message contains every needle."""
    with pytest.raises(ossrun.ModelError) as e:
        ossrun.load(path, **kw)
    msg = str(e.value)
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def copy_with(src, tmp_path, edit, name="bad.gguf") -> Path:
    return G.modified_copy(src, tmp_path / name, edit)


# --------------------------------------------------------------------------- not a model file


def test_missing_file(tmp_path):
    load_error(tmp_path / "nope.gguf", "nope.gguf", "no such file")


def test_directory(tmp_path):
    load_error(tmp_path, "not a regular file")


def test_text_file(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_text("this is not a model\n")
    load_error(p, "not a GGUF file")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.gguf"
    p.write_bytes(b"")
    load_error(p, "not a GGUF file")


def test_unsupported_gguf_version(src, tmp_path):
    p = tmp_path / "v9.gguf"
    p.write_bytes(src.read_bytes())
    G.patch(p, 4, "<I", 9)
    load_error(p, "version 9")


# ------------------------------------------------------------------ hostile files (child process)

# Each case: a way to spoil a copy of tiny-w4, and the words the ModelError must contain.
# Cut points: inside the fixed header, inside the metadata, inside the tensor infos, inside the
# first tensor's data, inside the last one.
HOSTILE = {
    "truncated_in_header": ("cut", 20, ["truncated"]),
    "truncated_in_metadata": ("cut", 300, ["truncated"]),
    "truncated_in_tensor_infos": ("cut", 1500, ["truncated"]),
    "truncated_in_first_tensor": ("cut", 4000, ["token_embd.weight", "truncated"]),
    "truncated_in_last_tensor": ("cut", -1, ["blk.1.ffn_down_exps.bias", "truncated"]),
    "offset_past_end": ("offset", ("output.weight", 1 << 40), ["output.weight"]),
    "offset_near_u64_max": ("offset", ("blk.0.attn_q.bias", 2**64 - 32), ["blk.0.attn_q.bias"]),
    "offset_misaligned": ("offset", ("blk.0.attn_sinks.weight", None), ["blk.0.attn_sinks.weight"]),
    "unknown_ggml_type": ("type", ("blk.0.attn_v.weight", 99), ["blk.0.attn_v.weight", "99"]),
    "tensor_count_huge": ("u64", (8, 2**62), ["tensors"]),
    "key_count_huge": ("u64", (16, 2**40), ["keys"]),
    "first_key_length_huge": ("u64", (24, 2**63), ["truncated"]),
    # MXFP4 scale byte 255 is NaN in E8M0: the weights load, the logits must not come back NaN.
    "mxfp4_scale_255": ("mxfp4_nan", "blk.0.ffn_down_exps.weight", ["non-finite"]),
}


def _make_hostile(src: Path, out: Path, kind, arg) -> Path:
    data = bytearray(src.read_bytes())
    offsets = G.tensor_info_offsets(src)
    if kind == "cut":
        data = data[:arg]  # a negative cut drops bytes from the end
    elif kind == "offset":
        name, value = arg
        pos = offsets[name]
        if value is None:  # a valid offset moved by 4 bytes: no longer aligned
            value = int.from_bytes(data[pos : pos + 8], "little") + 4
        data[pos : pos + 8] = value.to_bytes(8, "little")
    elif kind == "type":
        name, value = arg
        pos = offsets[name] - 4
        data[pos : pos + 4] = value.to_bytes(4, "little")
    elif kind == "u64":
        pos, value = arg
        data[pos : pos + 8] = value.to_bytes(8, "little")
    elif kind == "mxfp4_nan":
        from gguf import GGUFReader

        t = next(t for t in GGUFReader(str(src)).tensors if t.name == arg)
        data[int(t.data_offset) + 17 * 5] = 255  # the scale byte of block 5
    out.write_bytes(bytes(data))
    return out


# The child: load each file, run a few tokens if it loads, report what happened as JSON.
_CHILD = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a runaway allocation fails fast
    import ossrun
    out = {}
    for name, path in json.loads(sys.argv[1]).items():
        try:
            m = ossrun.load(path, precision="f32", n_ctx=64)
            m.logits([1, 2, 3, 4, 5])
            out[name] = ["loaded", ""]
        except Exception as e:
            out[name] = [type(e).__name__, str(e)]
    print(json.dumps(out))
""")


def run_isolated(paths: dict, timeout: float = 120) -> dict:
    """name -> [exception type name | 'loaded', message], from a child process."""
    arg = json.dumps({k: str(v) for k, v in paths.items()})
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, arg],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"child crashed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hostile_results(src, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    paths = {
        name: _make_hostile(src, d / f"{name}.gguf", kind, arg)
        for name, (kind, arg, _) in HOSTILE.items()
    }
    return run_isolated(paths)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_file(hostile_results, case):
    kind, msg = hostile_results[case]
    assert kind == "ModelError", f"{case}: {kind}: {msg}"
    for needle in HOSTILE[case][2]:
        assert needle in msg, f"{case}: {needle!r} not in {msg!r}"


def test_fuzzed_headers_never_crash(src, tmp_path):
    # Random byte changes anywhere in the header and tensor infos (the first 3296 bytes): each
    # file must either load and run or raise ModelError; any other exception or a crash fails.
    rng = np.random.default_rng(2024)
    base = src.read_bytes()
    header_end = min(G.tensor_info_offsets(src).values()) + 2600  # past the last tensor info
    paths = {}
    for i in range(40):
        data = bytearray(base)
        for pos in rng.integers(0, header_end, rng.integers(1, 4)):
            data[pos] = int(rng.integers(0, 256))
        paths[f"fuzz{i}"] = tmp_path / f"fuzz{i}.gguf"
        paths[f"fuzz{i}"].write_bytes(bytes(data))
    results = run_isolated(paths)
    bad = {k: v for k, v in results.items() if v[0] not in ("loaded", "ModelError")}
    assert not bad, bad


# --------------------------------------------------------------------------- metadata


def test_wrong_architecture(src, tmp_path):
    p = copy_with(src, tmp_path, lambda c: c.set("general.architecture", "llama", VT.STRING))
    load_error(p, "'llama'", "gpt-oss")


def test_missing_architecture(src, tmp_path):
    p = copy_with(src, tmp_path, lambda c: c.kv.pop("general.architecture"))
    load_error(p, "general.architecture", "missing")


@pytest.mark.parametrize(
    "key",
    [
        "block_count",
        "embedding_length",
        "attention.head_count",
        "attention.sliding_window",
        "expert_used_count",
        "rope.freq_base",
        "attention.layer_norm_rms_epsilon",
    ],
)
def test_missing_hparam(src, tmp_path, key):
    p = copy_with(src, tmp_path, lambda c: c.kv.pop(A + key))
    load_error(p, A + key, "missing")


@pytest.mark.parametrize(
    "key,value,vtype,sub",
    [
        ("block_count", "2", VT.STRING, None),
        ("block_count", 2.5, VT.FLOAT32, None),
        ("attention.head_count", True, VT.BOOL, None),
        ("expert_count", [4, 4], VT.ARRAY, VT.UINT32),
        ("rope.scaling.type", 3, VT.UINT32, None),
    ],
    ids=["str", "fraction", "bool", "array", "str_key_as_int"],
)
def test_hparam_of_wrong_type(src, tmp_path, key, value, vtype, sub):
    p = copy_with(src, tmp_path, lambda c: c.set(A + key, value, vtype, sub))
    load_error(p, A + key)


@pytest.mark.parametrize(
    "key,value,vtype,needle",
    [
        ("attention.head_count", 0, VT.UINT32, "attention.head_count"),
        ("attention.head_count_kv", 3, VT.UINT32, "head_count_kv"),  # 4 heads are no multiple of 3
        ("expert_used_count", 5, VT.UINT32, "expert_used_count"),  # > expert_count 4
        ("embedding_length", 1 << 30, VT.UINT32, "embedding_length"),
        ("attention.key_length", 63, VT.UINT32, "key_length"),
        ("attention.layer_norm_rms_epsilon", 2.0, VT.FLOAT32, "epsilon"),
        ("attention.layer_norm_rms_epsilon", float("nan"), VT.FLOAT32, "epsilon"),
        ("rope.freq_base", -1.0, VT.FLOAT32, "rope.freq_base"),
        ("rope.scaling.type", "linear", VT.STRING, "rope.scaling.type"),
        ("context_length", 0, VT.UINT32, "context_length"),
        ("attention.sliding_window", 0, VT.UINT32, "sliding_window"),
    ],
    ids=[
        "heads0",
        "kv_not_divisor",
        "topk_gt_experts",
        "huge_hidden",
        "odd_head_dim",
        "eps2",
        "eps_nan",
        "neg_base",
        "rope_linear",
        "ctx0",
        "window0",
    ],
)
def test_absurd_hparam(src, tmp_path, key, value, vtype, needle):
    p = copy_with(src, tmp_path, lambda c: c.set(A + key, value, vtype))
    load_error(p, needle)


def test_huge_block_count_fails_fast(src, tmp_path):
    # block_count 2^24 passes the loader's plausibility bound; the file has 2 blocks, so it must be
    # rejected quickly, naming a missing block tensor or the count - without building 2^24·19
    # expected names first (minutes and tens of GB). Child process: a time and memory limit.
    p = copy_with(src, tmp_path, lambda c: c.set(A + "block_count", 1 << 24))
    try:
        res = run_isolated({"b": p}, timeout=10)["b"]  # a correct loader needs < 1 s
    except subprocess.TimeoutExpired:
        pytest.fail("loading a file that claims 2^24 blocks took more than 10 s")
    assert res[0] == "ModelError" and ("blk.2." in res[1] or "block_count" in res[1]), res


def test_context_length_smaller_than_n_ctx(src, tmp_path):
    p = copy_with(src, tmp_path, lambda c: c.set(A + "context_length", 32))
    with pytest.raises(ValueError, match="n_ctx 64 exceeds .*context_length 32"):
        ossrun.load(p, n_ctx=64)
    m = ossrun.load(p, n_ctx=32, precision="f32")
    with pytest.raises(ossrun.ContextOverflowError):
        m.logits(np.arange(33) % 256)  # longer than the model's whole context


# --------------------------------------------------------------------------- tensors


def test_missing_tensor(src, tmp_path):
    p = copy_with(src, tmp_path, lambda c: c.tensors.pop("blk.1.attn_sinks.weight"))
    load_error(p, "'blk.1.attn_sinks.weight'", "missing")


def test_missing_embedding(src, tmp_path):
    p = copy_with(src, tmp_path, lambda c: c.tensors.pop("token_embd.weight"))
    load_error(p, "'token_embd.weight'", "missing")


def _reshape(c, name, shape):
    t = c.tensors[name]
    n = int(np.prod(shape[:-1])) * G.Tensor(shape, t.ggml_type, t.raw).row_bytes()
    c.tensors[name] = G.Tensor(shape, t.ggml_type, np.resize(t.raw, n))


@pytest.mark.parametrize(
    "name,shape",
    [
        ("blk.0.attn_k.weight", (96, 64)),
        ("blk.1.attn_q.bias", (255,)),
        ("blk.0.ffn_gate_exps.weight", (4, 64, 96)),  # transposed expert matrices (H != I here)
        ("output.weight", (255, 64)),  # vocabulary disagrees with token_embd
        ("blk.0.attn_norm.weight", (1, 64)),  # right size, wrong rank
    ],
)
def test_tensor_with_wrong_shape(src, tmp_path, name, shape):
    p = copy_with(src, tmp_path, lambda c: _reshape(c, name, shape))
    load_error(p, f"'{name}'", "shape")


@pytest.mark.parametrize(
    "name,ggml_type,type_name",
    [
        ("blk.0.attn_q.weight", 9, "Q8_1"),  # a quantization we do not support
        ("blk.0.ffn_up_exps.weight", 6, "Q5_0"),
        ("blk.0.attn_q.bias", 1, "F16"),  # biases must be F32
        ("token_embd.weight", 39, "MXFP4"),  # MXFP4 is for experts only
    ],
)
def test_tensor_with_unsupported_type(src, tmp_path, name, ggml_type, type_name):
    def edit(c):
        t = c.tensors[name]
        new = G.Tensor(t.shape, ggml_type, t.raw)
        c.tensors[name] = G.Tensor(
            t.shape, ggml_type, np.resize(t.raw, int(np.prod(t.shape[:-1])) * new.row_bytes())
        )

    p = copy_with(src, tmp_path, edit)
    load_error(p, f"'{name}'", type_name)


def test_embedding_that_is_not_a_matrix(src, tmp_path):
    p = copy_with(src, tmp_path, lambda c: _reshape(c, "token_embd.weight", (256 * 64,)))
    load_error(p, "vocab_size")


def test_extra_tensor(src, tmp_path):
    def edit(c):
        c.tensors["blk.2.attn_norm.weight"] = c.tensors["blk.1.attn_norm.weight"]

    p = copy_with(src, tmp_path, edit)
    load_error(p, "unexpected tensor 'blk.2.attn_norm.weight'")


def test_nonfinite_weights_are_reported_not_returned(src, tmp_path):
    # An inf in a norm scale loads (values are not scanned) but must not yield inf/NaN logits.
    def edit(c):
        t = c.tensors["output_norm.weight"]
        t.raw = t.raw.copy()
        t.raw[:4] = np.frombuffer(np.float32(np.inf).tobytes(), np.uint8)

    m = ossrun.load(copy_with(src, tmp_path, edit), precision="f32")
    with pytest.raises(ossrun.ModelError, match="non-finite"):
        m.logits([1, 2, 3])


# --------------------------------------------------------------------------- load() arguments


@pytest.mark.parametrize("n_ctx", [0, -1, 1.5, "64", True, 131073], ids=str)
def test_bad_n_ctx(src, n_ctx):
    with pytest.raises(ValueError, match="n_ctx"):
        ossrun.load(src, n_ctx=n_ctx)


@pytest.mark.parametrize("threads", [0, -2, 2000, "2", 1.5, True], ids=str)
def test_bad_threads(src, threads):
    with pytest.raises(ValueError, match="threads"):
        ossrun.load(src, threads=threads)


def test_bad_precision(src):
    with pytest.raises(ValueError, match="precision.*'fp8'"):
        ossrun.load(src, precision="fp8")


@pytest.mark.parametrize("isa", ["sse9", "neon", "avx512", "AVX2"])
def test_bad_isa(src, isa):
    # Unknown names, and known variants this CPU/build cannot run, name themselves and the choices.
    from ossrun._core import ops

    if isa in ops.available_isas():
        pytest.skip(f"{isa} runs here")
    with pytest.raises(ValueError, match=f"'{isa}'.*available"):
        ossrun.load(src, isa=isa)


def test_bad_session_n_ctx(model):
    for n in (0, -5, 2.0, 131073):
        with pytest.raises(ValueError, match="n_ctx"):
            model.session(n)


# --------------------------------------------------------------------------- token ids


@pytest.mark.parametrize(
    "ids,exc,needle",
    [
        ([1, 256], ValueError, "256"),  # vocabulary is 256
        ([3, -1], ValueError, "-1"),
        ([2**40], ValueError, str(2**40)),
        ([[1, 2], [3, 4]], ValueError, "flat"),
        ([1.0, 2.0], TypeError, "integers"),
        (["a"], TypeError, "integers"),
        ([], ValueError, "at least one"),
    ],
    ids=["too_big", "negative", "huge", "2d", "float", "str", "empty"],
)
def test_bad_token_ids(model, ids, exc, needle):
    s = model.session()
    s.prefill([5, 6])
    for call in (model.logits, s.prefill, lambda i: model.generate(i, max_tokens=2)):
        with pytest.raises(exc, match=needle):
            call(ids)
    assert s.n_past == 2 and s.tokens == [5, 6]  # nothing was appended


@pytest.mark.parametrize("token", [256, -1, 2.5, "7", None], ids=str)
def test_bad_decode_token(model, token):
    # decode() takes one integer id; a float or string must not be silently truncated/parsed.
    s = model.session()
    s.prefill([5])
    with pytest.raises((TypeError, ValueError)):
        s.decode(token)
    assert s.n_past == 1


# --------------------------------------------------------------------------- context overflow


def test_context_overflow_on_prefill_leaves_session_usable(model):
    s = model.session(20)
    fresh = model.session(20)
    s.prefill(list(range(15)))
    with pytest.raises(ossrun.ContextOverflowError, match="20"):
        s.prefill(list(range(6)))
    assert s.n_past == 15 and s.tokens == list(range(15))
    fresh.prefill(list(range(15)))
    assert np.array_equal(s.prefill([1, 2, 3, 4, 5]), fresh.prefill([1, 2, 3, 4, 5]))
    assert s.n_past == 20


def test_context_overflow_on_decode_leaves_session_usable(model):
    s = model.session(4)
    s.prefill([1, 2, 3])
    last = s.decode(4)
    with pytest.raises(ossrun.ContextOverflowError):
        s.decode(5)
    assert s.n_past == 4
    s.truncate(3)
    assert np.array_equal(s.decode(4), last)


def test_generate_prompt_larger_than_context(model):
    s = model.session(8)
    with pytest.raises(ossrun.ContextOverflowError):
        model.generate(list(range(9)), max_tokens=1, session=s)
    assert s.n_past == 0


def test_generate_stops_at_a_full_context(model):
    # The prompt fits but max_tokens would not: generation ends when the context is full.
    s = model.session(8)
    out = list(model.generate([1, 2, 3, 4, 5, 6], max_tokens=10, temperature=0, session=s))
    assert len(out) == 3 and s.n_past == 8


# --------------------------------------------------------------------- truncate / generate args


@pytest.mark.parametrize("n", [-1, 6, 1.5, "2", True, None], ids=str)
def test_truncate_out_of_range(model, n):
    s = model.session()
    s.prefill([1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="truncate"):
        s.truncate(n)
    assert s.n_past == 5


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
        ({"top_p": "all"}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 2.0}, "max_tokens"),
        ({"max_tokens": "3"}, "max_tokens"),
    ],
    ids=lambda v: repr(v) if not isinstance(v, str) else v,
)
def test_generate_bad_arguments(model, kw, needle):
    args = {"max_tokens": 3} | kw
    # Raised by the call itself, before any iteration (generate validates eagerly).
    with pytest.raises((ValueError, TypeError), match=needle):
        model.generate([1, 2, 3], **args)
