"""Independent float64 numpy reference of the gpt-oss forward pass, written from
/work/shared/spec/MODEL.md (section numbers below refer to it). The C++ kernels are tested
against it; it is itself tested against OpenAI's golden logits in test_reference.py.
Clarity over speed: every op is the formula of the spec, evaluated in float64.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import quant_reference

# ggml type ids (MODEL.md §4.3).
GGML_F32, GGML_F16, GGML_Q8_0, GGML_BF16, GGML_MXFP4 = 0, 1, 8, 30, 39

# Constants fixed by arch `gpt-oss`, not stored in GGUF (§4.2).
SWIGLU_ALPHA = 1.702
SWIGLU_LIMIT = 7.0
YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0

# E2M1 code -> value (§3.1); bit 3 is the sign, so codes 8..15 mirror 0..7.
E2M1_TABLE = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
)


# --------------------------------------------------------------------------- format decoders


def _as_bytes(raw) -> np.ndarray:
    """Any array or bytes object -> its little-endian bytes as a flat uint8 array."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return np.frombuffer(raw, dtype=np.uint8)
    return np.ascontiguousarray(raw).view(np.uint8).reshape(-1)


def e2m1_value(code):
    """E2M1 4-bit code(s) 0..15 -> float64 value(s)."""
    return E2M1_TABLE[np.asarray(code)]


def e8m0_value(byte):
    """E8M0 scale byte(s) -> 2^(e − 127) as float64 (exact; 255 = NaN is a load error)."""
    e = np.asarray(byte).astype(np.int64)
    if np.any(e == 255):
        raise ValueError("E8M0 scale byte 255 (NaN) in an MXFP4 tensor")
    return np.ldexp(1.0, e - 127)


def dequant_f32(raw, shape) -> np.ndarray:
    """F32 bytes (or array) -> float64 array of `shape`."""
    return _as_bytes(raw).view("<f4").astype(np.float64).reshape(shape)


def dequant_f16(raw, shape) -> np.ndarray:
    """IEEE fp16 bytes (or array) -> float64 array of `shape` (numpy decodes subnormals exactly)."""
    return _as_bytes(raw).view("<f2").astype(np.float64).reshape(shape)


def dequant_bf16(raw, shape) -> np.ndarray:
    """bf16 bytes (or uint16 array) -> float64 array of `shape` (bf16 = top half of a float32)."""
    bits = _as_bytes(raw).view("<u2").astype(np.uint32) << 16
    return bits.view(np.float32).astype(np.float64).reshape(shape)


