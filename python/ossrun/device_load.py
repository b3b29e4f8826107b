"""Putting a model on the GPU: the placement plan for this device's free VRAM (ossrun.placement),
the checks the CUDA backend needs, then the core's DeviceModel, which copies the planned weights
once from the memory map to device memory and runs the forward pass there: the last `gpu_layers`
layers on the GPU, the first ones and the experts of the first `n_cpu_moe` layers on the CPU
backend (cuda/device_model.h), whose experts a load with mmap=False or "auto" copies into RAM
as a CPU load does (and repacks for the CPU's kernels, unless the plan offloads those MoE blocks
to the GPU for long prompt chunks: placement.offload_min_tokens).

A plan with no layer on the GPU (gpu_layers=0, or too little VRAM for the output matrix and one
layer) is refused with the reason, or for device="auto" leaves the model on the CPU and says why.
"""

from __future__ import annotations

import warnings

from . import _core
from .device import cuda_status
from .errors import DeviceError
from .placement import Plan, plan_placement


def has_device_model() -> bool:
    """Whether this build's core has the CUDA device model (built with the CUDA target)."""
    return bool(getattr(_core, "HAS_DEVICE_MODEL", False))


def device_plan(model, free_vram: int | None) -> Plan:
    """The plan of `model` (an ossrun.model.Model being loaded) for `free_vram` bytes, with its
    gpu_layers / cpu_moe and kv_type; DeviceError when a forced split does not fit."""
    tensor_bytes = {name: int(arr.nbytes) for name, (arr, _, _) in model._file.tensors.items()}
    return plan_placement(model.config, tensor_bytes, model.n_ctx, free_vram, model.gpu_layers,
                          model.cpu_moe, kv_type=model.kv_type)


def check_plan(model, plan: Plan) -> str:
    """'' when the device model can run `plan`, else why not (a sentence)."""
    L = model.config.block_count
    if plan.gpu_layers == 0:
        return (f"this plan puts none of the {L} layers on the GPU ({plan.reason or 'nothing fits'}); "
                "keep the experts in RAM (cpu_moe='all', --cpu-moe) or use device='cpu'")
    # The file's own types first: what the user can change (the repack below is ossrun's doing).
    bad = _core.device_unsupported_weight(model._core, plan.n_cpu_moe, plan.gpu_layers)
    if bad:
        return ("the CUDA kernels read F32, F16, BF16, Q8_0, MXFP4 and the dense quants "
                f"Q4_0 .. Q6_K, IQ4_NL in the GGUF's rows, and {bad}")
    # The device model copies the CPU model's views. The dense Q8_0 repack covers every layer;
    # MXFP4 experts are repacked only in the copy of those the CPU runs (the core refuses an
    # uploaded matrix that is not in the GGUF's rows, above).
    if model._core.interleaved_q8_0_bytes:
        return ("the CPU model's Q8_0 matrices are repacked for its own kernels (16-row "
                "groups), and the CUDA kernels read the GGUF's layout")
    return ""


def _refusal(explicit: bool, why: str):
    if explicit:
        raise DeviceError(f"device='cuda' cannot be used: {why}")
    return None, why


def plan_on_gpu(model, explicit: bool):
    """(plan, "") for `model` (its file and settings; the core is not needed yet) on this device's
    free VRAM, or (None, reason) when device="auto" should stay on the CPU; with explicit=True
    (device="cuda") every reason is a DeviceError instead. Made before the core, so that the load
    knows which layers' experts the CPU will run (plan.n_cpu_moe) and may copy just those to RAM."""
    if not has_device_model():
        return _refusal(explicit, "this build of ossrun has no CUDA device model")
    status = cuda_status()
    if not status.available:
        return _refusal(explicit, status.reason)
    try:
        plan = device_plan(model, status.free_bytes)
    except DeviceError as e:
        return _refusal(explicit, str(e))
    if plan.gpu_layers == 0:
        return _refusal(explicit, check_plan(model, plan))
    return plan, ""


def place_on_gpu(model, plan: Plan, explicit: bool):
    """(core DeviceModel, plan) for `model` as `plan` places it, or (None, reason) as plan_on_gpu."""
    why = check_plan(model, plan)
    if why:
        return _refusal(explicit, why)
    try:
        core = _core.DeviceModel(model._core, plan.n_cpu_moe, plan.gpu_layers, plan.offload_min_tokens,
                                 max(plan.stage_slots, 1))
    except DeviceError as e:  # out of device memory, a CUDA failure: always said
        if explicit:
            raise
        return None, str(e)
    if core.pin_error:  # OSSRUN_CUDA_PIN_OFFLOAD=1 asked for it
        warnings.warn(f"the offload's sources stay pageable: {core.pin_error}", RuntimeWarning, stacklevel=3)
    return core, plan
