// The small per-token piece of the MoE block (MODEL.md §2.6): router top-k with softmax over
// the selected logits. (The clamped SwiGLU is a kernel, cpu/kernels/swiglu.cpp.)
#pragma once
#include <cmath>
#include <cstdint>

namespace ossrun {

// The k largest of logits[0..E) (ties: lower index first) and their softmax weights.
inline void router_topk(const float* logits, int64_t E, int64_t k, int32_t* idx, float* weight) {
    for (int64_t s = 0; s < k; ++s) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; ++e) {
            bool taken = false;
            for (int64_t p = 0; p < s; ++p) taken |= idx[p] == e;
            if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
        }
        idx[s] = int32_t(best);
    }
    const float m = logits[idx[0]];  // the largest
    float den = 0.0f;
    for (int64_t s = 0; s < k; ++s) den += (weight[s] = std::exp(logits[idx[s]] - m));
    for (int64_t s = 0; s < k; ++s) weight[s] /= den;
}

}  // namespace ossrun
