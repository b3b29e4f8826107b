// Causal GQA attention with sinks and the sliding window (MODEL.md §2.5) over a KV cache in device
// memory. Decode (and heads the tiled kernel below does not take): one block per (query head,
// token) walks the visible keys in chunks of the block's width (a warp per key for the scores,
// a thread per channel for the value sums) with an online softmax (running
// max m, denominator l, weighted value sum acc rescaled by e^(m_old - m_new)). The sink starts
// the softmax: m = sink, l = e^0 = 1, acc = 0, so it joins the denominator only and a large sink
// cannot overflow.
// K and V elements are float32 or 16-bit (KvType), widened to float32 as they are read.
// Decode rows of long key ranges are split (flash-decoding): one block per chunk of 2048 keys
// (csrc/attention_split.h, the CPU's cut) starts its softmax empty (m = -inf, l = 0) and leaves
// its max, sum and unnormalised value sum; a merge block per (head, token) joins them with the
// sink as the CPU's merge_attention_parts does.
// Prefill rows (more than kAttentionSplitMaxRows tokens) are tiled instead: one block per (kv
// head, run of tokens) holds all the group's query heads for those tokens, 64 (head, token) rows,
// and reads each tile of keys and values into shared memory once for all of them, with the same
// online softmax per row; over an IEEE-half cache on tensor cores (attention_mma.cu), else here.
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

