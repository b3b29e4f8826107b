// Whole 32-element blocks of MXFP4 and Q8_0 decoded at once, for the host and CUDA devices (the
// CUDA decode GEMVs, cuda/block_rows.cuh): each format's bytes per block, the unit its decoded
// values are in, and decode(), which writes the block's 32 values in element order divided by
// kUnit and returns the block's scale, so that element j is exactly (w[j] * kUnit) * scale
// (tests/test_cuda_ops.py checks this against weight_element.h bit for bit on the host).
#pragma once
#include <cstdint>

#include "mxfp4.h"
#include "numerics.h"
#include "weights.h"

namespace ossrun {

struct Mxfp4Blocks {
    static constexpr int kBytes = kMxfp4BlockBytes;
    static constexpr float kUnit = kE2m1PairUnit;
    OSSRUN_HD static float decode(const uint8_t* block, float w[kBlockElems]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
        for (int j = 0; j < 16; ++j) {
            const uint32_t bits = e2m1_pair_half_bits(block[1 + j]);
            w[j] = half_bits_to_float(uint16_t(bits & 0xFFFFu));
            w[j + 16] = half_bits_to_float(uint16_t(bits >> 16));
        }
        return e8m0_to_float(block[0]);
    }
};

struct Q8Blocks {
    static constexpr int kBytes = kQ8BlockBytes;
    static constexpr float kUnit = 1.0f;
    OSSRUN_HD static float decode(const uint8_t* block, float w[kBlockElems]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
        for (int j = 0; j < kBlockElems; ++j) w[j] = float(int8_t(block[2 + j]));
        return fp16_to_float(uint16_t(block[0] | (block[1] << 8)));
    }
};

}  // namespace ossrun
