// Attention of the query heads of one GQA group at one position, with per-head sink logits and
// a key range (MODEL.md §2.5), compiled once per ISA. Shape contract in kernels.h (AttentionArgs).
// Keys are transposed in the cache, so q·k is computed for a run of consecutive keys per vector
// (no horizontal sums), and each key load serves every head of the group.
#include <algorithm>
#include <cmath>

#include "../../kernels.h"
#include "../simd.h"

namespace ossrun::OSSRUN_ISA_NS {

namespace {

constexpr int kHeadBlock = 8;  // heads whose score accumulators stay in registers together

// scores[h * n + i] = scale · q_h · k_{slot0 + i}, for i < count, heads h0 .. h0 + nh - 1.
template <int NH>
void scores_run(const AttentionArgs& a, int64_t h0, int64_t slot0, int64_t count, int64_t i0,
                int64_t n) {
    const int64_t d = a.head_dim;
    const float* q = a.q + h0 * d;
    float* sc = a.scores + h0 * n + i0;
    int64_t i = 0;
    for (; i + kVW <= count; i += kVW) {
        vfloat acc[NH] = {};
        for (int64_t c = 0; c < d; ++c) {
            const vfloat k = vload(a.k_t + c * a.k_stride + slot0 + i);
            for (int h = 0; h < NH; ++h) acc[h] += q[h * d + c] * k;
        }
        for (int h = 0; h < NH; ++h) vstore(sc + h * n + i, acc[h] * vsplat(a.scale));
    }
    for (; i < count; ++i)
        for (int h = 0; h < NH; ++h) {
            float s = 0.0f;
            for (int64_t c = 0; c < d; ++c) s += q[h * d + c] * a.k_t[c * a.k_stride + slot0 + i];
            sc[h * n + i] = s * a.scale;
        }
}

template <int NH>
void scores_heads(const AttentionArgs& a, int64_t h0, int64_t n) {
    // The keys' slots are one run, or two when the range wraps around the ring.
    const int64_t first = a.j_lo % a.cap;
    const int64_t run1 = std::min(n, a.cap - first);
    scores_run<NH>(a, h0, first, run1, 0, n);
    if (run1 < n) scores_run<NH>(a, h0, 0, n - run1, run1, n);
}

// out_h += Σ_i w_hi · v_i for NH heads from h0, with d == NC vectors held in registers, so each
// value row is loaded once per NH heads and nothing is stored until the end.
template <int NH, int NC>
void values_block(const AttentionArgs& a, int64_t h0, int64_t n) {
    vfloat acc[NH][NC] = {};
    for (int64_t i = 0; i < n; ++i) {
        const float* v = a.v + ((a.j_lo + i) % a.cap) * a.v_stride;
        vfloat vv[NC];
        for (int c = 0; c < NC; ++c) vv[c] = vload(v + c * kVW);
        for (int h = 0; h < NH; ++h) {
            const float w = a.scores[(h0 + h) * n + i];
            for (int c = 0; c < NC; ++c) acc[h][c] += w * vv[c];
        }
    }
    for (int h = 0; h < NH; ++h)
        for (int c = 0; c < NC; ++c) vstore(a.out + (h0 + h) * a.head_dim + c * kVW, acc[h][c]);
}

// Any head_dim: one head at a time, accumulating in the output row.
void values_generic(const AttentionArgs& a, int64_t h, int64_t n) {
    const int64_t d = a.head_dim;
    float* out = a.out + h * d;
    for (int64_t i = 0; i < n; ++i) {
        const float* v = a.v + ((a.j_lo + i) % a.cap) * a.v_stride;
        const float w = a.scores[h * n + i];
        int64_t c = 0;
        for (; c + kVW <= d; c += kVW) vstore(out + c, vload(out + c) + w * vload(v + c));
        for (; c < d; ++c) out[c] += w * v[c];
    }
}

}  // namespace

void attention(const AttentionArgs& a) {
    const int64_t d = a.head_dim, n = a.j_hi - a.j_lo + 1;
    std::fill_n(a.out, a.n_heads * d, 0.0f);
    if (n <= 0) return;  // only the sinks are left in the softmax, and they carry no value

    int64_t h0 = 0;
    for (; h0 + kHeadBlock <= a.n_heads; h0 += kHeadBlock) scores_heads<kHeadBlock>(a, h0, n);
    for (; h0 < a.n_heads; ++h0) scores_heads<1>(a, h0, n);

    // Softmax per head; the sink takes part in the max and the denominator only.
    for (int64_t h = 0; h < a.n_heads; ++h) {
        float* sc = a.scores + h * n;
        float m = a.sinks[h];
        for (int64_t i = 0; i < n; ++i) m = std::max(m, sc[i]);
        float den = std::exp(a.sinks[h] - m);
        const vfloat mv = vsplat(m);
        vfloat dv = {};
        int64_t i = 0;
        for (; i + kVW <= n; i += kVW) {
            const vfloat e = vexp_nonpositive(vload(sc + i) - mv);
            vstore(sc + i, e);
            dv += e;
        }
        den += hsum(dv);
        for (; i < n; ++i) den += (sc[i] = std::exp(sc[i] - m));
        const float inv = 1.0f / den;
        for (i = 0; i < n; ++i) sc[i] *= inv;
    }

    // out_h = Σ_i w_hi · v_i. gpt-oss's head_dim 64 keeps a block of heads' sums in registers.
    constexpr int kNC = 64 / kVW, kNH = kNC >= 16 ? 1 : 16 / kNC;
    int64_t h = 0;
    if (d == 64)
        for (; h + kNH <= a.n_heads; h += kNH) values_block<kNH, kNC>(a, h, n);
    for (; h < a.n_heads; ++h) values_generic(a, h, n);
}

}  // namespace ossrun::OSSRUN_ISA_NS
