// The matmul kernel entry points of one ISA variant (MODEL.md §3, §4.3): exact row decoding, and
// the dispatch of a matmul to the GEMV (few tokens) or GEMM (many) kernels, or to their fast
// variants when the caller supplied reduced-precision activations. Contract in kernels.h.
#include "../../mxfp4_interleave.h"
#include "../../q8_0_interleave.h"
#include "matmul_internal.h"

namespace ossrun::OSSRUN_ISA_NS {

void decode_row(const Matrix& W, int64_t mat, int64_t r, float* out) {
    if (W.layout != RowLayout::kRows) {  // the row's bytes in GGUF order first: the same decode
        thread_local std::vector<uint8_t> bytes;
        bytes.resize(W.row_bytes);
        if (W.layout == RowLayout::kQ8_0x16) deinterleave_q8_0_row(W, mat, r, bytes.data());
        else deinterleave_mxfp4_row(W, mat, r, bytes.data());
        return decode_row_bytes(W, bytes.data(), out);
    }
    decode_row_bytes(W, W.row(mat, r), out);
}

namespace {
// y = x · W^T one decoded row at a time: a matrix in a layout that no other kernel of this
// variant reads (the model interleaves rows only for the AVX-512 variants' fast precision).
void matmul_decoded_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
    float* w = row_scratch(a.W->cols);
    for (int64_t r = r0; r < r1; ++r) {
        decode_row(*a.W, a.mat, r, w);
        for (int64_t t = 0; t < a.n_tok; ++t)
            a.y[t * a.ldy + r] = dot(w, a.x + t * a.ldx, a.W->cols) + (a.bias ? a.bias[r] : 0.0f);
    }
}
}  // namespace

void matmul(const MatmulArgs& a, int64_t r0, int64_t r1) {
    if (a.W->layout != RowLayout::kRows) {
#if defined(__AVX512F__)
        // The int16 GEMM reads a group as a panel half (gemm_i16.cpp).
        if (a.x_i16 && a.n_tok <= kGemvI16MaxTokens)
            return a.W->layout == RowLayout::kQ8_0x16 ? gemv_q8_0x16_i16(a, r0, r1) : gemv_mxfp4x16_i16(a, r0, r1);
        if (a.x_i16 && matmul_reads_int16_only(*a.W)) return gemm_i16(a, r0, r1);
#endif
        return matmul_decoded_rows(a, r0, r1);
    }
#if defined(__AVX512F__)
    // A decode batch (a few tokens): GEMVs that widen each weight block once for several tokens.
    if (a.x_i16 && a.n_tok <= kGemvI16MaxTokens) {
        if (a.W->type == DType::Q8_0) return gemv_q8_0_i16(a, r0, r1);
        if (a.W->type == DType::MXFP4) return gemv_mxfp4_i16(a, r0, r1);
    }
    // The float32 router of such a batch too: the GEMVs give each token the bits it gets alone.
    if (a.W->type == DType::F32 && a.n_tok <= kGemvI16MaxTokens) return gemv(a, r0, r1);
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
    if (a.x_i16 && a.n_tok >= kTileTokens && matmul_reads_int16_only(*a.W)) return gemm_i16(a, r0, r1);
    if (a.x_i16 && a.W->type == DType::Q8_0 && a.n_tok < kTileTokens) return gemv_q8_0_i16(a, r0, r1);
    if (a.x_i16 && a.W->type == DType::MXFP4 && a.n_tok < kTileTokens) return gemv_mxfp4_i16(a, r0, r1);
#endif
    // The dense quants' GEMVs (float32 or int16 activations); their GEMMs decode float panels.
    if (a.n_tok < kTileTokens && (gemv_legacy_quant(a, r0, r1) || gemv_k_quant(a, r0, r1))) return;
    if (a.n_tok < kTileTokens) gemv(a, r0, r1);
    else gemm(a, r0, r1);
}

}  // namespace ossrun::OSSRUN_ISA_NS
