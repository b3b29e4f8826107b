// The 32-element dense quants of community files (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL; layouts in
// quant_blocks.h), compiled once per ISA: exact row decoding (embedding lookups, prefill panels)
// and the decode GEMV (quant_gemv.h).
#include "quant_gemv.h"

namespace ossrun::OSSRUN_ISA_NS {

// Runs f(Format{}) for a 32-element dense quant type; false for any other type.
template <class Fn>
bool with_legacy_format(DType t, Fn&& f) {
    switch (t) {
        case DType::Q4_0: f(Q4_0Format{}); return true;
        case DType::Q4_1: f(Q4_1Format{}); return true;
        case DType::Q5_0: f(Q5_0Format{}); return true;
        case DType::Q5_1: f(Q5_1Format{}); return true;
        case DType::IQ4_NL: f(Iq4NlFormat{}); return true;
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
