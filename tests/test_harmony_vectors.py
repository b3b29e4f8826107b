"""Harmony test vectors: our renderer and parser reproduce openai-harmony 0.0.8 (HARMONY.md §16).

Every case is compared as a whole dict with the oracle's output: prompt tokens and text (or the
render error), parsed messages (or the error text), every streaming step, next-prompt tokens.
Error messages match the oracle's text exactly. `tests/data/harmony/rules_*.json` are extra
oracle vectors for the edge cases of tests/test_harmony_rules.py; regenerate the expected file
with `python3 ../shared/tools/harmony_oracle.py expected tests/data/harmony/rules_cases.json
-o tests/data/harmony/rules_expected.json` (needs openai-harmony; the tests never import it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ossrun.harmony.__main__ import main
from ossrun.harmony.vectors import compare, encoding_info, load_cases, run_case, run_cases
from ossrun.tokenizer import o200k_harmony_from_tiktoken_file

RULE_VECTORS = Path(__file__).parent / "data" / "harmony"


@pytest.fixture(scope="module")
def tok(vocab_file):
    return o200k_harmony_from_tiktoken_file(vocab_file)


def _first_difference(exp, got, path="") -> str:
    """Where two JSON values first differ, for a readable failure message."""
    if type(exp) is not type(got):
        return f"{path}: expected {exp!r:.200}, got {got!r:.200}"
    if isinstance(exp, dict):
        for key in list(exp) + [k for k in got if k not in exp]:
            if key not in exp or key not in got:
                return f"{path}.{key}: only in {'expected' if key in exp else 'ours'}"
            if exp[key] != got[key]:
                return _first_difference(exp[key], got[key], f"{path}.{key}")
    if isinstance(exp, list) and len(exp) == len(got):
        for i, (a, b) in enumerate(zip(exp, got)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
    return f"{path}: expected {exp!r:.300}, got {got!r:.300}"


def _check_all(cases_file: Path, expected_file: Path, tok) -> int:
    expected = {c["id"]: c for c in json.loads(expected_file.read_text("utf-8"))["cases"]}
    cases = load_cases(cases_file)
    assert {c["id"] for c in cases} == set(expected)
    failures = []
    for case in cases:
        got = run_case(case, tok)
        if got != expected[case["id"]]:
            failures.append(case["id"] + _first_difference(expected[case["id"]], got))
    assert not failures, "\n".join(failures)
    return len(cases)


def test_shared_vectors(harmony_vectors, tok):
    assert _check_all(harmony_vectors / "cases.json", harmony_vectors / "expected.json", tok) >= 20


def test_rule_vectors(tok):
    assert _check_all(RULE_VECTORS / "rules_cases.json", RULE_VECTORS / "rules_expected.json",
                      tok) >= 10


def test_encoding_block(harmony_vectors, tok):
    expected = json.loads((harmony_vectors / "expected.json").read_text("utf-8"))["encoding"]
    ours = encoding_info(tok)
    for key in ours:
        assert ours[key] == expected[key], key


def test_cli_expected_matches_oracle(harmony_vectors, vocab_file, tmp_path, tok):
    out = tmp_path / "out.json"
    assert main(["--vocab", str(vocab_file), "expected", str(harmony_vectors / "cases.json"),
                 "-o", str(out)]) == 0
    expected = json.loads((harmony_vectors / "expected.json").read_text("utf-8"))
    got = json.loads(out.read_text("utf-8"))
    assert compare(expected, got) == []
    assert got == json.loads(json.dumps(run_cases(load_cases(harmony_vectors / "cases.json"),
                                                  tok)))


def test_cli_check(harmony_vectors, vocab_file, capsys):
    assert main(["--vocab", str(vocab_file), "check", str(harmony_vectors / "cases.json"),
                 str(harmony_vectors / "expected.json")]) == 0
    assert "0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--vocab", "/nonexistent/o200k.tiktoken", "expected", "{cases}"], "vocabulary file not found"),
    (["--vocab", "{vocab}", "expected", "/nonexistent/cases.json"], "cannot read"),
    (["--model", "/nonexistent/model.gguf", "expected", "{cases}"], "model file not found"),
    (["expected", "{cases}"], "one of the arguments --vocab --model is required"),
    (["--vocab", "{vocab}", "expected", "{bad}"], "not valid JSON"),
])
def test_cli_errors_are_clean(argv, message, harmony_vectors, vocab_file, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    argv = [a.format(cases=harmony_vectors / "cases.json", vocab=vocab_file, bad=bad)
            for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
