// The 256-element K-quants of community files (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K; layouts in
// quant_blocks.h), compiled once per ISA: exact row decoding (embedding lookups, prefill panels)
// and the decode GEMV (quant_gemv.h), with 16-element scales where the format has them.
// Fast precision: a super-block is eight activation blocks; each one's codes are widened in
// registers (quant_words.h), multiplied in int16 by their 16-element integer scales where the
// format has those (Q2_K, Q3_K, Q6_K: the products fit in int16), dotted exactly in int32 and
// scaled once in float (d, Q4_K / Q5_K's 6-bit sub-block scale, the activation scale).
#include "quant_gemv.h"

namespace ossrun::OSSRUN_ISA_NS {

#if defined(__AVX512F__) || defined(__AVX2__)
OSSRUN_I16_BEGIN
namespace {
using namespace words;

constexpr int kSubBlocks = 8;  // 32-element activation blocks per super-block

// Lane i of s[t] = scale_i * activation scale of sub-block i of super-block b, for every token.
template <int TT>
inline void sub_block_scales(__m256 scale, int64_t b, const Tokens<TT>& x, __m256 (&s)[TT]) {
    for (int t = 0; t < TT; ++t) s[t] = _mm256_mul_ps(scale, _mm256_loadu_ps(x.s[t] + b * kSubBlocks));
}

// Sub-block i of super-block b, its weights w: acc[t][i % 2] += (w · x[t]) * lane i of s[t].
template <int TT>
inline void sub_block_dot(W32 w, int i, int64_t b, const Tokens<TT>& x, const __m256 (&s)[TT], Acc (&acc)[TT][2]) {
    for (int t = 0; t < TT; ++t) dot_acc(acc[t][i & 1], w, x.q[t] + b * 256 + 32 * i, lane_splat(s[t], i));
}

// Q4_K / Q5_K's 12 bytes of 6-bit scales and mins (quant_blocks.h's k4_scale_min), all eight of
// each at once: sub-blocks 0-3 in the low 6 bits of bytes 0-3 / 4-7, 4-7 in the nibbles of bytes
// 8-11 with the top 2 bits of bytes 0-3 / 4-7 above them.
inline void k4_scales_mins(const uint8_t* p, uint64_t& scales, uint64_t& mins) {
    const uint32_t u0 = u32_at(p), u1 = u32_at(p + 4), u2 = u32_at(p + 8);
    scales = (u0 & 0x3F3F3F3Fu) | uint64_t((u2 & 0x0F0F0F0Fu) | ((u0 >> 6 & 0x03030303u) << 4)) << 32;
    mins = (u1 & 0x3F3F3F3Fu) | uint64_t((u2 >> 4 & 0x0F0F0F0Fu) | ((u1 >> 6 & 0x03030303u) << 4)) << 32;
}

// Q4_K / Q5_K: element 64c + 32h + l is nibble h of quant byte 32c + l (+ bit 2c + h of qh byte
// l as bit 4 for Q5_K); scale and min per 32 elements.
template <bool kFifthBit, int TT>
inline void k4_dot(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float* mins) {
    uint64_t sc, mn;
    k4_scales_mins(blk + 4, sc, mn);
    _mm256_storeu_ps(mins + b * kSubBlocks, bytes8_times(mn, half_at(blk + 2)));  // dmin * min, exact
    __m256 s[TT];
    sub_block_scales<TT>(bytes8_times(sc, half_at(blk)), b, x, s);
    const uint8_t* qs = blk + (kFifthBit ? 48 : 16);
    W32 high = {};
    if constexpr (kFifthBit) high = u8_words(blk + 16);
    for (int c = 0; c < 4; ++c) {
        const W32 codes = u8_words(qs + 32 * c);
        W32 lo = and_c(codes, 15), hi = shr(codes, 4);
        if constexpr (kFifthBit) {
            lo = add_where(lo, word_bit_mask(high, 2 * c), 16);
            hi = add_where(hi, word_bit_mask(high, 2 * c + 1), 16);
        }
        sub_block_dot<TT>(lo, 2 * c, b, x, s, acc);
        sub_block_dot<TT>(hi, 2 * c + 1, b, x, s, acc);
    }
}
}  // namespace

// Element 128h + 32j + l: bits 2j, 2j+1 of quant byte 32h + l; scale (low nibble) and min (high)
// per 16 elements, times d and dmin.
struct Q2_KFast : Q2_KFormat {
    static constexpr bool kPairs = false, kQuads = false;
    static constexpr int kMinGroup = 16;
    template <int TT>
    static void dot_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float* mins) {
        const uint8_t* sc = blk;
        const float dmin = half_at(blk + 82);
        for (int k = 0; k < 2; ++k) {
            uint64_t bytes;
            std::memcpy(&bytes, sc + 8 * k, 8);
            _mm256_storeu_ps(mins + b * 16 + 8 * k, bytes8_times(bytes >> 4 & 0x0F0F0F0F0F0F0F0Full, dmin));
        }
        __m256 s[TT];
        sub_block_scales<TT>(_mm256_set1_ps(half_at(blk + 80)), b, x, s);
        const GroupScales scales = GroupScales::low_nibbles_at(sc);
        for (int h = 0; h < 2; ++h) {
            const W32 codes = u8_words(blk + 16 + 32 * h);
            for (int j = 0; j < 4; ++j) {
                const int i = 4 * h + j;
                const W32 w = mul(and_c(shr(codes, 2 * j), 3), scales.pair(i));
                sub_block_dot<TT>(w, i, b, x, s, acc);
            }
        }
    }
};

