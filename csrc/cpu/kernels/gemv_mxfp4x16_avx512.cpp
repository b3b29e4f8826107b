// Fast-precision decode of MXFP4 rows interleaved 16 at a time (RowLayout::kMxfp4x16; the layout
// and why in mxfp4_interleave.h): 1-8 tokens of int16 activations (gemm_i16.cpp's quantize_i16)
// per call, one pass over the weights for all of them (avx512 and avx512vbmi variants alike).
//
// Per block of a group: 8 chunks of code bytes, each a 32-byte load widened to words
// (vpmovzxbw), a shift and two word-table permutes (vpermw: the low and the high nibbles' doubled
// e2m1 values): 16 weight vectors of int16 pairs, lane j = row j, shared by every token. Per
// token, 16 vpdpwssd of those vectors by the token's activation pair broadcast from memory
// ({1to16}: the activations need no re-layout), then one convert, one scale product and one FMA
// for the 16 rows. A block's int32 dot product is exact (|sum| <= 32 * 12 * 32767 < 2^24, so
// exact in float too), so a token's result is the same whichever tokens share the pass. Rows
// outside [r0, r1) of the first and last group are computed and not stored.
#include "matmul_internal.h"
#include "../cpu_tuning.h"

#if defined(__AVX512F__)
namespace ossrun::OSSRUN_ISA_NS {

namespace {

// acc[t] (lane j = row 16g + j) = group g's rows times NT tokens' activations.
template <int NT, class Prefetch>
OSSRUN_VNNI void group_x_tokens(const MatmulArgs& a, int64_t g, __m512 (&acc)[NT]) {
    const int64_t nb = a.W->cols / kBlockElems, ldxs = a.ldx / kBlockElems;
    const __m512i table = _mm512_load_si512(kDoubledE2M1Words);
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
    const uint8_t* blk = a.W->group_block(a.mat, g, 0);
    for (int64_t b = 0; b < nb; ++b, blk += kMxfp4GroupBlockBytes) {
        __m512i dot[NT];
#pragma GCC unroll 8
        for (int k = 0; k < 8; ++k) {
            const uint8_t* chunk = blk + kInterleaveRows + 32 * k;
            if (k % 2 == 0) Prefetch::at(chunk);  // one prefetch per 64 bytes read
            const __m512i codes = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk)));
            const __m512i low = _mm512_permutexvar_epi16(codes, table);                         // elements 2k, 2k + 1
            const __m512i high = _mm512_permutexvar_epi16(_mm512_srli_epi16(codes, 4), table);  // 2k + 16, 2k + 17
            for (int t = 0; t < NT; ++t) {
                const int16_t* x = a.x_i16 + t * a.ldx + b * kBlockElems;
                int32_t lo_pair, hi_pair;
                std::memcpy(&lo_pair, x + 2 * k, 4);
                std::memcpy(&hi_pair, x + 16 + 2 * k, 4);
                dot[t] = k == 0 ? _mm512_madd_epi16(low, _mm512_set1_epi32(lo_pair))
                                : _mm512_dpwssd_epi32(dot[t], low, _mm512_set1_epi32(lo_pair));
                dot[t] = _mm512_dpwssd_epi32(dot[t], high, _mm512_set1_epi32(hi_pair));
            }
        }
        // The 16 scale bytes at bit 23 are the floats 2^(e - 127) for e >= 1 (255: infinity); an
        // unsigned max with 2^-127's bits gives e = 0 its value. The doubled values' 1/2 goes with
        // the activation scale (exact).
        const __m512i e = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
        const __m512 ws = _mm512_castsi512_ps(_mm512_max_epu32(_mm512_slli_epi32(e, 23), _mm512_set1_epi32(0x00400000)));
        for (int t = 0; t < NT; ++t) {
            const __m512 xs = _mm512_set1_ps(a.x_i16_scale[t * ldxs + b] * 0.5f);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t]), _mm512_mul_ps(ws, xs), acc[t]);
        }
    }
}

template <class Prefetch>
OSSRUN_VNNI void groups(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const int64_t g1 = (r1 + kInterleaveRows - 1) / kInterleaveRows;
    with_tile_tokens<kGemvI16MaxTokens>(a.n_tok, [&](auto nt) {
        constexpr int NT = decltype(nt)::value;
        for (int64_t g = r0 / kInterleaveRows; g < g1; ++g) {
            __m512 acc[NT];
            group_x_tokens<NT, Prefetch>(a, g, acc);
            store_group_lanes(a, g, r0, r1, acc, NT);
        }
    });
}

}  // namespace

OSSRUN_VNNI void gemv_mxfp4x16_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    // The prefetch cpu_tuning.h chooses for the GGUF layout's MXFP4 GEMV.
    if (mxfp4_prefetch() == Mxfp4Prefetch::kL1Near) return groups<PrefetchL1Near>(a, r0, r1);
    groups<PrefetchL2Far>(a, r0, r1);
}

}  // namespace ossrun::OSSRUN_ISA_NS
#endif
