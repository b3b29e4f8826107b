// Portable SIMD vocabulary for the per-ISA kernel builds: a GCC/Clang vector type whose width
// follows the ISA flags the file is compiled with, so one source serves every variant.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#define OSSRUN_VBYTES 64
#elif defined(__AVX2__)
#define OSSRUN_VBYTES 32
#else
#define OSSRUN_VBYTES 16
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
inline vfloat vsplat(float f) {
    vfloat v;
    for (int i = 0; i < kVW; ++i) v[i] = f;
    return v;
}
inline float hsum(vfloat v) {
    float s = 0.0f;
    for (int i = 0; i < kVW; ++i) s += v[i];
    return s;
}

}  // namespace ossrun::OSSRUN_ISA_NS
