// The fast decode GEMV of MXFP4 weights on AVX-512 (AVX512-VNNI vpdpwssd): int16 activations
// (gemm_i16.cpp's quantize_i16) times the exact weights, 1-8 tokens (decode, a decode batch, an
// expert's routed tokens). The AVX2 counterpart is in gemv_i16.cpp. Shape contract in kernels.h.
#include "matmul_internal.h"
#include "../cpu_tuning.h"

namespace ossrun::OSSRUN_ISA_NS {

#if defined(__AVX512F__)
namespace {

// MXFP4 values doubled are small integers (0, 1, 2, 3, 4, 6, 8, 12 and their negatives), so a
// block times int16 activations is an exact int32 dot (|sum| <= 32 * 12 * 32767 < 2^24, exact in
// float too, and so is 256 times it); the block scale halved stays a power of two.

// The horizontal sums of four rows' accumulators at once: lane i = _mm512_reduce_add_ps(acc[i]),
// bit for bit (the same pairs added in the same order: halves of 256, of 128, then lanes 2 apart
// and 1 apart), in 12 instructions where four reductions take 36.
OSSRUN_VNNI inline __attribute__((always_inline)) __m128 reduce_add_4(const __m512 (&acc)[4]) {
    const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(acc[0], acc[1], 0x44), _mm512_shuffle_f32x4(acc[0], acc[1], 0xEE));
    const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(acc[2], acc[3], 0x44), _mm512_shuffle_f32x4(acc[2], acc[3], 0xEE));
    __m512 z = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
    z = _mm512_add_ps(z, _mm512_permute_ps(z, 0x4E));
    z = _mm512_add_ps(z, _mm512_permute_ps(z, 0xB1));
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), z));
}

#if defined(__AVX512VBMI__)
// With AVX512-VBMI (the avx512vbmi variant): four blocks per vector, lanes 4b..4b+3 of one int32
// vector summing block b of a quad (four vpdpwssd a token), so per token and 4 blocks there is
// one convert, one scale product and one FMA. The kernel is bound by its instructions, not by
// memory (one thread: the same ns per block from L3 as from DRAM), so the weights are built with
// as few permutes as possible:
// - one vpermt2b gathers the quad's 64 code bytes from its 68 (a 64-byte load and the 4 bytes
//   after it) into the lane order below;
// - two vpermb look the low and the high nibbles up in a 64-byte table (the 16 doubled e2m1
//   values four times: vpermb reads 6 index bits, so no masking), which gives int8 weights;
// - each weight byte goes to the high byte of a word (a shift left by 8, or an AND for the odd
//   bytes): int16 words of 256 times the weight, whose products the activation scales, taken
//   2^-8 smaller in quad_acts, undo exactly.
// That is 3 permutes, 3 shifts and 2 ANDs where decoding codes to words and the words through a
// word table took 6 permutes (one thread, 1 token: 0.50-0.51 -> 0.47-0.48 ns per block and row
// from L3 and from DRAM alike; the rest of the time is the per-token dots). Dword lane 4b + m holds code bytes 2m, 2m+1, 8+2m, 9+2m of block b,
// so it sums the same 8 elements as before (low and high nibbles of those bytes): the int32
// dots and so the float steps are the same, bit for bit.
// A fourth permute puts each block's scale byte e at bit 24 of its lanes: shifted right by one it
// is the float 2^(e-127) for e >= 1 (255: infinity), and an unsigned max with 2^-127's bits
// gives e = 0 its value. The halving that makes it e8m0_half_table()[e] sits in the activation
// scales too (with the 2^-8: xs * 2^-9 is exact and ws * xs the same float as before unless
// these are float32 subnormals, i.e. an activation block's largest element below ~1e-31).
#define OSSRUN_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,f16c")))
#define OSSRUN_ALWAYS_INLINE inline __attribute__((always_inline))

// Per token and quad, five 64-byte lines: the activations for weight vectors k = 0..3, then
// the blocks' scales (block b's in lanes 4b..4b+3, times 2^-9).
struct alignas(64) ActLine {
    int16_t v[32];
};
constexpr int kQuadLines = 5;

