// 32-element blocks of MXFP4, Q8_0 and (for rows of whole blocks) F16, BF16 and F32 decoded a
// quarter at a time, for the host and CUDA devices (the CUDA decode GEMVs, cuda/block_rows.cuh,
// where the 4 lanes of a block each take one quarter, so that a warp's reads of x are 8 blocks'
// contiguous runs): each format's bytes per block, the unit its decoded values are in, which
// elements quarter q holds (two runs of 4: first(q) .. +3 and second(q) .. +3), and
// decode_part(), which writes them to w[0..3] and w[4..7] divided by kUnit and returns the
// block's scale, so that element first(q) + i is exactly (w[i] * kUnit) * scale
// (tests/test_cuda_ops.py checks this against weight_element.h bit for bit on the host). Byte
// loads: a staged block keeps the row's alignment within 16 bytes, which for the 16-bit types is
// 2 bytes at best.
#pragma once
#include <cstdint>

#include "mxfp4.h"
#include "numerics.h"
#include "weight_element.h"  // load_u16_le, load_u32_le
#include "weights.h"

namespace ossrun {

constexpr int kBlockParts = 4;  // quarters of a block, 8 elements each
constexpr int kPartElems = kBlockElems / kBlockParts;

// Byte j of an MXFP4 block's codes holds elements j (low nibble) and j + 16 (high): quarter q is
// bytes 4q .. 4q + 3, elements 4q .. 4q + 3 and 16 + 4q .. 16 + 4q + 3.
struct Mxfp4Blocks {
    static constexpr int kBytes = kMxfp4BlockBytes;
    static constexpr float kUnit = kE2m1PairUnit;
    OSSRUN_HD static constexpr int first(int q) { return 4 * q; }
    OSSRUN_HD static constexpr int second(int q) { return 16 + 4 * q; }
    OSSRUN_HD static float decode_part(const uint8_t* block, int q, float w[kPartElems]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
        for (int i = 0; i < 4; ++i) {
            const uint32_t bits = e2m1_pair_half_bits(block[1 + 4 * q + i]);
            w[i] = half_bits_to_float(uint16_t(bits & 0xFFFFu));
            w[4 + i] = half_bits_to_float(uint16_t(bits >> 16));
        }
        return e8m0_to_float(block[0]);
    }
};

// The other formats store elements in order: quarter q is elements 8q .. 8q + 7.
struct InOrderParts {
    OSSRUN_HD static constexpr int first(int q) { return kPartElems * q; }
    OSSRUN_HD static constexpr int second(int q) { return kPartElems * q + 4; }
};

struct Q8Blocks : InOrderParts {
    static constexpr int kBytes = kQ8BlockBytes;
    static constexpr float kUnit = 1.0f;
    OSSRUN_HD static float decode_part(const uint8_t* block, int q, float w[kPartElems]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
        for (int i = 0; i < kPartElems; ++i) w[i] = float(int8_t(block[2 + kPartElems * q + i]));
        return fp16_to_float(load_u16_le(block));
    }
};

// The plain types: scale 1, unit 1. IEEE half and bfloat16 differ only in the conversion.
template <bool kBrainFloat>
struct Blocks16 : InOrderParts {
    static constexpr int kBytes = 2 * kBlockElems;
    static constexpr float kUnit = 1.0f;
    OSSRUN_HD static float decode_part(const uint8_t* block, int q, float w[kPartElems]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
        for (int i = 0; i < kPartElems; ++i) {
            const uint16_t bits = load_u16_le(block + 2 * (kPartElems * q + i));
            w[i] = kBrainFloat ? bf16_to_float(bits) : half_bits_to_float(bits);
        }
        return 1.0f;
    }
};
using F16Blocks = Blocks16<false>;
using BF16Blocks = Blocks16<true>;

struct F32Blocks : InOrderParts {
    static constexpr int kBytes = 4 * kBlockElems;
    static constexpr float kUnit = 1.0f;
    OSSRUN_HD static float decode_part(const uint8_t* block, int q, float w[kPartElems]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
        for (int i = 0; i < kPartElems; ++i) w[i] = bits_to_float(load_u32_le(block + 4 * (kPartElems * q + i)));
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
