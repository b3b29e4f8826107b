"""Train the nano gpt-oss (ossrun's built-in default model) and export it as a GGUF.

Dev-only: needs PyTorch (CPU, `pip install torch==2.13.0`); run once by a developer, never in CI.
The model is the real gpt-oss architecture of shared/spec/MODEL.md at a tiny size: GQA attention
with per-head sinks, sliding-window (even) / full (odd) layers, YaRN RoPE with concentration,
a top-k MoE with the clamped SwiGLU, biases everywhere the spec has them, untied embeddings.
Its vocabulary is a small byte-level BPE learned from the training data (digits never merged)
plus the harmony specials, so the file ships offline. Data: tools/nano_data.py, rendered with
ossrun's harmony renderer; loss on the tokens the assistant writes only.

Quantization-aware: experts are stored as MXFP4, so the last part of training runs the expert
matrices through MXFP4 rounding (straight-through gradient), and the export writes exactly the
rounded values. Dense matrices are stored as F32.

    python tools/train_nano.py train --out /tmp/nano --steps 3000      # checkpoints as it goes
    python tools/train_nano.py export --ckpt /tmp/nano/last.pt          # GGUF + reference logits

The shipped model: `train --out DIR --minutes 95 --threads 1 --lr 4e-3 --warmup 300 --save-every 500`
(24,359 steps on one core; resumed once at step 13,500 when made-up city and person names were
added to the training data, so a rerun from scratch gives similar, not bit-identical, weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import nano_data  # noqa: E402

DEFAULT_GGUF = ROOT / "python" / "ossrun" / "models" / "nano-gpt-oss.gguf"
DEFAULT_REFERENCE = ROOT / "tests" / "data" / "nano_reference.npz"
N_SPECIAL_ROWS = 21
REFERENCE_STRIDE = 8  # logits rows kept in the reference file  # the harmony specials follow the BPE tokens


@dataclass(frozen=True)
class NanoConfig:
    """Names follow the GGUF keys (`gpt-oss.` prefix) they are written to."""

    block_count: int = 4
    embedding_length: int = 128
    expert_feed_forward_length: int = 128
    head_count: int = 2
    head_count_kv: int = 1
    key_length: int = 64
    expert_count: int = 8
    expert_used_count: int = 2
    vocab_size: int = 1024  # 256 bytes + BPE merges + 21 harmony specials (+ reserved rows)
    sliding_window: int = 128
    rope_freq_base: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_original_context: int = 4096
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    rms_norm_eps: float = 1e-5
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0


# -- MXFP4 rounding (MODEL.md §3): one E8M0 scale per 32 inputs, E2M1 elements ------------------

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_E2M1_MIDPOINTS = (E2M1[1:] + E2M1[:-1]) / 2


def mxfp4_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [..., K] in 0..15, scale bytes [..., K/32]) of a float matrix, blocks along K.

    OCP rule: scale 2^(floor(log2 amax) - 2) so the largest element lands in [4, 8) and is
    clipped to 6; elements round to the nearest E2M1 value (ties to the larger magnitude).
    """
    blocks = w.detach().float().reshape(*w.shape[:-1], -1, 32)
    amax = blocks.abs().amax(-1)
    exp = torch.where(amax > 0, torch.floor(torch.log2(amax.clamp_min(2.0**-126))) - 2,
                      torch.full_like(amax, -127.0)).clamp(-127, 127)
    scaled = blocks.abs() / torch.exp2(exp)[..., None]
    mag = torch.bucketize(scaled.clamp(max=6.0), _E2M1_MIDPOINTS, right=True)
    codes = mag + 8 * (blocks < 0).to(mag.dtype)
    codes = torch.where(mag == 0, torch.zeros_like(codes), codes)  # no -0
    return codes.reshape(w.shape).to(torch.uint8), (exp + 127).to(torch.uint8)


