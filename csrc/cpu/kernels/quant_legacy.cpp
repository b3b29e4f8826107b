// The 32-element dense quants of community files (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL; layouts in
// quant_blocks.h), compiled once per ISA: exact row decoding (embedding lookups, prefill panels)
// and the decode GEMV (quant_gemv.h). Fast precision: each block is one activation block, its
// codes widened in registers (quant_words.h; AVX-512: two blocks per pass), one exact int32 dot
// and one float step (d times the activation scale); Q4_1 / Q5_1's minimum meets the
// activations' block sum once per row.
#include "quant_gemv.h"

namespace ossrun::OSSRUN_ISA_NS {

#if defined(__AVX512F__) || defined(__AVX2__)
OSSRUN_I16_BEGIN
namespace {
using namespace words;

// 16 IQ4_NL levels, twice (nibble_lookup's vpermw reads 5 index bits).
alignas(64) constexpr int16_t kIq4nlLevels2[32] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
                                                   -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
}  // namespace

// The five formats differ only in where their fields sit: D::kQs (the 16 nibble bytes), D::kQh
// (the 32 fifth bits, -1: none), D::kBias (added to each code), D::kTable (IQ4_NL's levels) and
// D::kMin (the fp16 minimum, -1: none). Element j = d * (code_j + bias) (+ min), code_j =
// nibble (+ 16 * bit j); the fast dot of one block or, where kHasPairs, of two at once.
template <class D>
struct LegacyFast : D {
    static constexpr bool kPairs = kHasPairs;
#if defined(__AVX512F__)
    static constexpr bool kBiasAsMin = false;
#else
    // AVX2: Q5_0's codes stay unsigned (five_bit_words); its -16 meets the activations' block
    // sums once per row as the offset m = 16 d (no per-element subtraction).
    static constexpr bool kBiasAsMin = D::kQh >= 0 && D::kBias != 0;
#endif
    static constexpr int kMinGroup = D::kMin >= 0 || kBiasAsMin ? 32 : 0;

    // The int16 weights of one block (W32) or two (Pair), from their bytes.
    template <class... Blocks>
    static auto words(const Blocks*... blk) {
        if constexpr (D::kTable) {
            if constexpr (sizeof...(blk) == 1) return nibble_lookup((blk + D::kQs)..., kIq4nlLevels2);
            else return lookup(nibble_words((blk + D::kQs)...), kIq4nlLevels2);
        } else {
#if !defined(__AVX512F__)
            if constexpr (D::kQh >= 0 && sizeof...(blk) == 1) {
                // AVX2: the unsigned codes nibble + 16 * bit (Q5_0's bias: kBiasAsMin).
                static_assert(D::kBias == 0 || D::kBias == -16, "a 5-bit code's bias is 0 or -16");
                const uint8_t* b = (blk, ...);
                return five_bit_words(b + D::kQs, b + D::kQh);
            }
#endif
            auto w = nibble_words((blk + D::kQs)...);
            if constexpr (D::kQh >= 0) {
                const auto bits = bits_mask(u32_at(blk + D::kQh)...);
                // Q5_0: code - 16 is nibble - 16 where the bit is clear; Q5_1: nibble + 16 where set.
                return D::kBias ? add_where_not(w, bits, D::kBias) : add_where(w, bits, 16);
            } else {
                return D::kBias ? add_c(w, D::kBias) : w;
            }
        }
    }

    template <int TT>
    static void dot_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float* mins) {
        const W32 w = words(blk);
        const float d = half_at(blk);
        for (int t = 0; t < TT; ++t) {
            const float scale = d * x.s[t][b];
            dot_acc(acc[t][0], w, x.q[t] + b * kBlockElems, scale);
        }
        if constexpr (D::kMin >= 0) mins[b] = -half_at(blk + D::kMin);
        if constexpr (kBiasAsMin) mins[b] = float(-D::kBias) * d;
    }

#if !defined(__AVX512F__)
    // AVX2: blocks b .. b + 3 one by one (acc[i % 2][t][i / 2]), their fp16 scales (and minima)
    // converted in one vcvtph2ps and multiplied by the activation scales in one step.
    static constexpr bool kQuads = true;
    template <int TT>
    static void dot_quad_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[2][TT][2], float* mins) {
        // The four scales (and minima) gathered in general registers (vpinsrw from memory costs
        // two vector uops each), and each block's scale broadcast from memory (a load, where a
        // vpermps of the register would take a shuffle per block).
        uint64_t d4 = 0, m4 = 0;
        for (int i = 0; i < 4; ++i) d4 |= uint64_t(half_bits(blk + i * D::kBytes)) << (16 * i);
        if constexpr (D::kMin >= 0)
            for (int i = 0; i < 4; ++i) m4 |= uint64_t(half_bits(blk + i * D::kBytes + D::kMin)) << (16 * i);
        const __m256 d_and_min = _mm256_cvtph_ps(_mm_insert_epi64(_mm_cvtsi64_si128(int64_t(d4)), int64_t(m4), 1));
        if constexpr (D::kMin >= 0) _mm_storeu_ps(mins + b, _mm_sub_ps(_mm_setzero_ps(), _mm256_extractf128_ps(d_and_min, 1)));
        if constexpr (kBiasAsMin)
            _mm_storeu_ps(mins + b, _mm_mul_ps(_mm256_castps256_ps128(d_and_min), _mm_set1_ps(float(-D::kBias))));
        alignas(16) float s[TT][4];  // d times the activation scale, blocks b .. b + 3
        for (int t = 0; t < TT; ++t) _mm_store_ps(s[t], _mm_mul_ps(_mm256_castps256_ps128(d_and_min), _mm_loadu_ps(x.s[t] + b)));
        for (int i = 0; i < 4; ++i) {
            const W32 w = words(blk + i * D::kBytes);
            for (int t = 0; t < TT; ++t)
                dot_acc(acc[i & 1][t][i >> 1], w, x.q[t] + (b + i) * kBlockElems, _mm256_broadcast_ss(&s[t][i]));
        }
    }
    static int half_bits(const uint8_t* p) {
        uint16_t h;
        std::memcpy(&h, p, 2);
        return h;
    }
