// Attention of the query heads of one GQA group at one position, with per-head sink logits and
// a key range (MODEL.md §2.5), compiled once per ISA and once per KV element type. Shape contract
// in kernels.h (AttentionArgs).
// Keys are transposed in the cache, so q·k is computed for a run of consecutive keys per vector
// (no horizontal sums), and each key load serves every head of the group. The range is walked in
// tiles of kAttentionTile keys with an online softmax (running max, rescaled sums), so scratch
// stays one tile per head at any context length; 16-bit K and V are widened in registers.
#include <algorithm>
#include <cmath>
#include <limits>

#include "../../kernels.h"
#include "../simd.h"

namespace ossrun::OSSRUN_ISA_NS {

namespace {

constexpr int kHeadBlock = 8;  // heads whose score accumulators stay in registers together
constexpr int64_t kTile = kAttentionTile;

// Loads of one KV element type: a vector of kVW consecutive elements, or one, as float32.
template <KvType T> struct Kv;
template <> struct Kv<KvType::F32> {
    using E = float;
    static vfloat load(const E* p) { return vload(p); }
    static float one(const E* p) { return *p; }
};
template <> struct Kv<KvType::F16> {
    using E = uint16_t;
    static vfloat load(const E* p) { return vload_f16(p); }
    static float one(const E* p) { return fp16_to_float(*p); }
};
template <> struct Kv<KvType::BF16> {
    using E = uint16_t;
    static vfloat load(const E* p) { return vload_bf16(p); }
    static float one(const E* p) { return bf16_to_float(*p); }
};

// sc[h * kTile + i] = scale · q_h · k_{slot0 + i}, for i0 <= i < i0 + count, heads h0 .. h0 + NH - 1.
template <KvType T, int NH>
void scores_run(const AttentionArgs& a, int64_t h0, int64_t slot0, int64_t count, int64_t i0) {
    using E = typename Kv<T>::E;
    const E* kt = static_cast<const E*>(a.k_t);
    const int64_t d = a.head_dim;
    const float* q = a.q + h0 * d;
    float* sc = a.scores + h0 * kTile + i0;
    int64_t i = 0;
    for (; i + kVW <= count; i += kVW) {
        vfloat acc[NH] = {};
        for (int64_t c = 0; c < d; ++c) {
            const vfloat k = Kv<T>::load(kt + c * a.k_stride + slot0 + i);
            for (int h = 0; h < NH; ++h) acc[h] += q[h * d + c] * k;
        }
        for (int h = 0; h < NH; ++h) vstore(sc + h * kTile + i, acc[h] * vsplat(a.scale));
    }
    for (; i < count; ++i)
        for (int h = 0; h < NH; ++h) {
            float s = 0.0f;
            for (int64_t c = 0; c < d; ++c) s += q[h * d + c] * Kv<T>::one(kt + c * a.k_stride + slot0 + i);
            sc[h * kTile + i] = s * a.scale;
        }
}

// Scores of the tile of n keys from position j0 for heads h0 .. h0 + NH - 1.
template <KvType T, int NH>
void scores_tile(const AttentionArgs& a, int64_t h0, int64_t j0, int64_t n) {
    // The keys' slots are one run, or two when the tile wraps around the ring.
    const int64_t first = j0 % a.cap;
    const int64_t run1 = std::min(n, a.cap - first);
    scores_run<T, NH>(a, h0, first, run1, 0);
    if (run1 < n) scores_run<T, NH>(a, h0, 0, n - run1, run1);
}

// out_h += Σ_i w_hi · v_i over the tile of n keys from j0, for NH heads from h0, with d == NC
// vectors held in registers, so each value row is loaded once per NH heads.
template <KvType T, int NH, int NC>
void values_block(const AttentionArgs& a, int64_t h0, int64_t j0, int64_t n) {
    using E = typename Kv<T>::E;
    const E* vbase = static_cast<const E*>(a.v);
    vfloat acc[NH][NC];
    for (int h = 0; h < NH; ++h)
        for (int c = 0; c < NC; ++c) acc[h][c] = vload(a.out + (h0 + h) * a.head_dim + c * kVW);
    int64_t slot = j0 % a.cap;
    for (int64_t i = 0; i < n; ++i, slot = slot + 1 == a.cap ? 0 : slot + 1) {
        const E* v = vbase + slot * a.v_stride;
        vfloat vv[NC];
        for (int c = 0; c < NC; ++c) vv[c] = Kv<T>::load(v + c * kVW);
        for (int h = 0; h < NH; ++h) {
            const float w = a.scores[(h0 + h) * kTile + i];
            for (int c = 0; c < NC; ++c) acc[h][c] += w * vv[c];
        }
    }
    for (int h = 0; h < NH; ++h)
        for (int c = 0; c < NC; ++c) vstore(a.out + (h0 + h) * a.head_dim + c * kVW, acc[h][c]);
}

// Any head_dim: one head at a time, accumulating in the output row.
template <KvType T>
void values_generic(const AttentionArgs& a, int64_t h, int64_t j0, int64_t n) {
    using E = typename Kv<T>::E;
    const E* vbase = static_cast<const E*>(a.v);
    const int64_t d = a.head_dim;
    float* out = a.out + h * d;
    int64_t slot = j0 % a.cap;
    for (int64_t i = 0; i < n; ++i, slot = slot + 1 == a.cap ? 0 : slot + 1) {
        const E* v = vbase + slot * a.v_stride;
        const float w = a.scores[h * kTile + i];
        int64_t c = 0;
        for (; c + kVW <= d; c += kVW) vstore(out + c, vload(out + c) + w * Kv<T>::load(v + c));
        for (; c < d; ++c) out[c] += w * Kv<T>::one(v + c);
    }
}

// One head's tile of n scores -> exp(z - m_new) in place, with the running max m and sum l of
// exp(z - m) updated and the head's output row rescaled when the max grows.
void softmax_tile(float* sc, int64_t n, float& m, float& l, float* out, int64_t d) {
    float mt = sc[0];
    for (int64_t i = 1; i < n; ++i) mt = std::max(mt, sc[i]);
    if (mt > m) {
        // exp(-inf) = 0 on the first tile of a partial (no running max yet).
        const float alpha = std::exp(m - mt);
        l *= alpha;
        for (int64_t c = 0; c < d; ++c) out[c] *= alpha;
        m = mt;
    }
    const vfloat mv = vsplat(m);
    vfloat sv = {};
    int64_t i = 0;
    for (; i + kVW <= n; i += kVW) {
        const vfloat e = vexp_nonpositive(vload(sc + i) - mv);
        vstore(sc + i, e);
        sv += e;
    }
    float s = hsum(sv);
    for (; i < n; ++i) s += (sc[i] = std::exp(sc[i] - m));
    l += s;
}

template <KvType T>
void attention_typed(const AttentionArgs& a) {
    const int64_t d = a.head_dim, H = a.n_heads;
    const bool partial = a.part_max != nullptr;
    std::fill_n(a.out, H * d, 0.0f);
    // Running max and sum per head, after the tile scratch. A whole softmax starts from its sink
    // (max = sink, sum = exp(0)); a partial one from nothing.
    float* m = a.scores + H * kTile;
    float* l = m + H;
    for (int64_t h = 0; h < H; ++h) {
        m[h] = partial ? -std::numeric_limits<float>::infinity() : a.sinks[h];
        l[h] = partial ? 0.0f : 1.0f;
    }
    constexpr int kNC = 64 / kVW, kNH = kNC >= 16 ? 1 : 16 / kNC;
    for (int64_t j0 = a.j_lo; j0 <= a.j_hi; j0 += kTile) {
        const int64_t n = std::min(kTile, a.j_hi - j0 + 1);
        int64_t h0 = 0;
        for (; h0 + kHeadBlock <= H; h0 += kHeadBlock) scores_tile<T, kHeadBlock>(a, h0, j0, n);
        for (; h0 < H; ++h0) scores_tile<T, 1>(a, h0, j0, n);
        for (int64_t h = 0; h < H; ++h) softmax_tile(a.scores + h * kTile, n, m[h], l[h], a.out + h * d, d);
        // out_h += Σ_i w_hi · v_i. gpt-oss's head_dim 64 keeps a block of heads' sums in registers.
        int64_t h = 0;
        if (d == 64)
            for (; h + kNH <= H; h += kNH) values_block<T, kNH, kNC>(a, h, j0, n);
        for (; h < H; ++h) values_generic<T>(a, h, j0, n);
    }
    if (partial) {
        std::copy_n(m, H, a.part_max);
        std::copy_n(l, H, a.part_sum);
        return;
    }
    // No key: only the sink is in the softmax, and it carries no value (out stays 0).
    for (int64_t h = 0; h < H && a.j_hi >= a.j_lo; ++h) {
        const float inv = 1.0f / l[h];
        for (int64_t c = 0; c < d; ++c) a.out[h * d + c] *= inv;
    }
}

}  // namespace

void attention(const AttentionArgs& a) {
    switch (a.kv_type) {
        case KvType::F16: return attention_typed<KvType::F16>(a);
        case KvType::BF16: return attention_typed<KvType::BF16>(a);
        default: return attention_typed<KvType::F32>(a);
    }
}

}  // namespace ossrun::OSSRUN_ISA_NS
