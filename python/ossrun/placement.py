"""Which parts of a model go on the GPU and which stay on the CPU, from the sizes of its tensors,
the KV cache at n_ctx and the free VRAM (pure Python: plans are made and tested without a GPU).

Parts are placed in the order that pays most per byte of VRAM:
  1. the output norm and unembedding matrix, and each layer's attention and dense weights (norms,
     q/k/v/o, sinks) with that layer's KV cache, from the last layer down (the layers on
     the GPU are the last ones, llama.cpp's `-ngl`, so the hidden state crosses over once);
  2. then the MoE blocks of those layers (the router, the experts and their biases; "experts"
     below), again from the last layer down, so that the experts left on the CPU are those of the
     first N layers (llama.cpp's `--n-cpu-moe N`), whose whole MoE block the CPU runs.
The token embedding stays on the CPU (one row per token is read) and so does whatever does not fit.
`gpu_layers` and `cpu_moe` force the split; a forced split that does not fit is a DeviceError
naming what would fit. Parts on the CPU run there at the same time (the CPU backend).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import DeviceError

# The CUDA context, cuda graphs, allocator slack: VRAM we never plan to fill.
DEFAULT_RESERVE = 512 * 2**20
# Tokens per prefill chunk of the device model (cuda/device_model.h DeviceSession::kMaxChunk,
# the core's DEVICE_MAX_CHUNK) and the rollback depth of sliding layers (csrc/kv_cache.h).
MAX_CHUNK = 1024
ROLLBACK_MARGIN = 1024
LOGIT_ROWS = 8  # rows of logits per output matmul of the device model (cuda/device_model.h)
# Flash-decoding on the GPU: keys per part (csrc/attention_split.h) and the rows of a decode
# segment that are split (cuda/kernels.cuh kAttentionSplitMaxRows).
SPLIT_CHUNK = 2048
SPLIT_ROWS = 8
KV_BYTES = {"f32": 4, "f16": 2, "bf16": 2}  # bytes per K or V element of each kv_type

_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(.+)")
_EXPERTS = re.compile(r"ffn_(gate|up|down)_exps\.|ffn_gate_inp\.")  # the MoE block


@dataclass(frozen=True)
class Part:
    """One placed piece: `kind` is "output", "dense" (a layer's attention and dense weights),
    "kv_cache", "experts" or "embedding"; `layer` is None for the first and last."""

    kind: str
    layer: int | None
    bytes: int
    device: str

    @property
    def label(self) -> str:
        names = {"output": "output norm + unembedding", "dense": "attention + dense weights",
                 "kv_cache": "KV cache", "experts": "experts", "embedding": "token embedding"}
        return names[self.kind] if self.layer is None else f"layer {self.layer} {names[self.kind]}"


@dataclass
class Plan:
    """A placement: every part with its device, and the VRAM accounting behind it."""

    parts: list[Part]
    n_ctx: int
    free_vram: int | None  # None: no GPU to place on
    reserve: int
    scratch: int  # activations of one prefill chunk on the GPU
    gpu_layers: int  # layers whose attention, dense weights and KV cache are on the GPU
    n_cpu_moe: int  # layers (the first ones) whose experts stay on the CPU
    block_count: int
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    stage: int = 0  # the offload's staging slots on the GPU, all of them (0: no offload)
    stage_slots: int = 0  # 2: a matrix's copy overlaps the matmul before; 1: they take turns
    offload_min_tokens: int = 0  # chunks of at least this many tokens offload the CPU's MoE blocks

    def bytes_on(self, device: str) -> int:
        return sum(p.bytes for p in self.parts if p.device == device)

    @property
    def gpu_bytes(self) -> int:
        """VRAM the plan uses: the parts on the GPU, the scratch and the staging slots (not the reserve)."""
        on_gpu = self.bytes_on("cuda")
        return on_gpu + (self.scratch + self.stage if on_gpu else 0)

    @property
    def cpu_bytes(self) -> int:
        return self.bytes_on("cpu")

    def summary(self) -> str:
        if self.gpu_bytes == 0:
            return f"everything on the CPU ({self.reason})" if self.reason else "everything on the CPU"
        L = self.block_count
        first = L - self.gpu_layers
        layers = "all layers" if first == 0 else f"layers {first}..{L - 1}"
        experts = ("all experts on the GPU" if self.n_cpu_moe == 0 else
                   "all experts on the CPU" if self.n_cpu_moe >= L else
                   f"experts of layers 0..{self.n_cpu_moe - 1} on the CPU (--n-cpu-moe {self.n_cpu_moe})")
        offload = (f", the CPU's MoE blocks on the GPU for prompt chunks of >= "
                   f"{self.offload_min_tokens} tokens" if self.stage else "")
        return f"{layers} on the GPU, {experts}{offload}"

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "n_ctx": self.n_ctx, "free_vram": self.free_vram,
                "reserve": self.reserve, "scratch": self.scratch, "gpu_layers": self.gpu_layers,
                "n_cpu_moe": self.n_cpu_moe, "gpu_bytes": self.gpu_bytes, "cpu_bytes": self.cpu_bytes,
                "stage": self.stage, "stage_slots": self.stage_slots,
                "offload_min_tokens": self.offload_min_tokens,
                "notes": list(self.notes),
                "parts": [{"part": p.label, "kind": p.kind, "layer": p.layer, "bytes": p.bytes,
                           "device": p.device} for p in self.parts]}


def offload_min_tokens() -> int:
    """Prompt chunks of at least this many tokens run the MoE blocks kept on the CPU (beside
    attention on the GPU) on the GPU, each matrix copied over into a staging slot just before
    its matmul (cuda/device_model.h; llama.cpp's op offload): $OSSRUN_CUDA_OFFLOAD_MIN_TOKENS,
    default 512, 0 turns it off. Decode steps always keep those blocks on the CPU."""
    value = os.environ.get("OSSRUN_CUDA_OFFLOAD_MIN_TOKENS", "512")
    if not value.isdigit():
        raise ValueError("OSSRUN_CUDA_OFFLOAD_MIN_TOKENS must be a whole number of tokens (0: off), "
                         f"got {value!r}")
    return int(value)


def offload_stage_slots() -> int:
    """The offload's staging slots: 2, so that each matrix's copy (on a stream of its own) runs
    while the matmul before it reads the other slot, or 1, each copy waiting for the matmul before
    (half the VRAM; tools/device_check.sh compares them): $OSSRUN_CUDA_STAGE_SLOTS, default 2.
    The plan takes one where VRAM is short for two."""
    value = os.environ.get("OSSRUN_CUDA_STAGE_SLOTS", "2")
    if value not in ("1", "2"):
        raise ValueError(f"OSSRUN_CUDA_STAGE_SLOTS must be 1 or 2, got {value!r}")
    return int(value)


_STAGED = ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


def stage_slot_bytes(tensor_bytes: Mapping[str, int], first: int, n_cpu_moe: int) -> int:
    """One of the offload's staging slots for the MoE blocks of layers first .. n_cpu_moe - 1: the
    largest of their matrices with its bias, each rounded up to 256 bytes (cuda/device_model.h
    offload_stage_bytes)."""
    def up(n: int) -> int:
        return -(-n // 256) * 256

    def staged(name: str) -> int:
        return up(tensor_bytes.get(f"{name}.weight", 0)) + up(tensor_bytes.get(f"{name}.bias", 0))

    return max((staged(f"blk.{layer}.{t}") for layer in range(first, n_cpu_moe) for t in _STAGED), default=0)


def kv_cache_bytes(cfg, layer: int, n_ctx: int, kv_type: str = "f32") -> int:
    """K and V of one layer at n_ctx: full layers (odd) hold n_ctx slots, sliding layers (even) a
    ring of window - 1 + one prefill chunk + the rollback margin, at most n_ctx."""
    slots = n_ctx if layer % 2 else min(n_ctx, cfg.sliding_window - 1 + MAX_CHUNK + ROLLBACK_MARGIN)
    return slots * 2 * cfg.head_count_kv * cfg.key_length * KV_BYTES[kv_type]


def scratch_bytes(cfg, n_ctx: int | None = None, experts: bool = True) -> int:
    """float32 activations of one prefill chunk: per token the residual, norm, q/k/v, attention
    output, projection and router logits; per routed (token, expert) pair its weight, expert, slot
    in the expert-sorted order and its input, gate, up, SwiGLU and output rows, and the grouped
    GEMM's tiles (at most one per 64 pairs plus one per expert, 3 ints each); LOGIT_ROWS rows of
    logits; the largest matmul input split for the tensor cores (two halves an element and a
    float a row, each of the three arrays 256-byte aligned: cuda/kernels.cuh
    split_activations_bytes) (cuda/device_buffers.h's DeviceBuffers carve at most this). With n_ctx, also
    flash-decoding's partial results for key ranges up to n_ctx (cuda/device_model.h
    attention_parts): per split row, head and part d + 2 floats. Without `experts` (no MoE block
    on the GPU) the router's and the routed pairs' buffers are left out."""
    H, I = cfg.embedding_length, cfg.expert_feed_forward_length
    q_width, kv_width = cfg.head_count * cfg.key_length, cfg.head_count_kv * cfg.key_length
    k = cfg.expert_used_count if experts else 0
    per_token = 3 * H + 2 * q_width + 2 * kv_width + (cfg.expert_count + 3 * k if experts else 0)
    per_pair = 2 * H + 3 * I
    parts = 0 if n_ctx is None else (n_ctx - 1) // SPLIT_CHUNK + 1
    split = SPLIT_ROWS * cfg.head_count * parts * (cfg.key_length + 2) if parts > 1 else 0
    chunk = MAX_CHUNK * (per_token + k * per_pair)
    tiles = 3 * (MAX_CHUNK * k // 64 + cfg.expert_count) + 1 if experts else 0
    widest = max(MAX_CHUNK * H, MAX_CHUNK * q_width, MAX_CHUNK * k * I, LOGIT_ROWS * H)
    halves = widest + max(MAX_CHUNK * max(k, 1), LOGIT_ROWS) + 3 * 64
    positions_theta = 2 * MAX_CHUNK + cfg.key_length // 2  # int64 positions, the RoPE table
    rounding = 24 * 64  # each of DeviceBuffers' 24 pieces rounded up to 256 bytes
    return 4 * (chunk + tiles + LOGIT_ROWS * cfg.vocab_size + split + halves + positions_theta + rounding)


def group_tensor_bytes(tensor_bytes: Mapping[str, int], block_count: int) -> dict:
    """Sum tensor sizes by part: {"embedding", "output"} and, per layer, "dense" and "experts"."""
    groups = {"embedding": 0, "output": 0, "dense": [0] * block_count, "experts": [0] * block_count}
    for name, n in tensor_bytes.items():
        m = _LAYER_TENSOR.fullmatch(name)
        if m:
            layer = int(m.group(1))
            if not 0 <= layer < block_count:
                raise ValueError(f"tensor {name!r} names layer {layer}, the model has {block_count}")
            groups["experts" if _EXPERTS.match(m.group(2)) else "dense"][layer] += int(n)
        elif name.startswith("token_embd."):
            groups["embedding"] += int(n)
        else:  # output.weight, output_norm.weight
            groups["output"] += int(n)
    return groups


def check_split(block_count: int, gpu_layers=None, cpu_moe=None) -> tuple[int | None, int | None]:
    """gpu_layers (None or 0..L) and cpu_moe (None, 0..L or "all") as layer counts; ValueError else."""
    def count(value, what):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= block_count:
            raise ValueError(f"{what} must be an integer in [0, {block_count}] (the model's layers), "
                             f"got {value!r}")
        return value

    if cpu_moe == "all":
        cpu_moe = block_count
    elif isinstance(cpu_moe, str):
        raise ValueError(f"cpu_moe must be a number of layers or 'all', got {cpu_moe!r}")
    return count(gpu_layers, "gpu_layers"), count(cpu_moe, "cpu_moe")


def plan_placement(cfg, tensor_bytes: Mapping[str, int], n_ctx: int, free_vram: int | None,
                   gpu_layers: int | None = None, cpu_moe: int | str | None = None,
                   reserve: int = DEFAULT_RESERVE, kv_type: str = "f32", offload: int | None = None,
                   stage_slots: int | None = None) -> Plan:
    """Place `cfg`'s model (tensor name -> bytes) for sessions of n_ctx tokens with a KV cache of
    kv_type elements into free_vram bytes (None: no GPU). gpu_layers / cpu_moe None choose as much
    GPU as fits; numbers force the split (cpu_moe "all": every expert on the CPU) and raise
    DeviceError if it does not fit. offload: the chunk length from which the MoE blocks left on
    the CPU run on the GPU (offload_min_tokens(), read when None; 0 off), given room for its
    staging slots after the split is chosen: stage_slots (offload_stage_slots(), read when None),
    else one, else no offload."""
    if offload is None:
        offload = offload_min_tokens()
    if stage_slots is None:
        stage_slots = offload_stage_slots()
    if stage_slots not in (1, 2):
        raise ValueError(f"stage_slots must be 1 or 2, got {stage_slots!r}")
    L = cfg.block_count
    forced_layers, forced_cpu_moe = check_split(L, gpu_layers, cpu_moe)
    g = group_tensor_bytes(tensor_bytes, L)
    if kv_type not in KV_BYTES:
        raise ValueError(f"kv_type must be one of {tuple(KV_BYTES)}, got {kv_type!r}")
    kv = [kv_cache_bytes(cfg, layer, n_ctx, kv_type) for layer in range(L)]
    scratch = scratch_bytes(cfg, n_ctx)  # the fitting below assumes experts on the GPU: an upper bound

    def build(n_gpu_layers: int, n_cpu_moe: int, reason: str = "") -> Plan:
        first = L - n_gpu_layers  # layers first.. are on the GPU
        on = lambda b: "cuda" if b else "cpu"  # noqa: E731
        parts = [Part("embedding", None, g["embedding"], "cpu"),
                 Part("output", None, g["output"], on(n_gpu_layers > 0))]
        for layer in range(L):
            gpu = layer >= first
            parts += [Part("dense", layer, g["dense"][layer], on(gpu)),
                      Part("kv_cache", layer, kv[layer], on(gpu)),
                      Part("experts", layer, g["experts"][layer], on(gpu and layer >= n_cpu_moe))]
        cpu_moe_layers = max(n_cpu_moe, first) if n_gpu_layers else L
        slot = stage_slot_bytes(tensor_bytes, first, cpu_moe_layers) if n_gpu_layers and offload else 0

        def plan_with(slots: int, notes: list[str]) -> Plan:
            stage = slot * slots
            experts = cpu_moe_layers < L or stage > 0  # MoE blocks computed on the GPU
            return Plan(parts, n_ctx, free_vram, reserve, scratch_bytes(cfg, n_ctx, experts), n_gpu_layers,
                        cpu_moe_layers, L, reason, notes, stage=stage, stage_slots=slots if stage else 0,
                        offload_min_tokens=offload if stage else 0)

        def fits(plan: Plan) -> bool:
            return free_vram is None or plan.gpu_bytes <= free_vram - reserve

        plan = plan_with(stage_slots, [])
        if slot and stage_slots == 2 and not fits(plan):
            # Room for one slot: each copy then waits for the matmul before it.
            plan = plan_with(1, [f"VRAM for one offload staging slot of {_gib(slot)}, not two: its copies "
                                 "wait for the matmuls"])
        if slot and not fits(plan):  # none: the CPU's MoE blocks stay there for every chunk
            plan = plan_with(0, [f"no VRAM left for the offload's {_gib(slot)} staging slot"])
        return plan

    if free_vram is None:
        return build(0, L, "no GPU")
    budget = free_vram - reserve - scratch

    def dense_need(n: int) -> int:  # output + the last n layers' dense weights and KV cache
        return (g["output"] + sum(g["dense"][i] + kv[i] for i in range(L - n, L))) if n else 0

    def experts_need(n_gpu_layers: int, n_cpu_moe: int) -> int:
        return sum(g["experts"][i] for i in range(max(L - n_gpu_layers, n_cpu_moe), L))

    if forced_layers is not None:
        if dense_need(forced_layers) > budget:
            fit = max((n for n in range(L + 1) if dense_need(n) <= budget), default=0)
            raise DeviceError(f"gpu_layers={forced_layers} needs {_gib(dense_need(forced_layers) + scratch)} "
                              f"of VRAM with the KV cache at n_ctx {n_ctx}, {_gib(free_vram - reserve)} "
                              f"is usable: at most {fit} layers fit")
        n_layers = forced_layers
    else:
        n_layers = max((n for n in range(L + 1) if dense_need(n) <= budget), default=0)
    if n_layers == 0:
        why = "gpu_layers=0" if forced_layers == 0 else \
            f"too little VRAM ({_gib(free_vram)} free) for the output matrix and one layer"
        return build(0, L, why)
    left = budget - dense_need(n_layers)
    if forced_cpu_moe is not None:
        if experts_need(n_layers, forced_cpu_moe) > left:
            fit = min(n for n in range(L + 1) if experts_need(n_layers, n) <= left)
            raise DeviceError(f"cpu_moe={forced_cpu_moe} puts {_gib(experts_need(n_layers, forced_cpu_moe))} "
                              f"of experts on the GPU, {_gib(max(left, 0))} is left after the dense "
                              f"part: use cpu_moe={fit} (--n-cpu-moe {fit}) or more")
        n_cpu_moe = forced_cpu_moe
    else:
        n_cpu_moe = min(n for n in range(L + 1) if experts_need(n_layers, n) <= left)
    return build(n_layers, n_cpu_moe)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def format_plan(plan: Plan) -> list[str]:
    """The lines `ossrun info --device` prints."""
    lines = [f"  {'plan':<28}{plan.summary()}"]
    if plan.free_vram is not None:
        lines.append(f"  {'VRAM free':<28}{_gib(plan.free_vram):>10}  (reserve {_gib(plan.reserve)})")
    lines.append(f"  {'on the GPU':<28}{_gib(plan.gpu_bytes):>10}  (scratch {_gib(plan.scratch)} included)"
                 if plan.gpu_bytes else f"  {'on the GPU':<28}{_gib(0):>10}")
    lines.append(f"  {'on the CPU':<28}{_gib(plan.cpu_bytes):>10}")
    if plan.stage:
        lines.append(f"  {'offload staging slots':<28}{_gib(plan.stage):>10}  ({plan.stage_slots}; "
                     f"chunks of >= {plan.offload_min_tokens} tokens)")
    for kind in ("output", "dense", "kv_cache", "experts", "embedding"):
        for device in ("cuda", "cpu"):
            parts = [p for p in plan.parts if p.kind == kind and p.device == device]
            if not parts or not sum(p.bytes for p in parts):
                continue
            layers = [p.layer for p in parts if p.layer is not None]
            where = "GPU" if device == "cuda" else "CPU"
            label = parts[0].label if not layers else \
                f"{Part(kind, 0, 0, device).label.split(' ', 2)[2]} of {_layer_range(layers)}"
            lines.append(f"    {label:<44}{where}  {_gib(sum(p.bytes for p in parts)):>10}")
    lines += [f"  note: {n}" for n in plan.notes]
    return lines


def _layer_range(layers: list[int]) -> str:
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}..{layers[-1]}"
    return "layers " + ",".join(map(str, layers))