#else
    static constexpr bool kQuads = false;  // the pairs' quads instead (below)
#endif

#if defined(__AVX512F__)
    // The int16 weights of two neighbouring blocks, their fifth bits (where the format has
    // them) from `bits`.
    static Pair pair_words(const uint8_t* b0, const uint8_t* b1, PairMask bits) {
        if constexpr (D::kTable) {
            return lookup(nibble_words(b0 + D::kQs, b1 + D::kQs), kIq4nlLevels2);
        } else if constexpr (D::kQh >= 0) {
            static_assert(D::kBias == 0 || D::kBias == -16, "a 5-bit code's bias is 0 or -16");
            // Q5_0: nibble - 16, plus 16 where the bit is set; Q5_1: nibble, plus 16 there.
            if constexpr (D::kBias) return add_where(nibble_words_minus16(b0 + D::kQs, b1 + D::kQs), bits, 16);
            else return add_where(nibble_words(b0 + D::kQs, b1 + D::kQs), bits, 16);
        } else {
            const Pair w = nibble_words(b0 + D::kQs, b1 + D::kQs);
            return D::kBias ? add_c(w, D::kBias) : w;
        }
    }

    // Blocks b and b + 1; x rearranged by pair_activations.
    template <int TT>
    static void dot_pair_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float* mins) {
        const uint8_t* next = blk + D::kBytes;
        PairMask bits{};
        if constexpr (D::kQh >= 0) bits = bits_mask(u32_at(blk + D::kQh), u32_at(next + D::kQh));
        const Pair w = pair_words(blk, next, bits);
        const __m128 d = half_pair(blk, next);
        for (int t = 0; t < TT; ++t) pair_dot_acc(acc[t][0], w, x.q[t] + b * kBlockElems, d, x.s[t] + b);
        if constexpr (D::kMin >= 0) {
            mins[b] = -half_at(blk + D::kMin);
            mins[b + 1] = -half_at(next + D::kMin);
        }
    }

    // Blocks b .. b + 3 (two pairs, on acc[0] and acc[1]): their scales, minima and fifth bits
    // gathered by one vpermt2w (QuadFields) instead of a scalar load and insert each.
    // (Forced inline: called twice per step, GCC would otherwise keep one out-of-line copy and
    // pass the accumulators through memory.)
    template <int TT>
    __attribute__((always_inline)) static void dot_quad_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x,
                                                            Acc (&acc)[2][TT][2], float* mins);
#endif
};

struct Q4_0Fields : Q4_0Format {
    static constexpr int kQs = 2, kQh = -1, kBias = -8, kMin = -1;
    static constexpr bool kTable = false;
};
struct Q4_1Fields : Q4_1Format {
    static constexpr int kQs = 4, kQh = -1, kBias = 0, kMin = 2;
    static constexpr bool kTable = false;
};
struct Q5_0Fields : Q5_0Format {
    static constexpr int kQs = 6, kQh = 2, kBias = -16, kMin = -1;
    static constexpr bool kTable = false;
};
struct Q5_1Fields : Q5_1Format {
    static constexpr int kQs = 8, kQh = 4, kBias = 0, kMin = 2;
    static constexpr bool kTable = false;
};
struct Iq4NlFields : Iq4NlFormat {
    static constexpr int kQs = 2, kQh = -1, kBias = 0, kMin = -1;
    static constexpr bool kTable = true;
};
#if defined(__AVX512F__)
// Where the per-block fields of four neighbouring blocks sit for vpermt2w, whose two tables are
// the four blocks' first 64 bytes (words 0-31) and their last 64 (words 32-63; every field is at
// an even offset): words 0-7 the fifth-bit masks of the two pairs (dwords 2p, 2p + 1 = pair p's
// side_by_side_mask lows, highs), 8-11 the scales d, 12-15 the minima.
template <class D>
struct QuadFields {
    static constexpr int kTail = 4 * D::kBytes - 64;  // offset of the second table
    alignas(64) int16_t index[32];

