// Whole 32-element blocks of MXFP4, Q8_0 and (for rows of whole blocks) F16, BF16 and F32 decoded
// at once, for the host and CUDA devices (the CUDA decode GEMVs, cuda/block_rows.cuh): each
// format's bytes per block, the unit its decoded values are in, and decode(), which writes the
// block's 32 values in element order divided by kUnit and returns the block's scale, so that
// element j is exactly (w[j] * kUnit) * scale (tests/test_cuda_ops.py checks this against
// weight_element.h bit for bit on the host). Byte loads: a staged block keeps the row's alignment
// within 16 bytes, which for the 16-bit types is 2 bytes at best.
#pragma once
#include <cstdint>

#include "mxfp4.h"
#include "numerics.h"
#include "weight_element.h"  // load_u16_le, load_u32_le
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
        return fp16_to_float(load_u16_le(block));
    }
};

// The plain types: scale 1, unit 1. IEEE half and bfloat16 differ only in the conversion.
template <bool kBrainFloat>
struct Blocks16 {
    static constexpr int kBytes = 2 * kBlockElems;
    static constexpr float kUnit = 1.0f;
    OSSRUN_HD static float decode(const uint8_t* block, float w[kBlockElems]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
        for (int j = 0; j < kBlockElems; ++j) {
            const uint16_t bits = load_u16_le(block + 2 * j);
            w[j] = kBrainFloat ? bf16_to_float(bits) : half_bits_to_float(bits);
        }
        return 1.0f;
    }
};
using F16Blocks = Blocks16<false>;
using BF16Blocks = Blocks16<true>;

struct F32Blocks {
    static constexpr int kBytes = 4 * kBlockElems;
    static constexpr float kUnit = 1.0f;
    OSSRUN_HD static float decode(const uint8_t* block, float w[kBlockElems]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
        for (int j = 0; j < kBlockElems; ++j) w[j] = bits_to_float(load_u32_le(block + 4 * j));
        return 1.0f;
    }
};

// Calls f(Format{}) for a type with a whole-block decode here (rows of cols % 32 == 0), and
// returns true; false for any other type. Host-only: it picks the kernel to launch.
template <class F>
inline bool with_block_format(DType type, int64_t cols, F&& f) {
    if (cols % kBlockElems) return false;
    switch (type) {
        case DType::MXFP4: f(Mxfp4Blocks{}); return true;
        case DType::Q8_0: f(Q8Blocks{}); return true;
        case DType::F16: f(F16Blocks{}); return true;
        case DType::BF16: f(BF16Blocks{}); return true;
        case DType::F32: f(F32Blocks{}); return true;
        default: return false;
    }
}

}  // namespace ossrun