// Elements i .. i + 3 (i a multiple of 4) of a K or V array of the cache's type, as float32.
template <KvType kType>
__device__ inline float4 kv_load4(const void* p, int64_t i) {
    if constexpr (kType == KvType::F32) return *reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
    const uint32_t* w = static_cast<const uint32_t*>(p) + i / 2;  // two 16-bit elements a word
    const uint32_t a = w[0], b = w[1];
    auto widen = [](uint32_t bits) {
        return kType == KvType::F16 ? fp16_to_float(uint16_t(bits)) : bf16_to_float(uint16_t(bits));
    };
    return make_float4(widen(a & 0xFFFFu), widen(a >> 16), widen(b & 0xFFFFu), widen(b >> 16));
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
    const int lane = tid % kWarp, warp = tid / kWarp;
    for (int64_t j0 = j_lo; j0 <= j_hi; j0 += kThreads) {
        // The chunk's scores: warp w takes keys j0 + w, j0 + w + 4, ..., its lanes splitting the
        // channels, so a warp reads a key's contiguous bytes (with a thread per key, each load
        // touched 32 keys' lines: 0.17 TFLOP/s at depth 8192 on an H200).
#pragma unroll 4
        for (int i = warp; i < kThreads; i += kThreads / kWarp) {
            const int64_t j = j0 + i;
            float dot = 0.0f;
            if (j <= j_hi) {
                const int64_t key = ((j % a.cap) * a.n_kv + g) * d;
                for (int64_t c = lane; c < d; c += kWarp) dot += q_s[c] * kv_load<kType>(a.k, key + c);
            }
            dot = warp_sum(dot);
            if (lane == 0) p_s[i] = dot * a.scale;
        }
        __syncthreads();
        const int64_t j = j0 + tid;
        const float s = j <= j_hi ? p_s[tid] : -INFINITY;
        const float m_new = fmaxf(m, block_max(s));  // its barriers: every score read before the rewrite
        p_s[tid] = j <= j_hi ? expf(s - m_new) : 0.0f;
        const float chunk_sum = block_sum(p_s[tid]);  // its barriers also publish p_s
        const float alpha = expf(m - m_new);
        const int n = int(j_hi - j0 + 1 < kThreads ? j_hi - j0 + 1 : kThreads);
        for (int64_t c = tid; c < d; c += kThreads) {
            float sum = acc[c] * alpha;
#pragma unroll 8
            for (int i = 0; i < n; ++i) sum += p_s[i] * kv_load<kType>(a.v, (((j0 + i) % a.cap) * a.n_kv + g) * d + c);
            acc[c] = sum;
        }
        l = l * alpha + chunk_sum;
        m = m_new;
        __syncthreads();  // p_s is rewritten by the next chunk
    }
    if constexpr (kSplit) {
        const int64_t part = (t * a.n_q + h) * a.n_parts + z;
        for (int64_t c = tid; c < d; c += kThreads) a.part_acc[part * d + c] = acc[c];
        if (tid == 0) a.part_max[part] = m, a.part_sum[part] = l;
    } else {
        for (int64_t c = tid; c < d; c += kThreads) a.out[(t * a.n_q + h) * d + c] = acc[c] / l;
    }
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

// The tiled prefill kernel's shape: kTiledRows (query head, token) rows a block, kRowThreads
// threads a row, each owning the channels 16 i + 4 kq .. + 3 (kq its place in the row), so a
// row's dot products are 4 partial sums joined by two shuffles and every shared-memory read is a
// float4 that the rows of a warp share.
constexpr int kTiledRows = 64, kRowThreads = 4, kTiledThreads = kTiledRows * kRowThreads;

// Keys a tile: 8 KiB of K and of V in float32 for any kD.
template <int kD>
constexpr int kTileKeysOf = 2048 / kD;

// Whether the tiled kernel takes these heads: d a multiple of 16 up to 256, at most 64 query heads
// a group, q, out, k and v 16-byte aligned (float4 rows, 4-element loads).
bool tiled_can_run(const AttentionArgs& a) {
    auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    return aligned(a.q) && aligned(a.out) && aligned(a.k) && aligned(a.v) && a.d % 16 == 0 && a.d <= 256 &&
           a.n_q / a.n_kv <= kTiledRows;
}

// grid (n_kv, ceil(T / tokens)), kTiledThreads threads, d <= kD: block (g, y) attends for
// query heads g * G .. + G - 1 (G = n_q / n_kv) and tokens y * tokens .. + tokens - 1, with
// G * tokens <= kTiledRows; row r is head g * G + r % G, token y * tokens + r / G.
template <KvType kType, int kD>
__global__ void __launch_bounds__(kTiledThreads) attention_tiled_kernel(AttentionArgs a, int64_t tokens) {
    constexpr int kKeys = kTileKeysOf<kD>, kGroups = kD / 16;  // float4 groups a thread owns
    __shared__ __align__(16) float k_s[kKeys][kD];
    __shared__ __align__(16) float v_s[kKeys][kD];
    __shared__ int64_t block_lo, block_hi;  // the union of the rows' key ranges
    const int64_t G = a.n_q / a.n_kv, g = blockIdx.x, t0 = int64_t(blockIdx.y) * tokens, d = a.d;
    const int tid = threadIdx.x, r = tid / kRowThreads, kq = tid % kRowThreads;
    const int64_t t = t0 + r / G, h = g * G + r % G;
    const bool live = r < G * tokens && t < a.T;  // dead rows still join the shuffles and barriers
    int64_t lo = 0, hi = -1;
    if (live) key_range(a, t, lo, hi);
    if (tid == 0) {
        int64_t u_lo = INT64_MAX, u_hi = -1;
        for (int64_t i = t0; i < t0 + tokens && i < a.T; ++i) {
            int64_t l, u;
            key_range(a, i, l, u);
            u_lo = l < u_lo ? l : u_lo;
            u_hi = u > u_hi ? u : u_hi;
        }
        block_lo = u_lo, block_hi = u_hi;
    }
    float4 q[kGroups], acc[kGroups];
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
        const int64_t c = 16 * i + 4 * kq;
        q[i] = live && c < d ? *reinterpret_cast<const float4*>(a.q + (t * a.n_q + h) * d + c)
                             : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        acc[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    float m = live ? a.sinks[h] : 0.0f, l = 1.0f;  // the sink starts the softmax
    __syncthreads();
    for (int64_t j0 = block_lo; j0 <= block_hi; j0 += kKeys) {
        const int quads = int(d / 4);  // float4s of a key's row
        for (int e = tid; e < kKeys * quads; e += kTiledThreads) {
            const int j = e / quads, c = 4 * (e % quads);
            const int64_t key = j0 + j;
            float4 k4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f), v4 = k4;
            if (key <= block_hi) {
                const int64_t at = ((key % a.cap) * a.n_kv + g) * d + c;
                k4 = kv_load4<kType>(a.k, at);
                v4 = kv_load4<kType>(a.v, at);
            }
            *reinterpret_cast<float4*>(&k_s[j][c]) = k4;
            *reinterpret_cast<float4*>(&v_s[j][c]) = v4;
        }
        __syncthreads();
        float s[kKeys], m_new = m;
#pragma unroll
        for (int j = 0; j < kKeys; ++j) {
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < kGroups; ++i) {
                if (16 * i < d) {
                    const float4 k = *reinterpret_cast<const float4*>(&k_s[j][16 * i + 4 * kq]);
                    dot += q[i].x * k.x + q[i].y * k.y + q[i].z * k.z + q[i].w * k.w;
                }
            }
            dot += __shfl_xor_sync(0xffffffffu, dot, 1);
            dot += __shfl_xor_sync(0xffffffffu, dot, 2);
            const int64_t key = j0 + j;
            s[j] = live && key >= lo && key <= hi ? dot * a.scale : -INFINITY;
            m_new = fmaxf(m_new, s[j]);
        }
        const float alpha = expf(m - m_new);
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < kGroups; ++i) acc[i].x *= alpha, acc[i].y *= alpha, acc[i].z *= alpha, acc[i].w *= alpha;
#pragma unroll
        for (int j = 0; j < kKeys; ++j) {
            const float p = expf(s[j] - m_new);  // 0 for a masked key
            sum += p;
#pragma unroll
            for (int i = 0; i < kGroups; ++i) {
                if (16 * i < d) {
                    const float4 v = *reinterpret_cast<const float4*>(&v_s[j][16 * i + 4 * kq]);
                    acc[i].x += p * v.x, acc[i].y += p * v.y, acc[i].z += p * v.z, acc[i].w += p * v.w;
                }
            }
        }
        l = l * alpha + sum;
        m = m_new;
        __syncthreads();  // the tiles are overwritten next
    }
    if (!live) return;
    float* out = a.out + (t * a.n_q + h) * d;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
        const int64_t c = 16 * i + 4 * kq;
        if (c < d)
            *reinterpret_cast<float4*>(out + c) = make_float4(acc[i].x / l, acc[i].y / l, acc[i].z / l, acc[i].w / l);
    }
}