def mxfp4_values(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Float32 values of MXFP4 codes and scale bytes (exact)."""
    c = codes.long()
    mag = E2M1[c & 7] * torch.where(c >= 8, -1.0, 1.0)
    scale = torch.exp2(scales.float() - 127)
    return (mag.reshape(*codes.shape[:-1], -1, 32) * scale[..., None]).reshape(codes.shape)


def mxfp4_round(w: torch.Tensor) -> torch.Tensor:
    """w rounded to MXFP4 in the forward pass, identity gradient (straight-through)."""
    q = mxfp4_values(*mxfp4_codes(w))
    return w + (q - w).detach()


# -- the model ---------------------------------------------------------------------------------

def yarn_inv_freq(cfg: NanoConfig) -> torch.Tensor:
    """θ_i of MODEL.md §2.4, built in float32 step by step as the reference does."""
    d = cfg.key_length
    base = torch.tensor(cfg.rope_freq_base, dtype=torch.float32)
    freq = base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    s = cfg.rope_scaling_factor
    half = d / 2
    low = half * math.log(cfg.rope_original_context / (cfg.yarn_beta_fast * 2 * math.pi)) / \
        math.log(cfg.rope_freq_base)
    high = half * math.log(cfg.rope_original_context / (cfg.yarn_beta_slow * 2 * math.pi)) / \
        math.log(cfg.rope_freq_base)
    interpolation = 1.0 / (s * freq)
    extrapolation = 1.0 / freq
    ramp = (torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)
    mask = 1 - ramp.clamp(0, 1)
    return interpolation * (1 - mask) + extrapolation * mask


class Rope(torch.nn.Module):
    def __init__(self, cfg: NanoConfig):
        super().__init__()
        self.register_buffer("inv_freq", yarn_inv_freq(cfg), persistent=False)
        self.concentration = 0.1 * math.log(cfg.rope_scaling_factor) + 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, heads, d] -> rotated (half-split pairs i, i + d/2), positions 0..T-1."""
        T = x.shape[1]
        angle = torch.arange(T, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        cos = (torch.cos(angle) * self.concentration)[None, :, None, :]
        sin = (torch.sin(angle) * self.concentration)[None, :, None, :]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class RMSNorm(torch.nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


class Attention(torch.nn.Module):
    def __init__(self, cfg: NanoConfig, layer: int, rope: Rope):
        super().__init__()
        H, d = cfg.embedding_length, cfg.key_length
        self.cfg, self.rope = cfg, rope
        self.window = cfg.sliding_window if layer % 2 == 0 else None
        self.norm = RMSNorm(H, cfg.rms_norm_eps)
        self.q = torch.nn.Linear(H, cfg.head_count * d)
        self.k = torch.nn.Linear(H, cfg.head_count_kv * d)
        self.v = torch.nn.Linear(H, cfg.head_count_kv * d)
        self.out = torch.nn.Linear(cfg.head_count * d, H)
        self.sinks = torch.nn.Parameter(torch.zeros(cfg.head_count))

    def forward(self, x):
        B, T, _ = x.shape
        c, d = self.cfg, self.cfg.key_length
        G = c.head_count // c.head_count_kv
        a = self.norm(x)
        q = self.rope(self.q(a).view(B, T, c.head_count, d))
        k = self.rope(self.k(a).view(B, T, c.head_count_kv, d))
        v = self.v(a).view(B, T, c.head_count_kv, d)
        # Query head h reads kv head h // G (contiguous groups).
        k = k.repeat_interleave(G, dim=2).transpose(1, 2)  # [B, heads, T, d]
        v = v.repeat_interleave(G, dim=2).transpose(1, 2)
        q = q.transpose(1, 2)
        # The sink joins the softmax denominator only (no value, no 1/sqrt(d)): an extra key
        # in front, seen by every query, whose logit is the sink (q gets a constant 1 in an
        # extra dimension where only the sink key is nonzero) and whose value is 0. This lets
        # the fused attention kernel do the work.
        scale = 1 / math.sqrt(d)
        q1 = torch.cat([q, q.new_ones(B, c.head_count, T, 1)], dim=-1)
        k1 = torch.cat([k, k.new_zeros(B, c.head_count, T, 1)], dim=-1)
        sink_key = torch.cat([k.new_zeros(c.head_count, d), (self.sinks / scale)[:, None]], -1)
        k1 = torch.cat([sink_key.expand(B, -1, -1)[:, :, None], k1], dim=2)
        v1 = torch.cat([v.new_zeros(B, c.head_count, 1, d), v], dim=2)
        pos = torch.arange(T)
        visible = pos[None, :] <= pos[:, None]
        if self.window is not None:
            visible = visible & (pos[:, None] - pos[None, :] < self.window)
        visible = torch.cat([visible.new_ones(T, 1), visible], dim=1)
        o = F.scaled_dot_product_attention(q1, k1, v1, attn_mask=visible, scale=scale)
        o = o.transpose(1, 2).reshape(B, T, c.head_count * d)
        return x + self.out(o)


class MoE(torch.nn.Module):
    def __init__(self, cfg: NanoConfig):
        super().__init__()
        H, I, E = cfg.embedding_length, cfg.expert_feed_forward_length, cfg.expert_count
        self.cfg = cfg
        self.norm = RMSNorm(H, cfg.rms_norm_eps)
        self.router = torch.nn.Linear(H, E)
        self.gate_w = torch.nn.Parameter(torch.randn(E, I, H) * H**-0.5)
        self.gate_b = torch.nn.Parameter(torch.zeros(E, I))
        self.up_w = torch.nn.Parameter(torch.randn(E, I, H) * H**-0.5)
        self.up_b = torch.nn.Parameter(torch.zeros(E, I))
        self.down_w = torch.nn.Parameter(torch.randn(E, H, I) * I**-0.5)
        self.down_b = torch.nn.Parameter(torch.zeros(E, H))
        self.quantized = False  # MXFP4-rounded expert matrices (quantization-aware training)

    def expert_weights(self):
        ws = (self.gate_w, self.up_w, self.down_w)
        return tuple(mxfp4_round(w) for w in ws) if self.quantized else ws

    def forward(self, x):
        c = self.cfg
        shape = x.shape
        m = self.norm(x).reshape(-1, shape[-1])  # [N, H]
        r = self.router(m)  # [N, E]
        top, experts = torch.topk(r, c.expert_used_count, dim=-1)  # ties: lower index first
        weights = torch.softmax(top, dim=-1)  # over the k selected only
        gate_w, up_w, down_w = self.expert_weights()
        # Group the (token, slot) pairs by expert: one gather and one scatter per layer.
        flat = experts.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // c.expert_used_count
        counts = torch.bincount(flat, minlength=c.expert_count).tolist()
        xs = m[token].split(counts)
        ys = []
        for e, xe in enumerate(xs):
            if xe.shape[0] == 0:
                continue
            g = (xe @ gate_w[e].T + self.gate_b[e]).clamp(max=c.swiglu_limit)
            lin = (xe @ up_w[e].T + self.up_b[e]).clamp(-c.swiglu_limit, c.swiglu_limit)
            h = g * torch.sigmoid(c.swiglu_alpha * g) * (lin + 1)
            ys.append(h @ down_w[e].T + self.down_b[e])
        y = torch.cat(ys) * weights.reshape(-1)[order][:, None]
        out = torch.zeros_like(m).index_add_(0, token, y)
        return x + out.view(shape)


class NanoGptOss(torch.nn.Module):
    def __init__(self, cfg: NanoConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.embedding_length
        self.embedding = torch.nn.Embedding(cfg.vocab_size, H)
        torch.nn.init.normal_(self.embedding.weight, std=1.0)
        rope = Rope(cfg)
        self.attn = torch.nn.ModuleList(Attention(cfg, n, rope) for n in range(cfg.block_count))
        self.mlp = torch.nn.ModuleList(MoE(cfg) for _ in range(cfg.block_count))
        self.norm = RMSNorm(H, cfg.rms_norm_eps)
        self.unembedding = torch.nn.Linear(H, cfg.vocab_size, bias=False)
        torch.nn.init.normal_(self.unembedding.weight, std=H**-0.5)

    def set_quantized(self, on: bool) -> None:
        for m in self.mlp:
            m.quantized = on

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> final-normed hidden states [B, T, H]."""
        x = self.embedding(ids)
        for attn, mlp in zip(self.attn, self.mlp):
            x = mlp(attn(x))
        return self.norm(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V]."""
        return self.unembedding(self.hidden(ids))


# -- data --------------------------------------------------------------------------------------

def make_batches(seed: int, n_conv: int, max_tokens: int, tokenizer, rng: random.Random):
    """Rendered conversations packed into batches of about max_tokens (rows of similar length)."""
    examples = []
    for conv in nano_data.conversations(seed, n_conv, "train"):
        ids, mask = nano_data.render_example(conv, tokenizer)
        examples.append((ids, mask))
    examples.sort(key=lambda e: len(e[0]))
    batches, i = [], 0
    while i < len(examples):
        T = len(examples[i][0])
        rows = max(1, max_tokens // T)
        group = examples[i:i + rows]
        T = max(len(e[0]) for e in group)
        ids = torch.zeros(len(group), T, dtype=torch.long)
        mask = torch.zeros(len(group), T)
        for r, (e_ids, e_mask) in enumerate(group):
            ids[r, :len(e_ids)] = torch.tensor(e_ids)
            mask[r, :len(e_mask)] = torch.tensor(e_mask, dtype=torch.float32)
        batches.append((ids, mask))
        i += len(group)
    rng.shuffle(batches)
    return batches


def loss_fn(model, ids, mask):
    """Mean cross-entropy of the masked (assistant-written) tokens: mask[t] marks target ids[t]."""
    h = model.hidden(ids[:, :-1])
    weight = mask[:, 1:]
    rows = weight.reshape(-1) > 0  # logits only where there is a target: ~1/3 of positions
    logits = model.unembedding(h.reshape(-1, h.shape[-1])[rows])
    ce = F.cross_entropy(logits, ids[:, 1:].reshape(-1)[rows], reduction="none")
    return (ce * weight.reshape(-1)[rows]).sum() / weight.sum().clamp_min(1)


# -- training ----------------------------------------------------------------------------------

def train(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = NanoConfig(**json.loads(args.config)) if args.config else NanoConfig()
    model = NanoGptOss(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                            weight_decay=0.01)
    step, data_round, elapsed = 0, 0, 0.0
    n_merges = cfg.vocab_size - 256 - N_SPECIAL_ROWS
    merges = nano_data.train_bpe(n_merges)
    last = out / "last.pt"
    if last.exists() and not args.restart:
        state = torch.load(last, weights_only=False)
        cfg = NanoConfig(**state["config"])
        merges = state["merges"]
        model = NanoGptOss(cfg)
        model.load_state_dict(state["model"])
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                weight_decay=0.01)
        opt.load_state_dict(state["opt"])
        step, data_round, elapsed = state["step"], state["data_round"], state["elapsed"]
        print(f"resumed at step {step} ({elapsed / 60:.1f} min)", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config {dataclasses.asdict(cfg)}\nparameters {n_params / 1e6:.2f} M", flush=True)
    tok = nano_data.bpe_tokenizer(merges, cfg.vocab_size)
    budget = args.minutes * 60 if args.minutes else None  # seconds; else the step count rules

    def progress(step_now: int) -> float:
        if budget:
            return min(1.0, (time.time() - t_start) / budget)
        return step_now / args.steps

    batches: list = []
    t_start = time.time() - elapsed
    smooth = None
    quantized = False
    while progress(step) < 1.0:
        if not batches:
            # Each round a fresh set of conversations (seed = base seed + round).
            batches = make_batches(args.seed * 1000 + data_round, args.round_size,
                                   args.batch_tokens, tok, random.Random(data_round))
            data_round += 1
        ids, mask = batches.pop()
        frac = progress(step)
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * \
            (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        quantized = quantized or frac >= 1 - args.qat_fraction
        model.set_quantized(quantized)
        loss = loss_fn(model, ids, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        if step % args.log_every == 0:
            el = time.time() - t_start
            print(f"step {step} loss {smooth:.4f} lr {lr:.2e} {'qat ' if quantized else ''}"
                  f"{el / 60:.1f} min ({el / step:.2f} s/step)", flush=True)
        if step % args.save_every == 0 or progress(step) >= 1.0:
            state = {"config": dataclasses.asdict(cfg), "merges": merges,
                     "model": model.state_dict(),
                     "opt": opt.state_dict(), "step": step, "data_round": data_round,
                     "elapsed": time.time() - t_start, "quantized": quantized}
            torch.save(state, out / "tmp.pt")
            (out / "tmp.pt").replace(last)
    print(f"done: {step} steps in {(time.time() - t_start) / 60:.1f} min", flush=True)


# -- export ------------------------------------------------------------------------------------

def load_checkpoint(path) -> tuple[NanoGptOss, list]:
    state = torch.load(path, weights_only=False)
    model = NanoGptOss(NanoConfig(**state["config"]))
    model.load_state_dict(state["model"])
    model.eval()
    return model, state["merges"]


def quantize_experts_in_place(model: NanoGptOss) -> dict:
    """Replace the expert matrices by their MXFP4 values; returns name -> (codes, scales)."""
    packed = {}
    with torch.no_grad():
        for n, m in enumerate(model.mlp):
            for name, w in (("gate", m.gate_w), ("up", m.up_w), ("down", m.down_w)):
                codes, scales = mxfp4_codes(w)
                w.copy_(mxfp4_values(codes, scales))
                packed[f"blk.{n}.ffn_{name}_exps.weight"] = (codes, scales)
            m.quantized = False
    return packed


def gguf_tensors(model: NanoGptOss) -> dict[str, np.ndarray]:
    """GGUF name (MODEL.md §4.3) -> float32 numpy array in numpy order."""
    def f32(t):
        return t.detach().float().numpy().copy()

    out = {"token_embd.weight": f32(model.embedding.weight),
           "output_norm.weight": f32(model.norm.scale),
           "output.weight": f32(model.unembedding.weight)}
    for n, (a, m) in enumerate(zip(model.attn, model.mlp)):
        b = f"blk.{n}."
        out |= {
            b + "attn_norm.weight": f32(a.norm.scale),
            b + "attn_q.weight": f32(a.q.weight), b + "attn_q.bias": f32(a.q.bias),
            b + "attn_k.weight": f32(a.k.weight), b + "attn_k.bias": f32(a.k.bias),
            b + "attn_v.weight": f32(a.v.weight), b + "attn_v.bias": f32(a.v.bias),
            b + "attn_output.weight": f32(a.out.weight), b + "attn_output.bias": f32(a.out.bias),
            b + "attn_sinks.weight": f32(a.sinks),
            b + "post_attention_norm.weight": f32(m.norm.scale),
            b + "ffn_gate_inp.weight": f32(m.router.weight),
            b + "ffn_gate_inp.bias": f32(m.router.bias),
            b + "ffn_gate_exps.bias": f32(m.gate_b), b + "ffn_up_exps.bias": f32(m.up_b),
            b + "ffn_down_exps.bias": f32(m.down_b),
        }
        out |= {b + "ffn_gate_exps.weight": f32(m.gate_w), b + "ffn_up_exps.weight": f32(m.up_w),
                b + "ffn_down_exps.weight": f32(m.down_w)}
    return out


def check_mxfp4_agreement(packed: dict) -> None:
    """The project's writer must pick the same codes and scales as the training rounding."""
    from ossrun.model_maker import quantize_mxfp4

    for key, (codes, scales) in packed.items():
        blocks = quantize_mxfp4(mxfp4_values(codes, scales).numpy())
        c = codes.numpy().reshape(*scales.shape, 32)
        expect_qs = c[..., :16] | (c[..., 16:] << 4)
        if not (np.array_equal(blocks[..., 0], scales.numpy())
                and np.array_equal(blocks[..., 1:], expect_qs)):
            raise AssertionError(f"{key}: the GGUF writer quantizes differently from training")


def reference_sequences(tokenizer, n: int = 3) -> list[list[int]]:
    """A few held-out conversations (one per family kind) for the logits check."""
    seqs = []
    for k, family in enumerate(("tool", "arithmetic", "json")[:n]):
        conv = next(nano_data.conversations(90_000 + k, 1, "heldout", family))
        seqs.append(nano_data.render_example(conv, tokenizer)[0])
    return seqs


def export(args) -> None:
    from ossrun.model_maker import write_trained_model

    torch.set_num_threads(args.threads)
    model, merges = load_checkpoint(args.ckpt)
    cfg = model.cfg
    packed = quantize_experts_in_place(model)
    check_mxfp4_agreement(packed)
    tensors = gguf_tensors(model)
    hp = {"layers": cfg.block_count, "hidden": cfg.embedding_length,
          "intermediate": cfg.expert_feed_forward_length, "heads": cfg.head_count,
          "kv_heads": cfg.head_count_kv, "head_dim": cfg.key_length,
          "experts": cfg.expert_count, "top_k": cfg.expert_used_count,
          "vocab": cfg.vocab_size, "sliding_window": cfg.sliding_window}
    out = Path(args.gguf)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_trained_model(out, hp, tensors, nano_data.bpe_tokens(merges), merges, name=args.name)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB)")
    tok = nano_data.bpe_tokenizer(merges, cfg.vocab_size)
    seqs = reference_sequences(tok)
    ref = {}
    with torch.no_grad():
        for i, s in enumerate(seqs):
            logits = model(torch.tensor([s]))[0].float().numpy()
            rows = np.unique(np.r_[np.arange(0, len(s), REFERENCE_STRIDE), len(s) - 1])
            ref[f"tokens_{i}"] = np.asarray(s, dtype=np.int32)
            ref[f"positions_{i}"] = rows.astype(np.int32)
            ref[f"logits_{i}"] = logits[rows]  # float32; every 8th row keeps the file small
    ref_path = Path(args.reference)
    ref_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(ref_path, **ref)
    print(f"wrote {ref_path} ({ref_path.stat().st_size / 2**10:.0f} KiB)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--minutes", type=float, help="train for this long instead of --steps")
    t.add_argument("--lr", type=float, default=5e-3)
    t.add_argument("--warmup", type=int, default=20)
    t.add_argument("--batch-tokens", type=int, default=2048)
    t.add_argument("--round-size", type=int, default=2000, help="conversations per data round")
    t.add_argument("--qat-fraction", type=float, default=0.2)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--config", help="JSON overrides of NanoConfig")
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--save-every", type=int, default=20)
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    t.set_defaults(func=train)
    e = sub.add_parser("export")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--gguf", default=str(DEFAULT_GGUF))
    e.add_argument("--reference", default=str(DEFAULT_REFERENCE))
    e.add_argument("--name", default="ossrun nano gpt-oss (tiny trained demo)")
    e.add_argument("--threads", type=int, default=2)
    e.set_defaults(func=export)
    a = ap.parse_args(argv)
    a.func(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
