#include "attention_split.h"

#include <algorithm>
#include <cmath>

namespace ossrun {

void merge_attention_parts(const float* acc, const float* part_max, const float* part_sum,
                           int64_t n_parts, int64_t n_heads, int64_t d, const float* sinks, float* out) {
    for (int64_t h = 0; h < n_heads; ++h) {
        float M = sinks[h];
        for (int64_t p = 0; p < n_parts; ++p) M = std::max(M, part_max[p * n_heads + h]);
        float den = std::exp(sinks[h] - M);
        float* o = out + h * d;
        std::fill_n(o, d, 0.0f);
        for (int64_t p = 0; p < n_parts; ++p) {
            const float w = std::exp(part_max[p * n_heads + h] - M);  // 0 for an empty part (-inf)
            den += w * part_sum[p * n_heads + h];
            const float* a = acc + (p * n_heads + h) * d;
            for (int64_t c = 0; c < d; ++c) o[c] += w * a[c];
        }
        // A range with no key anywhere leaves only the sink: 0, as the unsplit kernel gives.
        const float inv = 1.0f / den;
        for (int64_t c = 0; c < d; ++c) o[c] *= inv;
    }
}

}  // namespace ossrun
