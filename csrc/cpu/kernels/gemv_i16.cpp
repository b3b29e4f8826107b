// Fast decode GEMVs of AVX2 (AVX-512's are in gemv.cpp), for 1-3 tokens of MXFP4 and Q8_0, each
// weight block decoded once for all of them: int16 activations (quantize_i16's blocks of 32, one
// float scale each) times the exact weights, one integer dot product per block and token. Twice
// each e2m1 value is an integer in -12..12, so a block's 32 products sum exactly in int32 and one
// float step applies half the block's power of two and the activation scale.
//
// Why: the float32 GEMV (gemv.cpp) is bound by its instructions, not by memory; this one does
// fewer per block (MXFP4 with OSSRUN_ISA=avx2 on an AMD Zen 5: 7 -> 14 GB/s per core from DRAM,
// docs/PERFORMANCE.md run 7). Shape contract in kernels.h (MatmulArgs).
#include "matmul_internal.h"

namespace ossrun::OSSRUN_ISA_NS {

#if defined(__AVX2__) && !defined(__AVX512F__)
namespace {

// Twice the e2m1 value of each code as int8, in both 128-bit lanes (vpshufb looks up per lane).
alignas(32) constexpr int8_t kDoubledE2M1Bytes[32] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
                                                      0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

inline __m256i pair_dot(__m256i acc, __m256i w, __m256i x) {
#if defined(__AVXVNNI__)
    return _mm256_dpwssd_avx_epi32(acc, w, x);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(w, x));
#endif
}

// The NT tokens' accumulators, two per token (even and odd blocks) for independent FMA chains.
// A token's arithmetic is the same whatever NT is, so a batch gives each token its lone bits.
template <int NT>
struct TokenAccs {
    __m256 even[NT], odd[NT];
    TokenAccs() {
        for (int t = 0; t < NT; ++t) even[t] = odd[t] = _mm256_setzero_ps();
    }
    // acc[t] += (wa · x_t[b][0..16) + wb · x_t[b][16..32)) * (ws * xs_t[b]), acc = even or odd.
    static void add(__m256* acc, int64_t b, __m256i wa, __m256i wb, float ws, const int16_t* xq, const float* xs,
                    int64_t ldx) {
        for (int t = 0; t < NT; ++t) {
            const int16_t* xb = xq + t * ldx + b * kBlockElems;
            __m256i dot = _mm256_madd_epi16(wa, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb)));
            dot = pair_dot(dot, wb, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 16)));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(ws * xs[t * (ldx / kBlockElems) + b]), acc[t]);
        }
    }
    void sums(float* out) const {
        for (int t = 0; t < NT; ++t) out[t] = hsum(vfloat(_mm256_add_ps(even[t], odd[t])));
    }
};

// out[t] = MXFP4 row · token t, each block's codes looked up and widened once for all NT tokens.
template <int NT>
void mxfp4_i16_rows(const uint8_t* row, const int16_t* xq, const float* xs, int64_t ldx, int64_t nb,
                    const float* halves, float* out) {
    const __m256i values = _mm256_load_si256(reinterpret_cast<const __m256i*>(kDoubledE2M1Bytes));
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    TokenAccs<NT> acc;
    auto block = [&](int64_t b, __m256* accs) {
        const uint8_t* blk = row + b * kMxfp4BlockBytes;
        const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 1));
        // Low nibbles in lane 0 (elements 0..15), high nibbles in lane 1 (16..31), then looked up.
        const __m256i nibbles = _mm256_and_si256(
            _mm256_inserti128_si256(_mm256_castsi128_si256(c), _mm_srli_epi16(c, 4), 1), low4);
        const __m256i w8 = _mm256_shuffle_epi8(values, nibbles);
        TokenAccs<NT>::add(accs, b, _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w8)),
                           _mm256_cvtepi8_epi16(_mm256_extracti128_si256(w8, 1)), halves[blk[0]], xq, xs, ldx);
    };
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        if (b % 4 == 0) prefetch_ahead(row + b * kMxfp4BlockBytes);
        block(b, acc.even);
        block(b + 1, acc.odd);
    }
    if (b < nb) block(b, acc.even);
    acc.sums(out);
}

// The AVX2 counterpart of gemv.cpp's AVX-512 Q8_0 GEMV: int8 weights widened to int16 pairs.
template <int NT>
void q8_0_i16_rows(const uint8_t* row, const int16_t* xq, const float* xs, int64_t ldx, int64_t nb, float* out) {
    TokenAccs<NT> acc;
    auto block = [&](int64_t b, __m256* accs) {
        const uint8_t* blk = row + b * kQ8BlockBytes;
        TokenAccs<NT>::add(accs, b, _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2))),
                           _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18))),
                           q8_0_scale(blk), xq, xs, ldx);
    };
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        prefetch_ahead(row + b * kQ8BlockBytes);
        block(b, acc.even);
        block(b + 1, acc.odd);
    }
    if (b < nb) block(b, acc.even);
    acc.sums(out);
}

// y[t, r] = row r · x_i16[t] + bias[r] for the 1-3 tokens (kTileTokens - 1) of a decode GEMV.
template <class Rows>
void gemv_rows_i16(const MatmulArgs& a, int64_t r0, int64_t r1, Rows rows) {
    const Matrix& W = *a.W;
    const int64_t nb = W.cols / kBlockElems;
    with_tile_tokens<kTileTokens - 1>(a.n_tok, [&](auto nt) {
        for (int64_t r = r0; r < r1; ++r) {
            float out[kTileTokens - 1];
            rows(nt, W.row(a.mat, r), nb, out);
            const float b = a.bias ? a.bias[r] : 0.0f;
            for (int64_t t = 0; t < a.n_tok; ++t) a.y[t * a.ldy + r] = out[t] + b;
        }
    });
}

}  // namespace

void gemv_q8_0_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    gemv_rows_i16(a, r0, r1, [&](auto nt, const uint8_t* row, int64_t nb, float* out) {
        q8_0_i16_rows<decltype(nt)::value>(row, a.x_i16, a.x_i16_scale, a.ldx, nb, out);
    });
}

void gemv_mxfp4_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const float* halves = e8m0_half_table();
    gemv_rows_i16(a, r0, r1, [&](auto nt, const uint8_t* row, int64_t nb, float* out) {
        mxfp4_i16_rows<decltype(nt)::value>(row, a.x_i16, a.x_i16_scale, a.ldx, nb, halves, out);
    });
}
#endif

}  // namespace ossrun::OSSRUN_ISA_NS
