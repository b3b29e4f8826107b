// Scalar number formats shared by every backend: fp16, bf16, E8M0 and E2M1 (MODEL.md §3, §4.3).
// All conversions are exact; fp16 subnormals are decoded properly (MODEL.md §6.9). The scalar
// conversions compile for the host and for CUDA devices (OSSRUN_HD), so each format is written once;
// the lookup tables below are host-only.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

// __host__ __device__ under nvcc, nothing for the host compilers.
#if defined(__CUDACC__)
#define OSSRUN_HD __host__ __device__
#else
#define OSSRUN_HD
#endif

namespace ossrun {

OSSRUN_HD inline float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#endif
}

OSSRUN_HD inline float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

OSSRUN_HD inline float fp16_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1F;
    const uint32_t mant = h & 0x3FF;
    if (exp == 0x1F) return bits_to_float(sign | 0x7F800000u | (mant << 13));  // inf / nan
    if (exp != 0) return bits_to_float(sign | ((exp + 112) << 23) | (mant << 13));
    // Subnormal (or zero): mant * 2^-24, exact in float32.
    float v = float(mant) * (1.0f / 16777216.0f);
    return sign ? -v : v;
}

// fp16_to_float, as one conversion instruction on CUDA devices.
OSSRUN_HD inline float half_bits_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    return fp16_to_float(h);
#endif
}

// float32 -> IEEE half, rounded to nearest even (as F16C and numpy do): overflow gives ±inf,
// values below half's normal range become subnormals, NaN stays NaN.
inline uint16_t float_to_fp16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000);
    x &= 0x7FFFFFFFu;
    if (x > 0x7F800000u) return sign | 0x7E00;   // NaN
    if (x >= 0x477FF000u) return sign | 0x7C00;  // >= 65520 rounds past 65504: inf
    if (x >= 0x38800000u) {                      // normal half (>= 2^-14): rebias, round 13 bits
        const uint32_t r = x - 0x38000000u;
        return sign | uint16_t((r + 0xFFFu + ((r >> 13) & 1u)) >> 13);
    }
    // Subnormal half: a multiple of 2^-24; |f| * 2^24 is exact and below 1024, so round it to an
    // integer, nearest even (1024 is the smallest normal, which the encoding gives for free).
    const float a = bits_to_float(x) * 16777216.0f;
    float t = float(uint32_t(a));
    const float frac = a - t;
    if (frac > 0.5f || (frac == 0.5f && (uint32_t(t) & 1u))) t += 1.0f;
    return sign | uint16_t(t);
}

// float32 -> bfloat16, rounded to nearest even; NaN stays NaN.
inline uint16_t float_to_bf16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((x >> 16) | 0x40);
    return uint16_t((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

// E8M0 scale byte e means 2^(e-127). e = 0 is the float32 subnormal 2^-127; 255 (NaN) comes out
// as infinity, so a row holding it gives non-finite outputs, which the model's logits check
// reports (loading does not scan the experts' scale bytes).
OSSRUN_HD inline float e8m0_to_float(uint8_t e) {
    return e == 0 ? bits_to_float(0x00400000u) : bits_to_float(uint32_t(e) << 23);
}

// E2M1 code -> value (MODEL.md §3.1) by arithmetic, for device code (kE2M1 below is the same
// table for the host): bit 3 the sign, bits 2-1 the exponent, bit 0 the mantissa; exponent 0
// is the subnormal 0 / 0.5.
OSSRUN_HD inline float e2m1_to_float(uint8_t code) {
    const int e = (code >> 1) & 3, m = code & 1;
    const float mag = e == 0 ? 0.5f * float(m) : float(1 << (e - 1)) * (1.0f + 0.5f * float(m));
    return (code & 8) ? -mag : mag;
}

// All 256 E8M0 values, so a kernel gets a block's scale with one (broadcast) load.
inline const float* e8m0_table() {
    static const struct Table {
        float v[256];
        Table() {
            for (int e = 0; e < 256; ++e) v[e] = e8m0_to_float(uint8_t(e));
        }
    } table;
    return table.v;
}

// Half of each E8M0 scale, for the int16 kernels whose MXFP4 values are doubled e2m1 (integers).
inline const float* e8m0_half_table() {
    static const auto table = [] {
        std::vector<float> h(256);
        for (int e = 0; e < 256; ++e) h[size_t(e)] = e8m0_table()[e] * 0.5f;
        return h;
    }();
    return table.data();
}

// E2M1 code -> value (MODEL.md §3.1). Bit 3 is the sign.
constexpr float kE2M1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                             -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// The 16 E2M1 values times each of the 256 E8M0 scales (exact products), one 64-byte line per
// scale: a kernel fetches a block's scaled table with one load instead of a multiply (16 KiB,
// of which a model's few dozen distinct scales stay in L1).
inline const float* e2m1_scaled_tables() {
    static const struct Tables {
        alignas(64) float v[256 * 16];
        Tables() {
            for (int e = 0; e < 256; ++e)
                for (int i = 0; i < 16; ++i) v[e * 16 + i] = kE2M1[i] * e8m0_to_float(uint8_t(e));
        }
    } tables;
    return tables.v;
}

}  // namespace ossrun
