"""Held-out evaluation of the nano model through ossrun's own chat loop (greedy sampling).

For each family, N conversations from tools/nano_data.py's held-out split (cities, names, time
zones and schema field orders training never saw) with a seed training never used. Each runs as
a real `ossrun.Chat` turn: the system/developer settings of the example, the user message, and
Python functions for the tools that return the example's tool result. Reported:

  well-formed   the reply is harmony: an analysis message, then a final answer or a call whose
                result leads to a final answer (finish_reason "stop", no malformed output)
  tool          the first call names the right function and its arguments validate against
                the declared schema (and, separately, equal the expected arguments)
  arithmetic    the final answer's last number is the right result (also units)
  json          the final answer parses as JSON and validates against the stated schema

    python tools/eval_nano.py [--model python/ossrun/models/nano-gpt-oss.gguf] [--n 100]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import nano_data  # noqa: E402
import ossrun  # noqa: E402
from ossrun.tools import validate  # noqa: E402

HELDOUT_SEED = 7_000_000  # training uses seeds 1000·s + round and 12345 (BPE); never this one


def chat_for(model, conv: nano_data.Conversation, max_tokens: int):
    result = next((m.text for m in conv.messages if m.role == "tool"), "")
    tools = [{"name": t.name, "description": t.description, "parameters": t.parameters,
              "function": (lambda _r=result, **kw: _r)} for t in conv.tools]
    return model.chat(system=conv.identity, instructions=conv.instructions,
                      reasoning=conv.effort, tools=tools, date=conv.date, temperature=0,
                      max_tokens=max_tokens, max_tool_rounds=2)


def well_formed(reply) -> bool:
    if reply.finish_reason != "stop" or not reply.content:
        return False
    assistant = [m for m in reply.messages if m.role == "assistant"]
    return bool(assistant) and assistant[0].channel == "analysis" \
        and assistant[-1].channel == "final"


def last_number(text: str) -> int | None:
    found = re.findall(r"-?\d+", text.replace(",", ""))
    return int(found[-1]) if found else None


def evaluate(model_path: str, n: int, max_tokens: int = 400) -> dict:
    model = ossrun.load(model_path, n_ctx=2048)
    report = {}
    effort_lengths: dict[str, list[int]] = {e: [] for e in nano_data.EFFORTS}
    for k, family in enumerate(nano_data.FAMILIES):
        counts = {"n": 0, "well_formed": 0, "correct": 0, "valid": 0, "exact": 0}
        failures = []
        t0 = time.perf_counter()
        for conv in nano_data.conversations(HELDOUT_SEED + k, n, "heldout", family):
            chat = chat_for(model, conv, max_tokens)
            reply = chat.send(conv.messages[0].text)
            counts["n"] += 1
            effort_lengths[conv.effort].append(len(reply.reasoning))
            ok = well_formed(reply)
            counts["well_formed"] += ok
            if family == "tool":
                call = reply.tool_calls[0] if reply.tool_calls else None
                tool = next((t for t in chat.tools if call and t.name == call.name), None)
                right = call is not None and call.name == conv.meta["function"]
                valid = right and isinstance(call.arguments, dict) and \
                    not validate(call.arguments, tool.parameters)
                counts["valid"] += valid
                counts["exact"] += valid and call.arguments == conv.meta["arguments"]
                good = valid and ok
            elif family in ("arithmetic", "units"):
                good = ok and last_number(reply.content) == conv.meta["answer"]
                counts["correct"] += good
            elif family == "json":
                try:
                    value = json.loads(reply.content)
                    valid = not validate(value, conv.meta["schema"])
                except ValueError:
                    value, valid = None, False
                counts["valid"] += valid
                counts["exact"] += valid and value == conv.meta["values"]
                good = valid
            else:
                good = ok
            if not good and len(failures) < 3:
                failures.append({"user": conv.messages[0].text, "reasoning": reply.reasoning,
                                 "content": reply.content, "finish": reply.finish_reason,
                                 "calls": [(c.name, c.arguments) for c in reply.tool_calls]})
        counts["seconds"] = round(time.perf_counter() - t0, 1)
        report[family] = {**counts, "failures": failures}
    report["reasoning_chars_by_effort"] = {e: round(sum(v) / max(1, len(v)))
                                           for e, v in effort_lengths.items()}
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "python" / "ossrun" / "models" /
                                           "nano-gpt-oss.gguf"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--json", help="also write the report here")
    a = ap.parse_args(argv)
    report = evaluate(a.model, a.n)
    lengths = report.pop("reasoning_chars_by_effort")
    for family, r in report.items():
        n = r["n"]
        line = f"{family:11s} well-formed {100 * r['well_formed'] / n:5.1f}%"
        if family == "tool":
            line += (f"  right function + valid args {100 * r['valid'] / n:5.1f}%"
                     f"  (args exactly as expected {100 * r['exact'] / n:5.1f}%)")
        elif family in ("arithmetic", "units"):
            line += f"  correct {100 * r['correct'] / n:5.1f}%"
        elif family == "json":
            line += (f"  valid for the schema {100 * r['valid'] / n:5.1f}%"
                     f"  (values exact {100 * r['exact'] / n:5.1f}%)")
        print(line + f"  [{r['seconds']} s]")
        for f in r["failures"]:
            print("   failure:", json.dumps(f)[:300])
    print("mean reasoning length (characters) by effort:", lengths)
    if a.json:
        Path(a.json).write_text(json.dumps({**report, "reasoning_chars_by_effort": lengths},
                                           indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
