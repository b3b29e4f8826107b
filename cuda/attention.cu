// Causal GQA attention with sinks and the sliding window (MODEL.md §2.5) over a KV cache in device
// memory, for decode (and, slowly, prefill): one block per (query head, token) walks the visible
// keys in chunks of the block's width with an online softmax (running max m, denominator l,
// weighted value sum acc rescaled by e^(m_old - m_new)). The sink starts the softmax: m = sink,
// l = e^0 = 1, acc = 0, so it joins the denominator only and a large sink cannot overflow.
// K and V elements are float32 or 16-bit (KvType), widened to float32 as they are read.
// A split-K flash-decoding kernel (several blocks per head, a final merge) and a tiled prefill
// kernel come later and are checked against the same tests.
#include "../csrc/numerics.h"
#include "common.cuh"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {

constexpr int kThreads = 128;  // keys per chunk; also the threads sharing the head's d channels

// Element i of a K or V array of the cache's type, as float32 (exact for every type).
template <KvType kType>
__device__ inline float kv_load(const void* p, int64_t i) {
    if constexpr (kType == KvType::F32) return static_cast<const float*>(p)[i];
    else if constexpr (kType == KvType::F16) return fp16_to_float(static_cast<const uint16_t*>(p)[i]);
    else return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
}

// grid (n_q, T), block kThreads; d <= kMaxHeadDim.
template <KvType kType>
__global__ void attention_kernel(AttentionArgs a) {
    __shared__ float q_s[kMaxHeadDim];
    __shared__ float acc[kMaxHeadDim];  // channel c is owned by thread c % kThreads
    __shared__ float p_s[kThreads];     // this chunk's unnormalised weights
    const int64_t h = blockIdx.x, t = blockIdx.y, d = a.d;
    const int64_t g = h / (a.n_q / a.n_kv);  // the group's kv head (contiguous GQA)
    const int64_t pos = a.positions[t];
    const int64_t j_lo = a.window > 0 && pos - a.window + 1 > 0 ? pos - a.window + 1 : 0, j_hi = pos;
    const int tid = threadIdx.x;
    for (int64_t c = tid; c < d; c += kThreads) {
        q_s[c] = a.q[(t * a.n_q + h) * d + c];
        acc[c] = 0.0f;
    }
    __syncthreads();
    float m = a.sinks[h], l = 1.0f;  // identical in every thread (block-wide reductions)
    for (int64_t j0 = j_lo; j0 <= j_hi; j0 += kThreads) {
        const int64_t j = j0 + tid;
        float s = -INFINITY;
        if (j <= j_hi) {
            const int64_t key = ((j % a.cap) * a.n_kv + g) * d;
            float dot = 0.0f;
            for (int64_t c = 0; c < d; ++c) dot += q_s[c] * kv_load<kType>(a.k, key + c);
            s = dot * a.scale;
        }
        const float m_new = fmaxf(m, block_max(s));
        p_s[tid] = j <= j_hi ? expf(s - m_new) : 0.0f;
        const float chunk_sum = block_sum(p_s[tid]);  // its barriers also publish p_s
        const float alpha = expf(m - m_new);
        const int64_t n = j_hi - j0 + 1 < kThreads ? j_hi - j0 + 1 : kThreads;
        for (int64_t c = tid; c < d; c += kThreads) {
            float sum = acc[c] * alpha;
            for (int64_t i = 0; i < n; ++i) sum += p_s[i] * kv_load<kType>(a.v, (((j0 + i) % a.cap) * a.n_kv + g) * d + c);
            acc[c] = sum;
        }
        l = l * alpha + chunk_sum;
        m = m_new;
        __syncthreads();  // p_s is rewritten by the next chunk
    }
    for (int64_t c = tid; c < d; c += kThreads) a.out[(t * a.n_q + h) * d + c] = acc[c] / l;
}

}  // namespace

void attention(const AttentionArgs& a, cudaStream_t stream) {
    if (a.T == 0 || a.n_q == 0) return;
    const dim3 grid(unsigned(a.n_q), unsigned(a.T));
    switch (a.kv_type) {
        case KvType::F16: attention_kernel<KvType::F16><<<grid, kThreads, 0, stream>>>(a); break;
        case KvType::BF16: attention_kernel<KvType::BF16><<<grid, kThreads, 0, stream>>>(a); break;
        default: attention_kernel<KvType::F32><<<grid, kThreads, 0, stream>>>(a);
    }
    check_launch("attention");
}

}  // namespace ossrun::cuda