    static constexpr int16_t word(int blk, int offset) {
        const int byte = blk * D::kBytes + offset;
        return int16_t(byte + 2 <= 64 ? byte / 2 : 32 + (byte - kTail) / 2);
    }
    constexpr QuadFields() : index{} {
        for (int i = 0; i < 4; ++i) {
            index[8 + i] = word(i, 0);
            if (D::kMin >= 0) index[12 + i] = word(i, D::kMin);
            if (D::kQh >= 0) {
                const int pair = i / 2, second = i % 2;
                index[4 * pair + second] = word(i, D::kQh);          // bits 0-15
                index[4 * pair + 2 + second] = word(i, D::kQh + 2);  // bits 16-31
            }
        }
    }
};
template <class D>
inline constexpr QuadFields<D> kQuadFields{};

template <class D>
template <int TT>
inline void LegacyFast<D>::dot_quad_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[2][TT][2],
                                 float* mins) {
    static_assert(4 * D::kBytes >= 64, "the two tables lie inside the four blocks");
    const __m512i fields = _mm512_permutex2var_epi16(_mm512_loadu_si512(blk), _mm512_load_si512(kQuadFields<D>.index),
                                                     _mm512_loadu_si512(blk + QuadFields<D>::kTail));
    const __m256 d_and_min = _mm256_cvtph_ps(_mm512_extracti32x4_epi32(fields, 1));
    if constexpr (D::kMin >= 0) _mm_storeu_ps(mins + b, _mm_sub_ps(_mm_setzero_ps(), _mm256_extractf128_ps(d_and_min, 1)));
    __m128 s[TT];  // d times the activation scale, blocks b .. b + 3
    for (int t = 0; t < TT; ++t) s[t] = _mm_mul_ps(_mm256_castps256_ps128(d_and_min), _mm_loadu_ps(x.s[t] + b));
    const __m128i masks = _mm512_castsi512_si128(fields);
    const uint64_t pair_masks[2] = {uint64_t(_mm_cvtsi128_si64(masks)), uint64_t(_mm_extract_epi64(masks, 1))};
    for (int p = 0; p < 2; ++p) {
        const uint8_t* first = blk + 2 * p * D::kBytes;
        const Pair w = pair_words(first, first + D::kBytes,
                                  side_by_side_mask(uint32_t(pair_masks[p]), uint32_t(pair_masks[p] >> 32)));
        for (int t = 0; t < TT; ++t)
            pair_dot_acc(acc[p][t][0], w, x.q[t] + (b + 2 * p) * kBlockElems, pair_scales(s[t], p));
    }
}
#endif
using Q4_0Fast = LegacyFast<Q4_0Fields>;
using Q4_1Fast = LegacyFast<Q4_1Fields>;
using Q5_0Fast = LegacyFast<Q5_0Fields>;
using Q5_1Fast = LegacyFast<Q5_1Fields>;
using Iq4NlFast = LegacyFast<Iq4NlFields>;
OSSRUN_I16_END
#else
// The scalar build has no int16 path: the formats' float GEMV only.
using Q4_0Fast = Q4_0Format;
using Q4_1Fast = Q4_1Format;
using Q5_0Fast = Q5_0Format;
using Q5_1Fast = Q5_1Format;
using Iq4NlFast = Iq4NlFormat;
#endif

// Runs f(Format{}) for a 32-element dense quant type; false for any other type.
template <class Fn>
bool with_legacy_format(DType t, Fn&& f) {
    switch (t) {
        case DType::Q4_0: f(Q4_0Fast{}); return true;
        case DType::Q4_1: f(Q4_1Fast{}); return true;
        case DType::Q5_0: f(Q5_0Fast{}); return true;
        case DType::Q5_1: f(Q5_1Fast{}); return true;
        case DType::IQ4_NL: f(Iq4NlFast{}); return true;
        default: return false;
    }
}

bool decode_legacy_quant_row(DType t, const uint8_t* row, int64_t cols, float* out) {
    return with_legacy_format(t, [&](auto fmt) { decode_quant_row<decltype(fmt)>(row, cols, out); });
}

bool gemv_legacy_quant(const MatmulArgs& a, int64_t r0, int64_t r1) {
    return with_legacy_format(a.W->type, [&](auto fmt) { gemv_quant<decltype(fmt)>(a, r0, r1); });
}

}  // namespace ossrun::OSSRUN_ISA_NS
