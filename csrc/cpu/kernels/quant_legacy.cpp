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
    static constexpr int kMinGroup = D::kMin >= 0 ? 32 : 0;

    // The int16 weights of one block (W32) or two (Pair), from their bytes.
    template <class... Blocks>
    static auto words(const Blocks*... blk) {
        if constexpr (D::kTable) {
            if constexpr (sizeof...(blk) == 1) return nibble_lookup((blk + D::kQs)..., kIq4nlLevels2);
            else return lookup(nibble_words((blk + D::kQs)...), kIq4nlLevels2);
        } else {
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
    }

#if defined(__AVX512F__)
    // Blocks b and b + 1; x rearranged by pair_activations.
    template <int TT>
    static void dot_pair_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float* mins) {
        const uint8_t* next = blk + D::kBytes;
        const Pair w = words(blk, next);
        const __m128 d = half_pair(blk, next);
        for (int t = 0; t < TT; ++t) pair_dot_acc(acc[t][0], w, x.q[t] + b * kBlockElems, d, x.s[t] + b);
        if constexpr (D::kMin >= 0) {
            mins[b] = -half_at(blk + D::kMin);
            mins[b + 1] = -half_at(next + D::kMin);
        }
    }
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
