// Attention of one query head at one position, with a sink logit and a key range (MODEL.md §2.5),
// compiled once per ISA. The sink joins the softmax denominator only: no value, no 1/sqrt(d).
#include <algorithm>
#include <cmath>

#include "../../kernels.h"
#include "../simd.h"

namespace ossrun::OSSRUN_ISA_NS {

void attention_row(const AttentionRowArgs& a) {
    const int64_t d = a.head_dim;
    const int64_t n = a.j_hi - a.j_lo + 1;
    float m = a.sink;
    for (int64_t i = 0; i < n; ++i) {
        const float* k = a.k_cache + ((a.j_lo + i) % a.cap) * a.slot_stride;
        vfloat acc = {};
        int64_t c = 0;
        for (; c + kVW <= d; c += kVW) acc += vload(a.q + c) * vload(k + c);
        float s = hsum(acc);
        for (; c < d; ++c) s += a.q[c] * k[c];
        s *= a.scale;
        a.scores[i] = s;
        m = std::max(m, s);
    }
    float den = std::exp(a.sink - m);
    const vfloat mv = vsplat(m);
    int64_t i = 0;
    vfloat dv = {};
    for (; i + kVW <= n; i += kVW) {
        const vfloat e = vexp_nonpositive(vload(a.scores + i) - mv);
        vstore(a.scores + i, e);
        dv += e;
    }
    den += hsum(dv);
    for (; i < n; ++i) {
        a.scores[i] = std::exp(a.scores[i] - m);
        den += a.scores[i];
    }
    const float inv = 1.0f / den;
    for (int64_t c = 0; c < d; ++c) a.out[c] = 0.0f;
    for (i = 0; i < n; ++i) {
        const float w = a.scores[i] * inv;
        const float* v = a.v_cache + ((a.j_lo + i) % a.cap) * a.slot_stride;
        const vfloat wv = vsplat(w);
        int64_t c = 0;
        for (; c + kVW <= d; c += kVW) vstore(a.out + c, vload(a.out + c) + wv * vload(v + c));
        for (; c < d; ++c) a.out[c] += w * v[c];
    }
}

}  // namespace ossrun::OSSRUN_ISA_NS
