// Prefill attention on tensor cores (mma m16n8k16, IEEE half in, float32 sums) over an IEEE-half
// KV cache, whose K and V elements are exact mma operands: the same softmax as attention.cu's tiled
// kernel (the sink starts it: m = sink, l = 1; online rescales by e^(m_old - m_new)), the same
// block shape (one block per KV head and run of tokens, 64 (query head, token) rows, 16 a warp),
// with S = Q K^T and O += P V as mma steps on tiles of 64 keys in shared memory.
//
// Exactness, as gemm_mma.cu's activations: each row of q is divided by a power of two that puts
// its largest |q| in [2^14, 2^15) and goes in as halves q_hi (+ q_lo): `exact` sends both through
// the mma (~22 bits of q relative to its row's largest), fast only q_hi (11 bits); the power and
// the softmax scale multiply the float32 dot afterwards. The weights p = e^(s - m) in [0, 1] go in
// the same way (p_hi + p_lo, or p_hi alone); the denominator l sums the float32 p.
//
// Fragments (mma.cuh): the S accumulator of two adjacent 8-key tiles is laid out as the A operand
// of one 16-key PV step (rows g and g + 8, keys 2t, 2t + 1 and 2t + 8, 2t + 9), so P stays in
// registers. K is kept as it is stored (a key's channel pairs), V transposed (a channel's key
// pairs) so both are B operands read with one 32-bit load a fragment word.
#include <cuda_fp16.h>

#include "common.cuh"
#include "kernels.cuh"
#include "mma.cuh"

namespace ossrun::cuda {

namespace {

constexpr int kWarps = 4, kThreads = kWarps * kWarp;
constexpr int kRows = 16 * kWarps;  // (query head, token) rows a block
constexpr int kKeys = 64;           // keys a tile
constexpr int kKeyTiles = kKeys / 8;

// Shared-memory row pitches in 32-bit words: a row's words plus 4, so a fragment load (lanes g, t
// reading word 8 i + t of row g) touches 32 different banks.
template <int kD>
constexpr int kKPitch = kD / 2 + 4;
constexpr int kVtPitch = kKeys / 2 + 4;

// The two rows a lane holds of its warp's 16 (g and g + 8): which head and token, the keys it
// sees, and the power of two its q was divided by (times the softmax scale).
struct RowOf {
    int64_t head, token, lo, hi;
    float score_scale;
    bool live;
};

// Splits v (already divided by its row's power of two) into fragment words of halves.
__device__ inline void split_pair(float a, float b, bool exact, uint32_t& hi, uint32_t& lo) {
    const __half ah = __float2half_rn(a), bh = __float2half_rn(b);
    hi = half_pair(ah, bh);
    lo = exact ? half_pair(__float2half_rn(a - __half2float(ah)), __float2half_rn(b - __half2float(bh))) : 0u;
}

// grid (n_kv, ceil(T / tokens)), kThreads threads, d a multiple of 16 up to kD: block (g, y)
// attends for query heads g * G .. + G - 1 and tokens y * tokens .., G * tokens <= kRows; row r
// is head g * G + r % G, token y * tokens + r / G (attention.cu's tiled rows).
template <int kD, bool kExact>
__global__ void __launch_bounds__(kThreads) attention_mma_kernel(AttentionArgs a, int64_t tokens) {
    constexpr int kSteps = kD / 16;  // 16-channel steps of q . k
    constexpr int kOutTiles = kD / 8;
    __shared__ __align__(16) uint32_t k_s[kKeys][kKPitch<kD>];  // key j: channels (2w, 2w + 1) in word w
    __shared__ __align__(16) uint16_t vt_s[kD][2 * kVtPitch];   // channel c: keys (2w, 2w + 1) in word w
    __shared__ int64_t block_lo, block_hi;                      // the union of the rows' key ranges
    const int64_t G = a.n_q / a.n_kv, kv = blockIdx.x, t0 = int64_t(blockIdx.y) * tokens, d = a.d;
    const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp, g = lane / 4, t = lane % 4;
    const uint16_t* k16 = static_cast<const uint16_t*>(a.k);
    const uint16_t* v16 = static_cast<const uint16_t*>(a.v);
    if (tid == 0) {
        int64_t u_lo = INT64_MAX, u_hi = -1;
        for (int64_t i = t0; i < t0 + tokens && i < a.T; ++i) {
            const int64_t pos = a.positions[i];
            const int64_t l = a.window > 0 && pos - a.window + 1 > 0 ? pos - a.window + 1 : 0;
            u_lo = l < u_lo ? l : u_lo;
            u_hi = pos > u_hi ? pos : u_hi;
        }
        block_lo = u_lo, block_hi = u_hi;
    }

    // This lane's rows and their q fragments: A operand words of step s, row i: [0] channels
    // 16 s + 2t, + 1, [1] 16 s + 2t + 8, + 9.
    RowOf row[2];
    uint32_t q_hi[kSteps][2][2], q_lo[kSteps][2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = warp * 16 + g + 8 * i;
        RowOf& w = row[i];
        w.token = t0 + r / G;
        w.head = kv * G + r % G;
        w.live = r < G * tokens && w.token < a.T;  // dead rows still join the shuffles and mma
        w.lo = 0, w.hi = -1;
        if (w.live) {
            const int64_t pos = a.positions[w.token];
            w.lo = a.window > 0 && pos - a.window + 1 > 0 ? pos - a.window + 1 : 0;
            w.hi = pos;
        }
        const float* q = a.q + (w.token * a.n_q + w.head) * d;
        float2 v[kSteps][2];
        float big = 0.0f;
#pragma unroll
        for (int s = 0; s < kSteps; ++s)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int64_t c = 16 * s + 2 * t + 8 * h;
                v[s][h] = w.live && c < d ? *reinterpret_cast<const float2*>(q + c) : make_float2(0.0f, 0.0f);
                big = fmaxf(big, fmaxf(fabsf(v[s][h].x), fabsf(v[s][h].y)));  // fmaxf drops NaN; NaN stays in v
            }
        big = fmaxf(big, __shfl_xor_sync(0xffffffffu, big, 1));  // the row's four lanes
        big = fmaxf(big, __shfl_xor_sync(0xffffffffu, big, 2));
        int k = 0;  // big / 2^k in [2^14, 2^15), clamped to float32's normal powers
        if (big > 0.0f && big <= 3.4e38f) {
            int e;
            frexpf(big, &e);
            k = max(-126, min(127, e - 15));
        }
        const float down = ldexpf(1.0f, -k);
        w.score_scale = ldexpf(a.scale, k);
#pragma unroll
        for (int s = 0; s < kSteps; ++s)
#pragma unroll
            for (int h = 0; h < 2; ++h) split_pair(v[s][h].x * down, v[s][h].y * down, kExact, q_hi[s][i][h], q_lo[s][i][h]);
    }
    float m[2], l[2] = {1.0f, 1.0f};  // the sink starts each row's softmax
    for (int i = 0; i < 2; ++i) m[i] = row[i].live ? a.sinks[row[i].head] : 0.0f;
    float o[kOutTiles][4] = {};  // [0..1] row g, channels 8 n + 2t, + 1; [2..3] row g + 8
    __syncthreads();

