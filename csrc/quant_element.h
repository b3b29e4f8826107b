// Element c of a row of the dense quant formats of community gpt-oss files (ggml's block_q4_0 ..
// block_q6_K; MODEL.md §4.3), one element at a time, for the host and CUDA devices: the form the
// CPU's vector unpackers (csrc/cpu/kernels/quant_blocks.h) write a block into, an integer q, a
// scale s and an offset m with element = q * s - m. s and m are an fp16 times an integer of at most
// 8 bits and q * s at most 19 significant bits, so both are exact in float32 and the element has
// the one rounding of the subtraction (an FMA rounds it the same way): the CPU's decoded rows, bit
// for bit. Byte loads only (weight_element.h).
#pragma once
#include <cstdint>

#include "numerics.h"

namespace ossrun {

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j (0..7) in 12 packed bytes (ggml's
// get_scale_min_k4).
OSSRUN_HD inline void k4_scale_min(const uint8_t* sc, int j, int& scale, int& min) {
    if (j < 4) {
        scale = sc[j] & 63;
        min = sc[j + 4] & 63;
    } else {
        scale = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
        min = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
}

namespace quant_element_detail {

OSSRUN_HD inline float half_at(const uint8_t* p) { return fp16_to_float(uint16_t(p[0] | (p[1] << 8))); }

// Nibble j (0..31) of 16 bytes: the low nibbles are elements 0..15, the high ones 16..31.
OSSRUN_HD inline int nibble32(const uint8_t* qs, int j) { return j < 16 ? qs[j] & 15 : qs[j - 16] >> 4; }

// Bit j (0..31) of the little-endian 32 bits at qh.
OSSRUN_HD inline int bit32(const uint8_t* qh, int j) { return (qh[j >> 3] >> (j & 7)) & 1; }

OSSRUN_HD inline float qsm(int q, float s, float m) { return float(q) * s - m; }

}  // namespace quant_element_detail

// The IQ4_NL levels (quant_blocks.h's kIq4nlLevels), indexed by a nibble.
OSSRUN_HD inline int iq4nl_level(int nibble) {
    constexpr int8_t kLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    return kLevels[nibble];
}

// Element j (0..31) of a 32-element block: Q4_0 (18 bytes), Q4_1 (20), Q5_0 (22), Q5_1 (24), IQ4_NL (18).
OSSRUN_HD inline float q4_0_element(const uint8_t* b, int j) {
    using namespace quant_element_detail;
    return qsm(nibble32(b + 2, j) - 8, half_at(b), 0.0f);
}
OSSRUN_HD inline float q4_1_element(const uint8_t* b, int j) {
    using namespace quant_element_detail;
    return qsm(nibble32(b + 4, j), half_at(b), -half_at(b + 2));
}
OSSRUN_HD inline float q5_0_element(const uint8_t* b, int j) {
    using namespace quant_element_detail;
    return qsm((nibble32(b + 6, j) | bit32(b + 2, j) << 4) - 16, half_at(b), 0.0f);
}
OSSRUN_HD inline float q5_1_element(const uint8_t* b, int j) {
    using namespace quant_element_detail;
    return qsm(nibble32(b + 8, j) | bit32(b + 4, j) << 4, half_at(b), -half_at(b + 2));
}
OSSRUN_HD inline float iq4_nl_element(const uint8_t* b, int j) {
    using namespace quant_element_detail;
    return qsm(iq4nl_level(nibble32(b + 2, j)), half_at(b), 0.0f);
}

// Element e (0..255) of a 256-element super-block.
// Q2_K (84 bytes): e = 128h + 32j + l is bits 2j, 2j+1 of quant byte 32h + l; per 16 a scale
// (low nibble) and min (high nibble) byte, times the fp16 d and dmin.
OSSRUN_HD inline float q2_k_element(const uint8_t* b, int e) {
    using namespace quant_element_detail;
    const int h = e >> 7, j = (e >> 5) & 3, l = e & 31, g = e >> 4;
    const int q = (b[16 + 32 * h + l] >> (2 * j)) & 3;
    return qsm(q, half_at(b + 80) * float(b[g] & 0xF), half_at(b + 82) * float(b[g] >> 4));
}
// Q3_K (110 bytes): the same two bits, minus 4 where bit 4h + j of hmask byte l is clear; 16
// 6-bit scales biased by 32 (low 4 bits in nibbles of bytes 0-7, high 2 bits in bytes 8-11).
OSSRUN_HD inline float q3_k_element(const uint8_t* b, int e) {
    using namespace quant_element_detail;
    const int h = e >> 7, j = (e >> 5) & 3, l = e & 31, g = e >> 4;
    const uint8_t* sc = b + 96;
    const int high_bit = (b[l] >> (4 * h + j)) & 1;
    const int q = ((b[32 + 32 * h + l] >> (2 * j)) & 3) - (high_bit ? 0 : 4);
    const int low = g < 8 ? sc[g] & 0xF : sc[g - 8] >> 4;
    const int high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
    return qsm(q, half_at(b + 108) * float((low | high << 4) - 32), 0.0f);
}
// Q4_K (144 bytes) / Q5_K (176): e = 64c + 32hi + l is nibble hi of quant byte 32c + l (Q5_K:
// plus bit e / 32 of qh byte l as bit 4); sub-block e / 32's 6-bit scale and min times d, dmin.
namespace quant_element_detail {
OSSRUN_HD inline float k4_family_element(const uint8_t* b, int e, const uint8_t* qs, const uint8_t* qh) {
    const int c = e >> 6, hi = (e >> 5) & 1, l = e & 31;
    int scale, min;
    k4_scale_min(b + 4, e >> 5, scale, min);
    const uint8_t byte = qs[32 * c + l];
    const int q = (hi ? byte >> 4 : byte & 15) | (qh ? ((qh[l] >> (e >> 5)) & 1) << 4 : 0);
    return qsm(q, half_at(b) * float(scale), half_at(b + 2) * float(min));
}
}  // namespace quant_element_detail
OSSRUN_HD inline float q4_k_element(const uint8_t* b, int e) {
    return quant_element_detail::k4_family_element(b, e, b + 16, nullptr);
}
OSSRUN_HD inline float q5_k_element(const uint8_t* b, int e) {
    return quant_element_detail::k4_family_element(b, e, b + 48, b + 16);
}
// Q6_K (210 bytes): e = 128h + 32p + l is the low (p < 2) or high nibble of ql byte
// 64h + 32(p & 1) + l with bits 2p, 2p+1 of qh byte 32h + l on top, minus 32; an int8 scale per 16.
OSSRUN_HD inline float q6_k_element(const uint8_t* b, int e) {
    using namespace quant_element_detail;
    const int h = e >> 7, p = (e >> 5) & 3, l = e & 31;
    const uint8_t byte = b[64 * h + 32 * (p & 1) + l];
    const int low = p < 2 ? byte & 15 : byte >> 4;
    const int q = (low | ((b[128 + 32 * h + l] >> (2 * p)) & 3) << 4) - 32;
    return qsm(q, half_at(b + 208) * float(int8_t(b[192 + (e >> 4)])), 0.0f);
}

}  // namespace ossrun
