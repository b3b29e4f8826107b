// The CUDA kernels' launchers, one per op, on device pointers and a stream; each states its
// shape contract. They trust their arguments: cuda/ops.cu (the test entry points) and, later,
// the CUDA backend check shapes before calling. Same nouns as csrc/kernels.h and csrc/cpu/kernels/.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../csrc/kernels.h"  // KvType
#include "../csrc/weights.h"

namespace ossrun::cuda {

// cudaMalloc's alignment: every offset in the weight arena and the activation block, and each
// part of a split, is a multiple of it.
constexpr size_t kDeviceAlign = 256;
inline size_t aligned(size_t n) { return (n + kDeviceAlign - 1) / kDeviceAlign * kDeviceAlign; }

// The activations of the tensor-core GEMM (gemm_mma.cu), made once per x by split_activations
// for every matmul that reads x: each row divided by a power of two (its largest magnitude lands
// in [2^14, 2^15): no half overflow, full half precision down to 2^-28 of it) and rounded to
// halves x_hi, plus the residuals x_lo = x - x_hi as halves when exact (precision "f32": ~22 bits
// of x; "fast": x_hi's 11). Word q of a row's 32-element block holds its elements q (low half) and
// q + 16 (high half), the two nibbles of MXFP4 code byte q. Device arrays.
struct SplitActivations {
    const uint32_t* hi = nullptr;  // [rows][cols / 2]
    const uint32_t* lo = nullptr;  // [rows][cols / 2], exact only
    const float* scale = nullptr;  // [rows]: the power of two each row was divided by
    int64_t rows = 0, cols = 0;
    bool exact = true;
};
// Device bytes of one half (hi or lo) of rows x cols split, 256-aligned.
inline size_t split_halves_bytes(int64_t rows, int64_t cols) {
    return aligned(4 * size_t(rows) * size_t(cols / 2));
}
// Device bytes split_activations writes for rows x cols (hi, lo and scale, each 256-aligned).
inline size_t split_activations_bytes(int64_t rows, int64_t cols) {
    return 2 * split_halves_bytes(rows, cols) + aligned(4 * size_t(rows));
}
// Splits x[r * ldx .. + cols] for r < rows (cols a multiple of 32, any alignment) into `memory`
// (device, 256-aligned, split_activations_bytes(rows, cols)) and returns the view of it.
SplitActivations split_activations(const float* x, int64_t ldx, int64_t rows, int64_t cols, bool exact,
                                   void* memory, cudaStream_t stream);

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
    // x split for the tensor cores (split_activations below): what the GEMM of MXFP4, Q8_0 and F16
    // weights reads (gemm_mma_can_run), and its precision; the other kernels read x.
    SplitActivations split;
};

// The arguments of y[n_tok, W.rows] = x[n_tok, W.cols] W^T (+ bias), dense rows: W.data, x, y
// and bias on the device.
inline MatmulArgs matmul_args(const Matrix& W, const float* x, int64_t n_tok, float* y, const float* bias) {
    MatmulArgs a;
    a.W = W;
    a.x = x;
    a.ldx = W.cols;
    a.n_tok = n_tok;
    a.y = y;
    a.ldy = W.rows;
    a.bias = bias;
    return a;
}

// Decode: one warp per row for up to 8 tokens, a lane per 32-element block where the type and
// cols allow (csrc/block_values.h; gemv.cu).
void gemv(const MatmulArgs& a, cudaStream_t stream);
// Prefill: MXFP4 / Q8_0 / F16 on tensor cores (gemm_mma below, on a.split, which must be set),
// other types 32x32 float32 tiles through shared memory (gemm.cu).
void gemm(const MatmulArgs& a, cudaStream_t stream);
// The one the forward pass calls: gemv below kGemmMinTokens tokens, else gemm.
constexpr int64_t kGemmMinTokens = 8;
void matmul(const MatmulArgs& a, cudaStream_t stream);
// Up to kMaxMatmulParts matmuls of one x (decode's q, k and v projections): one gemv launch where
// its block kernel reads them all (below kGemmMinTokens tokens; one format and cols), each part's
// rows computed as gemv computes them alone, and true; else one matmul each, and false.
constexpr int kMaxMatmulParts = 3;
bool matmul_parts(const MatmulArgs* parts, int n, cudaStream_t stream);