// The re-laid activations of all tokens of a call (thread-local, reused: no allocation once warm).
struct QuadActs {
    const ActLine* lines;  // [t][quad][kQuadLines]
    int64_t quads;         // ceil(nb / 4): a last partial quad is padded with zero activations
    QuadActs from(int64_t t0) const { return QuadActs{lines + t0 * quads * kQuadLines, quads}; }
};

// Word 8k + 2m + h of a block's re-laid 32 activations (the part of weight vector k in dword lane
// 4b + m, word h) is element 2m + 8h + (k odd) + 16 (k >= 2) of the block (the layout above).
struct ActOrder {
    alignas(64) int16_t words[32];
    constexpr ActOrder() : words() {
        for (int k = 0; k < 4; ++k)
            for (int m = 0; m < 4; ++m)
                for (int h = 0; h < 2; ++h) words[8 * k + 2 * m + h] = int16_t((k >= 2 ? 16 : 0) + 2 * m + (k % 2) + 8 * h);
    }
};
constexpr ActOrder kActOrder;

OSSRUN_VBMI QuadActs quad_acts(const int16_t* xq, const float* xs, int64_t ldx, int64_t nb, int64_t nt) {
    thread_local std::vector<ActLine> buf;
    const int64_t quads = (nb + 3) / 4;
    if (int64_t(buf.size()) < nt * quads * kQuadLines) buf.resize(size_t(nt * quads * kQuadLines));
    constexpr float kScaleFactor = 1.0f / 512;  // 2^-8 (weights as words << 8) and 2^-1 (doubled values)
    const __m512i order = _mm512_load_si512(kActOrder.words);
    for (int64_t t = 0; t < nt; ++t) {
        const int16_t* src = xq + t * ldx;
        const float* ssrc = xs + t * (ldx / kBlockElems);
        for (int64_t q = 0; q < quads; ++q) {
            ActLine* dst = buf.data() + (t * quads + q) * kQuadLines;
            float scales[16];
            for (int b = 0; b < 4; ++b) {
                const int64_t blk = 4 * q + b;
                const __m512i e = blk < nb ? _mm512_permutexvar_epi16(order, _mm512_loadu_si512(src + blk * kBlockElems))
                                           : _mm512_setzero_si512();
                _mm_storeu_si128(reinterpret_cast<__m128i*>(dst[0].v + 8 * b), _mm512_extracti32x4_epi32(e, 0));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(dst[1].v + 8 * b), _mm512_extracti32x4_epi32(e, 1));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(dst[2].v + 8 * b), _mm512_extracti32x4_epi32(e, 2));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(dst[3].v + 8 * b), _mm512_extracti32x4_epi32(e, 3));
                for (int j = 0; j < 4; ++j) scales[4 * b + j] = blk < nb ? ssrc[blk] * kScaleFactor : 0.0f;
            }
            std::memcpy(dst[4].v, scales, 64);
        }
    }
    return QuadActs{buf.data(), quads};
}

// Byte indices (vpermt2b over a quad's bytes 0..63 and 64..127): byte 4(4b + m) + i of the
// gathered codes is code byte {2m, 2m+1, 8+2m, 9+2m}[i] of block b, at 17b + 1 + that. Scales:
// byte 3 of dword 4b + j gets block b's scale byte (at 17b), the others are zeroed.
struct QuadIndices {
    alignas(64) uint8_t codes[64], scales[64], padding[64];
    alignas(64) int8_t table[64];
    constexpr QuadIndices() : codes(), scales(), padding(), table() {
        constexpr int8_t kDoubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
        for (int i = 0; i < 64; ++i) table[i] = kDoubled[i % 16];
        for (int b = 0; b < 4; ++b) padding[17 * b] = 127;
        for (int b = 0; b < 4; ++b)
            for (int m = 0; m < 4; ++m) {
                const int bytes[4] = {2 * m, 2 * m + 1, 8 + 2 * m, 9 + 2 * m};
                for (int i = 0; i < 4; ++i) codes[4 * (4 * b + m) + i] = uint8_t(17 * b + 1 + bytes[i]);
            }
        for (int lane = 0; lane < 16; ++lane) scales[4 * lane + 3] = uint8_t(17 * (lane / 4));
    }
};
constexpr QuadIndices kQuadIndices;

