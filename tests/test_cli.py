"""`ossrun run`, `ossrun info` and `ossrun chat` without a model, as subprocesses of
`python -m ossrun`; plus the folder rules, in process.

The tiny model has random weights, so its replies are checked for structure, never for content;
what the built-in nano model (trained) says is checked in tests/test_builtin_model.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ossrun import builtin_model, cli


@pytest.fixture(scope="session")
def tiny_model(tiny_gguf):
    return tiny_gguf


@pytest.fixture
def env(tmp_path):
    """The environment of a subprocess: every ossrun folder inside tmp_path, no colors."""
    e = dict(os.environ, OSSRUN_HOME=str(tmp_path / "home"), NO_COLOR="1")
    e.pop("OSSRUN_DEBUG", None)
    return e


def ossrun(env, *args, input=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "ossrun", *map(str, args)], env=env, input=input,
                          capture_output=True, text=True, timeout=timeout, check=False)


def assert_clean_failure(r, code=1, *words):
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines and all(w in lines[-1] for w in words), r.stderr


# -- run ------------------------------------------------------------------------------------


def test_run_prints_an_answer(env, tiny_model):
    r = ossrun(env, "run", tiny_model, "Hello", "--max-tokens", 16, "--seed", 3, "--stats")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "prompt tokens" in r.stderr and "decode" in r.stderr  # the --stats line


def test_run_is_reproducible_with_a_seed(env, tiny_model):
    args = ("run", tiny_model, "Hi", "--max-tokens", 12, "--seed", 5, "--json")
    a, b = ossrun(env, *args), ossrun(env, *args)
    assert a.returncode == b.returncode == 0, a.stderr
    assert json.loads(a.stdout)["messages"] == json.loads(b.stdout)["messages"]


def test_run_json_schema_and_reasoning_budget(env, tiny_model, tmp_path, vocab_file):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0,
                                                     "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    r = ossrun(env, "run", tiny_model, "Count", "--json-schema", path, "--reasoning-budget", 4,
               "--max-tokens", 200, "--seed", 2, "--json")
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["finish_reason"] == "stop" and 0 <= json.loads(reply["content"])["n"] <= 9
    assert reply["parsed"] == json.loads(reply["content"])
    path.write_text("[1, 2")
    assert_clean_failure(ossrun(env, "run", tiny_model, "x", "--json-schema", path), 1,
                         "not a JSON file")


def test_run_tool_flags(env, tiny_model, tmp_path):
    r = ossrun(env, "run", tiny_model, "Hi", "--browser", "--max-tokens", 4, "--json")
    assert r.returncode == 0, r.stderr
    assert "the browser tool is not offered: no search backend" in r.stderr
    (tmp_path / "a.md").write_text("# A\n")
    r = ossrun(env, "run", tiny_model, "Hi", "--docs", tmp_path, "--max-tokens", 4, "--json")
    assert r.returncode == 0 and "not offered" not in r.stderr, r.stderr
    assert_clean_failure(ossrun(env, "run", tiny_model, "Hi", "--docs", tmp_path / "none"), 1,
                         "not a folder")


def test_run_json_reads_stdin(env, tiny_model):
    r = ossrun(env, "run", tiny_model, "-", "--max-tokens", 8, "--seed", 1, "--json",
               input="What is 2 + 2?\n")
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert {"content", "reasoning", "tool_calls", "messages", "stats"} <= set(reply)
    assert reply["stats"]["completion_tokens"] <= 8
    assert reply["stats"]["prompt_tokens"] > 0


def test_run_show_reasoning(env, tiny_model):
    r = ossrun(env, "run", tiny_model, "Hi", "--max-tokens", 8, "--show-reasoning", "--effort", "low")
    assert r.returncode == 0, r.stderr


def test_run_empty_stdin_prompt(env, tiny_model):
    assert_clean_failure(ossrun(env, "run", tiny_model, "-", input=""), 1, "prompt is empty")


def test_run_missing_file(env, tmp_path):
    assert_clean_failure(ossrun(env, "run", tmp_path / "nope.gguf", "hi"), 1, "no such file")


def test_run_not_a_gguf(env, tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("hello, I am not a model\n")
    assert_clean_failure(ossrun(env, "run", bad, "hi"), 1, "not a GGUF file")


def test_run_truncated_gguf(env, tmp_path, tiny_model):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:5000])
    assert_clean_failure(ossrun(env, "run", cut, "hi"), 1, str(cut))


@pytest.mark.parametrize("flag,value,word", [
    ("--threads", "0", "--threads"), ("--ctx", "many", "--ctx"), ("--temperature", "-1", "--temperature"),
    ("--top-p", "1.5", "--top-p"), ("--effort", "extreme", "--effort"), ("--max-tokens", "0", "--max-tokens"),
])
def test_run_bad_flag(env, tiny_model, flag, value, word):
    assert_clean_failure(ossrun(env, "run", tiny_model, "hi", flag, value), 2, word)


def test_run_ctx_beyond_the_model(env, tiny_model):
    assert_clean_failure(ossrun(env, "run", tiny_model, "hi", "--ctx", 10**7), 1, "context_length")


def test_run_context_overflow(env, tiny_model):
    r = ossrun(env, "run", tiny_model, "word " * 200, "--ctx", 64)
    assert_clean_failure(r, 1, "--ctx")


def test_run_reply_cut_by_the_context_is_kept(env, tiny_model):
    # The tiny model's random reply never stops by itself: the context ends it.
    r = ossrun(env, "run", tiny_model, "hi", "--ctx", 120, "--json", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["finish_reason"] == "length" and "n_ctx = 120" in reply["note"]
    # the context holds the prompt and all but the last token (sampled, never fed back)
    assert reply["stats"]["completion_tokens"] == 120 - reply["stats"]["prompt_tokens"] + 1
    r = ossrun(env, "run", tiny_model, "hi", "--ctx", 120, "--temperature", "0", "--show-reasoning")
    assert r.returncode == 0 and "cut off" in r.stderr and "n_ctx = 120" in r.stderr


def test_no_command_is_a_usage_error(env):
    assert_clean_failure(ossrun(env), 2, "required")


# -- info -----------------------------------------------------------------------------------


def test_info_text(env, tiny_model):
    r = ossrun(env, "info", tiny_model)
    assert r.returncode == 0, r.stderr
    for word in ("gpt-oss", "block_count", "MXFP4", "Q8_0", "F32", "KV cache", "total"):
        assert word in r.stdout


def test_info_json_memory_estimate(env, tiny_model):
    r = ossrun(env, "info", tiny_model, "--json", "--ctx", 2048, "--threads", 2)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    hp, mem = info["hparams"], info["memory"]
    assert info["architecture"] == "gpt-oss" and info["file_size"] == tiny_model.stat().st_size
    L = hp["block_count"]
    assert info["tensor_types"]["MXFP4"]["count"] == 3 * L
    assert sum(t["count"] for t in info["tensor_types"].values()) == 3 + 19 * L
    # Full (odd) layers hold n_ctx slots, sliding (even) ones min(n_ctx, window − 1 + 256 + 1024).
    ring = min(2048, hp["sliding_window"] - 1 + 256 + 1024)
    slots = sum(ring if layer % 2 == 0 else 2048 for layer in range(L))
    # K and V in 16 bits by default (the fast precision's f16 cache), 32 with --kv-type f32.
    assert mem["kv_cache"] == slots * 2 * hp["head_count_kv"] * hp["key_length"] * 2
    r32 = ossrun(env, "info", tiny_model, "--json", "--ctx", 2048, "--kv-type", "f32")
    assert json.loads(r32.stdout)["memory"]["kv_cache"] == 2 * mem["kv_cache"]
    assert mem["weights"] == info["file_size"]
    assert mem["total"] == mem["weights"] + mem["kv_cache"] + mem["activations"] > mem["kv_cache"]


def test_info_not_a_gguf(env, tmp_path):
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"\0" * 64)
    assert_clean_failure(ossrun(env, "info", bad), 1, "not a GGUF file")


# -- without a model: the built-in nano model ------------------------------------------------


def test_chat_without_model_uses_the_builtin_model(env):
    r = ossrun(env, "chat", "--seed", 0, "--temperature", 0, input="Hello\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert "built-in nano model" in r.stderr and "not gpt-oss" in r.stderr
    assert "gpt-oss-20b" in r.stderr  # how to get the real model
    assert "prompt tokens" in r.stdout  # one reply and its summary


def test_run_without_model_uses_the_builtin_model(env):
    r = ossrun(env, "run", "Hello", "--temperature", 0)
    assert r.returncode == 0, r.stderr
    assert "built-in nano model" in r.stderr
    assert r.stdout.strip()  # a final answer


def test_run_with_only_a_model_file_asks_for_a_prompt(env, tiny_model):
    assert_clean_failure(ossrun(env, "run", tiny_model), 1, "give a PROMPT")


def test_missing_builtin_model_is_a_clean_error(monkeypatch, tmp_path):
    monkeypatch.setattr(builtin_model, "__file__", str(tmp_path / "builtin_model.py"))
    with pytest.raises(cli.OssrunError, match="missing from this installation"):
        builtin_model.builtin_model_path()


def test_chat_missing_model(env, tmp_path):
    assert_clean_failure(ossrun(env, "chat", tmp_path / "none.gguf", input=""), 1, "no such file")


# -- folders, in process -------------------------------------------------


def test_ossrun_home_overrides_every_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("OSSRUN_HOME", str(tmp_path))
    assert cli.ossrun_dir("data") == tmp_path / "data"
    assert cli.ossrun_dir("cache") == tmp_path / "cache"


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG folders are for Linux/BSD")
def test_xdg_folders(monkeypatch, tmp_path):
    monkeypatch.delenv("OSSRUN_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "d"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert cli.ossrun_dir("data") == tmp_path / "d" / "ossrun"
    assert cli.ossrun_dir("cache") == tmp_path / "h" / ".cache" / "ossrun"
