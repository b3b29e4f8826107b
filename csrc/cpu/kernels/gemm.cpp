// Prefill-time matmuls (many tokens), compiled once per ISA: a panel of weight rows is decoded
// once and reused across a tile of tokens by a register-blocked micro-kernel (float32; the fast
// precision's integer GEMM is in gemm_i16.cpp). Contract in kernels.h.
#include "matmul_internal.h"

namespace ossrun::OSSRUN_ISA_NS {

// out[i][j] = w_i · x_j over n (i < R, j < kTileTokens): every weight load feeds kTileTokens FMAs
// and every activation load R of them.
template <int R>
inline void micro_kernel(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t n,
                         float out[R][kTileTokens]) {
    vfloat acc[R][kTileTokens] = {};
    int64_t k = 0;
    for (; k + kVW <= n; k += kVW) {
        vfloat xv[kTileTokens];
        for (int j = 0; j < kTileTokens; ++j) xv[j] = vload(x + j * ldx + k);
        for (int i = 0; i < R; ++i) {
            const vfloat wv = vload(w + i * ldw + k);
            for (int j = 0; j < kTileTokens; ++j) acc[i][j] += wv * xv[j];
        }
    }
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < kTileTokens; ++j) {
            float s = hsum(acc[i][j]);
            for (int64_t kk = k; kk < n; ++kk) s += w[i * ldw + kk] * x[j * ldx + kk];
            out[i][j] = s;
        }
}

void gemm(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const Matrix& W = *a.W;
    const int64_t K = W.cols;
    float* panel = row_scratch(kPanelRows * K);
    for (int64_t t0 = 0; t0 < a.n_tok; t0 += kTokenBlock) {
        const int64_t t1 = std::min(a.n_tok, t0 + kTokenBlock);
        for (int64_t r = r0; r < r1; r += kPanelRows) {
            const int64_t R = std::min<int64_t>(kPanelRows, r1 - r);
            for (int64_t i = 0; i < R; ++i) decode_row_bytes(W, W.row(a.mat, r + i), panel + i * K);
            int64_t t = t0;
            for (; t + kTileTokens <= t1; t += kTileTokens) {
                float out[kPanelRows][kTileTokens];
                const float* x = a.x + t * a.ldx;
                if (R == kPanelRows) {
                    micro_kernel<kPanelRows>(panel, K, x, a.ldx, K, out);
                } else {
                    for (int64_t i = 0; i < R; ++i) micro_kernel<1>(panel + i * K, K, x, a.ldx, K, &out[i]);
                }
                for (int64_t i = 0; i < R; ++i)
                    for (int j = 0; j < kTileTokens; ++j)
                        a.y[(t + j) * a.ldy + r + i] = out[i][j] + (a.bias ? a.bias[r + i] : 0.0f);
            }
            for (; t < t1; ++t)
                for (int64_t i = 0; i < R; ++i)
                    a.y[t * a.ldy + r + i] = dot(panel + i * K, a.x + t * a.ldx, K) + (a.bias ? a.bias[r + i] : 0.0f);
        }
    }
}


}  // namespace ossrun::OSSRUN_ISA_NS
