// Decode-time matmuls (few tokens), compiled once per ISA: each weight row is decoded in
// registers and consumed at once, streaming the weights from memory exactly once. The fast path
// gives Q8_0 and MXFP4 rows int16 activations (AVX512-VNNI: gemv_q8_0_i16_avx512.cpp and
// gemv_mxfp4_i16_avx512.cpp; AVX2 in gemv_i16.cpp; quantized by gemm_i16.cpp's quantize_i16).
// Shape contract in kernels.h (MatmulArgs).
#include "matmul_internal.h"

namespace ossrun::OSSRUN_ISA_NS {

namespace {

float dot_mxfp4_row(const uint8_t* row, const float* x, int64_t n) {
    const int64_t nb = n / kBlockElems;
#if defined(__AVX512F__)
    const float* tables = e2m1_scaled_tables();
    // acc += block b · x. The table of values times the block's power of two is one load (a
    // multiply fewer per block on the ports that run the FMAs), so each code becomes its value in
    // one permute; permutexvar reads only the low 4 bits of each index, so the low nibble needs
    // no mask.
    auto block = [&](int64_t b, __m512& acc) {
        const uint8_t* blk = row + b * kMxfp4BlockBytes;
        const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 1)));
        const __m512 t = _mm512_load_ps(tables + 16 * blk[0]);
        const float* xb = x + b * kBlockElems;
        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(codes, t), _mm512_loadu_ps(xb), acc);
        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), t), _mm512_loadu_ps(xb + 16), acc);
    };
    // Four named accumulators: enough independent FMA chains, and no stack spills.
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        prefetch_ahead(row + b * kMxfp4BlockBytes);
        block(b, acc0);
        block(b + 1, acc1);
        block(b + 2, acc2);
        block(b + 3, acc3);
    }
    for (; b < nb; ++b) block(b, acc0);
    acc0 = _mm512_add_ps(acc0, acc2);
    acc1 = _mm512_add_ps(acc1, acc3);
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#elif defined(__AVX2__)
    const __m256 mags = _mm256_loadu_ps(kE2M1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * kMxfp4BlockBytes;
        if (b % 4 == 0) prefetch_ahead(blk);
        const float* xb = x + b * kBlockElems;
        __m256 part = _mm256_setzero_ps();
        for (int half = 0; half < 2; ++half) {
            const __m256i codes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 1 + 8 * half)));
            const __m256i lo = _mm256_and_si256(codes, _mm256_set1_epi32(0xF));
            const __m256i hi = _mm256_srli_epi32(codes, 4);
            // permutevar8x32 reads the low 3 bits (magnitude); bit 3 moves to the float sign bit.
            const __m256 wl = _mm256_xor_ps(_mm256_permutevar8x32_ps(mags, lo),
                                            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(lo, _mm256_set1_epi32(8)), 28)));
            const __m256 wh = _mm256_xor_ps(_mm256_permutevar8x32_ps(mags, hi),
                                            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(hi, _mm256_set1_epi32(8)), 28)));
            part = _mm256_fmadd_ps(wl, _mm256_loadu_ps(xb + 8 * half), part);
            part = _mm256_fmadd_ps(wh, _mm256_loadu_ps(xb + 16 + 8 * half), part);
        }
        acc = _mm256_fmadd_ps(part, _mm256_set1_ps(e8m0_to_float(blk[0])), acc);
    }
    return hsum(vfloat(acc));
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * kMxfp4BlockBytes;
        if (b % 4 == 0) prefetch_ahead(blk);
        const float* xb = x + b * kBlockElems;
        float part = 0.0f;
        for (int k = 0; k < 16; ++k)
            part += kE2M1[blk[1 + k] & 0xF] * xb[k] + kE2M1[blk[1 + k] >> 4] * xb[k + 16];
        acc += part * e8m0_to_float(blk[0]);
    }
    return acc;
#endif
}

float dot_q8_0_row(const uint8_t* row, const float* x, int64_t n) {
    const int64_t nb = n / kBlockElems;
#if defined(__AVX512F__)
    auto block = [&](int64_t b) {
        const uint8_t* blk = row + b * kQ8BlockBytes;
        const float* xb = x + b * kBlockElems;
        const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2))));
        const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18))));
        const __m512 part = _mm512_fmadd_ps(q1, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(q0, _mm512_loadu_ps(xb)));
        return _mm512_mul_ps(part, _mm512_set1_ps(q8_0_scale(blk)));
    };
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        prefetch_ahead(row + b * kQ8BlockBytes);
        acc0 = _mm512_add_ps(acc0, block(b));
        acc1 = _mm512_add_ps(acc1, block(b + 1));
    }
    if (b < nb) acc0 = _mm512_add_ps(acc0, block(b));
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#elif defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * kQ8BlockBytes;
        if (b % 2 == 0) prefetch_ahead(blk);
        const float* xb = x + b * kBlockElems;
        __m256 part = _mm256_setzero_ps();
        for (int j = 0; j < 4; ++j) {
            const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * j))));
            part = _mm256_fmadd_ps(q, _mm256_loadu_ps(xb + 8 * j), part);
        }
        acc = _mm256_fmadd_ps(part, _mm256_set1_ps(q8_0_scale(blk)), acc);
    }
    return hsum(vfloat(acc));
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * kQ8BlockBytes;
        if (b % 2 == 0) prefetch_ahead(blk);
        const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
        const float* xb = x + b * kBlockElems;
        float part = 0.0f;
        for (int k = 0; k < kBlockElems; ++k) part += float(q[k]) * xb[k];
        acc += part * q8_0_scale(blk);
    }
    return acc;
#endif
}

float dot_row(const Matrix& W, const uint8_t* row, const float* x) {
    switch (W.type) {
        case DType::MXFP4: return dot_mxfp4_row(row, x, W.cols);
        case DType::Q8_0: return dot_q8_0_row(row, x, W.cols);
        case DType::F32: return dot(reinterpret_cast<const float*>(row), x, W.cols);
        default: {
            float* w = row_scratch(W.cols);
            decode_row_bytes(W, row, w);
            return dot(w, x, W.cols);
        }
    }
}

}  // namespace

void gemv(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const Matrix& W = *a.W;
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = W.row(a.mat, r);
        if (W.type != DType::MXFP4 && W.type != DType::Q8_0)  // their dot loops prefetch as they go
            for (size_t off = 0; off < W.row_bytes; off += 64) prefetch_ahead(row + off);
        const float b = a.bias ? a.bias[r] : 0.0f;
        for (int64_t t = 0; t < a.n_tok; ++t) a.y[t * a.ldy + r] = dot_row(W, row, a.x + t * a.ldx) + b;
    }
}

}  // namespace ossrun::OSSRUN_ISA_NS