    for (int64_t j0 = block_lo; j0 <= block_hi; j0 += kKeys) {
        const int chunks = int(d / 8);  // 16-byte pieces of a key's row
        for (int e = tid; e < kKeys * chunks; e += kThreads) {
            const int j = e / chunks, c = 8 * (e % chunks);
            const int64_t key = j0 + j;
            uint4 k8 = make_uint4(0u, 0u, 0u, 0u), v8 = k8;  // past the block's keys: zeros (p = 0 there)
            if (key <= block_hi) {
                const int64_t at = ((key % a.cap) * a.n_kv + kv) * d + c;
                k8 = *reinterpret_cast<const uint4*>(k16 + at);
                v8 = *reinterpret_cast<const uint4*>(v16 + at);
            }
            *reinterpret_cast<uint4*>(&k_s[j][c / 2]) = k8;
            const uint32_t vw[4] = {v8.x, v8.y, v8.z, v8.w};
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                vt_s[c + 2 * u][j] = uint16_t(vw[u] & 0xFFFFu);
                vt_s[c + 2 * u + 1][j] = uint16_t(vw[u] >> 16);
            }
        }
        __syncthreads();

        // S = Q K^T: s[n][0..1] row g, keys j0 + 8 n + 2t, + 1; s[n][2..3] row g + 8.
        float s[kKeyTiles][4] = {};
#pragma unroll
        for (int st = 0; st < kSteps; ++st) {
            if (16 * st >= d) break;
            const uint32_t ah[4] = {q_hi[st][0][0], q_hi[st][1][0], q_hi[st][0][1], q_hi[st][1][1]};
            const uint32_t al[4] = {q_lo[st][0][0], q_lo[st][1][0], q_lo[st][0][1], q_lo[st][1][1]};
#pragma unroll
            for (int n = 0; n < kKeyTiles; ++n) {
                const uint32_t b[2] = {k_s[8 * n + g][8 * st + t], k_s[8 * n + g][8 * st + t + 4]};
                mma_16x8x16(s[n], ah, b);
                if (kExact) mma_16x8x16(s[n], al, b);
            }
        }
        // Mask and scale; each row's new max over its four lanes.
        float m_new[2] = {m[0], m[1]};
#pragma unroll
        for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const RowOf& w = row[e >> 1];
                const int64_t key = j0 + 8 * n + 2 * t + (e & 1);
                s[n][e] = w.live && key >= w.lo && key <= w.hi ? s[n][e] * w.score_scale : -INFINITY;
                m_new[e >> 1] = fmaxf(m_new[e >> 1], s[n][e]);
            }
        float alpha[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            m_new[i] = fmaxf(m_new[i], __shfl_xor_sync(0xffffffffu, m_new[i], 1));
            m_new[i] = fmaxf(m_new[i], __shfl_xor_sync(0xffffffffu, m_new[i], 2));
            alpha[i] = expf(m[i] - m_new[i]);
        }
#pragma unroll
        for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[n][e] = expf(s[n][e] - m_new[e >> 1]);  // 0 for a masked key
                sum[e >> 1] += s[n][e];
            }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 1);
            sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 2);
            l[i] = l[i] * alpha[i] + sum[i];
            m[i] = m_new[i];
        }
