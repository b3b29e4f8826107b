// Prefill-time matmuls (many tokens), compiled once per ISA: a panel of weight rows is decoded
// once and reused across a tile of tokens by a register-blocked micro-kernel. The fast path runs
// MXFP4 panels (exact in bf16) against bf16 activations (AVX512-BF16). Contract in kernels.h.
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


#if defined(__AVX512F__)
// ---- Fast prefill: bf16 dot products (AVX512-BF16) for MXFP4 weights. ----------------------
#define OSSRUN_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

OSSRUN_BF16 void to_bf16_impl(const float* x, int64_t n, uint16_t* out) {
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_storeu_si512(out + i, reinterpret_cast<__m512i>(v));
    }
    for (; i < n; ++i) {  // round to nearest even, as the vector conversion does
        uint32_t b;
        std::memcpy(&b, x + i, 4);
        out[i] = uint16_t((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
    }
}

// One MXFP4 block -> 32 bf16 values, exactly (every MXFP4 value is a bf16): the table scaled
// by the block's power of two, indexed by each nibble, packed to bf16 in one conversion.
OSSRUN_BF16 inline void decode_mxfp4_block_bf16(const uint8_t* blk, const float* scales, uint16_t* out) {
    const __m512 t = _mm512_mul_ps(_mm512_loadu_ps(kE2M1), _mm512_set1_ps(scales[blk[0]]));
    const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 1)));
    const __m512 lo = _mm512_permutexvar_ps(codes, t);  // reads the low 4 bits: the low nibble
    const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), t);
    _mm512_storeu_si512(out, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
}

// out[i][j] = w_i · x_j over n (a multiple of 32) bf16 pairs, float32 accumulation.
template <int R, int TT>
OSSRUN_BF16 inline void micro_kernel_bf16(const uint16_t* w, int64_t ldw, const uint16_t* x,
                                          int64_t ldx, int64_t n, float out[R][kTileTokens]) {
    __m512 acc[R][TT];
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < TT; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < n; k += 32) {
        __m512bh xv[TT];
        for (int j = 0; j < TT; ++j) xv[j] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(x + j * ldx + k));
        for (int i = 0; i < R; ++i) {
            const __m512bh wv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w + i * ldw + k));
            for (int j = 0; j < TT; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv, xv[j]);
        }
    }
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < TT; ++j) out[i][j] = _mm512_reduce_add_ps(acc[i][j]);
}

template <int TT>
OSSRUN_BF16 inline void tile_bf16(int64_t R, const uint16_t* w, int64_t ldw, const uint16_t* x,
                                  int64_t ldx, int64_t n, float out[kPanelRows][kTileTokens]) {
    if (R == kPanelRows) {
        micro_kernel_bf16<kPanelRows, TT>(w, ldw, x, ldx, n, out);
    } else {
        for (int64_t i = 0; i < R; ++i) micro_kernel_bf16<1, TT>(w + i * ldw, ldw, x, ldx, n, &out[i]);
    }
}

OSSRUN_BF16 void gemm_mxfp4_bf16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const Matrix& W = *a.W;
    const int64_t K = W.cols;
    thread_local std::vector<uint16_t> panel_buf;
    if (int64_t(panel_buf.size()) < kPanelRows * K) panel_buf.resize(size_t(kPanelRows * K));
    uint16_t* panel = panel_buf.data();
    const float* scales = e8m0_table();
    for (int64_t t0 = 0; t0 < a.n_tok; t0 += kTokenBlock) {
        const int64_t t1 = std::min(a.n_tok, t0 + kTokenBlock);
        for (int64_t r = r0; r < r1; r += kPanelRows) {
            const int64_t R = std::min<int64_t>(kPanelRows, r1 - r);
            for (int64_t i = 0; i < R; ++i) {
                const uint8_t* row = W.row(a.mat, r + i);
                for (int64_t b = 0; b < K / kBlockElems; ++b)
                    decode_mxfp4_block_bf16(row + b * kMxfp4BlockBytes, scales, panel + i * K + b * kBlockElems);
            }
            for (int64_t t = t0; t < t1; t += kTileTokens) {
                const int64_t TT = std::min<int64_t>(kTileTokens, t1 - t);
                float out[kPanelRows][kTileTokens];
                const uint16_t* x = a.x_bf16 + t * a.ldx;
                switch (TT) {
                    case 4: tile_bf16<4>(R, panel, K, x, a.ldx, K, out); break;
                    case 3: tile_bf16<3>(R, panel, K, x, a.ldx, K, out); break;
                    case 2: tile_bf16<2>(R, panel, K, x, a.ldx, K, out); break;
                    default: tile_bf16<1>(R, panel, K, x, a.ldx, K, out); break;
                }
                for (int64_t i = 0; i < R; ++i)
                    for (int64_t j = 0; j < TT; ++j)
                        a.y[(t + j) * a.ldy + r + i] = out[i][j] + (a.bias ? a.bias[r + i] : 0.0f);
            }
        }
    }
}


extern void (*const to_bf16)(const float*, int64_t, uint16_t*) =
    __builtin_cpu_supports("avx512bf16") ? to_bf16_impl : nullptr;
#else
extern void (*const to_bf16)(const float*, int64_t, uint16_t*) = nullptr;
#endif

}  // namespace ossrun::OSSRUN_ISA_NS
