// The MoE block's pieces (MODEL.md §2.6), as csrc/moe_ops.h and CpuBackend::moe compute them:
// router top-k with softmax over the selected logits, the clamped SwiGLU ("swiglu_oai"), the
// routed experts' matmuls pair by pair (one warp per output row, as gemv.cu; many pairs go to
// the grouped GEMM of gemm_mma.cu instead; decode's gate and up rows and their SwiGLU in one
// launch) and their weighted sum.
#include "../csrc/weight_element.h"
#include "block_rows.cuh"
#include "common.cuh"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {

// One thread per token: E is at most a few hundred, k a handful; the selection is the CPU's
// loop (strictly greater wins, so ties keep the lower index).
__global__ void router_topk_kernel(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* idx,
                                   float* weight) {
    const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= T) return;
    const float* l = logits + t * E;
    int32_t* it = idx + t * k;
    float* wt = weight + t * k;
    for (int64_t s = 0; s < k; ++s) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; ++e) {
            bool taken = false;
            for (int64_t p = 0; p < s; ++p) taken |= it[p] == e;
            if (!taken && (best < 0 || l[e] > l[best])) best = e;
        }
        it[s] = int32_t(best);
    }
    const float m = l[it[0]];  // the largest
    float den = 0.0f;
    for (int64_t s = 0; s < k; ++s) den += (wt[s] = expf(l[it[s]] - m));
    for (int64_t s = 0; s < k; ++s) wt[s] /= den;
}

// The CPU's comparisons, so NaNs go the same way (a NaN gate becomes limit, a NaN linear stays).
__device__ inline float swiglu_value(float gate, float lin, float alpha, float limit) {
    const float g = gate < limit ? gate : limit;  // upper clamp only
    const float l = lin < -limit ? -limit : (lin > limit ? limit : lin);
    return g / (1.0f + expf(-alpha * g)) * (l + 1.0f);
}

__global__ void swiglu_kernel(const float* gate, const float* lin, float* h, int64_t n, float alpha,
                              float limit) {
    const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (j >= n) return;
    h[j] = swiglu_value(gate[j], lin[j], alpha, limit);
}

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = 4;  // warps per block of expert_matmul

// grid (ceil(rows / kRowsPerBlock), n_pairs), block kRowsPerBlock * 32: experts of rows of whole
// blocks, 4 lanes to a block (block_rows.cuh).
// Pair p's row r of a (r < a.W.rows) with its bias, on every lane of the warp; `stage` is the
// warp's kStageBytesOf<F>.
template <class F>
__device__ inline float expert_row(const ExpertMatmulArgs& a, int64_t r, int64_t p, uint8_t* stage, int lane) {
    const int64_t e = a.idx[p];
    float acc[kTokensPerWarp] = {};
    row_dot<F>(weight_row(a.W, e, r), a.W.cols / kBlockElems, a.x + (p / a.x_div) * a.ldx, a.ldx, 1, stage, lane, acc);
    return warp_sum(acc[0]) + a.bias[e * a.W.rows + r];
}

template <class F>
__global__ void __launch_bounds__(kRowsPerBlock * kWarp) expert_blocks_kernel(ExpertMatmulArgs a) {
    __shared__ __align__(16) uint8_t stage[kRowsPerBlock][kStageBytesOf<F>];
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + warp, p = blockIdx.y;
    if (r >= a.W.rows) return;  // whole warps leave; only warp-level syncs below
    const float s = expert_row<F>(a, r, p, stage[warp], lane);
    if (lane == 0) a.y[p * a.ldy + r] = s;
}

// expert_gate_up: grid (ceil(rows / kRowsPerBlock), n_pairs); a warp's gate and up rows r of pair
// p, then h[p][r] = SwiGLU of the two, as expert_blocks_kernel and swiglu_kernel compute them.
template <class F>
__global__ void __launch_bounds__(kRowsPerBlock * kWarp) expert_gate_up_kernel(ExpertMatmulArgs gate,
                                                                               ExpertMatmulArgs up, float* h,
                                                                               float alpha, float limit) {
    __shared__ __align__(16) uint8_t stage[kRowsPerBlock][kStageBytesOf<F>];
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + warp, p = blockIdx.y;
    if (r >= gate.W.rows) return;  // whole warps leave; only warp-level syncs below
    const float g = expert_row<F>(gate, r, p, stage[warp], lane);
    const float l = expert_row<F>(up, r, p, stage[warp], lane);  // row_dot's last __syncwarp freed the stage
    if (lane == 0) h[p * gate.W.rows + r] = swiglu_value(g, l, alpha, limit);
}

// grid (ceil(rows / kRowsPerBlock), n_pairs), block kRowsPerBlock * 32: any other type.
__global__ void expert_elements_kernel(ExpertMatmulArgs a) {
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + warp, p = blockIdx.y;
    if (r >= a.W.rows) return;  // whole warps leave; no block-wide sync below
    const int64_t e = a.idx[p];
    const uint8_t* row = weight_row(a.W, e, r);
    const float* x = a.x + (p / a.x_div) * a.ldx;
    float acc = 0.0f;
    for (int64_t c = lane; c < a.W.cols; c += kWarp) acc += weight_element(a.W.type, row, c) * x[c];
    acc = warp_sum(acc);
    if (lane == 0) a.y[p * a.ldy + r] = acc + a.bias[e * a.W.rows + r];
}

