// The small per-token pieces of the MoE block (MODEL.md §2.6), as csrc/moe_ops.h computes them:
// router top-k with softmax over the selected logits, and the clamped SwiGLU ("swiglu_oai").
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

__global__ void swiglu_kernel(const float* gate, const float* lin, float* h, int64_t n, float alpha,
                              float limit) {
    const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (j >= n) return;
    // The CPU's comparisons, so NaNs go the same way (a NaN gate becomes limit, a NaN linear stays).
    const float g = gate[j] < limit ? gate[j] : limit;  // upper clamp only
    float l = lin[j];
    l = l < -limit ? -limit : (l > limit ? limit : l);
    h[j] = g / (1.0f + expf(-alpha * g)) * (l + 1.0f);
}

constexpr int kThreads = 256;

}  // namespace

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
