// The 32-element dense quants of community files (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL; layouts in
// quant_blocks.h), compiled once per ISA: exact row decoding (embedding lookups, prefill panels)
// and the decode GEMV (quant_gemv.h). Fast precision: each block is one activation block, its
// codes widened in registers (quant_words.h), one exact int32 dot and one float step (d times
// the activation scale); Q4_1 / Q5_1's minimum meets the activations' block sum once per row.
#include "quant_gemv.h"

namespace ossrun::OSSRUN_ISA_NS {

#if defined(__AVX512F__) || defined(__AVX2__)
OSSRUN_I16_BEGIN
namespace {
using namespace words;

// acc[t][0] += (w · x[t] of block b) * d * the block's activation scale.
template <int TT>
inline void legacy_block_dot(W32 w, float d, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2]) {
    for (int t = 0; t < TT; ++t) {
        const float scale = d * x.s[t][b];
        dot_acc(acc[t][0], w, x.q[t] + b * kBlockElems, scale);
    }
}

// 16 IQ4_NL levels, twice (nibble_lookup's vpermw reads 5 index bits).
alignas(64) constexpr int16_t kIq4nlLevels2[32] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
                                                   -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
}  // namespace

struct Q4_0Fast : Q4_0Format {
    static constexpr int kMinGroup = 0;
    template <int TT>
    static void dot_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float*) {
        legacy_block_dot<TT>(add_c(nibble_words(blk + 2), -8), half_at(blk), b, x, acc);
    }
};

struct Q4_1Fast : Q4_1Format {
    static constexpr int kMinGroup = 32;
    template <int TT>
    static void dot_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float* mins) {
        legacy_block_dot<TT>(nibble_words(blk + 4), half_at(blk), b, x, acc);
        mins[b] = -half_at(blk + 2);
    }
};

// The fifth bit: bit j of qh; the value is code - 16, so lanes whose bit is clear lose 16.
struct Q5_0Fast : Q5_0Format {
    static constexpr int kMinGroup = 0;
    template <int TT>
    static void dot_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float*) {
        const W32 w = add_where_not(nibble_words(blk + 6), bits_mask(u32_at(blk + 2)), -16);
        legacy_block_dot<TT>(w, half_at(blk), b, x, acc);
    }
};

struct Q5_1Fast : Q5_1Format {
    static constexpr int kMinGroup = 32;
    template <int TT>
    static void dot_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float* mins) {
        const W32 w = add_where(nibble_words(blk + 8), bits_mask(u32_at(blk + 4)), 16);
        legacy_block_dot<TT>(w, half_at(blk), b, x, acc);
        mins[b] = -half_at(blk + 2);
    }
};

struct Iq4NlFast : Iq4NlFormat {
    static constexpr int kMinGroup = 0;
    template <int TT>
    static void dot_i16(const uint8_t* blk, int64_t b, const Tokens<TT>& x, Acc (&acc)[TT][2], float*) {
        legacy_block_dot<TT>(nibble_lookup(blk + 2, kIq4nlLevels2), half_at(blk), b, x, acc);
    }
};
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