template <KvType kType>
void launch_tiled(const AttentionArgs& a, cudaStream_t stream) {
    const int64_t G = a.n_q / a.n_kv, tokens = kTiledRows / G;
    const dim3 grid(unsigned(a.n_kv), blocks_for(a.T, tokens));
    if (a.d <= 64)
        attention_tiled_kernel<kType, 64><<<grid, kTiledThreads, 0, stream>>>(a, tokens);
    else if (a.d <= 128)
        attention_tiled_kernel<kType, 128><<<grid, kTiledThreads, 0, stream>>>(a, tokens);
    else
        attention_tiled_kernel<kType, 256><<<grid, kTiledThreads, 0, stream>>>(a, tokens);
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

AttentionPath attention_path(const AttentionArgs& a) {
    if (a.n_parts > 1 && a.part_acc && a.part_max && a.part_sum) return AttentionPath::kSplit;
    if (a.T > kAttentionSplitMaxRows && attention_mma_can_run(a)) return AttentionPath::kTensorCores;
    if (a.T > kAttentionSplitMaxRows && tiled_can_run(a)) return AttentionPath::kTiled;
    return AttentionPath::kRows;
}

void attention(const AttentionArgs& a, cudaStream_t stream) {
    if (a.T == 0 || a.n_q == 0) return;
    const dim3 grid(unsigned(a.n_q), unsigned(a.T));
    switch (attention_path(a)) {
        case AttentionPath::kSplit:
            launch<true>(a, dim3(unsigned(a.n_q), unsigned(a.T), unsigned(a.n_parts)), stream);
            check_launch("attention (parts)");
            merge_parts_kernel<<<grid, kThreads, 0, stream>>>(a);
            check_launch("attention (merge)");
            return;
        case AttentionPath::kTensorCores: attention_mma(a, stream); return;
        case AttentionPath::kTiled:
            switch (a.kv_type) {
                case KvType::F16: launch_tiled<KvType::F16>(a, stream); break;
                case KvType::BF16: launch_tiled<KvType::BF16>(a, stream); break;
                default: launch_tiled<KvType::F32>(a, stream);
            }
            check_launch("attention (tiled)");
            return;
        case AttentionPath::kRows: launch<false>(a, grid, stream); check_launch("attention");
    }
}

}  // namespace ossrun::cuda
