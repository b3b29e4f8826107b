// Shared by the AVX-512 int16 decode GEMVs (gemv.cpp: MXFP4, gemv_q8_0_i16_avx512.cpp: Q8_0):
// the target attribute their VNNI code compiles under and the loop that hands a row range to a
// row kernel in groups of tokens.
#pragma once
#include "matmul_internal.h"

#if defined(__AVX512F__)
#define OSSRUN_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")))

namespace ossrun::OSSRUN_ISA_NS {

// Rows r0..r1 for every token, in groups of up to 4 tokens per pass over the rows (their re-laid
// activations, 4 x 11.5 KiB at 2880 columns, stay in L1 beside the streaming weights; 8 did not).
// With more than one group the rows go in chunks of 32, every group per chunk, so the second
// group reads the chunk from L2 rather than the whole range again from memory.
// acts = the re-laid activations of all tokens (with .from(t0)).
template <class Acts, class Rows>
OSSRUN_VNNI inline void gemv_i16_groups(const MatmulArgs& a, int64_t r0, int64_t r1, const Acts& acts, Rows rows,
                                        int rows_per_call = 1) {
    const Matrix& W = *a.W;
    const int64_t nb = W.cols / kBlockElems;
    const int64_t groups = (a.n_tok + 3) / 4;
    const int64_t chunk = groups > 1 ? 32 : r1 - r0;
    for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
        const int64_t c1 = std::min(r1, c0 + chunk);
        for (int64_t g = 0, t0 = 0; g < groups; ++g) {
            const int nt = int((a.n_tok - t0 + (groups - g) - 1) / (groups - g));  // e.g. 7 -> 4 + 3
            const Acts x = acts.from(t0);
            with_tile_tokens<4>(nt, [&](auto n) {
                for (int64_t r = c0; r < c1; r += rows_per_call) {
                    const int nr = int(std::min<int64_t>(rows_per_call, c1 - r));
                    float out[8];
                    rows(n, nr, W.row(a.mat, r), x, nb, out);
                    for (int i = 0; i < nr; ++i) {
                        const float bias = a.bias ? a.bias[r + i] : 0.0f;
                        for (int t = 0; t < nt; ++t) a.y[(t0 + t) * a.ldy + r + i] = out[i * 4 + t] + bias;
                    }
                }
            });
            t0 += nt;
        }
    }
}

}  // namespace ossrun::OSSRUN_ISA_NS

#endif
