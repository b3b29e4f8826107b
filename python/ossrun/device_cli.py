"""The command line's device flags: `--device`, `--gpu-layers`, `--n-cpu-moe N`, `--cpu-moe` on the
commands that load a model, and `ossrun info --device [--vram GB]`, which prints the placement plan
(ossrun.placement) for this machine's free VRAM or a given one."""

from __future__ import annotations

import argparse

from .cli import _nonnegative_int
from .device import DEVICES, cuda_status, resolve_device
from .placement import format_plan, plan_placement


def _gigabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of GB >= 0, got {text!r}")
    return value


def add_split_flags(p: argparse.ArgumentParser) -> None:
    """--gpu-layers, --n-cpu-moe and --cpu-moe (shared by loading commands and `info --device`)."""
    p.add_argument("--gpu-layers", type=_nonnegative_int, metavar="N",
                   help="put the last N layers' attention and KV cache on the GPU (default: as many as fit)")
    moe = p.add_mutually_exclusive_group()
    moe.add_argument("--n-cpu-moe", type=_nonnegative_int, metavar="N", dest="cpu_moe",
                     help="keep the experts of the first N layers on the CPU (default: as few as fit)")
    moe.add_argument("--cpu-moe", action="store_const", const="all", dest="cpu_moe",
                     help="keep every expert on the CPU (attention and KV cache on the GPU)")


def add_device_flags(p: argparse.ArgumentParser) -> None:
    """The flags of the commands that load a model."""
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the model runs (default auto: the GPU when ossrun can use it, else "
                        "the CPU; 'cuda' fails with the reason rather than fall back)")
    add_split_flags(p)
    from .weights_in_ram import add_no_mmap_flag

    add_no_mmap_flag(p)


def add_info_flags(p: argparse.ArgumentParser) -> None:
    """`ossrun info --device [--vram GB] [split flags]`."""
    p.add_argument("--device", action="store_true",
                   help="print the device this machine would use and the GPU/CPU placement plan")
    p.add_argument("--vram", type=_gigabytes, metavar="GB",
                   help="plan for this much free VRAM (GiB) instead of this machine's GPU")
    add_split_flags(p)


def load_options(args) -> dict:
    """Model() keyword arguments of the device flags (absent on commands without them)."""
    return {"device": getattr(args, "device", "auto"), "gpu_layers": getattr(args, "gpu_layers", None),
            "cpu_moe": getattr(args, "cpu_moe", None), "mmap": not getattr(args, "no_mmap", False)}


def describe_device(g, n_ctx: int, args) -> dict:
    """What `info --device` reports for the opened GGUF `g`: the status, what auto picks, the plan."""
    status = cuda_status()
    device, reason = resolve_device("auto", status)
    if args.vram is not None:
        free, source = int(args.vram * 2**30), f"--vram {args.vram:g}"
    elif status.available:
        free, source = status.free_bytes, status.device
    else:
        free, source = None, "no usable GPU"
    tensor_bytes = {name: int(arr.nbytes) for name, (arr, _, _) in g.tensors.items()}
    plan = plan_placement(g.config, tensor_bytes, n_ctx, free, args.gpu_layers, args.cpu_moe,
                          kv_type=getattr(args, "kv_type", None) or "f32")
    return {"cuda": str(status), "auto_device": device, "auto_reason": reason,
            "vram_source": source, "plan": plan.to_dict(), "_plan": plan}


def format_device(d: dict) -> list[str]:
    lines = ["\ndevice", f"  {'CUDA':<28}{d['cuda']}",
             f"  {'--device auto':<28}{d['auto_device']} ({d['auto_reason']})",
             f"\nplacement at --ctx {d['plan']['n_ctx']}, for {d['vram_source']}"]
    return lines + format_plan(d["_plan"])