// Row i's quad q (at p) -> its four weight vectors and their scales.
OSSRUN_VBMI OSSRUN_ALWAYS_INLINE void quad_weights(const uint8_t* p, bool whole, int64_t tail_blocks, __m512i (&w)[4],
                                                   __m512& ws) {
    __m512i lo, hi;
    if (whole) {
        lo = _mm512_loadu_si512(p);
        hi = _mm512_castsi128_si512(_mm_loadu_si32(p + 64));
    } else {  // 1-3 blocks left: loads that stop at the row's end, zero codes past it
        // and scale bytes 127 (not 0, whose 2^-128 would make the FPU take a slow path)
        const int bytes = int(tail_blocks) * kMxfp4BlockBytes;
        lo = _mm512_mask_loadu_epi8(_mm512_load_si512(kQuadIndices.padding), (__mmask64(1) << bytes) - 1, p);
        hi = _mm512_setzero_si512();
    }
    const __m512i table = _mm512_load_si512(kQuadIndices.table);
    const __m512i codes = _mm512_permutex2var_epi8(lo, _mm512_load_si512(kQuadIndices.codes), hi);
    const __m512i low = _mm512_permutexvar_epi8(codes, table);
    const __m512i high = _mm512_permutexvar_epi8(_mm512_srli_epi16(codes, 4), table);
    const __m512i odd = _mm512_set1_epi16(int16_t(0xFF00));
    w[0] = _mm512_slli_epi16(low, 8);
    w[1] = _mm512_and_si512(low, odd);
    w[2] = _mm512_slli_epi16(high, 8);
    w[3] = _mm512_and_si512(high, odd);
    const __m512i e24 = _mm512_maskz_permutexvar_epi8(0x8888888888888888ull, _mm512_load_si512(kQuadIndices.scales), lo);
    ws = _mm512_castsi512_ps(_mm512_max_epu32(_mm512_srli_epi32(e24, 1), _mm512_set1_epi32(0x00400000)));
}

// Rows r and r + 1 (NR = 2) or row r alone (NR = 1) times NT tokens: out[i * 4 + t]. Two rows
// per pass share every activation load (five per token and quad) and the loop's overhead. One
// thread, 65536 rows from a page-cache mmap, ns per block and row, one row against two per pass:
// 4 tokens 1.17 -> 0.93, 3 tokens 0.87 -> 0.77, 2 tokens 0.65-0.66 -> 0.63-0.64; 1 token
// 0.47 -> 0.54, so one token takes one row per pass. A row's arithmetic is the same either way.
// Prefetch: PrefetchL2Far or PrefetchL1Near, as cpu_tuning.h chooses for this CPU.
template <int NT, int NR, class Prefetch>
OSSRUN_VBMI OSSRUN_ALWAYS_INLINE void quad_sums(const uint8_t* row, int64_t row_bytes, const QuadActs& x, int64_t nb,
                                                __m512 (&acc)[NR][NT]) {
    for (int i = 0; i < NR; ++i)
        for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_setzero_ps();
    const int64_t full = nb / 4;
    for (int64_t q = 0; q < x.quads; ++q) {
        __m512i w[NR][4];
        __m512 ws[NR];
        for (int i = 0; i < NR; ++i) {
            const uint8_t* p = row + i * row_bytes + q * 4 * kMxfp4BlockBytes;
            if (q < full) Prefetch::at(p);
            quad_weights(p, q < full, nb - 4 * full, w[i], ws[i]);
        }
        for (int t = 0; t < NT; ++t) {
            const ActLine* xl = x.lines + (t * x.quads + q) * kQuadLines;
            const __m512i x0 = _mm512_load_si512(xl[0].v), x1 = _mm512_load_si512(xl[1].v);
            const __m512i x2 = _mm512_load_si512(xl[2].v), x3 = _mm512_load_si512(xl[3].v);
            const __m512 xs = _mm512_load_ps(reinterpret_cast<const float*>(xl[4].v));
            for (int i = 0; i < NR; ++i) {
                __m512i dot = _mm512_madd_epi16(w[i][0], x0);
                dot = _mm512_dpwssd_epi32(dot, w[i][1], x1);
                dot = _mm512_dpwssd_epi32(dot, w[i][2], x2);
                dot = _mm512_dpwssd_epi32(dot, w[i][3], x3);
                acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws[i], xs), acc[i][t]);
            }
        }
    }
}