// One block: counts per expert, then (one thread; E and the tile count are small) each expert's
// first slot and tiles, then every pair to its expert's next slot. The order inside an expert
// depends on the atomics, never y: each pair's row is computed on its own.
__global__ void group_by_expert_kernel(const int32_t* idx, int64_t n_pairs, int E, ExpertGroups g) {
    extern __shared__ int32_t counts[];  // [E] counts, then [E] next free slot
    int32_t* next = counts + E;
    for (int e = threadIdx.x; e < E; e += blockDim.x) counts[e] = 0;
    __syncthreads();
    for (int64_t p = threadIdx.x; p < n_pairs; p += blockDim.x) atomicAdd(&counts[idx[p]], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int32_t slot = 0, tiles = 0;
        for (int e = 0; e < E; ++e) {
            next[e] = slot;
            for (int32_t s = 0; s < counts[e]; s += int32_t(kMmaTileTokens), ++tiles) {
                g.tile_expert[tiles] = e;
                g.tile_start[tiles] = slot + s;
                g.tile_count[tiles] = min(int32_t(kMmaTileTokens), counts[e] - s);
            }
            slot += counts[e];
        }
        *g.n_tiles = tiles;
    }
    __syncthreads();
    for (int64_t p = threadIdx.x; p < n_pairs; p += blockDim.x) g.order[atomicAdd(&next[idx[p]], 1)] = int32_t(p);
}

// grid (ceil(H / kThreads), T).
__global__ void moe_combine_kernel(const float* y, const float* weight, int64_t k, int64_t H, float* out) {
    const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (c >= H) return;
    float acc = 0.0f;
    for (int64_t j = 0; j < k; ++j) acc += weight[t * k + j] * y[(t * k + j) * H + c];
    out[t * H + c] = acc;
}

}  // namespace

void expert_matmul(const ExpertMatmulArgs& a, cudaStream_t stream) {
    if (a.W.rows == 0 || a.n_pairs == 0) return;
    const dim3 grid(blocks_for(a.W.rows, kRowsPerBlock), unsigned(a.n_pairs));
    const bool blocks = block_rows_can_read(a.x, a.ldx) && with_block_format(a.W.type, a.W.cols, [&](auto format) {
        expert_blocks_kernel<decltype(format)><<<grid, kRowsPerBlock * kWarp, 0, stream>>>(a);
    });
    if (!blocks) expert_elements_kernel<<<grid, kRowsPerBlock * kWarp, 0, stream>>>(a);
    check_launch("expert_matmul");
}

bool expert_gate_up(const ExpertMatmulArgs& gate, const ExpertMatmulArgs& up, float* h, float alpha, float limit,
                    cudaStream_t stream) {
    const bool alike = gate.W.type == up.W.type && gate.W.rows == up.W.rows && gate.W.cols == up.W.cols &&
                       gate.W.n_mats == up.W.n_mats && gate.x == up.x && gate.ldx == up.ldx &&
                       gate.x_div == up.x_div && gate.idx == up.idx && gate.n_pairs == up.n_pairs;
    if (!alike || !block_rows_can_read(gate.x, gate.ldx)) return false;
    if (gate.W.rows == 0 || gate.n_pairs == 0) return true;
    const dim3 grid(blocks_for(gate.W.rows, kRowsPerBlock), unsigned(gate.n_pairs));
    const bool ran = with_block_format(gate.W.type, gate.W.cols, [&](auto format) {
        expert_gate_up_kernel<decltype(format)><<<grid, kRowsPerBlock * kWarp, 0, stream>>>(gate, up, h, alpha, limit);
    });
    if (ran) check_launch("expert_gate_up");
    return ran;
}

void group_by_expert(const int32_t* idx, int64_t n_pairs, int64_t E, const ExpertGroups& groups, cudaStream_t stream) {
    group_by_expert_kernel<<<1, 1024, size_t(2 * E) * sizeof(int32_t), stream>>>(idx, n_pairs, int(E), groups);
    check_launch("group_by_expert");
}

void moe_combine(const float* y, const float* weight, int64_t T, int64_t k, int64_t H, float* out,
                 cudaStream_t stream) {
    if (T == 0 || H == 0) return;
    moe_combine_kernel<<<dim3(blocks_for(H, kThreads), unsigned(T)), kThreads, 0, stream>>>(y, weight, k, H, out);
    check_launch("moe_combine");
}

void router_topk(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* idx, float* weight,
                 cudaStream_t stream) {
    if (T == 0) return;
    router_topk_kernel<<<blocks_for(T, kThreads), kThreads, 0, stream>>>(logits, T, E, k, idx, weight);
    check_launch("router_topk");
}

void swiglu(const float* gate, const float* lin, float* h, int64_t n, float alpha, float limit,
            cudaStream_t stream) {
    if (n == 0) return;
    swiglu_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(gate, lin, h, n, alpha, limit);
    check_launch("swiglu");
}

}  // namespace ossrun::cuda