// y[t][i] = g[i] * x[t][i] / sqrt(mean_i(x[t]^2) + eps), x and y [n_rows][n] (rmsnorm.cu).
void rmsnorm(const float* x, const float* g, float* y, int64_t n_rows, int64_t n, float eps,
             cudaStream_t stream);

// Half-split YaRN rotation in place of x [T][n_heads][d] at positions [T] (rope.cu); theta [d/2]
// is the host's table (csrc/rope.cpp make_rope_table), cos/sin are computed here as the CPU does.
void rope(float* x, const int64_t* positions, int64_t T, int64_t n_heads, int64_t d,
          const float* theta, float concentration, cudaStream_t stream);

// Causal GQA attention with sinks and an optional sliding window over a KV cache (attention.cu).
// The slot of position j is j % cap; keys and values are [cap][n_kv][d] of kv_type (float32, or
// IEEE half / bfloat16 widened to float32 as they are read). Query t at positions[t]
// sees keys max(0, p - window + 1) .. p (window 0: all from 0), which must span at most cap slots.
// Each head's sink joins its softmax denominator only (no value, no scale).
// Rows of more than kAttentionSplitMaxRows tokens (prefill) attend tiled, a block per KV head and
// run of tokens: on tensor cores over an IEEE-half cache where the head dimension is a multiple of
// 16 up to 128 (attention_mma.cu), else on float32 where it is a multiple of 16 up to 256
// (attention.cu tiled_can_run); attention_path says which.
struct AttentionArgs {
    const float* q = nullptr;          // [T][n_q][d]
    const void* k = nullptr;           // [cap][n_kv][d], after RoPE
    const void* v = nullptr;           // [cap][n_kv][d]
    KvType kv_type = KvType::F32;
    const int64_t* positions = nullptr;  // [T]
    const float* sinks = nullptr;      // [n_q]
    float* out = nullptr;              // [T][n_q][d]
    int64_t T = 0, n_q = 0, n_kv = 0, d = 0, cap = 0, window = 0;
    float scale = 0.0f;
    // The tensor-core path's precision (attention_mma.cu): q and the softmax weights as two halves
    // each (~22 bits), or one (11 bits; the "fast" precision).
    bool exact = true;
    // Flash-decoding (csrc/attention_split.h's chunks of keys, one block each, then a merge) when
    // n_parts > 1: at least the most chunks any row's key range has; partial results
    // [T][n_q][n_parts] (acc times d) in the caller's device buffers.
    int64_t n_parts = 0;
    float* part_acc = nullptr;
    float* part_max = nullptr;
    float* part_sum = nullptr;
};
constexpr int64_t kMaxHeadDim = 256;
// Rows of at most this many tokens are split (decode); prefill has blocks enough unsplit.
constexpr int64_t kAttentionSplitMaxRows = 8;
void attention(const AttentionArgs& a, cudaStream_t stream);
// The kernel attention(a) runs: decode rows one block per (head, token), split into chunks of
// keys and merged, or prefill tiled on tensor cores or on float32.
enum class AttentionPath { kRows, kSplit, kTensorCores, kTiled };
AttentionPath attention_path(const AttentionArgs& a);
// attention.cu's tensor-core prefill kernel (attention_mma.cu) and the arguments it takes.
bool attention_mma_can_run(const AttentionArgs& a);
void attention_mma(const AttentionArgs& a, cudaStream_t stream);

// Per token t: the k largest of logits[t][0..E) (ties: lower index first) into idx[t][k] and
// their softmax weights into weight[t][k] (moe_ops.cu, as csrc/moe_ops.h router_topk).
void router_topk(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* idx, float* weight,
                 cudaStream_t stream);

// h[j] = min(g, limit) * sigmoid(alpha * min(g, limit)) * (clamp(l, -limit, limit) + 1), j < n.
void swiglu(const float* gate, const float* lin, float* h, int64_t n, float alpha, float limit,
            cudaStream_t stream);

// dst[i] += src[i], i < n: the residual adds (elementwise.cu).
void add_into(float* dst, const float* src, int64_t n, cudaStream_t stream);

// The KV cache on the device (kv_store.cu): rows t < T of k and v ([T][width] float32, K after
// RoPE) go to slot positions[t] % cap of k_cache and v_cache ([cap][width] of `type`), rounded to
// nearest even for the 16-bit types as the CPU cache stores them.
void kv_store(const float* k, const float* v, const int64_t* positions, int64_t T, int64_t width,
              int64_t cap, KvType type, void* k_cache, void* v_cache, cudaStream_t stream);
