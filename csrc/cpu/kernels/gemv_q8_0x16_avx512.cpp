// Fast-precision decode of Q8_0 rows interleaved 16 at a time (RowLayout::kQ8_0x16; the layout
// and why in q8_0_interleave.h): 1-8 tokens of int16 activations (gemm_i16.cpp's quantize_i16)
// per call, one pass over the weights for all of them (avx512 and avx512vbmi variants alike).
//
// Per block of a group: 16 weight vectors (a 32-byte load and vpmovsxbw each, shared by every
// token), and per token 16 vpdpwssd of a vector by the token's activation pair broadcast from
// memory ({1to16}: the activations need no re-layout), then one convert, one scale product and
// one FMA for the 16 rows. Rows outside [r0, r1) of the first and last group are computed and
// not stored. Shape contract in kernels.h (MatmulArgs).
#include "matmul_internal.h"

#if defined(__AVX512F__)
namespace ossrun::OSSRUN_ISA_NS {

namespace {

// acc[gi][t] += group gi's block b · token t's block b, for NG groups `group_bytes` apart. The
// block's first pair starts the sums with vpmaddwd (no zeroed registers to copy in).
template <int NT, int NG>
OSSRUN_VNNI inline __attribute__((always_inline)) void block_dots(const uint8_t* blk, size_t group_bytes,
                                                                   const int16_t* x, int64_t ldx, const float* xs,
                                                                   int64_t ldxs, int64_t b, __m512 (&acc)[NG][NT]) {
    // Up to 4 sums, two independent chains each (even and odd pairs), added at the end: with one
    // chain of 16 dependent vpdpwssd per block, 2-4 tokens from a page-cache map ran 25-45 %
    // slower; the k loop must unroll for the chains to stay in registers. Four chains at one
    // token measured no faster (0.94-1.06 ns per block and row, as two).
    constexpr int kChains = NT * NG <= 4 ? 2 : 1;
    __m512i dot[kChains][NG][NT];
#pragma GCC unroll 16
    for (int k = 0; k < kBlockElems / 2; ++k) {
        __m512i w[NG];
        for (int gi = 0; gi < NG; ++gi)
            w[gi] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + gi * group_bytes + 32 + 32 * k)));
        for (int t = 0; t < NT; ++t) {
            int32_t pair;
            std::memcpy(&pair, x + t * ldx + b * kBlockElems + 2 * k, 4);
            const __m512i xp = _mm512_set1_epi32(pair);
            for (int gi = 0; gi < NG; ++gi) {
                __m512i& d = dot[k % kChains][gi][t];
                d = k < kChains ? _mm512_madd_epi16(w[gi], xp) : _mm512_dpwssd_epi32(d, w[gi], xp);
            }
        }
    }
    for (int c = 1; c < kChains; ++c)
        for (int gi = 0; gi < NG; ++gi)
            for (int t = 0; t < NT; ++t) dot[0][gi][t] = _mm512_add_epi32(dot[0][gi][t], dot[c][gi][t]);
    __m512 ws[NG];
    for (int gi = 0; gi < NG; ++gi)
        ws[gi] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + gi * group_bytes)));
    for (int t = 0; t < NT; ++t) {
        const __m512 xst = _mm512_set1_ps(xs[t * ldxs + b]);
        for (int gi = 0; gi < NG; ++gi)
            acc[gi][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[0][gi][t]), _mm512_mul_ps(ws[gi], xst), acc[gi][t]);
    }
}

// NG consecutive groups from group g times NT tokens: out[gi][t], lane j = row 16 (g + gi) + j.
template <int NT, int NG>
OSSRUN_VNNI void groups_x_tokens(const MatmulArgs& a, int64_t g, __m512 (&acc)[NG][NT]) {
    const Matrix& W = *a.W;
    const int64_t nb = W.cols / kBlockElems, ldxs = a.ldx / kBlockElems;
    const size_t group_bytes = kInterleaveRows * W.row_bytes;
    for (int gi = 0; gi < NG; ++gi)
        for (int t = 0; t < NT; ++t) acc[gi][t] = _mm512_setzero_ps();
    const uint8_t* blk = W.group_block(a.mat, g, 0);
    for (int64_t b = 0; b < nb; ++b, blk += kQ8GroupBlockBytes) {
        // Lines two pages ahead (matmul_internal.h's prefetch_ahead), one prefetch per 32 bytes:
        // from a page-cache map at 1-2 tokens 3-5 % faster than one per 64 bytes (noisy). Into L1
        // as well (prefetcht0 1-2 KiB ahead) measured 10-15 % slower.
        for (int gi = 0; gi < NG; ++gi)
            for (int off = 0; off < kQ8GroupBlockBytes; off += 32) prefetch_ahead(blk + gi * group_bytes + off);
        block_dots<NT, NG>(blk, group_bytes, a.x_i16, a.ldx, a.x_i16_scale, ldxs, b, acc);
    }
}

}  // namespace

OSSRUN_VNNI void gemv_q8_0x16_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const int64_t g1 = (r1 + kInterleaveRows - 1) / kInterleaveRows;
    with_tile_tokens<kGemvI16MaxTokens>(a.n_tok, [&](auto nt) {
        constexpr int NT = decltype(nt)::value;
        // One group per pass: two (sharing each broadcast) read two streams 16 rows apart and
        // measured 20 % slower at 1-2 tokens from a page-cache map.
        for (int64_t g = r0 / kInterleaveRows; g < g1; ++g) {
            __m512 acc[1][NT];
            groups_x_tokens<NT, 1>(a, g, acc);
            store_group_lanes(a, g, r0, r1, acc[0], NT);
        }
    });
}

}  // namespace ossrun::OSSRUN_ISA_NS
#endif
