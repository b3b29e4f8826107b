"""The `ossrun` command: `chat` (the interactive REPL), `run` (one prompt, one answer), `info` (what
a GGUF file holds and what it will cost in memory), `serve` (OpenAI's HTTP API, ossrun.server),
`pull` (a GGUF from the Hugging Face Hub), `convert` (a checkpoint folder to GGUF), `list` (the
gpt-oss models other tools keep on this machine), and `bench` when `ossrun.bench` is present.
MODEL is a .gguf file (any shard of a split one), a folder holding one, an Ollama model name such
as gpt-oss:20b (ossrun.resolve), or a Hugging Face repo OWNER/REPO[:FILE] (ossrun.hub).

Every failure ends as one line on stderr and a non-zero exit (argparse's usage errors exit 2);
set OSSRUN_DEBUG=1 to see the traceback of an unexpected one.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

from . import __version__
from .errors import ContextOverflowError, ModelError, OssrunError
from .harmony import REASONING_EFFORTS
from .resolve import resolve_model

# Default context: room for long reasoning at "high" effort while the KV cache of gpt-oss-20b
# stays small (12 full layers x 8192 x 2 x 8 x 64 x 4 bytes = 384 MiB).
DEFAULT_CTX = 8192
# Scratch sizes of the core, for the memory estimate of `info`: tokens per prefill chunk
# (csrc/session.h kMaxChunk) and the rollback depth of sliding layers (csrc/kv_cache.h).
MAX_CHUNK = 256
ATTENTION_TILE = 256  # keys per tile of the attention kernel's online softmax (csrc/kernels.h)
ROLLBACK_MARGIN = 1024


# ---------------------------------------------------------------------------------------------
# Folders


def ossrun_dir(kind: str) -> Path:
    """Where ossrun keeps `kind` files: "data" (input history) or "cache".

    $OSSRUN_HOME/<kind> when OSSRUN_HOME is set; otherwise the platform's convention, from
    platformdirs: XDG_DATA_HOME / XDG_CACHE_HOME (default ~/.local/share, ~/.cache) on Linux and
    BSD, ~/Library on macOS, %LOCALAPPDATA% on Windows.
    """
    if kind not in ("data", "cache"):
        raise ValueError(f"unknown folder kind {kind!r}")
    home = os.environ.get("OSSRUN_HOME")
    if home:
        return Path(home).expanduser() / kind
    import platformdirs

    where = platformdirs.user_cache_dir if kind == "cache" else platformdirs.user_data_dir
    return Path(where("ossrun", appauthor=False))


# ---------------------------------------------------------------------------------------------
# Argument types: a bad value is an argparse error (exit 2) that names the flag.


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (0 = greedy), got {text!r}")
    return value


def _top_p(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ctx", type=_positive_int, metavar="N",
                   help=f"context length in tokens (default {DEFAULT_CTX}, at most the model's)")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="compute threads (default: the number of physical cores)")
    p.add_argument("--precision", choices=("fast", "f32"), default="fast",
                   help="'f32' keeps float32 activations end to end (default: fast)")
    p.add_argument("--kv-type", choices=("f16", "bf16", "f32"), default=None,
                   help="KV cache elements (default: f16 with --precision fast, f32 with f32)")


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--effort", choices=REASONING_EFFORTS, default="medium", help="reasoning effort")
    p.add_argument("--system", metavar="TEXT",
                   help="instructions for the model (harmony's developer message)")
    p.add_argument("--temperature", type=_temperature, default=1.0, metavar="T",
                   help="sampling temperature, 0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=_top_p, default=1.0, metavar="P", help="nucleus sampling mass")
    p.add_argument("--top-k", type=_nonnegative_int, default=0, metavar="K",
                   help="sample among the K likeliest tokens (default 0 = all)")
    p.add_argument("--seed", type=_nonnegative_int, metavar="N", help="random seed, for reproducible runs")
    p.add_argument("--max-tokens", type=_positive_int, metavar="N",
                   help="most tokens generated per reply (default: until the context is full)")
    p.add_argument("--reasoning-budget", type=_nonnegative_int, metavar="N",
                   help="most reasoning tokens per reply; then the answer is started")


def _add_tool_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("built-in tools")
    g.add_argument("--browser", action="store_true",
                   help="offer the browser tool (needs --docs or --searx to search)")
    g.add_argument("--docs", metavar="DIR", help="search this folder of documents (implies --browser)")
    g.add_argument("--searx", metavar="URL", help="search with this SearXNG instance (implies --browser)")
    g.add_argument("--allow-private", action="store_true",
                   help="let the browser open loopback and private-network URLs")
    g.add_argument("--python", action="store_true",
                   help="offer the python tool (a sandboxed Jupyter kernel; needs bubblewrap)")


def requested_tools(args) -> list:
    """The built-in tools the flags ask for (whether or not they can run here)."""
    tools = []
    if getattr(args, "browser", False) or getattr(args, "docs", None) or getattr(args, "searx", None):
        from .browser import Browser

        tools.append(Browser(docs=args.docs, searx_url=args.searx,
                             allow_private=args.allow_private))
    if getattr(args, "python", False):
        from .python_tool import PythonTool

        tools.append(PythonTool())
    return tools


def build_tools(args) -> list:
    """The built-in tools the flags ask for; one that cannot run here is left out with a note
    on stderr saying why."""
    offered = []
    for tool in requested_tools(args):
        problem = tool.unavailable()
        if problem:
            print(f"ossrun: note: the {tool.name} tool is not offered: {problem}", file=sys.stderr)
        else:
            offered.append(tool)
    return offered


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ossrun", description="Run OpenAI's gpt-oss models locally.",
        epilog="Run `ossrun COMMAND --help` for a command's options.")
    ap.add_argument("--version", action="version", version=f"ossrun {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    chat = sub.add_parser("chat", help="chat with a model in the terminal",
                          description="Chat with a model. Without MODEL, runs ossrun's built-in "
                                      "nano model (a tiny trained demo of the architecture, "
                                      "not gpt-oss).")
    chat.add_argument("model", nargs="?", metavar="MODEL",
                      help="a gpt-oss .gguf file, a folder holding one, an Ollama name (gpt-oss:20b) "
                           "or a Hugging Face repo (OWNER/REPO[:FILE])")
    _add_model_flags(chat)
    _add_sampling_flags(chat)
    _add_tool_flags(chat)
    chat.add_argument("--hide-reasoning", action="store_true",
                      help="do not show the reasoning as it streams (/think show|hide)")
    chat.set_defaults(func=cmd_chat)

    run = sub.add_parser("run", help="answer one prompt and exit",
                         description="Answer one prompt and print the final answer. Without "
                                     "MODEL, uses ossrun's built-in nano model.")
    run.add_argument("model", nargs="?", metavar="MODEL",
                     help="a gpt-oss .gguf file, a folder holding one, an Ollama name (gpt-oss:20b) "
                          "or a Hugging Face repo (OWNER/REPO[:FILE]); default: the built-in "
                          "nano model")
    run.add_argument("prompt", metavar="PROMPT", help="the prompt, or - to read it from stdin")
    _add_model_flags(run)
    _add_sampling_flags(run)
    _add_tool_flags(run)
    out = run.add_mutually_exclusive_group()
    out.add_argument("--show-reasoning", action="store_true", help="print the reasoning too")
    out.add_argument("--json", action="store_true", help="print the whole reply as JSON")
    run.add_argument("--stats", action="store_true", help="print token counts and speed on stderr")
    run.add_argument("--json-schema", metavar="FILE",
                     help="constrain the answer (not the reasoning) to the JSON Schema in FILE")
    run.set_defaults(func=cmd_run)

    info = sub.add_parser("info", help="describe a GGUF file and its memory needs",
                          description="Architecture, hyperparameters, tensor types and a memory "
                                      "estimate of a gpt-oss GGUF file.")
    info.add_argument("model", metavar="MODEL",
                      help="a gpt-oss .gguf file, a folder holding one, an Ollama name or a "
                           "Hugging Face repo (OWNER/REPO[:FILE])")
    info.add_argument("--ctx", type=_positive_int, metavar="N",
                      help=f"context length for the memory estimate (default {DEFAULT_CTX})")
    info.add_argument("--threads", type=_positive_int, metavar="N",
                      help="threads for the memory estimate (default: physical cores)")
    info.add_argument("--kv-type", choices=("f16", "bf16", "f32"), default="f16",
                      help="KV cache elements the estimate assumes (default f16, as --precision fast)")
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    info.set_defaults(func=cmd_info)

    serve = sub.add_parser("serve", help="serve the model over OpenAI's HTTP API",
                           description="An OpenAI-compatible server: /v1/chat/completions, "
                                       "/v1/responses, /v1/completions, /v1/models.")
    from .server import add_arguments as add_serve_arguments

    add_serve_arguments(serve, _positive_int)
    _add_model_flags(serve)
    _add_tool_flags(serve)
    serve.set_defaults(func=cmd_serve)

    pull = sub.add_parser("pull", help="download a gpt-oss GGUF from the Hugging Face Hub",
                          description="Download a GGUF (all shards of a split one) from the Hugging "
                                      "Face Hub into its cache (resumable) and print its path. "
                                      "Without FILE, the repo's gpt-oss GGUF is chosen.")
    pull.add_argument("ref", metavar="REPO[:FILE]", help="e.g. ggml-org/gpt-oss-20b-GGUF")
    pull.add_argument("--revision", metavar="REV", help="branch, tag or commit (default main)")
    pull.set_defaults(func=cmd_pull)

    conv = sub.add_parser("convert", help="convert a Hugging Face / OpenAI checkpoint to GGUF",
                          description="Convert a gpt-oss checkpoint folder (transformers layout with "
                                      "MXFP4 or BF16 experts, or OpenAI's original/ layout) into a "
                                      "GGUF file in ggml-org's layout. MXFP4 experts are kept bit "
                                      "for bit.")
    conv.add_argument("src", metavar="SRC", help="the checkpoint folder (config.json + *.safetensors)")
    conv.add_argument("out", metavar="OUT.gguf", help="the GGUF file to write")
    conv.add_argument("--dense", choices=("bf16", "q8_0", "f16", "f32"), default="bf16",
                      help="type of the embedding, output and attention matrices (and of BF16 "
                           "experts); default bf16, lossless for bf16 checkpoints")
    conv.add_argument("--vocab-file", metavar="FILE",
                      help="o200k_base.tiktoken, for a checkpoint without tokenizer.json")
    conv.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    conv.set_defaults(func=cmd_convert)

    lst = sub.add_parser("list", help="list the gpt-oss models found on this machine",
                         description="gpt-oss GGUF files in the Hugging Face cache, Ollama's store "
                                     "and LM Studio's folders, with size and layout.")
    lst.add_argument("--json", action="store_true", help="print the list as JSON")
    lst.set_defaults(func=cmd_list)

    bench = _bench_module()
    if bench is not None:
        b = sub.add_parser("bench", help="measure prefill and decode speed")
        bench.add_arguments(b)
        b.set_defaults(func=bench.main)
    return ap


def _bench_module():
    """ossrun.bench when it exists and provides add_arguments(parser) and main(args)."""
    name = f"{__package__}.bench"
    if importlib.util.find_spec(name) is None:
        return None
    bench = importlib.import_module(name)
    if callable(getattr(bench, "add_arguments", None)) and callable(getattr(bench, "main", None)):
        return bench
    return None


# ---------------------------------------------------------------------------------------------
# Loading


def _context_length(path) -> int:
    from .gguf_loader import open_gguf

    return open_gguf(path).config.context_length


def model_path(arg) -> Path:
    """A MODEL argument as a local GGUF file (ossrun.resolve: file, folder, Ollama name); failing
    that, a Hugging Face ref (OWNER/REPO[:FILE]) that is no local path comes from the Hub cache,
    pulled on first use after asking (only on a terminal)."""
    from .hub import looks_like_ref, resolve

    try:
        return resolve_model(arg)
    except ModelError:
        if not looks_like_ref(str(arg)):
            raise
    return resolve(str(arg), interactive=sys.stdin.isatty() and sys.stderr.isatty())


def load_model(path, args):
    """Load `path` with the --ctx, --threads and --precision flags, showing a spinner."""
    from .model import Model
    from .repl import Spinner

    path = model_path(path)
    size = path.stat().st_size
    with Spinner(f"Loading {path.name} ({_human_bytes(size)})"):
        # Without --ctx, the default, but never more than the model holds.
        n_ctx = args.ctx or min(DEFAULT_CTX, _context_length(path))
        return Model(path, n_ctx=n_ctx, threads=args.threads, precision=args.precision,
                     kv_type=getattr(args, "kv_type", None))


def new_chat(model, args):
    """A chat on `model` with the sampling flags of `args`."""
    return model.chat(instructions=args.system, reasoning=args.effort,
                      temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                      seed=args.seed, max_tokens=args.max_tokens,
                      max_reasoning_tokens=args.reasoning_budget,
                      response_format=getattr(args, "response_format", None),
                      tools=build_tools(args))


# ---------------------------------------------------------------------------------------------
# Commands


def model_path_or_builtin(args, banner: bool = False):
    """args.model as given, or the built-in nano model's path (saying so on stderr) when none
    is named; its replies are capped at BUILTIN_MAX_TOKENS unless --max-tokens says otherwise."""
    if args.model is not None:
        return args.model
    from .builtin_model import BANNER, BUILTIN_MAX_TOKENS, builtin_model_path

    path = builtin_model_path()
    if banner:
        print(BANNER + "\n", file=sys.stderr)
    else:
        print("ossrun: no model named: using the built-in nano model (a tiny trained demo, "
              "not gpt-oss; `ossrun chat --help` says more)", file=sys.stderr)
    if hasattr(args, "max_tokens") and args.max_tokens is None:
        args.max_tokens = BUILTIN_MAX_TOKENS
    return path


def cmd_chat(args) -> int:
    from .repl import Repl

    path = model_path_or_builtin(args, banner=True)
    model = load_model(path, args)
    repl = Repl(model, new_chat(model, args), history_path=ossrun_dir("data") / "history",
                show_reasoning=not args.hide_reasoning)
    return repl.run()


def cmd_run(args) -> int:
    from .repl import TurnPrinter, summary_line, use_color

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    prompt = prompt.rstrip("\n")
    if not prompt.strip():
        raise OssrunError("the prompt is empty")
    if args.model is None and prompt.endswith(".gguf") and Path(prompt).is_file():
        raise OssrunError(f"{prompt} looks like a model file: give a PROMPT after it")
    if args.json_schema:
        args.response_format = _read_schema(args.json_schema)
    model = load_model(model_path_or_builtin(args), args)
    chat = new_chat(model, args)
    if args.json:
        reply = chat.send(prompt)
        print(json.dumps(reply_json(reply), indent=2, ensure_ascii=False))
    else:
        printer = TurnPrinter(sys.stdout, color=use_color(sys.stdout),
                              show_reasoning=args.show_reasoning)
        try:
            for event in chat.stream(prompt):
                printer.write(event)
        finally:
            reply = printer.finish()
        if reply.note:
            print(f"ossrun: note: {reply.note}", file=sys.stderr)
        elif not reply.content:
            print("ossrun: note: the reply has no final answer", file=sys.stderr)
    if args.stats:
        print(summary_line(reply.stats, chat.session.n_past, chat.session.n_ctx), file=sys.stderr)
    return 0


def cmd_pull(args) -> int:
    from .hub import pull

    try:
        print(pull(args.ref, revision=args.revision))
    except KeyboardInterrupt:
        print(f"\nossrun: interrupted; `ossrun pull {args.ref}` again continues the download",
              file=sys.stderr)
        return 130
    return 0


def _read_schema(path) -> dict:
    try:
        schema = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except ValueError as e:
        raise OssrunError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(schema, dict):
        raise OssrunError(f"{path}: a JSON Schema must be a JSON object")
    return schema


def cmd_convert(args) -> int:
    from .convert import convert

    out = Path(args.out).expanduser()
    if out.exists() and not args.force:
        raise OssrunError(f"{out} exists (use --force to overwrite it)")
    path = convert(args.src, out, dense=args.dense, vocab_file=args.vocab_file, progress=True)
    print(f"wrote {path} ({_human_bytes(path.stat().st_size)})")
    return 0


def cmd_serve(args) -> int:
    from .server import main

    args.model = str(model_path_or_builtin(args))
    return main(args)


def reply_json(reply) -> dict:
    """An ossrun.chat.Reply as JSON-ready data (what `run --json` prints)."""
    stats = reply.stats
    return {
        "content": reply.content,
        "reasoning": reply.reasoning,
        "tool_calls": [dataclasses.asdict(c) for c in reply.tool_calls],
        "finish_reason": reply.finish_reason,
        "note": reply.note,
        "parsed": reply.parsed if isinstance(reply.parsed, (dict, list, str, int, float)) else None,
        "citations": [dataclasses.asdict(c) if dataclasses.is_dataclass(c) else c
                      for c in reply.citations],
        "messages": [m.to_dict() for m in reply.messages],
        "stats": {**dataclasses.asdict(stats), "prefill_tok_s": stats.prefill_tok_s,
                  "decode_tok_s": stats.decode_tok_s},
    }


def memory_estimate(cfg, n_ctx: int, file_size: int, threads: int, kv_type: str = "f16") -> dict:
    """Bytes a session of n_ctx tokens needs: weights (mapped), KV cache, activations.

    Full-attention layers (odd) hold n_ctx K and V slots; sliding layers (even) a ring of
    window - 1 + one prefill chunk + the rollback margin, at most n_ctx; K and V elements are
    kv_type (2 bytes, or 4 for f32).
    """
    d, kv_width = cfg.key_length, cfg.head_count_kv * cfg.key_length
    ring = min(n_ctx, cfg.sliding_window - 1 + MAX_CHUNK + ROLLBACK_MARGIN)
    slots = sum(ring if layer % 2 == 0 else n_ctx for layer in range(cfg.block_count))
    kv_cache = slots * 2 * kv_width * (4 if kv_type == "f32" else 2)
    # Scratch buffers of one prefill chunk (csrc/model.cpp Scratch): per token, per routed
    # (token, expert) pair (inputs, gate/up/SwiGLU outputs, the int16 copy of the widest), the last
    # position's logits, and each thread's attention scores for one GQA group (one tile of
    # csrc/kernels.h kAttentionTile keys, at any context length).
    H, I, q_width = cfg.embedding_length, cfg.expert_feed_forward_length, cfg.head_count * d
    k, group = cfg.expert_used_count, cfg.head_count // cfg.head_count_kv
    per_token = 3 * H + 2 * q_width + 2 * kv_width + cfg.expert_count + d + 2 + 2 * k
    per_pair = 2 * H + 3 * I + 2 + max(H, I) * 17 / 32  # int16 + a float per 32
    activations = int(4 * (MAX_CHUNK * (per_token + k * per_pair) + 2 * cfg.vocab_size
                           + threads * group * (ATTENTION_TILE + 2)))
    return {"n_ctx": n_ctx, "weights": file_size, "kv_cache": kv_cache,
            "activations": activations, "total": file_size + kv_cache + activations}


def describe(path, n_ctx: int | None, threads: int | None, kv_type: str = "f16") -> dict:
    """What `ossrun info` prints, as a JSON-ready dict."""
    from .gguf_loader import field_value, open_gguf
    from .model import default_threads

    g = open_gguf(model_path(path))
    cfg = g.config
    n_ctx = n_ctx or min(DEFAULT_CTX, cfg.context_length)
    types: dict[str, dict] = {}
    for name, type_name in sorted(g.tensor_types.items()):
        entry = types.setdefault(type_name, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += int(g.tensors[name][0].nbytes)
    n_params = sum(math.prod(shape) for _, _, shape in g.tensors.values())
    tokens = field_value(g.reader, "tokenizer.ggml.tokens")
    return {
        "path": str(g.path),
        "file_size": g.file_size,
        "layout": g.layout.name,
        "shards": [str(p) for p in g.paths],
        "name": field_value(g.reader, "general.name"),
        "architecture": field_value(g.reader, "general.architecture"),
        "parameters": n_params,
        "vocabulary": {"tokens": len(tokens) if tokens is not None else None,
                       "model": field_value(g.reader, "tokenizer.ggml.model"),
                       "pre": field_value(g.reader, "tokenizer.ggml.pre")},
        "hparams": cfg.to_dict(),
        "tensor_types": dict(sorted(types.items(), key=lambda kv: -kv[1]["bytes"])),
        "memory": memory_estimate(cfg, n_ctx, g.file_size, threads or default_threads(), kv_type),
    }


def cmd_info(args) -> int:
    info = describe(args.model, args.ctx, args.threads, args.kv_type)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    vocab = info["vocabulary"]
    rows = [
        ("file", f"{info['path']} ({_human_bytes(info['file_size'])})"),
        ("layout", info["layout"] + (f", split in {len(info['shards'])} shards"
                                     if len(info["shards"]) > 1 else "")),
        ("name", info["name"] or "-"),
        ("architecture", info["architecture"]),
        ("parameters", f"{info['parameters'] / 1e9:.2f} B" if info["parameters"] >= 1e8
         else f"{info['parameters'] / 1e6:.2f} M"),
        ("vocabulary", f"{vocab['tokens']} tokens ({vocab['model']}, pre-tokenizer {vocab['pre']})"),
    ]
    lines = [f"{k:<14}{v}" for k, v in rows]
    lines.append("\nhyperparameters")
    lines += [f"  {k:<28}{v:.7g}" if isinstance(v, float) else f"  {k:<28}{v}"
              for k, v in info["hparams"].items()]
    lines.append("\ntensor types")
    lines += [f"  {t:<8}{e['count']:>5} tensors  {_human_bytes(e['bytes']):>10}"
              for t, e in info["tensor_types"].items()]
    mem = info["memory"]
    lines.append(f"\nmemory at --ctx {mem['n_ctx']}")
    lines += [f"  {label:<20}{_human_bytes(mem[key]):>10}"
              for label, key in (("weights (mapped)", "weights"), ("KV cache", "kv_cache"),
                                 ("activations", "activations"), ("total", "total"))]
    print("\n".join(lines))
    return 0


def cmd_list(args) -> int:
    from .resolve import find_local_models

    models = find_local_models()
    if args.json:
        print(json.dumps([m.to_dict() for m in models], indent=2))
        return 0
    if not models:
        print("no gpt-oss models found in the Hugging Face cache, Ollama's store or LM Studio's "
              "folders", file=sys.stderr)
        return 0
    width = max(len(m.name) for m in models)
    for m in models:
        print(f"{m.source:<12}{m.name:<{width + 2}}{_human_bytes(m.size):>11}  {m.layout}")
        if m.name != str(m.path):
            print(f"{'':<12}{m.path}")
    return 0


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Entry point


def _error_text(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, ContextOverflowError):
        return f"{e} (use a larger --ctx or a smaller --max-tokens)"
    if isinstance(e, (OssrunError, OSError, ValueError)):
        return str(e)
    # An unexpected error: its first line only (some messages dump whole arguments).
    lines = str(e).splitlines() or [""]
    first = lines[0] if len(lines[0]) <= 200 else lines[0][:200] + "…"
    return f"{type(e).__name__}: {first} (set OSSRUN_DEBUG=1 for the traceback)"


def main(argv: list[str] | None = None) -> int:
    """Run the `ossrun` command line; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`ossrun run ... | head`); silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:
        if os.environ.get("OSSRUN_DEBUG"):
            raise
        print(f"ossrun: error: {_error_text(e)}", file=sys.stderr)
        return 1