// n elements of `type` at `cache` set to pseudo-random values in [-1, 1) (benchmarks at depth).
void kv_fill(void* cache, int64_t n, KvType type, uint32_t seed, cudaStream_t stream);

// The routed experts' matmuls, one (token, slot) pair p < n_pairs at a time (moe_ops.cu):
// y[p * ldy + r] = W[idx[p]] row r · x[(p / x_div) * ldx ..] + bias[idx[p] * W.rows + r], r < W.rows.
// x_div = k reads each token's row for its k pairs (gate, up); 1 reads the pair's own row (down).
struct ExpertMatmulArgs {
    Matrix W;                     // the [E][rows][cols] stack, data on the device
    const int32_t* idx = nullptr;  // [n_pairs] expert of each pair, 0 <= idx < W.n_mats
    int64_t n_pairs = 0;
    const float* x = nullptr;
    int64_t ldx = 0, x_div = 1;
    float* y = nullptr;
    int64_t ldy = 0;
    const float* bias = nullptr;  // [E][rows]
};
void expert_matmul(const ExpertMatmulArgs& a, cudaStream_t stream);
// Decode's gate and up matmuls of the same pairs and x, and h [n_pairs][rows] = swiglu of them, as
// one launch where the block kernel reads both (one format and shape): each value as
// expert_matmul and swiglu compute it, and true; else launches nothing and returns false.
bool expert_gate_up(const ExpertMatmulArgs& gate, const ExpertMatmulArgs& up, float* h, float alpha, float limit,
                    cudaStream_t stream);

// The routed pairs sorted by expert for the grouped GEMM: `order` [n_pairs] lists the pairs of
// expert 0, then 1, ...; tile i < *n_tiles covers tile_count[i] <= kMmaTileTokens of them from
// order[tile_start[i]], all of expert tile_expert[i]. Device arrays; the tile arrays hold at
// most expert_tiles_max(n_pairs, E) entries.
struct ExpertGroups {
    int32_t* order = nullptr;
    int32_t* tile_expert = nullptr;
    int32_t* tile_start = nullptr;
    int32_t* tile_count = nullptr;
    int32_t* n_tiles = nullptr;
};
constexpr int64_t kMmaTileTokens = 64;
inline int64_t expert_tiles_max(int64_t n_pairs, int64_t E) { return n_pairs / kMmaTileTokens + E; }
// idx [n_pairs] (each < E <= 1024) -> groups (moe_ops.cu).
void group_by_expert(const int32_t* idx, int64_t n_pairs, int64_t E, const ExpertGroups& groups, cudaStream_t stream);

// The tensor-core GEMM (gemm_mma.cu) of MXFP4, Q8_0 or F16 weights (cols a multiple of 32): y[row * ldy + r] = W[mat] row r
// · x[row'] + bias, over tokens 0 .. n_tok - 1 (row = row' = token), or with groups.n_tiles set
// over the grouped pairs (mat = the tile's expert, row = pair, row' = pair / x_div, bias
// [E][rows]); x split (x.cols == W.cols, x.rows covering every row').
struct MmaGemmArgs {
    Matrix W;
    int64_t mat = 0;
    SplitActivations x;
    int64_t x_div = 1, n_tok = 0;
    float* y = nullptr;
    int64_t ldy = 0;
    const float* bias = nullptr;
    ExpertGroups groups;
};
// Whether the tensor-core GEMM takes W (and so reads split activations).
bool gemm_mma_can_run(const Matrix& W);
// m_tiles: ceil(n_tok / kMmaTileTokens), or expert_tiles_max for groups (tiles past *n_tiles
// return at once).
void gemm_mma(const MmaGemmArgs& a, int64_t m_tiles, cudaStream_t stream);
// The routed experts' matmuls of ExpertMatmulArgs on grouped pairs (gemm_mma_can_run(W)), x's rows
// split as xs.
void expert_gemm(const ExpertMatmulArgs& a, const ExpertGroups& groups, const SplitActivations& xs,
                 cudaStream_t stream);

// out[t][c] = sum_j weight[t * k + j] * y[(t * k + j) * H + c]: the routed outputs' weighted sum.
void moe_combine(const float* y, const float* weight, int64_t T, int64_t k, int64_t H, float* out,
                 cudaStream_t stream);

}  // namespace ossrun::cuda
