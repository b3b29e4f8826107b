// The 256-element K-quants of community files (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K; layouts in
// quant_blocks.h), compiled once per ISA: exact row decoding (embedding lookups, prefill panels)
// and the decode GEMV (quant_gemv.h), with 16-element scales where the format has them.
#include "quant_gemv.h"

namespace ossrun::OSSRUN_ISA_NS {

// Runs f(Format{}) for a K-quant type; false for any other type.
template <class Fn>
bool with_k_format(DType t, Fn&& f) {
    switch (t) {
        case DType::Q2_K: f(Q2_KFormat{}); return true;
        case DType::Q3_K: f(Q3_KFormat{}); return true;
        case DType::Q4_K: f(Q4_KFormat{}); return true;
        case DType::Q5_K: f(Q5_KFormat{}); return true;
        case DType::Q6_K: f(Q6_KFormat{}); return true;
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
