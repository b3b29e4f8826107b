// The experts' clamped SwiGLU (MODEL.md §2.6, "swiglu_oai" in moe_ops.h), compiled once per ISA:
// h = min(g, limit) * sigmoid(alpha * min(g, limit)) * (clamp(l, -limit, limit) + 1).
// The scalar loop spent ~3.6 ns an element in std::exp (a 4-sequence decode step: 46k elements a
// layer); here the sigmoid comes from vexp_nonpositive of -|x|, which stays in [0, 1].
#include <algorithm>

#include "../../kernels.h"
#include "../simd.h"

namespace ossrun::OSSRUN_ISA_NS {

namespace {

inline vfloat swiglu_vec(vfloat g, vfloat l, vfloat alpha, vfloat limit) {
    const vfloat one = vsplat(1.0f), neg_limit = -limit;
    g = g < limit ? g : limit;  // upper clamp only (NaN becomes limit, as in the scalar form)
    l = l < neg_limit ? neg_limit : (l > limit ? limit : l);
    const vfloat x = alpha * g;
    const vfloat e = vexp_nonpositive(x < vsplat(0.0f) ? x : -x);  // exp(-|x|)
    // sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) below: never an overflowing exp.
    const vfloat sig = (x >= vsplat(0.0f) ? one : e) / (one + e);
    return g * sig * (l + one);
}

}  // namespace

void swiglu(const float* gate, const float* lin, float* h, int64_t n, float alpha, float limit) {
    const vfloat a = vsplat(alpha), lim = vsplat(limit);
    int64_t i = 0;
    for (; i + kVW <= n; i += kVW) vstore(h + i, swiglu_vec(vload(gate + i), vload(lin + i), a, lim));
    if (i < n) {  // the tail through the same vector code: an element's result never depends on where it sits
        float g[kVW] = {}, l[kVW] = {}, out[kVW];
        std::copy(gate + i, gate + n, g);
        std::copy(lin + i, lin + n, l);
        vstore(out, swiglu_vec(vload(g), vload(l), a, lim));
        std::copy(out, out + (n - i), h + i);
    }
}

}  // namespace ossrun::OSSRUN_ISA_NS
