"""`ossrun serve`: an OpenAI-compatible HTTP server (Chat Completions, Responses, Completions)
with continuous batching over several sequences that share one copy of the weights.

    ossrun serve gpt-oss-20b-mxfp4.gguf --port 8000 [--browser --docs DIR] [--python]
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")

The built-in tools it is started with serve the Responses API's `web_search` and
`code_interpreter` tool types (hosted_tools.py).
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_PORT = 8000


def add_arguments(p: argparse.ArgumentParser, positive_int) -> None:
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="a gpt-oss .gguf file (default: the built-in nano model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 "
                        "exposes the server to the network)")
    p.add_argument("--port", type=positive_int, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT})")
    p.add_argument("--mmap", action="store_true",
                   help="read the expert weights from the file's memory map (default: copy them "
                        "into RAM backed by 2 MiB pages when they fit, for faster decoding; "
                        "--no-mmap copies them always)")
    p.add_argument("--parallel", type=positive_int, metavar="N",
                   help="sequences generated at once, each with its own KV cache (default: what "
                        "fits in half the memory left, at most 4)")
    p.add_argument("--queue", type=positive_int, default=64, metavar="N",
                   help="requests that may wait for a free sequence; more get HTTP 429 (default 64)")
    p.add_argument("--api-key", metavar="KEY",
                   help="require 'Authorization: Bearer KEY' (default: $OSSRUN_API_KEY; none)")
    p.add_argument("--name", metavar="ID", help="model id clients use (default: the file's name)")
    p.add_argument("--store", metavar="FILE",
                   help="SQLite file of stored responses (default: responses.sqlite3 in ossrun's "
                        "data folder)")
    # Test seams, not for users: scripted model output and a slow start.
    p.add_argument("--test-script", help=argparse.SUPPRESS)
    p.add_argument("--test-load-delay", type=float, default=0.0, help=argparse.SUPPRESS)


def serve_mmap(args) -> bool | str:
    """The server's weights: --no-mmap copies the experts into RAM, --mmap reads the file's map;
    by default ("auto") the experts are copied when they fit, since a server runs long enough for
    faster decoding to repay the load (docs/PERFORMANCE.md, seventh session)."""
    if getattr(args, "no_mmap", False):
        if getattr(args, "mmap", False):
            raise SystemExit("ossrun serve: --mmap and --no-mmap exclude each other")
        return False
    return True if getattr(args, "mmap", False) else "auto"


def main(args) -> int:
    import uvicorn

    from ..cli import requested_tools
    from .app import create_app
    from .engine import EngineOptions
    from .store import default_store_path

    tools = requested_tools(args)
    for tool in tools:
        problem = tool.unavailable()
        if problem:
            print(f"ossrun: note: the {tool.name} tool cannot run here: {problem}", file=sys.stderr)
    options = EngineOptions(args.model, n_ctx=args.ctx, parallel=args.parallel, threads=args.threads,
                            precision=args.precision, kv_type=args.kv_type, name=args.name,
                            max_queue=args.queue, tools=tools, test_script=args.test_script,
                            test_load_delay=args.test_load_delay,
                            mmap=serve_mmap(args))
    api_key = args.api_key or os.environ.get("OSSRUN_API_KEY") or None
    app = create_app(options, api_key=api_key, store_path=args.store or default_store_path())
    hosted = [t.name for t in tools if not t.unavailable()]
    print(f"ossrun: serving {args.model} on http://{args.host}:{args.port}/v1"
          + (" (API key required)" if api_key else "")
          + (f"; built-in tools: {', '.join(hosted)}" if hosted else ""), file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=3)
    return 0
