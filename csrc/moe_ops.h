// The small per-token pieces of the MoE block (MODEL.md §2.6): router top-k with softmax over
// the selected logits, and the clamped SwiGLU ("swiglu_oai").
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

// h = min(g, limit) * sigmoid(alpha * min(g, limit)) * (clamp(l, -limit, limit) + 1).
inline void swiglu_oai(const float* gate, const float* lin, float* h, int64_t n, float alpha,
                       float limit) {
    for (int64_t j = 0; j < n; ++j) {
        const float g = gate[j] < limit ? gate[j] : limit;  // upper clamp only
        float l = lin[j];
        l = l < -limit ? -limit : (l > limit ? limit : l);
        h[j] = g / (1.0f + std::exp(-alpha * g)) * (l + 1.0f);
    }
}

}  // namespace ossrun