template <int NT, int NR, class Prefetch>
OSSRUN_VBMI void mxfp4_quad_rows(const uint8_t* row, int64_t row_bytes, const QuadActs& x, int64_t nb, float* out) {
    __m512 acc[NR][NT];
    quad_sums<NT, NR, Prefetch>(row, row_bytes, x, nb, acc);
    for (int i = 0; i < NR; ++i)
        for (int t = 0; t < NT; ++t) out[i * 4 + t] = _mm512_reduce_add_ps(acc[i][t]);
}

// One token (every single-stream decode step, and most expert calls of a batched one): rows
// r0..r1 four at a time in one loop, one row per pass, their sums reduced together, which spares
// each row a call, its constants' loads and most of its reduction. One thread, in one process
// alternating with the per-row calls: 0.489-0.493 -> 0.473-0.477 ns per block and row (65536 rows,
// mmap), 0.481 -> 0.463 (8192, L3), 0.515-0.519 -> 0.497-0.499 (2880 rows, an expert's matrix,
// from L3). (Two rows per pass, or the whole quads in a branch-free loop, are faster from L3
// and slower from DRAM here: docs/PERFORMANCE.md, seventh session.)
template <class Prefetch>
OSSRUN_VBMI void mxfp4_one_token(const MatmulArgs& a, int64_t r0, int64_t r1, const QuadActs& x) {
    const Matrix& W = *a.W;
    const int64_t nb = W.cols / kBlockElems, row_bytes = int64_t(W.row_bytes);
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        __m512 acc[4];
        for (int i = 0; i < 4; ++i) {
            __m512 one[1][1];
            quad_sums<1, 1, Prefetch>(W.row(a.mat, r + i), row_bytes, x, nb, one);
            acc[i] = one[0][0];
        }
        __m128 sums = reduce_add_4(acc);
        if (a.bias) sums = _mm_add_ps(sums, _mm_loadu_ps(a.bias + r));
        _mm_storeu_ps(a.y + r, sums);
    }
    for (; r < r1; ++r) {
        __m512 one[1][1];
        quad_sums<1, 1, Prefetch>(W.row(a.mat, r), row_bytes, x, nb, one);
        a.y[r] = _mm512_reduce_add_ps(one[0][0]) + (a.bias ? a.bias[r] : 0.0f);
    }
}

// 2-8 tokens read two rows per pass or one (cpu_tuning.h's mxfp4_rows_per_pass).
template <class Prefetch>
OSSRUN_VBMI void mxfp4_tokens(const MatmulArgs& a, int64_t r0, int64_t r1, const QuadActs& x) {
    if (a.n_tok == 1) return mxfp4_one_token<Prefetch>(a, r0, r1, x);
    const int64_t row_bytes = int64_t(a.W->row_bytes);
    const bool pairs = mxfp4_rows_per_pass() == 2;
    gemv_i16_groups(a, r0, r1, x, [row_bytes, pairs](auto nt, int nr, const uint8_t* row, const QuadActs& x, int64_t n,
                                                     float* out) {
        constexpr int kTokens = decltype(nt)::value;
        if (kTokens >= 2 && nr == 2 && pairs) return mxfp4_quad_rows<kTokens, 2, Prefetch>(row, row_bytes, x, n, out);
        for (int i = 0; i < nr; ++i)
            mxfp4_quad_rows<kTokens, 1, Prefetch>(row + i * row_bytes, row_bytes, x, n, out + i * 4);
    }, 2);
}

}  // namespace

