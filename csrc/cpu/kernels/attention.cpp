// Attention of the query heads of one GQA group at one or more consecutive positions, with
// per-head sink logits and a key range (MODEL.md §2.5), compiled once per ISA and once per KV
// element type. Shape contract in kernels.h (AttentionArgs).
// Keys are stored in transposed blocks (kKeyBlock), so q·k is computed for whole vectors of
// consecutive keys (no horizontal sums), each key load serves every head of the group, and a key
// range is read as one stream. The range is walked in tiles of kAttentionTile keys with an online
// softmax (running max, rescaled sums), so scratch stays one tile per head at any context length;
// the rows of a prefill share each tile while it is in cache. 16-bit K and V are widened in registers.
#include <algorithm>
#include <cmath>
#include <limits>

#include "../../kernels.h"
#include "../simd.h"

namespace ossrun::OSSRUN_ISA_NS {

namespace {

constexpr int kHeadBlock = 8;  // heads whose score accumulators stay in registers together
constexpr int64_t kTile = kAttentionTile;
constexpr int64_t kPad = kAttentionScorePad;
constexpr int64_t kHeadScores = kTile + 2 * kPad;  // one head's tile of scores with its slack
// Key vectors per score step: two on AVX-512 (a 32-key block row, 16 accumulators for 8 heads),
// one where there are 16 vector registers.
constexpr int kNV = kVW >= 16 ? 2 : 1;
constexpr int64_t kStep = kNV * kVW;
static_assert(kKeyBlock % kStep == 0, "a score step stays inside one key block");
// How far ahead a stream of keys or values is prefetched, in key blocks.
constexpr int64_t kAheadBlocks = 2;

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

inline vfloat vmax(vfloat a, vfloat b) { return a > b ? a : b; }

// Head h's tile of scores, element i for the i-th key of the row's part of the tile.
inline float* head_scores(const AttentionArgs& a, int64_t h) { return a.scores + kPad + h * kHeadScores; }

// sc_h[i0 + s - s0] = scale · q_h · k_s for the slots s0 <= s < s0 + count (one run, no wrap),
// heads h0 .. h0 + NH - 1. Whole steps of kStep keys are computed: the extra scores fall into the
// slack either side of the run (the keys' storage is whole blocks), and a later run overwrites them.
template <KvType T, int NH>
void scores_run(const AttentionArgs& a, const float* q, int64_t h0, int64_t s0, int64_t count, int64_t i0) {
    using E = typename Kv<T>::E;
    const E* kb = static_cast<const E*>(a.k);
    const int64_t d = a.head_dim;
    const int64_t block = d * kKeyBlock;  // elements per key block
    q += h0 * d;
    float* sc = head_scores(a, h0) + i0 - s0;
    const vfloat scale = vsplat(a.scale);
    for (int64_t s = s0 / kStep * kStep; s < s0 + count; s += kStep) {
        const E* kp = kb + (s / kKeyBlock) * block + s % kKeyBlock;
        const bool fetch = s % kKeyBlock == 0 && h0 == 0;
        vfloat acc[NH][kNV] = {};
        for (int64_t c = 0; c < d; ++c) {
            const E* row = kp + c * kKeyBlock;
            if (fetch) {
                // The same row of a block further on: one cache line per row of 16-bit keys.
                const char* ahead = reinterpret_cast<const char*>(row + kAheadBlocks * block);
                __builtin_prefetch(ahead);
                if (sizeof(E) * kKeyBlock > 64) __builtin_prefetch(ahead + 64);
            }
            vfloat k[kNV];
            for (int v = 0; v < kNV; ++v) k[v] = Kv<T>::load(row + v * kVW);
            for (int h = 0; h < NH; ++h) {
                const float qh = q[h * d + c];
                for (int v = 0; v < kNV; ++v) acc[h][v] += qh * k[v];
            }
        }
        for (int h = 0; h < NH; ++h)
            for (int v = 0; v < kNV; ++v) vstore(sc + h * kHeadScores + s + v * kVW, acc[h][v] * scale);
    }
}

// Scores of the n keys from position j0 for heads h0 .. h0 + NH - 1.
template <KvType T, int NH>
void scores_tile(const AttentionArgs& a, const float* q, int64_t h0, int64_t j0, int64_t n) {
    // The keys' slots are one run, or two when the tile wraps around the ring.
    const int64_t first = j0 % a.cap;
    const int64_t run1 = std::min(n, a.cap - first);
    scores_run<T, NH>(a, q, h0, first, run1, 0);
    if (run1 < n) scores_run<T, NH>(a, q, h0, 0, n - run1, run1);
}

// out_h += Σ_i w_hi · v_i over the n keys from j0, for NH heads from h0, with d == NC vectors
// held in registers, so each value row is loaded once per NH heads.
template <KvType T, int NH, int NC>
void values_block(const AttentionArgs& a, float* out, int64_t h0, int64_t j0, int64_t n) {
    using E = typename Kv<T>::E;
    const E* vbase = static_cast<const E*>(a.v);
    const int64_t ahead = kAheadBlocks * kKeyBlock;  // keys
    constexpr int64_t kRowBytes = int64_t(sizeof(E)) * NC * kVW;
    vfloat acc[NH][NC];
    for (int h = 0; h < NH; ++h)
        for (int c = 0; c < NC; ++c) acc[h][c] = vload(out + (h0 + h) * a.head_dim + c * kVW);
    int64_t slot = j0 % a.cap;
    for (int64_t i = 0; i < n; ++i, slot = slot + 1 == a.cap ? 0 : slot + 1) {
        const E* v = vbase + slot * a.v_stride;
        if (h0 == 0 && slot + ahead < a.cap) {
            const char* p = reinterpret_cast<const char*>(v + ahead * a.v_stride);
            for (int64_t b = 0; b < kRowBytes; b += 64) __builtin_prefetch(p + b);
        }
        vfloat vv[NC];
        for (int c = 0; c < NC; ++c) vv[c] = Kv<T>::load(v + c * kVW);
        for (int h = 0; h < NH; ++h) {
            const float w = head_scores(a, h0 + h)[i];
            for (int c = 0; c < NC; ++c) acc[h][c] += w * vv[c];
        }
    }
    for (int h = 0; h < NH; ++h)
        for (int c = 0; c < NC; ++c) vstore(out + (h0 + h) * a.head_dim + c * kVW, acc[h][c]);
}

// Any head_dim: one head at a time, accumulating in the output row.
template <KvType T>
void values_generic(const AttentionArgs& a, float* out_rows, int64_t h, int64_t j0, int64_t n) {
    using E = typename Kv<T>::E;
    const E* vbase = static_cast<const E*>(a.v);
    const int64_t d = a.head_dim;
    float* out = out_rows + h * d;
    const float* w = head_scores(a, h);
    int64_t slot = j0 % a.cap;
    for (int64_t i = 0; i < n; ++i, slot = slot + 1 == a.cap ? 0 : slot + 1) {
        const E* v = vbase + slot * a.v_stride;
        int64_t c = 0;
        for (; c + kVW <= d; c += kVW) vstore(out + c, vload(out + c) + w[i] * Kv<T>::load(v + c));
        for (; c < d; ++c) out[c] += w[i] * Kv<T>::one(v + c);
    }
}

// One head's tile of n scores -> exp(z - m_new) in place, with the running max m and sum l of
// exp(z - m) updated and the head's output row rescaled when the max grows.
void softmax_tile(float* sc, int64_t n, float& m, float& l, float* out, int64_t d) {
    float mt = sc[0];
    int64_t i = 0;
    if (n >= kVW) {
        vfloat mv = vload(sc);
        for (i = kVW; i + kVW <= n; i += kVW) mv = vmax(mv, vload(sc + i));
        for (int k = 0; k < kVW; ++k) mt = std::max(mt, mv[k]);
    }
    for (; i < n; ++i) mt = std::max(mt, sc[i]);
    if (mt > m) {
        // exp(-inf) = 0 on the first tile of a partial (no running max yet).
        const float alpha = std::exp(m - mt);
        l *= alpha;
        for (int64_t c = 0; c < d; ++c) out[c] *= alpha;
        m = mt;
    }
    const vfloat mv = vsplat(m);
    vfloat sv = {};
    i = 0;
    for (; i + kVW <= n; i += kVW) {
        const vfloat e = vexp_nonpositive(vload(sc + i) - mv);
        vstore(sc + i, e);
        sv += e;
    }
    float s = hsum(sv);
    for (; i < n; ++i) s += (sc[i] = std::exp(sc[i] - m));
    l += s;
}

// Row r's part of the tile of keys from j0: keys j0 .. j0 + n - 1 of its range, folded into its
// output row and its running max m and sum l per head.
template <KvType T>
void attend_tile(const AttentionArgs& a, const float* q, float* out, float* m, float* l, int64_t j0, int64_t n) {
    const int64_t d = a.head_dim, H = a.n_heads;
    int64_t h0 = 0;
    for (; h0 + kHeadBlock <= H; h0 += kHeadBlock) scores_tile<T, kHeadBlock>(a, q, h0, j0, n);
    for (; h0 < H; ++h0) scores_tile<T, 1>(a, q, h0, j0, n);
    for (int64_t h = 0; h < H; ++h) softmax_tile(head_scores(a, h), n, m[h], l[h], out + h * d, d);
    // out_h += Σ_i w_hi · v_i. gpt-oss's head_dim 64 keeps a block of heads' sums in registers.
    constexpr int kNC = 64 / kVW, kNH = kNC >= 16 ? 1 : 16 / kNC;
    int64_t h = 0;
    if (d == 64)
        for (; h + kNH <= H; h += kNH) values_block<T, kNH, kNC>(a, out, h, j0, n);
    for (; h < H; ++h) values_generic<T>(a, out, h, j0, n);
}

template <KvType T>
void attention_typed(const AttentionArgs& a) {
    const int64_t d = a.head_dim, H = a.n_heads, R = a.n_rows;
    const bool partial = a.part_max != nullptr && R == 1;
    // Running max and sum per row and head, after the tile scratch. A whole softmax starts from
    // its sink (max = sink, sum = exp(0)); a partial one from nothing.
    float* m0 = a.scores + H * kHeadScores;
    auto lo_of = [&](int64_t r) { return a.window ? std::max(a.j_lo, a.j_hi + r - a.window + 1) : a.j_lo; };
    for (int64_t r = 0; r < R; ++r) {
        std::fill_n(a.out + r * a.row_stride, H * d, 0.0f);
        float* m = m0 + r * 2 * H;
        for (int64_t h = 0; h < H; ++h) {
            m[h] = partial ? -std::numeric_limits<float>::infinity() : a.sinks[h];
            m[H + h] = partial ? 0.0f : 1.0f;
        }
    }
    const int64_t last = a.j_hi + R - 1;
    for (int64_t t0 = a.j_lo / kTile * kTile; a.j_lo <= a.j_hi && t0 <= last; t0 += kTile)
        for (int64_t r = 0; r < R; ++r) {
            const int64_t lo = std::max(t0, lo_of(r)), hi = std::min(t0 + kTile - 1, a.j_hi + r);
            if (lo > hi) continue;
            float* m = m0 + r * 2 * H;
            attend_tile<T>(a, a.q + r * a.row_stride, a.out + r * a.row_stride, m, m + H, lo, hi - lo + 1);
        }
    if (partial) {
        std::copy_n(m0, H, a.part_max);
        std::copy_n(m0 + H, H, a.part_sum);
        return;
    }
    // No key: only the sink is in the softmax, and it carries no value (out stays 0).
    if (a.j_hi < a.j_lo) return;
    for (int64_t r = 0; r < R; ++r) {
        const float* l = m0 + r * 2 * H + H;
        float* out = a.out + r * a.row_stride;
        for (int64_t h = 0; h < H; ++h) {
            const float inv = 1.0f / l[h];
            for (int64_t c = 0; c < d; ++c) out[h * d + c] *= inv;
        }
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
