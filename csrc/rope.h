// YaRN rotary embedding exactly as the reference builds it (MODEL.md §2.4): a float32 θ table
// with unrounded low/high, float32 angles p·θ_i, accurately rounded cos/sin, times float32 C.
#pragma once
#include <cstdint>
#include <vector>

#include "config.h"

namespace ossrun {

struct RopeTable {
    std::vector<float> theta;  // [d/2]
    float concentration = 1.0f;
};

// Throws std::invalid_argument when the YaRN range is degenerate (the reference asserts
// 0 < low < high < d/2 - 1).
RopeTable make_rope_table(const ModelConfig& c);

// cos/sin (times C) for n positions: out[t * half + i].
void rope_cos_sin(const RopeTable& r, const int64_t* positions, int64_t n, float* cos_out,
                  float* sin_out);

// Half-split rotation in place of n_heads head vectors of width d (pair i with i + d/2).
void apply_rope(float* x, int64_t n_heads, int64_t d, const float* cos, const float* sin);

}  // namespace ossrun