OSSRUN_VBMI void gemv_mxfp4_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const QuadActs x = quad_acts(a.x_i16, a.x_i16_scale, a.ldx, a.W->cols / kBlockElems, a.n_tok);
    if (mxfp4_prefetch() == Mxfp4Prefetch::kL1Near) return mxfp4_tokens<PrefetchL1Near>(a, r0, r1, x);
    mxfp4_tokens<PrefetchL2Far>(a, r0, r1, x);
}

#else

// MXFP4: two blocks share one vector (even lanes sum block 2p, odd lanes block 2p+1), so per
// token and block pair there are two vpdpwssd, one convert, one multiply and one FMA, where one
// block per vector cost a convert, a scalar multiply, a broadcast and an FMA per block. The
// pair's two activation scales are one 64-bit broadcast. For that the activations are re-laid
// once per call (paired_acts): per token and pair, xa holds elements 0..15 and xb 16..31 of both
// blocks, 32-bit units alternating between them. (Four blocks per vector, as Q8_0 and the VBMI
// path above lay them, measured 15 % slower here at 3-4 tokens and no faster at 1-2.)

// The re-laid activations of all tokens of a call (thread-local, reused: no allocation once warm).
struct PairedActs {
    const int16_t* x;        // [t][pair][64]: xa then xb
    const float* scale;      // x_i16_scale rows, ldx / 32 apart: pair p's two scales at 2p
    const int16_t* tail_x;   // natural layout of the odd last block: x_i16 rows, ldx apart
    int64_t ldx;
    int64_t pairs;
    PairedActs from(int64_t t0) const {  // the same, starting at token t0
        return PairedActs{x + t0 * pairs * 64, scale + t0 * (ldx / kBlockElems), tail_x + t0 * ldx, ldx, pairs};
    }
};

// Word i of a paired vector comes from block (i / 2) % 2, element 2 * (i / 4) + i % 2.
alignas(64) constexpr int16_t kPairWords[32] = {0,  1,  16, 17, 2,  3,  18, 19, 4,  5,  20, 21, 6,  7,  22, 23,
                                                8,  9,  24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31};

OSSRUN_VNNI PairedActs paired_acts(const int16_t* xq, const float* xs, int64_t ldx, int64_t nb, int nt) {
    thread_local std::vector<int16_t> xbuf;
    const int64_t pairs = nb / 2;
    if (int64_t(xbuf.size()) < nt * pairs * 64) xbuf.resize(size_t(nt * pairs * 64));
    const __m512i order = _mm512_load_si512(kPairWords);
    for (int t = 0; t < nt; ++t) {
        const int16_t* src = xq + t * ldx;
        int16_t* dst = xbuf.data() + t * pairs * 64;
        for (int64_t p = 0; p < pairs; ++p) {
            const int16_t* b0 = src + 2 * p * kBlockElems;  // b0[0..32) block 2p, b0[32..64) block 2p+1
            const __m512i lo = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0))),
                                                  _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 32)), 1);
            const __m512i hi = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 16))),
                                                  _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 48)), 1);
            _mm512_storeu_si512(dst + p * 64, _mm512_permutexvar_epi16(order, lo));
            _mm512_storeu_si512(dst + p * 64 + 32, _mm512_permutexvar_epi16(order, hi));
        }
    }
    return PairedActs{xbuf.data(), xs, xq + (nb - 1) * kBlockElems, ldx, pairs};
}

// [a, b, a, b, ...]: one scale for the even lanes, one for the odd.
OSSRUN_VNNI inline __m512 alternating(float a, float b) {
    return _mm512_castpd_ps(_mm512_broadcastsd_pd(_mm_castps_pd(_mm_unpacklo_ps(_mm_set_ss(a), _mm_set_ss(b)))));
}

