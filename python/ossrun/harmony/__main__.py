"""Harmony test-vector runner CLI (HARMONY.md §16): `python -m ossrun.harmony expected|check ...`.

Writes the same JSON structure as shared/tools/harmony_oracle.py, using our renderer and parser
with a tokenizer from a .tiktoken vocabulary or from a GGUF model file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .vectors import compare, load_cases, run_cases


def _tokenizer(args, parser: argparse.ArgumentParser):
    path = args.model or args.vocab
    if not Path(path).is_file():
        parser.error(f"{'model' if args.model else 'vocabulary'} file not found: {path}")
    try:
        if args.model:
            import ossrun

            return ossrun.load(path).tokenizer
        from ..tokenizer import o200k_harmony_from_tiktoken_file

        return o200k_harmony_from_tiktoken_file(path)
    except ValueError as e:  # ossrun's ModelError, or a malformed .tiktoken file
        parser.error(f"cannot load {path}: {e}")


def _cases(path: str, parser: argparse.ArgumentParser) -> list[dict]:
    try:
        return load_cases(path)
    except OSError as e:
        parser.error(f"cannot read {path}: {e.strerror}")
    except json.JSONDecodeError as e:
        parser.error(f"{path} is not valid JSON: {e}")
    except (TypeError, ValueError) as e:
        parser.error(f"{path}: {e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ossrun.harmony",
        description="Render and parse harmony test-vector cases with ossrun's implementation.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--vocab", metavar="FILE", help="o200k_base.tiktoken vocabulary file")
    source.add_argument("--model", metavar="FILE", help="gpt-oss GGUF file (its tokenizer)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("expected", help="write the outputs for every case as JSON")
    p.add_argument("cases", help="case file (schema of harmony_oracle.py)")
    p.add_argument("-o", "--output", help="output file (default: standard output)")
    p = sub.add_parser("check", help="compare with an expected.json; exit 1 on any difference")
    p.add_argument("cases", help="case file")
    p.add_argument("expected", help="expected.json written by the oracle")
    args = parser.parse_args(argv)

    cases = _cases(args.cases, parser)
    if args.command == "check":
        try:
            expected = json.loads(Path(args.expected).read_text(encoding="utf-8"))
        except OSError as e:
            parser.error(f"cannot read {args.expected}: {e.strerror}")
        except json.JSONDecodeError as e:
            parser.error(f"{args.expected} is not valid JSON: {e}")
    got = run_cases(cases, _tokenizer(args, parser))
    if args.command == "expected":
        text = json.dumps(got, ensure_ascii=False, indent=1) + "\n"
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
            print("wrote", args.output, file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0
    bad = compare(expected, got)
    for name in bad:
        print("MISMATCH:", name)
    print(f"{len(got['cases']) - sum(n.startswith('case ') for n in bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
