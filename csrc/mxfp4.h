// One MXFP4 block as GGUF stores it (MODEL.md §3, §4.3): an E8M0 scale byte, then 16 bytes whose
// low nibbles are elements 0..15 and high nibbles elements 16..31 ("split order"). Written once
// for the host and CUDA devices; the CPU's vector kernels decode whole blocks their own way and
// are checked against the same bytes (tests/test_kernels.py, tests/test_cuda_ops.py).
#pragma once
#include <cstdint>

#include "numerics.h"

namespace ossrun {

// The E2M1 code of element j (0..31) of the block at `block`.
OSSRUN_HD inline uint8_t mxfp4_code(const uint8_t* block, int j) {
    const uint8_t byte = block[1 + (j & 15)];
    return j < 16 ? uint8_t(byte & 15) : uint8_t(byte >> 4);
}

// Element j of the block: e2m1 value times 2^(scale - 127), exact in float32.
OSSRUN_HD inline float mxfp4_element(const uint8_t* block, int j) {
    return e2m1_to_float(mxfp4_code(block, j)) * e8m0_to_float(block[0]);
}

// The two elements of code byte `byte` (j: low nibble, j + 16: high nibble) as the IEEE half
// bits of e2m1 times 2^-14, low half first: the CUDA kernels' whole-block decode (no table). The
// code's bits move into the half's exponent and mantissa as they are: exponent 0 is then the
// half subnormal 2^-14 * m / 2 and exponent e > 0 is 2^(e - 15) * (1 + m / 2), both exactly
// 2^-14 times the E2M1 value (MODEL.md §3.1); bit 3 is the sign.
OSSRUN_HD inline uint32_t e2m1_pair_half_bits(uint32_t byte) {
    const uint32_t t = byte | (byte << 12);  // low nibble at bits 0-3, high nibble at 16-19
    return ((t << 9) & 0x0E000E00u) | ((t << 12) & 0x80008000u);
}
constexpr float kE2m1PairUnit = 16384.0f;  // 2^14: e2m1_pair_half_bits' values times this

}  // namespace ossrun