// acc[i][t] += row i's paired weight vectors (wa[i], wb[i]) · token t's pair p, scaled by ws[i]
// (the weights' scales). NR rows share each token's activation loads.
template <int NT, int NR>
OSSRUN_VNNI inline void pair_dots(const __m512i (&wa)[NR], const __m512i (&wb)[NR], const __m512 (&ws)[NR],
                                  const PairedActs& x, int64_t p, __m512 (&acc)[NR][NT]) {
    for (int t = 0; t < NT; ++t) {
        const int16_t* xp = x.x + (t * x.pairs + p) * 64;
        const __m512i xa = _mm512_loadu_si512(xp), xb = _mm512_loadu_si512(xp + 32);
        double scales;  // the pair's two activation scales
        std::memcpy(&scales, x.scale + t * (x.ldx / kBlockElems) + 2 * p, 8);
        const __m512 xs = _mm512_castpd_ps(_mm512_set1_pd(scales));
        for (int i = 0; i < NR; ++i) {
            __m512i dot = _mm512_dpwssd_epi32(_mm512_setzero_si512(), wa[i], xa);
            dot = _mm512_dpwssd_epi32(dot, wb[i], xb);
            acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws[i], xs), acc[i][t]);
        }
    }
}

// acc[i][t] += row i's unpaired last block w[i] (natural order, scale ws[i]) · token t's last block.
template <int NT, int NR>
OSSRUN_VNNI inline void tail_dots(const __m512i (&w)[NR], const float (&ws)[NR], const PairedActs& x, int64_t nb,
                                  __m512 (&acc)[NR][NT]) {
    for (int t = 0; t < NT; ++t) {
        const __m512i xt = _mm512_loadu_si512(x.tail_x + t * x.ldx);
        const float xs = x.scale[t * (x.ldx / kBlockElems) + nb - 1];
        for (int i = 0; i < NR; ++i) {
            const __m512i dot = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w[i], xt);
            acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(ws[i] * xs), acc[i][t]);
        }
    }
}

// Rows r and r + 1 (NR = 2) or row r alone (NR = 1) times NT tokens: out[i * 4 + t]. As in the
// VBMI path above, two rows per pass share every activation load from 2 tokens on. One thread,
// 65536 rows from a page-cache mmap, ns per block and row, one row against two per pass (load
// average 4): 4 tokens 2.00 -> 1.64, 3 tokens 1.60 -> 1.35-1.45, 2 tokens 1.22 -> 1.11-1.15. A
// row's arithmetic is the same either way.
template <int NT, int NR>
OSSRUN_VNNI inline __attribute__((always_inline)) void pair_sums(const uint8_t* row, int64_t row_bytes,
                                                                 const PairedActs& x, int64_t nb, const float* halves,
                                                                 __m512 (&acc)[NR][NT]) {
    // vpermw reads 5 index bits and the table lists the 16 values twice, so a code byte widened
    // to a word indexes its low nibble unmasked; shifted right by 4, its high nibble.
    const __m512i table = _mm512_load_si512(kDoubledE2M1Words);
    const __m512i order = _mm512_load_si512(kPairWords);
    for (int i = 0; i < NR; ++i)
        for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_setzero_ps();
    for (int64_t p = 0; p < x.pairs; ++p) {
        __m512i wa[NR], wb[NR];
        __m512 ws[NR];
        for (int i = 0; i < NR; ++i) {
            const uint8_t* b0 = row + i * row_bytes + 2 * p * kMxfp4BlockBytes;
            const uint8_t* b1 = b0 + kMxfp4BlockBytes;
            if (p % 2 == 0) prefetch_ahead(b0);
            // Byte k of a block holds elements k (low nibble) and k + 16 (high); kPairWords puts
            // byte k of both blocks where element k goes (the high nibbles follow, 16 later).
            const __m512i codes = _mm512_permutexvar_epi16(order, _mm512_cvtepu8_epi16(_mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 1))),
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(b1 + 1)), 1)));
            wa[i] = _mm512_permutexvar_epi16(codes, table);
            wb[i] = _mm512_permutexvar_epi16(_mm512_srli_epi16(codes, 4), table);
            ws[i] = alternating(halves[b0[0]], halves[b1[0]]);
        }
        pair_dots<NT, NR>(wa, wb, ws, x, p, acc);
    }
    if (nb % 2) {
        __m512i w[NR];
        float ws[NR];
        for (int i = 0; i < NR; ++i) {
            const uint8_t* blk = row + i * row_bytes + (nb - 1) * kMxfp4BlockBytes;
            const __m256i c = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 1)));
            const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(c), _mm256_srli_epi16(c, 4), 1);
            w[i] = _mm512_permutexvar_epi16(idx, table);
            ws[i] = halves[blk[0]];
        }
        tail_dots<NT, NR>(w, ws, x, nb, acc);
    }
}

