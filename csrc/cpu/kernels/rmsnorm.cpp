// RMSNorm (MODEL.md §2.2), compiled once per ISA: eps inside the sqrt, added to the mean.
#include <cmath>

#include "../../kernels.h"
#include "../simd.h"

namespace ossrun::OSSRUN_ISA_NS {

void rmsnorm(const float* x, const float* g, float* y, int64_t n, float eps) {
    vfloat acc = {};
    int64_t i = 0;
    for (; i + kVW <= n; i += kVW) {
        const vfloat v = vload(x + i);
        acc += v * v;
    }
    float ss = hsum(acc);
    for (; i < n; ++i) ss += x[i] * x[i];
    const float inv = 1.0f / std::sqrt(ss / float(n) + eps);
    for (i = 0; i < n; ++i) y[i] = g[i] * (x[i] * inv);
}

}  // namespace ossrun::OSSRUN_ISA_NS