def dequant_q8_0(raw_uint8, n_rows: int, n_cols: int) -> np.ndarray:
    """Q8_0 bytes -> float64 [n_rows, n_cols]. Block = 34 bytes: fp16 d, 32 int8 q; value d·q.

    d goes through a real fp16 decode because real files have subnormal scales (§6.9).
    """
    blocks = _as_bytes(raw_uint8).reshape(n_rows, n_cols // 32, 34)
    d = blocks[:, :, :2].copy().view("<f2").astype(np.float64)  # [rows, nb, 1]
    q = blocks[:, :, 2:].view(np.int8).astype(np.float64)  # [rows, nb, 32]
    return (d * q).reshape(n_rows, n_cols)


def dequant_mxfp4_gguf(raw_uint8, n_rows: int, n_cols: int) -> np.ndarray:
    """GGUF block_mxfp4 bytes -> float64 [n_rows, n_cols] (§3.3).

    Block = 17 bytes: E8M0 byte e, then qs[16] in split order (byte k holds element k in the
    low nibble and element k+16 in the high nibble). Value = E2M1(code)·2^(e−127); deliberately
    not ggml's doubled-int table with a halved scale, so the two decoders stay independent.
    """
    blocks = _as_bytes(raw_uint8).reshape(n_rows, n_cols // 32, 17)
    scale = e8m0_value(blocks[:, :, :1])  # [rows, nb, 1]
    qs = blocks[:, :, 1:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # elements 0..15, then 16..31
    return (e2m1_value(codes) * scale).reshape(n_rows, n_cols)


def dequant_mxfp4_openai(blocks, scales) -> np.ndarray:
    """OpenAI MXFP4 pair -> float64 [..., n_blocks·32] (§3.2).

    blocks uint8 [..., n_blocks, 16] in pair order (byte j: element 2j low nibble, 2j+1 high);
    scales uint8 [..., n_blocks], one E8M0 byte per 32 inputs (not per row).
    """
    blocks, scales = np.asarray(blocks), np.asarray(scales)
    if blocks.shape[-1] != 16 or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks {blocks.shape} do not match scales {scales.shape}")
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*scales.shape, 32)
    values = e2m1_value(codes) * e8m0_value(scales)[..., None]
    return values.reshape(*scales.shape[:-1], scales.shape[-1] * 32)


def dequantize(raw, ggml_type: int, numpy_shape) -> np.ndarray:
    """Decode a GGUF tensor to float64 of its logical numpy shape (ggml ne reversed)."""
    shape = tuple(int(n) for n in numpy_shape)
    n_cols = shape[-1]
    n_rows = math.prod(shape[:-1])
    if ggml_type == GGML_F32:
        return dequant_f32(raw, shape)
    if ggml_type == GGML_F16:
        return dequant_f16(raw, shape)
    if ggml_type == GGML_BF16:
        return dequant_bf16(raw, shape)
    if ggml_type == GGML_Q8_0:
        return dequant_q8_0(raw, n_rows, n_cols).reshape(shape)
    if ggml_type == GGML_MXFP4:
        return dequant_mxfp4_gguf(raw, n_rows, n_cols).reshape(shape)
    if ggml_type in quant_reference.TYPE_NAMES:  # the dense quants of community files
        raw = _as_bytes(raw).reshape(n_rows, -1)
        return quant_reference.dequantize(raw, quant_reference.TYPE_NAMES[ggml_type], n_cols).reshape(shape)
    raise ValueError(f"unsupported ggml type {ggml_type}")


# --------------------------------------------------------------------------- ops


def matmul(x, W, b=None) -> np.ndarray:
    """y = W·x (+ b) row-wise: x [..., in], W [out, in], b [out] -> [..., out]."""
    y = x @ W.T
    return y if b is None else y + b


def rmsnorm(x, g, eps=1e-5) -> np.ndarray:
    """RMSNorm over the last axis (§2.2): x [..., H], g [H] -> [..., H]; ε inside the sqrt."""
    return g * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


# θ_i of §2.4 for gpt-oss (d 64, base 150000, YaRN 32 / 4096 / 32 / 1) as float32 bits: the
# reference's own table. Our float32-step evaluation matches it except at i = 6 and 10, where
# the exact power b^(2i/d) lies 0.47 ulp from a float32 midpoint and torch's 1-ulp float32 pow
# rounds it the other way; so the reference's table is taken as data for these parameters.
GPT_OSS_ROPE = (64, 150000.0, 32.0, 4096, 32.0, 1.0)
GPT_OSS_THETA_BITS = (
    0x3F800000, 0x3F306535, 0x3EF316A2, 0x3EA77FAA, 0x3E66D3FA, 0x3E1F0CFD, 0x3DDB2F9F, 0x3D970764,
    0x3D502194, 0x3D01DDD5, 0x3C9E646F, 0x3C3DEC94, 0x3BDEA840, 0x3B7CFE14, 0x3B093803, 0x3A89F778,
    0x39EF543C, 0x390799B9, 0x3820ADC6, 0x37DD6DFC, 0x37989328, 0x375242FA, 0x3710E12C, 0x36C7A82B,
    0x3689928C, 0x363D9647, 0x3602A245, 0x35B40668, 0x35781728, 0x352AF200, 0x34EB93EB, 0x34A252D3,
)


def yarn_corr_range(head_dim, base, orig_ctx, beta_fast, beta_slow):
    """(low, high) frequency indices of the YaRN ramp, real numbers: never floored/ceiled."""
    half = head_dim // 2
    low = half * math.log(orig_ctx / (beta_fast * 2 * math.pi)) / math.log(base)
    high = half * math.log(orig_ctx / (beta_slow * 2 * math.pi)) / math.log(base)
    assert 0 < low < high < half - 1
    return low, high


def yarn_theta_f32(
    head_dim=64, base=150000.0, factor=32.0, orig_ctx=4096, beta_fast=32.0, beta_slow=1.0
) -> np.ndarray:
    """YaRN frequencies θ_i evaluated in the reference's float32 steps -> float32 [head_dim/2].

    f_i = b^(2i/d) correctly rounded to float32 (float64 pow, then rounded); every later step
    is rounded to float32 in the reference's order, Python-float operands rounded to float32
    as torch does with scalars. low/high stay real numbers (no floor/ceil).
    """
    f32 = np.float32
    half = head_dim // 2
    exponent = np.arange(0, head_dim, 2, dtype=f32) / f32(head_dim)
    freq = (float(base) ** exponent.astype(np.float64)).astype(f32)
    if factor <= 1.0:
        return f32(1) / freq
    low, high = yarn_corr_range(head_dim, base, orig_ctx, beta_fast, beta_slow)
    interpolation = f32(1) / (f32(factor) * freq)
    extrapolation = f32(1) / freq
    ramp = (np.arange(half, dtype=f32) - f32(low)) / f32(high - low)
    mask = f32(1) - np.clip(ramp, f32(0), f32(1))
    return interpolation * (f32(1) - mask) + extrapolation * mask


def rope_theta_table(
    head_dim=64, base=150000.0, factor=32.0, orig_ctx=4096, beta_fast=32.0, beta_slow=1.0
) -> np.ndarray:
    """θ_i as the reference builds it, float32 [head_dim/2]: the §2.4 table (bit-exact) for
    gpt-oss's parameters, `yarn_theta_f32` otherwise (within 1 ulp of the reference's)."""
    args = (head_dim, float(base), float(factor), orig_ctx, float(beta_fast), float(beta_slow))
    if args == GPT_OSS_ROPE:
        return np.array(GPT_OSS_THETA_BITS, dtype=np.uint32).view(np.float32)
    return yarn_theta_f32(*args)


def yarn_concentration(factor) -> float:
    """C = 1 + 0.1·ln(s) for s > 1, else 1 (§2.4)."""
    return 1.0 + 0.1 * math.log(factor) if factor > 1.0 else 1.0


def rope_cos_sin(positions, theta_f32, concentration):
    """(cos, sin) float64 [T, half] holding the reference's float32 values (§2.4).

    Angle = one float32 multiply p·θ_i (its rounding matters at long context); cos/sin of that
    float32 angle evaluated in float64 and rounded to float32; then × float32(C) in float32.
    """
    f32 = np.float32
    angle = np.asarray(positions, dtype=f32)[:, None] * np.asarray(theta_f32, dtype=f32)[None, :]
    angle = angle.astype(np.float64)
    c = f32(concentration)
    cos = np.cos(angle).astype(f32) * c
    sin = np.sin(angle).astype(f32) * c
    return cos.astype(np.float64), sin.astype(np.float64)


def apply_rope(x, cos, sin) -> np.ndarray:
    """Half-split (NeoX) rotation: x [T, n_heads, d], cos/sin [T, d/2] -> [T, n_heads, d].

    Element i pairs with i + d/2 (not 2i with 2i+1).
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def attention(q, k, v, sinks, q_positions, k_positions, window=None) -> np.ndarray:
    """Causal GQA attention with sinks (§2.5).

    q [T, nq, d], k/v [S, nkv, d], sinks [nq], positions [T] / [S] -> [T, nq, d].

    Key j is visible to query p when j <= p and (no window, or p − j < window): the window
    holds `window` keys including the query itself. q head h reads kv head h // (nq/nkv).
    The sink is one extra logit per q head in the softmax denominator only: no value, no
    1/√d scale. Rows with no visible key give 0 (only the sink).
    """
    T, nq, d = q.shape
    nkv = k.shape[1]
    group = nq // nkv
    qp = np.asarray(q_positions)[:, None]
    kp = np.asarray(k_positions)[None, :]
    visible = kp <= qp
    if window is not None:
        visible &= (qp - kp) < window
    out = np.empty((T, nq, v.shape[2]))
    for h in range(nq):
        g = h // group
        z = (q[:, h, :] @ k[:, g, :].T) / math.sqrt(d)  # [T, S]
        z = np.where(visible, z, -np.inf)
        m = np.maximum(z.max(axis=1, keepdims=True), sinks[h])  # max includes the sink
        p = np.exp(z - m)
        den = np.exp(sinks[h] - m) + p.sum(axis=1, keepdims=True)
        out[:, h, :] = (p / den) @ v[:, g, :]
    return out


def router_topk(logits, k):
    """Top-k experts of raw router logits [T, E] -> (indices int [T, k], weights [T, k]).

    Ties go to the lower expert index (stable sort); weights = softmax over the k selected
    logits only.
    """
    logits = np.asarray(logits)
    idx = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    sel = np.take_along_axis(logits, idx, axis=-1)
    w = np.exp(sel - sel.max(axis=-1, keepdims=True))
    return idx, w / w.sum(axis=-1, keepdims=True)


def swiglu_oai(gate, lin, alpha=SWIGLU_ALPHA, limit=SWIGLU_LIMIT) -> np.ndarray:
    """Clamped SwiGLU (§2.6), elementwise on equal shapes.

    Gate clamped above only (σ sends very negative gates to 0); linear clamped both sides;
    the "+1" goes on the clamped linear half.
    """
    g = np.minimum(gate, limit)
    lin = np.clip(lin, -limit, limit)
    return g / (1.0 + np.exp(-alpha * g)) * (lin + 1.0)


def moe(x, router_w, router_b, gate_w, gate_b, up_w, up_b, down_w, down_b, k) -> np.ndarray:
    """MoE of the already-normalised input (§2.6): x [T, H] -> [T, H] (no residual).

    router_w [E, H], router_b [E]; gate_w/up_w [E, I, H] with gate_b/up_b [E, I] (GGUF's
    de-interleaved mlp1); down_w [E, H, I], down_b [E, H]. The down bias sits inside the
    routing-weighted sum.
    """
    idx, w = router_topk(matmul(x, router_w, router_b), k)
    out = np.zeros_like(x, dtype=np.float64)
    for e in range(router_w.shape[0]):
        rows, slot = np.nonzero(idx == e)
        if rows.size == 0:
            continue
        xe = x[rows]
        h = swiglu_oai(matmul(xe, gate_w[e], gate_b[e]), matmul(xe, up_w[e], up_b[e]))
        # A token picks an expert at most once, so `rows` has no repeats for +=.
        out[rows] += w[rows, slot][:, None] * matmul(h, down_w[e], down_b[e])
    return out


# --------------------------------------------------------------------------- loaders


def load_gguf_weights(path):
    """Read a gpt-oss GGUF -> (hparams, weights).

    hparams: metadata with the `<arch>.` prefix removed (e.g. `block_count`,
    `attention.sliding_window`) plus `architecture`. weights: name -> float64 array of the
    logical numpy shape (ne reversed; MXFP4 [E, rows, cols] in elements, not bytes).
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    hparams = {"architecture": arch}
    for key, field in reader.fields.items():
        if key.startswith(arch + "."):
            hparams[key[len(arch) + 1 :]] = field.contents()
    weights = {}
    for t in reader.tensors:
        shape = [int(n) for n in reversed(t.shape)]
        weights[t.name] = dequantize(t.data, int(t.tensor_type), shape)
    return hparams, weights


_SAFETENSORS_DTYPES = {"F32": dequant_f32, "F16": dequant_f16, "BF16": dequant_bf16}


def _read_safetensors(path) -> dict:
    """Parse a .safetensors file by hand (numpy has no bf16): name -> float64 or raw uint8 array."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = np.frombuffer(data, dtype=np.uint8, offset=8 + n)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw, shape = body[begin:end], info["shape"]
        if info["dtype"] == "U8":
            out[name] = raw.reshape(shape)
        else:
            out[name] = _SAFETENSORS_DTYPES[info["dtype"]](raw, shape)
    return out


def load_openai_safetensors(directory):
    """Read an original-layout checkpoint dir (config.json + *.safetensors) -> (config, weights).

    weights: original names -> float64; each MXFP4 pair `X.blocks`/`X.scales` becomes one
    decoded tensor `X` of shape [E, rows, cols] (e.g. `block.0.mlp.mlp1_weight`).
    """
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    raw = {}
    for f in sorted(directory.glob("*.safetensors")):
        raw.update(_read_safetensors(f))
    weights = {}
    for name, arr in raw.items():
        if name.endswith(".blocks"):
            base = name[: -len(".blocks")]
            weights[base] = dequant_mxfp4_openai(arr, raw[base + ".scales"])
        elif not name.endswith(".scales"):
            weights[name] = arr
    return config, weights


def openai_to_gguf(config, weights):
    """Original-layout (config, weights) -> (hparams, weights) under GGUF names (§3.4, §4.3).

    Splits fused qkv rows into q/k/v and de-interleaves mlp1 rows (even = gate, odd = up).
    """
    L, nq, nkv, d = (config[k] for k in ("num_hidden_layers", "num_attention_heads",
                                          "num_key_value_heads", "head_dim"))
    hparams = {
        "architecture": "gpt-oss",
        "block_count": L,
        "embedding_length": config["hidden_size"],
        "expert_feed_forward_length": config["intermediate_size"],
        "attention.head_count": nq,
        "attention.head_count_kv": nkv,
        "attention.key_length": d,
        "attention.value_length": d,
        "attention.sliding_window": config["sliding_window"],
        "expert_count": config["num_experts"],
        "expert_used_count": config["experts_per_token"],
        "rope.freq_base": config["rope_theta"],
        "rope.scaling.factor": config["rope_scaling_factor"],
        "rope.scaling.original_context_length": config["initial_context_length"],
        "rope.scaling.yarn_beta_fast": config["rope_ntk_beta"],
        "rope.scaling.yarn_beta_slow": config["rope_ntk_alpha"],
    }
    w = {
        "token_embd.weight": weights["embedding.weight"],
        "output_norm.weight": weights["norm.scale"],
        "output.weight": weights["unembedding.weight"],
    }
    q_end, k_end = nq * d, nq * d + nkv * d
    for n in range(L):
        src, dst = f"block.{n}.", f"blk.{n}."
        for part in ("weight", "bias"):
            qkv = weights[src + "attn.qkv." + part]
            w[dst + "attn_q." + part] = qkv[:q_end]
            w[dst + "attn_k." + part] = qkv[q_end:k_end]
            w[dst + "attn_v." + part] = qkv[k_end:]
            w[dst + "attn_output." + part] = weights[src + "attn.out." + part]
            w[dst + "ffn_gate_inp." + part] = weights[src + "mlp.gate." + part]
        w[dst + "attn_norm.weight"] = weights[src + "attn.norm.scale"]
        w[dst + "attn_sinks.weight"] = weights[src + "attn.sinks"]
        w[dst + "post_attention_norm.weight"] = weights[src + "mlp.norm.scale"]
        mlp1, mlp1_b = weights[src + "mlp.mlp1_weight"], weights[src + "mlp.mlp1_bias"]
        w[dst + "ffn_gate_exps.weight"] = mlp1[:, 0::2]
        w[dst + "ffn_up_exps.weight"] = mlp1[:, 1::2]
        w[dst + "ffn_gate_exps.bias"] = mlp1_b[:, 0::2]
        w[dst + "ffn_up_exps.bias"] = mlp1_b[:, 1::2]
        w[dst + "ffn_down_exps.weight"] = weights[src + "mlp.mlp2_weight"]
        w[dst + "ffn_down_exps.bias"] = weights[src + "mlp.mlp2_bias"]
    return hparams, w


# --------------------------------------------------------------------------- whole model


def forward(hparams, weights, tokens, collect=None) -> np.ndarray:
    """Full-sequence forward over GGUF-named weights: tokens [T] -> logits float64 [T, V].

    Positions are 0..T-1. Sliding window on even layers only, full causal on odd ones.
    If `collect` is a dict it receives the residual stream [T, H] after each attention half
    (`attn_L`) and each MoE half (`mlp_L`).
    """
    nq = hparams["attention.head_count"]
    nkv = hparams["attention.head_count_kv"]
    d = hparams["attention.key_length"]
    eps = hparams.get("attention.layer_norm_rms_epsilon", 1e-5)
    factor = hparams.get("rope.scaling.factor", 1.0)
    theta = rope_theta_table(
        head_dim=d,
        base=hparams["rope.freq_base"],
        factor=factor,
        orig_ctx=hparams.get("rope.scaling.original_context_length", 4096),
        beta_fast=hparams.get("rope.scaling.yarn_beta_fast", YARN_BETA_FAST),
        beta_slow=hparams.get("rope.scaling.yarn_beta_slow", YARN_BETA_SLOW),
    )
    T = len(tokens)
    positions = np.arange(T)
    cos, sin = rope_cos_sin(positions, theta, yarn_concentration(factor))

    x = weights["token_embd.weight"][np.asarray(tokens)]
    for n in range(hparams["block_count"]):
        prefix = f"blk.{n}."
        blk = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        a = rmsnorm(x, blk["attn_norm.weight"], eps)
        q = matmul(a, blk["attn_q.weight"], blk["attn_q.bias"]).reshape(T, nq, d)
        k = matmul(a, blk["attn_k.weight"], blk["attn_k.bias"]).reshape(T, nkv, d)
        v = matmul(a, blk["attn_v.weight"], blk["attn_v.bias"]).reshape(T, nkv, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        window = hparams["attention.sliding_window"] if n % 2 == 0 else None
        o = attention(q, k, v, blk["attn_sinks.weight"], positions, positions, window)
        x = x + matmul(o.reshape(T, nq * d), blk["attn_output.weight"], blk["attn_output.bias"])
        if collect is not None:
            collect[f"attn_{n}"] = x
        m = rmsnorm(x, blk["post_attention_norm.weight"], eps)
        x = x + moe(
            m,
            blk["ffn_gate_inp.weight"], blk["ffn_gate_inp.bias"],
            blk["ffn_gate_exps.weight"], blk["ffn_gate_exps.bias"],
            blk["ffn_up_exps.weight"], blk["ffn_up_exps.bias"],
            blk["ffn_down_exps.weight"], blk["ffn_down_exps.bias"],
            hparams["expert_used_count"],
        )
        if collect is not None:
            collect[f"mlp_{n}"] = x
    return matmul(rmsnorm(x, weights["output_norm.weight"], eps), weights["output.weight"])