template <int NT, int NR>
OSSRUN_VNNI void mxfp4_i16_rows(const uint8_t* row, int64_t row_bytes, const PairedActs& x, int64_t nb,
                                const float* halves, float* out) {
    __m512 acc[NR][NT];
    pair_sums<NT, NR>(row, row_bytes, x, nb, halves, acc);
    for (int i = 0; i < NR; ++i)
        for (int t = 0; t < NT; ++t) out[i * 4 + t] = _mm512_reduce_add_ps(acc[i][t]);
}

// One token: rows four at a time, their sums reduced together, as the VBMI path's
// mxfp4_one_token (one thread, alternating in one process: 0.766-0.769 -> 0.746-0.747 ns per block
// and row from DRAM, 0.777-0.787 -> 0.763-0.770 at 2880 rows).
OSSRUN_VNNI void mxfp4_one_token(const MatmulArgs& a, int64_t r0, int64_t r1, const PairedActs& x,
                                 const float* halves) {
    const Matrix& W = *a.W;
    const int64_t nb = W.cols / kBlockElems, row_bytes = int64_t(W.row_bytes);
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        __m512 acc[4];
        for (int i = 0; i < 4; ++i) {
            __m512 one[1][1];
            pair_sums<1, 1>(W.row(a.mat, r + i), row_bytes, x, nb, halves, one);
            acc[i] = one[0][0];
        }
        __m128 sums = reduce_add_4(acc);
        if (a.bias) sums = _mm_add_ps(sums, _mm_loadu_ps(a.bias + r));
        _mm_storeu_ps(a.y + r, sums);
    }
    for (; r < r1; ++r) {
        __m512 one[1][1];
        pair_sums<1, 1>(W.row(a.mat, r), row_bytes, x, nb, halves, one);
        a.y[r] = _mm512_reduce_add_ps(one[0][0]) + (a.bias ? a.bias[r] : 0.0f);
    }
}

}  // namespace

OSSRUN_VNNI void gemv_mxfp4_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const float* halves = e8m0_half_table();
    const PairedActs x = paired_acts(a.x_i16, a.x_i16_scale, a.ldx, a.W->cols / kBlockElems, int(a.n_tok));
    if (a.n_tok == 1) return mxfp4_one_token(a, r0, r1, x, halves);
    const int64_t row_bytes = int64_t(a.W->row_bytes);
    gemv_i16_groups(a, r0, r1, x, [halves, row_bytes](auto nt, int nr, const uint8_t* row, const PairedActs& x, int64_t n,
                                                      float* out) {
        constexpr int kTokens = decltype(nt)::value;
        if (kTokens >= 2 && nr == 2) return mxfp4_i16_rows<kTokens, 2>(row, row_bytes, x, n, halves, out);
        for (int i = 0; i < nr; ++i) mxfp4_i16_rows<kTokens, 1>(row + i * row_bytes, row_bytes, x, n, halves, out + i * 4);
    }, 2);
}

#endif
#endif

}  // namespace ossrun::OSSRUN_ISA_NS
