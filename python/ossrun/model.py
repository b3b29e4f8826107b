"""The Python face of a loaded model: `ossrun.load()` returns a `Model`; sessions hold KV state.

Python crosses into C++ once per prefill or decoded token, never per op; the GIL is released
while the core computes.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from . import _core
from .errors import ContextOverflowError, ModelError
from .gguf_loader import ModelConfig, open_gguf
from .sampler import Sampler

PRECISIONS = ("fast", "f32")
KV_TYPES = ("f16", "bf16", "f32")
PREFILL_PIECE = 1024  # tokens per call into the core (4 of its 256-token chunks)


def default_threads() -> int:
    """Physical cores (hyper-threads share the vector units that bound us)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:
        n = None
    return max(1, n or os.cpu_count() or 1)


def _check_ids(ids, n_vocab: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError("token ids must be a flat sequence of integers")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"token ids must be integers, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= n_vocab):
        bad = int(arr[(arr < 0) | (arr >= n_vocab)][0])
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {n_vocab})")
    return arr.astype(np.int32, copy=False)


class Model:
    """A gpt-oss model loaded from a GGUF file (weights stay in the file's memory map).

    Args:
        path: the .gguf file.
        n_ctx: context length of sessions (tokens), at most the model's context_length.
        threads: compute threads; default the number of physical cores.
        precision: "fast" (default; matmuls on MXFP4 and Q8_0 weights take int16
            activations, ~2^-16 of each 32-block's largest value lost; on the GPU the prefill
            GEMMs take them as IEEE half, 2^-12 of each value, and the prefill attention over an
            f16 cache q and its softmax weights so; decode float32) or "f32" (float32
            activations end to end; on the GPU's tensor cores two halves, ~22 bits).
        isa: force a kernel variant ("scalar", "avx2", "avx2vnni", "avx512", "avx512vbmi",
            "neon"); default the best this CPU runs (or $OSSRUN_ISA).
        kv_type: element type of the sessions' KV caches: "f16" (IEEE half, the default in the
            fast precision: half the memory and bytes read per decoded token of float32, each K
            and V element rounded to 11 significant bits), "bf16" (8 significant bits, float32's
            range) or "f32" (the default, and the exact path, with precision="f32").
        device: "auto" (default: the GPU when the CUDA backend can run the model, else the CPU;
            `device_reason` says which and why), "cpu", or "cuda" (a DeviceError saying why when
            it cannot be used; ossrun.device, ossrun.device_load).
        gpu_layers, cpu_moe: the GPU/CPU split of ossrun.placement (layers on the GPU; layers
            whose experts stay on the CPU, or "all"); default as much on the GPU as fits. On the
            GPU, `plan` is the placement used (None on the CPU).
        mmap: True (default) reads the weights from the file's memory map; False copies the
            expert weights into RAM backed by 2 MiB pages first (ossrun.weights_in_ram: faster
            decoding, slower load; `weights_in_ram` describes the copy); "auto" (the server's
            default) copies them when they fit in the memory available with 2 GiB to spare,
            else reads the map (`mmap_reason` says which and why). On a GPU only the experts
            of the layers whose MoE blocks run on the CPU (plan.n_cpu_moe) are copied.
    """

    def __init__(self, path, n_ctx: int = 4096, threads=None, precision: str = "fast", isa=None,
                 kv_type: str | None = None, device: str = "auto", gpu_layers: int | None = None,
                 cpu_moe: int | str | None = None, mmap: bool | str = True):
        from .device import resolve_device

        self.device, self.device_reason = resolve_device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if kv_type is None:
            kv_type = "f16" if precision == "fast" else "f32"
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {KV_TYPES}, got {kv_type!r}")
        if threads is None:
            threads = default_threads()
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024:
            raise ValueError(f"threads must be an integer in [1, 1024], got {threads!r}")
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
            raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        if not isinstance(mmap, bool) and mmap != "auto":
            raise ValueError(f"mmap must be True, False or 'auto', got {mmap!r}")
        self._file = open_gguf(path)
        self.path = self._file.path
        self.config: ModelConfig = self._file.config
        if n_ctx > self.config.context_length:
            raise ValueError(
                f"n_ctx {n_ctx} exceeds the model's context_length {self.config.context_length}"
            )
        self.n_ctx = n_ctx
        self.precision = precision
        self.kv_type = kv_type
        from .placement import check_split

        self.gpu_layers, self.cpu_moe = check_split(self.config.block_count, gpu_layers, cpu_moe)
        self.plan = None
        if self.device == "cuda":  # planned first: which layers' experts the CPU will run
            from .device_load import plan_on_gpu

            self.plan, why = plan_on_gpu(self, explicit=device == "cuda")
            if self.plan is None:
                self.device, self.device_reason = "cpu", why
        # On a device, the copy below takes only the experts of the layers the CPU runs (the
        # device model uploads the rest from the map).
        cpu_expert_layers = None if self.plan is None else self.plan.n_cpu_moe
        self.weights_in_ram = None
        self.mmap_reason = "mmap=True: weights read from the file's memory map" if mmap is True else None
        if mmap == "auto":
            from .weights_in_ram import copy_fits

            fits, self.mmap_reason = copy_fits(self._file, layers=cpu_expert_layers)
            mmap = not fits
        if not mmap:
            self.weights_in_ram = self._copy_weights_to_ram(cpu_expert_layers)
            if self.weights_in_ram is not None:
                self.mmap_reason = ("mmap=False: " if self.mmap_reason is None
                                    else f"mmap='auto', {self.mmap_reason}: ") + self.weights_in_ram.summary()
            else:  # a file without expert tensors in its map, or none the CPU runs
                self.mmap_reason = "weights read from the file's memory map (nothing copied)"
        try:
            self._core = _core.Model(self._core_config(), self._file.tensors, threads, isa or "auto",
                                     precision)
        except ValueError as e:
            raise ModelError(f"{self.path}: {e}") from None
        if self.plan is not None and not self.plan.stage:
            # The CPU's experts, as for a CPU load below; the device model uploads none of the
            # copies. Not when they are offloaded: the GPU's kernels read the GGUF's rows.
            self._repack_copied_experts()
        if self.plan is not None:  # the CPU core above embeds tokens and runs the CPU-MoE layers
            from .device_load import place_on_gpu

            core, placed = place_on_gpu(self, self.plan, explicit=device == "cuda")
            if core is None:
                self.device, self.device_reason, self.plan = "cpu", placed, None
            else:
                self._core = core
                self.device_reason = f"{self.device_reason}; {placed.summary()}"
        if self.device == "cpu" and os.environ.get("OSSRUN_INTERLEAVE_Q8_0", "1") != "0":
            # The dense Q8_0 matrices in 16-row groups, the layout the fast AVX-512 decode GEMV
            # reads best (csrc/q8_0_interleave.h; nothing for other variants or precisions). Not
            # on a device: the device model copies the GGUF's bytes from the CPU model's views.
            # The tensors are views of the file's read-only map, so its pages may be released.
            self._core.interleave_q8_0(release_source_pages=True)
        if self.device == "cpu":
            self._repack_copied_experts()
        self.tokenizer = self._load_tokenizer()

    def _repack_copied_experts(self) -> None:
        """The MXFP4 experts in 16-row groups (csrc/mxfp4_interleave.h), the layout the fast
        AVX-512 decode GEMV reads best; in place, so only in the copy this process owns
        (mmap=False or "auto"), never in the file's read-only map. Matrices already repacked
        (a device load that fell back to the CPU) are skipped by the core."""
        if self.weights_in_ram is None or os.environ.get("OSSRUN_INTERLEAVE_MXFP4", "1") == "0":
            return
        if self._core.interleave_mxfp4_experts_in_place():
            self.mmap_reason += ", repacked in 16-row groups for the AVX-512 decode GEMV"

    def _copy_weights_to_ram(self, layers: int | None):
        import warnings

        from .weights_in_ram import copy_experts_to_ram

        if layers == 0:  # the device path uploads every expert from the map
            warnings.warn("mmap=False (--no-mmap) copies the experts the CPU runs; this placement "
                          "runs them all on the GPU", RuntimeWarning, stacklevel=3)
            return None
        return copy_experts_to_ram(self._file, layers)

    def _core_config(self) -> dict:
        c = self.config
        return dict(
            block_count=c.block_count, embedding_length=c.embedding_length,
            expert_feed_forward_length=c.expert_feed_forward_length, head_count=c.head_count,
            head_count_kv=c.head_count_kv, key_length=c.key_length, expert_count=c.expert_count,
            expert_used_count=c.expert_used_count, vocab_size=c.vocab_size,
            sliding_window=c.sliding_window, rope_freq_base=c.rope_freq_base,
            rope_scaling_factor=c.rope_scaling_factor,
            rope_original_context=float(c.rope_original_context),
            yarn_beta_fast=c.yarn_beta_fast, yarn_beta_slow=c.yarn_beta_slow,
            rms_norm_eps=c.rms_norm_eps,
        )

    def _load_tokenizer(self):
        from .tokenizer import tokenizer_from_gguf

        return tokenizer_from_gguf(self._file.reader, default_pre=self._file.layout.default_pre)

    @property
    def n_vocab(self) -> int:
        return self.config.vocab_size

    @property
    def threads(self) -> int:
        return self._core.threads

    @property
    def isa(self) -> str:
        return self._core.isa

    def _new_core_session(self, n_ctx: int, kv_type: str):
        """The core session of this model's backend (the CPU's, or the device model's)."""
        kind = _core.DeviceSession if self.device == "cuda" else _core.Session
        return kind(self._core, n_ctx, kv_type)

    def session(self, n_ctx: int | None = None, kv_type: str | None = None) -> Session:
        """A fresh context (KV cache) of n_ctx tokens (default: the model's n_ctx) whose elements
        are kv_type (default: the model's kv_type)."""
        return Session(self, self.n_ctx if n_ctx is None else n_ctx, kv_type)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits of every position of `ids` on a fresh context: float32 [len(ids), n_vocab]."""
        ids = _check_ids(ids, self.n_vocab)
        if ids.size == 0:
            raise ValueError("logits() needs at least one token")
        if ids.size > self.config.context_length:
            raise ContextOverflowError(f"{ids.size} tokens exceed the model's context_length "
                                       f"{self.config.context_length}")
        return self.session(max(self.n_ctx, int(ids.size)))._prefill(ids, all_logits=True)

    def generate(self, ids: Sequence[int], max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, seed=None, stop: Iterable[int] = (),
                 session: Session | None = None) -> Iterator[int]:
        """Yield up to max_tokens sampled ids after the prompt `ids` (temperature 0 = greedy).

        Stops early after yielding a token in `stop`. Uses a fresh session unless one is given
        (then `ids` are appended to it).
        """
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise ValueError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
        sampler = Sampler(temperature, top_p, top_k, seed)
        stop = {int(t) for t in stop}
        s = session or self.session()
        ids = _check_ids(ids, self.n_vocab)
        if ids.size == 0:
            raise ValueError("generate() needs a prompt of at least one token")
        if s.n_past + ids.size > s.n_ctx:  # generation itself stops when the context is full
            raise ContextOverflowError(
                f"prompt of {ids.size} tokens does not fit the context ({s.n_past} used of {s.n_ctx})")
        return self._generate(s, ids, max_tokens, sampler, stop)

    def chat(self, **kwargs):
        """A multi-turn `ossrun.chat.Chat` with this model (see it for the arguments)."""
        from .chat import Chat

        return Chat(self, **kwargs)

    def _generate(self, s, ids, max_tokens, sampler, stop):
        logits = s.prefill(ids)
        for i in range(max_tokens):
            tok = sampler(logits)
            yield tok
            if tok in stop or i + 1 == max_tokens or s.n_past >= s.n_ctx:
                return
            logits = s.decode(tok)


class Session:
    """A context over a model: prefill a prompt, decode token by token, truncate back."""

    def __init__(self, model: Model, n_ctx: int, kv_type: str | None = None):
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
            raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        if n_ctx > model.config.context_length:
            raise ValueError(f"n_ctx {n_ctx} exceeds the model's context_length "
                             f"{model.config.context_length}")
        kv_type = model.kv_type if kv_type is None else kv_type
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {KV_TYPES}, got {kv_type!r}")
        self.model = model
        self._core = model._new_core_session(n_ctx, kv_type)

    @property
    def n_past(self) -> int:
        """Tokens held in the context."""
        return self._core.n_past

    @property
    def n_ctx(self) -> int:
        return self._core.n_ctx

    @property
    def kv_type(self) -> str:
        return self._core.kv_type

    @property
    def tokens(self) -> list[int]:
        return list(self._core.tokens)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Append `ids`; returns the logits of the last position, float32 [n_vocab]."""
        ids = _check_ids(ids, self.model.n_vocab)
        if ids.size == 0:
            raise ValueError("prefill() needs at least one token")
        return self._prefill(ids, all_logits=False)

    def decode(self, token_id: int) -> np.ndarray:
        """Append one token; returns its logits, float32 [n_vocab]."""
        return self.prefill([operator.index(token_id)])

    def _prefill(self, ids: np.ndarray, all_logits: bool) -> np.ndarray:
        if self.n_past + ids.size > self.n_ctx:
            raise ContextOverflowError(
                f"{ids.size} more tokens do not fit: {self.n_past} of n_ctx = {self.n_ctx} used")
        # Long prompts go in pieces of a few chunks, so Ctrl-C (a signal Python sees between
        # calls) stops a long prefill within a second or two; what was prefilled stays valid.
        pieces = [self._core.prefill(ids[i:i + PREFILL_PIECE], all_logits)
                  for i in range(0, ids.size, PREFILL_PIECE)]
        logits = pieces[0] if len(pieces) == 1 else (np.concatenate(pieces) if all_logits else pieces[-1])
        if not np.isfinite(logits).all():
            raise ModelError(f"{self.model.path}: the model produced non-finite logits "
                             "(invalid weights, e.g. an MXFP4 scale of 255)")
        return logits

    def truncate(self, n: int) -> None:
        """Forget every token after the first n (the cache stays exact)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= self.n_past:
            raise ValueError(f"truncate({n!r}) needs 0 <= n <= n_past = {self.n_past}")
        self._core.truncate(int(n))

    def truncates_in_place(self, n: int) -> bool:
        """Whether truncate(n) keeps the cache as it is; False when a sliding-window ring no
        longer holds keys that position n needs, so truncate(n) would replay the first n tokens."""
        return 0 <= n <= self.n_past and self._core.truncates_in_place(int(n))

    def reset(self) -> None:
        """Forget every token."""
        self._core.reset()