// Element 128h + 32j + l: bits 2j, 2j+1 of quant byte 32h + l, minus 4 where bit 4h + j of hmask
// byte l is clear; 16 6-bit scales biased by 32 (low 4 bits: nibbles of bytes 0-7, high 2 bits:
// bit pairs of bytes 8-11).
struct Q3_KFast : Q3_KFormat {
    static constexpr bool kPairs = false, kQuads = false;
    static constexpr int kMinGroup = 0;
    template <int TT>
    static void dot_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float*) {
        const uint8_t* p = blk + 96;
        const uint32_t a0 = u32_at(p), a1 = u32_at(p + 4), a2 = u32_at(p + 8);
        const uint32_t packed[4] = {(a0 & 0x0F0F0F0Fu) | (a2 & 0x03030303u) << 4,
                                    (a1 & 0x0F0F0F0Fu) | (a2 >> 2 & 0x03030303u) << 4,
                                    (a0 >> 4 & 0x0F0F0F0Fu) | (a2 >> 4 & 0x03030303u) << 4,
                                    (a1 >> 4 & 0x0F0F0F0Fu) | (a2 >> 6 & 0x03030303u) << 4};
        const GroupScales scales = GroupScales::biased6(packed);
        __m256 s[TT];
        sub_block_scales<TT>(_mm256_set1_ps(half_at(blk + 108)), b, x, s);
        const W32 hmask = u8_words(blk);
        for (int h = 0; h < 2; ++h) {
            const W32 codes = u8_words(blk + 32 + 32 * h);
            for (int j = 0; j < 4; ++j) {
                const int i = 4 * h + j;
                W32 w = add_where_not(and_c(shr(codes, 2 * j), 3), word_bit_mask(hmask, i), -4);
                w = mul(w, scales.pair(i));
                sub_block_dot<TT>(w, i, b, x, s, acc);
            }
        }
    }
};

struct Q4_KFast : Q4_KFormat {
    static constexpr bool kPairs = false, kQuads = false;
    static constexpr int kMinGroup = 32;
    template <int TT>
    static void dot_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float* mins) {
        k4_dot<false, TT>(blk, b, x, acc, mins);
    }
};

struct Q5_KFast : Q5_KFormat {
    static constexpr bool kPairs = false, kQuads = false;
    static constexpr int kMinGroup = 32;
    template <int TT>
    static void dot_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float* mins) {
        k4_dot<true, TT>(blk, b, x, acc, mins);
    }
};

// Element 128h + 32p + l: the low (p < 2) or high (p >= 2) nibble of ql byte 64h + 32(p & 1) + l,
// bits 2p, 2p+1 of qh byte 32h + l above it, minus 32; an int8 scale per 16 elements.
struct Q6_KFast : Q6_KFormat {
    static constexpr bool kPairs = false, kQuads = false;
    static constexpr int kMinGroup = 0;
    template <int TT>
    static void dot_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float*) {
        const GroupScales scales = GroupScales::int8_at(blk + 192);
        __m256 s[TT];
        sub_block_scales<TT>(_mm256_set1_ps(half_at(blk + 208)), b, x, s);
        for (int h = 0; h < 2; ++h) {
            const W32 ql0 = u8_words(blk + 64 * h), ql1 = u8_words(blk + 64 * h + 32);
            const W32 qh = u8_words(blk + 128 + 32 * h);
            for (int p = 0; p < 4; ++p) {
                const W32 ql = p & 1 ? ql1 : ql0;
                const W32 low = p < 2 ? and_c(ql, 15) : shr(ql, 4);
                const W32 high = and_c(p < 2 ? shl(qh, 4 - 2 * p) : shr(qh, 2 * p - 4), 0x30);
                const int i = 4 * h + p;
                const W32 w = mul(add_c(or_(low, high), -32), scales.pair(i));
                sub_block_dot<TT>(w, i, b, x, s, acc);
            }
        }
    }
};
OSSRUN_I16_END
#else
// The scalar build has no int16 path: the formats' float GEMV only.
using Q2_KFast = Q2_KFormat;
using Q3_KFast = Q3_KFormat;
using Q4_KFast = Q4_KFormat;
using Q5_KFast = Q5_KFormat;
using Q6_KFast = Q6_KFormat;
#endif

// Runs f(Format{}) for a K-quant type; false for any other type.
template <class Fn>
bool with_k_format(DType t, Fn&& f) {
    switch (t) {
        case DType::Q2_K: f(Q2_KFast{}); return true;
        case DType::Q3_K: f(Q3_KFast{}); return true;
        case DType::Q4_K: f(Q4_KFast{}); return true;
        case DType::Q5_K: f(Q5_KFast{}); return true;
        case DType::Q6_K: f(Q6_KFast{}); return true;
        default: return false;
    }
}

bool decode_k_quant_row(DType t, const uint8_t* row, int64_t cols, float* out) {
    return with_k_format(t, [&](auto fmt) { decode_quant_row<decltype(fmt)>(row, cols, out); });
}

bool gemv_k_quant(const MatmulArgs& a, int64_t r0, int64_t r1) {
    return with_k_format(a.W->type, [&](auto fmt) { gemv_quant<decltype(fmt)>(a, r0, r1); });
}

}  // namespace ossrun::OSSRUN_ISA_NS
