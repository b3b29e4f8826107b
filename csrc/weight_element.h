// Element c of one row of a weight matrix, for each type the CUDA kernels read (F32, F16, BF16,
// Q8_0, MXFP4; MODEL.md §4.3), for the host and CUDA devices. Byte loads only: GGUF is
// little-endian and a Q8_0 block (34 bytes) leaves its fp16 scale 2-byte aligned at best.
#pragma once
#include <cstdint>

#include "mxfp4.h"
#include "numerics.h"
#include "weights.h"

namespace ossrun {

OSSRUN_HD inline uint16_t load_u16_le(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }

OSSRUN_HD inline uint32_t load_u32_le(const uint8_t* p) {
    return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

// Whether weight_element() knows `type`.
OSSRUN_HD inline bool has_weight_element(DType type) {
    return type == DType::F32 || type == DType::F16 || type == DType::BF16 || type == DType::Q8_0 ||
           type == DType::MXFP4;
}

// Exact float32 value of element c (0 <= c < cols) of the row starting at `row`; 0 for a type
// has_weight_element() rejects (callers check the type first).
OSSRUN_HD inline float weight_element(DType type, const uint8_t* row, int64_t c) {
    switch (type) {
        case DType::F32: return bits_to_float(load_u32_le(row + 4 * c));
        case DType::F16: return fp16_to_float(load_u16_le(row + 2 * c));
        case DType::BF16: return bf16_to_float(load_u16_le(row + 2 * c));
        case DType::Q8_0: {  // fp16 scale d, then 32 int8: d * q is exact (11 + 8 bits)
            const uint8_t* block = row + (c / kBlockElems) * kQ8BlockBytes;
            return fp16_to_float(load_u16_le(block)) * float(int8_t(block[2 + c % kBlockElems]));
        }
        case DType::MXFP4:
            return mxfp4_element(row + (c / kBlockElems) * kMxfp4BlockBytes, int(c % kBlockElems));
        default: return 0.0f;
    }
}

}  // namespace ossrun
