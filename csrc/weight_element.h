// Element c of one row of a weight matrix, for every type a model file may hold (F32, F16, BF16,
// Q8_0, MXFP4 and the dense quants of quant_element.h; MODEL.md §4.3), for the host and CUDA
// devices: what the CUDA kernels read. Byte loads only: GGUF is little-endian and a Q8_0 block
// (34 bytes) leaves its fp16 scale 2-byte aligned at best.
#pragma once
#include <cstdint>

#include "mxfp4.h"
#include "numerics.h"
#include "quant_element.h"
#include "weights.h"

namespace ossrun {

OSSRUN_HD inline uint16_t load_u16_le(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }

OSSRUN_HD inline uint32_t load_u32_le(const uint8_t* p) {
    return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

// Whether weight_element() knows `type`.
OSSRUN_HD inline bool has_weight_element(DType type) {
    switch (type) {
        case DType::F32: case DType::F16: case DType::BF16: case DType::Q8_0: case DType::MXFP4:
        case DType::Q4_0: case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: case DType::IQ4_NL:
        case DType::Q2_K: case DType::Q3_K: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K:
            return true;
        default: return false;
    }
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
        case DType::Q4_0: return q4_0_element(row + (c / 32) * 18, int(c % 32));
        case DType::Q4_1: return q4_1_element(row + (c / 32) * 20, int(c % 32));
        case DType::Q5_0: return q5_0_element(row + (c / 32) * 22, int(c % 32));
        case DType::Q5_1: return q5_1_element(row + (c / 32) * 24, int(c % 32));
        case DType::IQ4_NL: return iq4_nl_element(row + (c / 32) * 18, int(c % 32));
        case DType::Q2_K: return q2_k_element(row + (c / 256) * 84, int(c % 256));
        case DType::Q3_K: return q3_k_element(row + (c / 256) * 110, int(c % 256));
        case DType::Q4_K: return q4_k_element(row + (c / 256) * 144, int(c % 256));
        case DType::Q5_K: return q5_k_element(row + (c / 256) * 176, int(c % 256));
        case DType::Q6_K: return q6_k_element(row + (c / 256) * 210, int(c % 256));
        default: return 0.0f;
    }
}

}  // namespace ossrun
