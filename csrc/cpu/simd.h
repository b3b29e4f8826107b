// Portable SIMD vocabulary for the per-ISA kernel builds: a GCC/Clang vector type whose width
// follows the ISA flags the file is compiled with, so one source serves every variant.
#pragma once
#include <cstdint>
#include <cstring>

#include "../numerics.h"

#if defined(__AVX512F__)
#define OSSRUN_VBYTES 64
#elif defined(__AVX2__)
#define OSSRUN_VBYTES 32
#else
#define OSSRUN_VBYTES 16
#endif

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef OSSRUN_ISA_NS
#error "kernel sources are compiled once per ISA with OSSRUN_ISA_NS set"
#endif

namespace ossrun::OSSRUN_ISA_NS {

constexpr int kVW = OSSRUN_VBYTES / 4;  // floats per vector
typedef float vfloat __attribute__((vector_size(OSSRUN_VBYTES)));

inline vfloat vload(const float* p) {
    vfloat v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void vstore(float* p, vfloat v) { std::memcpy(p, &v, sizeof v); }
// kVW 16-bit KV-cache elements widened to float32 (exact): IEEE half with F16C's vcvtph2ps
// where the build has it, bfloat16 by a 16-bit shift; a scalar loop elsewhere.
inline vfloat vload_f16(const uint16_t* p) {
#if defined(__AVX512F__)
    return reinterpret_cast<vfloat>(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif defined(__AVX2__) && defined(__F16C__)
    return reinterpret_cast<vfloat>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
    vfloat v;
    for (int i = 0; i < kVW; ++i) v[i] = fp16_to_float(p[i]);
    return v;
#endif
}
inline vfloat vload_bf16(const uint16_t* p) {
#if defined(__AVX512F__)
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return reinterpret_cast<vfloat>(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
#elif defined(__AVX2__)
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return reinterpret_cast<vfloat>(_mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
#else
    vfloat v;
    for (int i = 0; i < kVW; ++i) v[i] = bf16_to_float(p[i]);
    return v;
#endif
}
// f in every lane, as one broadcast where the ISA has one (a loop over the lanes can become an
// insert per lane); exact for every f, -0.0 and NaN included.
inline vfloat vsplat(float f) {
#if defined(__AVX512F__)
    return reinterpret_cast<vfloat>(_mm512_set1_ps(f));
#elif defined(__AVX2__)
    return reinterpret_cast<vfloat>(_mm256_set1_ps(f));
#else
    vfloat v;
    for (int i = 0; i < kVW; ++i) v[i] = f;
    return v;
#endif
}
inline float hsum(vfloat v) {
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps(reinterpret_cast<__m512>(v));
#elif defined(__AVX2__)
    const __m256 x = reinterpret_cast<__m256>(v);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
#else
    float s = 0.0f;
    for (int i = 0; i < kVW; ++i) s += v[i];
    return s;
#endif
}

// exp(x) for x <= 0 (softmax arguments), to ~2 ulp: 2^n · p(r) with a degree-7 Taylor polynomial on
// |r| <= ln2/2. Inputs below -87 flush to 0, as their true values are below float's normal range.
// Lane-wise selects and the rounding shift keep it in vector instructions (roundf would be a call
// per lane without -ffast-math).
inline vfloat vexp_nonpositive(vfloat x) {
    const vfloat log2e = vsplat(1.44269504088896341f);
    const vfloat ln2_hi = vsplat(0.693359375f), ln2_lo = vsplat(-2.12194440e-4f);
    const vfloat lo = vsplat(-87.0f);
    const vfloat xc = x < lo ? lo : x;
    // n = xc·log2e rounded to an integer: adding 1.5·2^23 leaves no fraction bits (|xc·log2e| < 126).
    const vfloat shift = vsplat(12582912.0f);
    const vfloat n = (xc * log2e + shift) - shift;
    const vfloat r = (xc - n * ln2_hi) - n * ln2_lo;
    vfloat p = vsplat(1.0f / 5040.0f);
    p = p * r + vsplat(1.0f / 720.0f);
    p = p * r + vsplat(1.0f / 120.0f);
    p = p * r + vsplat(1.0f / 24.0f);
    p = p * r + vsplat(1.0f / 6.0f);
    p = p * r + vsplat(0.5f);
    p = p * r + vsplat(1.0f);
    p = p * r + vsplat(1.0f);
    typedef int32_t vint __attribute__((vector_size(OSSRUN_VBYTES)));
    vint bits = __builtin_convertvector(n, vint) + 127;
    bits <<= 23;
    vfloat scale;
    std::memcpy(&scale, &bits, sizeof scale);
    const vfloat out = p * scale;
    return x < lo ? vsplat(0.0f) : out;
}

}  // namespace ossrun::OSSRUN_ISA_NS