#pragma unroll
        for (int n = 0; n < kOutTiles; ++n) o[n][0] *= alpha[0], o[n][1] *= alpha[0], o[n][2] *= alpha[1], o[n][3] *= alpha[1];

        // O += P V, 16 keys a step: P's A words are two S tiles' accumulators.
#pragma unroll
        for (int ks = 0; ks < kKeys / 16; ++ks) {
            uint32_t ph[4], pl[4];
            split_pair(s[2 * ks][0], s[2 * ks][1], kExact, ph[0], pl[0]);
            split_pair(s[2 * ks][2], s[2 * ks][3], kExact, ph[1], pl[1]);
            split_pair(s[2 * ks + 1][0], s[2 * ks + 1][1], kExact, ph[2], pl[2]);
            split_pair(s[2 * ks + 1][2], s[2 * ks + 1][3], kExact, ph[3], pl[3]);
#pragma unroll
            for (int n = 0; n < kOutTiles; ++n) {
                if (8 * n >= d) break;
                const uint32_t* vt = reinterpret_cast<const uint32_t*>(vt_s[8 * n + g]);
                const uint32_t b[2] = {vt[8 * ks + t], vt[8 * ks + t + 4]};
                mma_16x8x16(o[n], ph, b);
                if (kExact) mma_16x8x16(o[n], pl, b);
            }
        }
        __syncthreads();  // the tiles are overwritten next
    }

#pragma unroll
    for (int i = 0; i < 2; ++i) {
        if (!row[i].live) continue;
        float* out = a.out + (row[i].token * a.n_q + row[i].head) * d;
        const float inv = 1.0f / l[i];
#pragma unroll
        for (int n = 0; n < kOutTiles; ++n)
            if (8 * n < d)
                *reinterpret_cast<float2*>(out + 8 * n + 2 * t) = make_float2(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
    }
}

template <int kD>
void launch(const AttentionArgs& a, cudaStream_t stream) {
    const int64_t tokens = kRows / (a.n_q / a.n_kv);
    const dim3 grid(unsigned(a.n_kv), blocks_for(a.T, tokens));
    if (a.exact)
        attention_mma_kernel<kD, true><<<grid, kThreads, 0, stream>>>(a, tokens);
    else
        attention_mma_kernel<kD, false><<<grid, kThreads, 0, stream>>>(a, tokens);
}

}  // namespace

bool attention_mma_can_run(const AttentionArgs& a) {
    auto aligned = [](const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; };
    return a.kv_type == KvType::F16 && a.d % 16 == 0 && a.d <= 128 && a.n_q / a.n_kv <= kRows &&
           aligned(a.q, 8) && aligned(a.out, 8) && aligned(a.k, 16) && aligned(a.v, 16);
}

void attention_mma(const AttentionArgs& a, cudaStream_t stream) {
    if (a.d <= 64)
        launch<64>(a, stream);
    else
        launch<128>(a, stream);
    check_launch("attention (tensor cores)");
}

}  // namespace ossrun::cuda
