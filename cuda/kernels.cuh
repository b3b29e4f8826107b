// The CUDA kernels' launchers, one per op, on device pointers and a stream; each states its
// shape contract. They trust their arguments: cuda/ops.cu (the test entry points) and, later,
// the CUDA backend check shapes before calling. Same nouns as csrc/kernels.h and csrc/cpu/kernels/.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../csrc/weights.h"

namespace ossrun::cuda {

// y[t * ldy + r] = W[mat] row r · x[t * ldx .. + cols] (+ bias[r]) for t < n_tok, r < rows.
// W.data, x, y and bias are device pointers; W.type is F32, F16, BF16, Q8_0 or MXFP4.
struct MatmulArgs {
    Matrix W;
    int64_t mat = 0;
    const float* x = nullptr;
    int64_t ldx = 0;
    int64_t n_tok = 0;
    float* y = nullptr;
    int64_t ldy = 0;
    const float* bias = nullptr;  // [rows] or null
};

// Decode: one warp per (row, token), for few tokens (gemv.cu).
void gemv(const MatmulArgs& a, cudaStream_t stream);
// Prefill: 32x32 output tiles through shared memory (gemm.cu).
void gemm(const MatmulArgs& a, cudaStream_t stream);
// The one the forward pass calls: gemv below kGemmMinTokens tokens, else gemm.
constexpr int64_t kGemmMinTokens = 8;
void matmul(const MatmulArgs& a, cudaStream_t stream);

// y[t][i] = g[i] * x[t][i] / sqrt(mean_i(x[t]^2) + eps), x and y [n_rows][n] (rmsnorm.cu).
void rmsnorm(const float* x, const float* g, float* y, int64_t n_rows, int64_t n, float eps,
             cudaStream_t stream);

// Half-split YaRN rotation in place of x [T][n_heads][d] at positions [T] (rope.cu); theta [d/2]
// is the host's table (csrc/rope.cpp make_rope_table), cos/sin are computed here as the CPU does.
void rope(float* x, const int64_t* positions, int64_t T, int64_t n_heads, int64_t d,
          const float* theta, float concentration, cudaStream_t stream);

// Causal GQA attention with sinks and an optional sliding window over a KV cache (attention.cu).
// The slot of position j is j % cap; keys and values are [cap][n_kv][d]. Query t at positions[t]
// sees keys max(0, p - window + 1) .. p (window 0: all from 0), which must span at most cap slots.
// Each head's sink joins its softmax denominator only (no value, no scale).
struct AttentionArgs {
    const float* q = nullptr;          // [T][n_q][d]
    const float* k = nullptr;          // [cap][n_kv][d], after RoPE
    const float* v = nullptr;          // [cap][n_kv][d]
    const int64_t* positions = nullptr;  // [T]
    const float* sinks = nullptr;      // [n_q]
    float* out = nullptr;              // [T][n_q][d]
    int64_t T = 0, n_q = 0, n_kv = 0, d = 0, cap = 0, window = 0;
    float scale = 0.0f;
};
constexpr int64_t kMaxHeadDim = 256;
void attention(const AttentionArgs& a, cudaStream_t stream);

// Per token t: the k largest of logits[t][0..E) (ties: lower index first) into idx[t][k] and
// their softmax weights into weight[t][k] (moe_ops.cu, as csrc/moe_ops.h router_topk).
void router_topk(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* idx, float* weight,
                 cudaStream_t stream);

// h[j] = min(g, limit) * sigmoid(alpha * min(g, limit)) * (clamp(l, -limit, limit) + 1), j < n.
void swiglu(const float* gate, const float* lin, float* h, int64_t n, float alpha, float limit,
            cudaStream_t stream);

}  // namespace ossrun::cuda
