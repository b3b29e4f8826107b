// Weight-row decoding and float32 matmul for every stored type (MODEL.md §3, §4.3), compiled
// once per ISA. Exact path: each weight is decoded exactly to float32 and multiplied with float32
// activations, float32 accumulation. Shape contract in kernels.h (MatmulArgs).
#include <algorithm>
#include <vector>

#include "../../kernels.h"
#include "../../numerics.h"
#include "../simd.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace ossrun::OSSRUN_ISA_NS {

namespace {

// One MXFP4 block (GGUF split order: byte k holds elements k and k + 16) -> 32 floats.
inline void decode_mxfp4_block(const uint8_t* blk, float* out) {
    const float scale = e8m0_to_float(blk[0]);
    const uint8_t* qs = blk + 1;
#if defined(__AVX512F__)
    // 16-entry table lookup with a lane permute; the scale multiply is exact (power of two).
    const __m512 table = _mm512_mul_ps(_mm512_loadu_ps(kE2M1), _mm512_set1_ps(scale));
    const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
    const __m512i lo = _mm512_and_si512(codes, _mm512_set1_epi32(0xF));
    const __m512i hi = _mm512_srli_epi32(codes, 4);
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(lo, table));
    _mm512_storeu_ps(out + 16, _mm512_permutexvar_ps(hi, table));
#elif defined(__AVX2__)
    // 8-entry magnitude table (permutevar8x32 uses the low 3 bits); bit 3 becomes the sign bit.
    const __m256 mags = _mm256_mul_ps(_mm256_loadu_ps(kE2M1), _mm256_set1_ps(scale));
    for (int half = 0; half < 2; ++half) {
        const __m256i codes = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 8 * half)));
        const __m256i lo = _mm256_and_si256(codes, _mm256_set1_epi32(0xF));
        const __m256i hi = _mm256_srli_epi32(codes, 4);
        const __m256i sign_lo = _mm256_slli_epi32(_mm256_and_si256(lo, _mm256_set1_epi32(8)), 28);
        const __m256i sign_hi = _mm256_slli_epi32(_mm256_and_si256(hi, _mm256_set1_epi32(8)), 28);
        const __m256 v_lo = _mm256_xor_ps(_mm256_permutevar8x32_ps(mags, lo), _mm256_castsi256_ps(sign_lo));
        const __m256 v_hi = _mm256_xor_ps(_mm256_permutevar8x32_ps(mags, hi), _mm256_castsi256_ps(sign_hi));
        _mm256_storeu_ps(out + 8 * half, v_lo);
        _mm256_storeu_ps(out + 16 + 8 * half, v_hi);
    }
#else
    float table[16];
    for (int i = 0; i < 16; ++i) table[i] = kE2M1[i] * scale;
    for (int k = 0; k < 16; ++k) {
        out[k] = table[qs[k] & 0xF];
        out[k + 16] = table[qs[k] >> 4];
    }
#endif
}

inline void decode_q8_0_block(const uint8_t* blk, float* out) {
    uint16_t d_bits;
    std::memcpy(&d_bits, blk, 2);
    const float d = fp16_to_float(d_bits);
    const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
    for (int i = 0; i < kBlockElems; ++i) out[i] = d * float(q[i]);
}

void decode_row_bytes(const Matrix& W, const uint8_t* src, float* out) {
    const int64_t n = W.cols;
    switch (W.type) {
        case DType::F32: std::memcpy(out, src, size_t(n) * 4); break;
        case DType::BF16:
            for (int64_t i = 0; i < n; ++i) {
                uint16_t b;
                std::memcpy(&b, src + 2 * i, 2);
                out[i] = bf16_to_float(b);
            }
            break;
        case DType::F16: {
            int64_t i = 0;
#if defined(__F16C__)
            for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(
                                              reinterpret_cast<const __m128i*>(src + 2 * i))));
#endif
            for (; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, src + 2 * i, 2);
                out[i] = fp16_to_float(h);
            }
            break;
        }
        case DType::Q8_0:
            for (int64_t b = 0; b < n / kBlockElems; ++b)
                decode_q8_0_block(src + b * kQ8BlockBytes, out + b * kBlockElems);
            break;
        case DType::MXFP4:
            for (int64_t b = 0; b < n / kBlockElems; ++b)
                decode_mxfp4_block(src + b * kMxfp4BlockBytes, out + b * kBlockElems);
            break;
    }
}

inline float dot(const float* a, const float* b, int64_t n) {
    vfloat acc0 = {}, acc1 = {};
    int64_t i = 0;
    for (; i + 2 * kVW <= n; i += 2 * kVW) {
        acc0 += vload(a + i) * vload(b + i);
        acc1 += vload(a + i + kVW) * vload(b + i + kVW);
    }
    float s = hsum(acc0 + acc1);
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

// Four dot products sharing the weight row: one row load feeds four FMAs.
inline void dot4(const float* w, const float* x0, const float* x1, const float* x2,
                 const float* x3, int64_t n, float out[4]) {
    vfloat a0 = {}, a1 = {}, a2 = {}, a3 = {};
    int64_t i = 0;
    for (; i + kVW <= n; i += kVW) {
        const vfloat wv = vload(w + i);
        a0 += wv * vload(x0 + i);
        a1 += wv * vload(x1 + i);
        a2 += wv * vload(x2 + i);
        a3 += wv * vload(x3 + i);
    }
    out[0] = hsum(a0), out[1] = hsum(a1), out[2] = hsum(a2), out[3] = hsum(a3);
    for (; i < n; ++i) {
        out[0] += w[i] * x0[i];
        out[1] += w[i] * x1[i];
        out[2] += w[i] * x2[i];
        out[3] += w[i] * x3[i];
    }
}

// Scratch row reused by each thread: no allocation once warm.
float* row_scratch(int64_t n) {
    thread_local std::vector<float> buf;
    if (int64_t(buf.size()) < n) buf.resize(size_t(n));
    return buf.data();
}

constexpr int64_t kTokenTile = 32;  // activations of a tile stay in L2 while rows stream by

}  // namespace

void decode_row(const Matrix& W, int64_t mat, int64_t r, float* out) {
    decode_row_bytes(W, W.row(mat, r), out);
}

void matmul(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const Matrix& W = *a.W;
    const int64_t K = W.cols;
    float* row = W.type == DType::F32 ? nullptr : row_scratch(K);
    for (int64_t t0 = 0; t0 < a.n_tok; t0 += kTokenTile) {
        const int64_t t1 = std::min(a.n_tok, t0 + kTokenTile);
        for (int64_t r = r0; r < r1; ++r) {
            const float* w;
            if (row) {
                decode_row_bytes(W, W.row(a.mat, r), row);
                w = row;
            } else {
                w = reinterpret_cast<const float*>(W.row(a.mat, r));
            }
            const float b = a.bias ? a.bias[r] : 0.0f;
            int64_t t = t0;
            for (; t + 4 <= t1; t += 4) {
                float s[4];
                const float* x = a.x + t * a.ldx;
                dot4(w, x, x + a.ldx, x + 2 * a.ldx, x + 3 * a.ldx, K, s);
                for (int j = 0; j < 4; ++j) a.y[(t + j) * a.ldy + r] = s[j] + b;
            }
            for (; t < t1; ++t) a.y[t * a.ldy + r] = dot(w, a.x + t * a.ldx, K) + b;
        }
    }
}

}  // namespace ossrun::OSSRUN_ISA_NS
