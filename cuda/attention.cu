// Causal GQA attention with sinks and the sliding window (MODEL.md §2.5) over a KV cache in device
// memory, for decode (and, slowly, prefill): one block per (query head, token) walks the visible
// keys in chunks of the block's width with an online softmax (running max m, denominator l,
// weighted value sum acc rescaled by e^(m_old - m_new)). The sink starts the softmax: m = sink,
// l = e^0 = 1, acc = 0, so it joins the denominator only and a large sink cannot overflow.
// K and V elements are float32 or 16-bit (KvType), widened to float32 as they are read.
// Decode rows of long key ranges are split (flash-decoding): one block per chunk of 2048 keys
// (csrc/attention_split.h, the CPU's cut) starts its softmax empty (m = -inf, l = 0) and leaves
// its max, sum and unnormalised value sum; a merge block per (head, token) joins them with the
// sink as the CPU's merge_attention_parts does. A tiled prefill kernel comes later.
#include "../csrc/attention_split.h"
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

// The keys query t sees: max(0, p - window + 1) .. p.
__device__ inline void key_range(const AttentionArgs& a, int64_t t, int64_t& lo, int64_t& hi) {
    const int64_t pos = a.positions[t];
    lo = a.window > 0 && pos - a.window + 1 > 0 ? pos - a.window + 1 : 0;
    hi = pos;
}

// grid (n_q, T), block kThreads, d <= kMaxHeadDim; kSplit: grid (n_q, T, n_parts), block z attends
// to chunk z of its row's keys (if the row has that many) and writes the partial results.
template <KvType kType, bool kSplit>
__global__ void attention_kernel(AttentionArgs a) {
    __shared__ float q_s[kMaxHeadDim];
    __shared__ float acc[kMaxHeadDim];  // channel c is owned by thread c % kThreads
    __shared__ float p_s[kThreads];     // this chunk's unnormalised weights
    const int64_t h = blockIdx.x, t = blockIdx.y, d = a.d;
    const int64_t g = h / (a.n_q / a.n_kv);  // the group's kv head (contiguous GQA)
    int64_t j_lo, j_hi;
    key_range(a, t, j_lo, j_hi);
    const int64_t z = blockIdx.z;
    if (kSplit) {
        if (z >= attention_chunks(j_lo, j_hi)) return;  // the whole block: no barrier is left waiting
        attention_chunk_range(j_lo, j_hi, z, j_lo, j_hi);
    }
    const int tid = threadIdx.x;
    for (int64_t c = tid; c < d; c += kThreads) {
        q_s[c] = a.q[(t * a.n_q + h) * d + c];
        acc[c] = 0.0f;
    }
    __syncthreads();
    // Identical in every thread (block-wide reductions). A part starts empty; the merge adds the sink.
    float m = kSplit ? -INFINITY : a.sinks[h], l = kSplit ? 0.0f : 1.0f;
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
    if (kSplit) {
        const int64_t part = (t * a.n_q + h) * a.n_parts + z;
        for (int64_t c = tid; c < d; c += kThreads) a.part_acc[part * d + c] = acc[c];
        if (tid == 0) a.part_max[part] = m, a.part_sum[part] = l;
        return;
    }
    for (int64_t c = tid; c < d; c += kThreads) a.out[(t * a.n_q + h) * d + c] = acc[c] / l;
}

// grid (n_q, T), block kThreads: out = the softmax over the row's parts and the head's sink
// (csrc/attention_split.h's merge_attention_parts).
__global__ void merge_parts_kernel(AttentionArgs a) {
    const int64_t h = blockIdx.x, t = blockIdx.y, d = a.d;
    int64_t j_lo, j_hi;
    key_range(a, t, j_lo, j_hi);
    const int64_t n = attention_chunks(j_lo, j_hi), first = (t * a.n_q + h) * a.n_parts;
    const float sink = a.sinks[h];
    float M = sink;
    for (int64_t p = 0; p < n; ++p) M = fmaxf(M, a.part_max[first + p]);
    float den = expf(sink - M);
    for (int64_t p = 0; p < n; ++p) den += expf(a.part_max[first + p] - M) * a.part_sum[first + p];
    const float inv = 1.0f / den;
    for (int64_t c = threadIdx.x; c < d; c += kThreads) {
        float o = 0.0f;
        for (int64_t p = 0; p < n; ++p) o += expf(a.part_max[first + p] - M) * a.part_acc[(first + p) * d + c];
        a.out[(t * a.n_q + h) * d + c] = o * inv;
    }
}

template <bool kSplit>
void launch(const AttentionArgs& a, dim3 grid, cudaStream_t stream) {
    switch (a.kv_type) {
        case KvType::F16: attention_kernel<KvType::F16, kSplit><<<grid, kThreads, 0, stream>>>(a); break;
        case KvType::BF16: attention_kernel<KvType::BF16, kSplit><<<grid, kThreads, 0, stream>>>(a); break;
        default: attention_kernel<KvType::F32, kSplit><<<grid, kThreads, 0, stream>>>(a);
    }
}

}  // namespace

void attention(const AttentionArgs& a, cudaStream_t stream) {
    if (a.T == 0 || a.n_q == 0) return;
    const dim3 grid(unsigned(a.n_q), unsigned(a.T));
    if (a.n_parts > 1 && a.part_acc && a.part_max && a.part_sum) {
        launch<true>(a, dim3(unsigned(a.n_q), unsigned(a.T), unsigned(a.n_parts)), stream);
        check_launch("attention (parts)");
        merge_parts_kernel<<<grid, kThreads, 0, stream>>>(a);
        check_launch("attention (merge)");
        return;
    }
    launch<false>(a, grid, stream);
    check_launch("attention");
}

}  // namespace ossrun::cuda
