// The decode GEMV of the dense quants (quant_blocks.h's common form s * q - m), written once and
// instantiated per format by quant_legacy.cpp and quant_k.cpp. Each block is unpacked once and
// used for all (at most 3) tokens; the weights stream from memory exactly once.
//   float32: each element decoded exactly, then FMA with the float activations.
//   int16 (fast precision, AVX2 / AVX-512): per 16 elements an exact int32 dot of the quants with
//   the int16 activations (vpmaddwd), times s and the activation block's scale; the offsets m
//   meet precomputed per-16 sums of the activations, one FMA each.
// Shape contract in kernels.h (MatmulArgs); W->cols is a multiple of F::kElems.
#pragma once
#include "quant_blocks.h"

namespace ossrun::OSSRUN_ISA_NS {

// Prefetch every cache line of [done, upto) of the row two pages ahead (see prefetch_ahead).
inline void prefetch_through(const uint8_t* row, size_t& done, size_t upto) {
    for (; done < upto; done += 64) prefetch_ahead(row + done);
}

template <class F, int TT>
void quant_rows_f32(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const Matrix& W = *a.W;
    const int64_t nb = W.cols / F::kElems;
    alignas(64) int8_t q[F::kElems];
    float s[F::kGroups], m[F::kGroups];
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = W.row(a.mat, r);
        size_t fetched = 0;
        vfloat acc[TT][2] = {};
        for (int64_t b = 0; b < nb; ++b) {
            prefetch_through(row, fetched, size_t(b + 1) * F::kBytes);
            F::unpack(row + b * F::kBytes, q, s, m);
            // Groups in pairs, one accumulator each: two FMA chains that stay in registers.
            auto group = [&](int g, int parity) {
                const vfloat sv = broadcast(s[g]), mv = broadcast(m[g]);
                for (int i = 0; i < kGroupElems; i += kVW) {
                    const int64_t k = b * F::kElems + g * kGroupElems + i;
                    const vfloat w = int8_to_vfloat(q + g * kGroupElems + i) * sv - mv;  // exact
                    for (int t = 0; t < TT; ++t) acc[t][parity] += w * vload(a.x + t * a.ldx + k);
                }
            };
            for (int g = 0; g < F::kGroups; g += 2) {
                group(g, 0);
                group(g + 1, 1);
            }
        }
        const float bias = a.bias ? a.bias[r] : 0.0f;
        for (int t = 0; t < TT; ++t) a.y[t * a.ldy + r] = hsum(acc[t][0] + acc[t][1]) + bias;
    }
}

#if defined(__AVX512F__) || defined(__AVX2__)
// The activations' sum per 16 elements, in float: x_sum[t][k / 16] = scale of k's block * sum of
// its int16 codes (only the formats with offsets need them).
inline const float* activation_group_sums(const MatmulArgs& a, int tokens) {
    thread_local std::vector<float> sums;
    const int64_t K = a.W->cols, ng = K / kGroupElems;
    sums.resize(size_t(tokens * ng));
    for (int t = 0; t < tokens; ++t)
        for (int64_t g = 0; g < ng; ++g) {
            const int16_t* xq = a.x_i16 + t * a.ldx + g * kGroupElems;
            int32_t sum = 0;
            for (int i = 0; i < kGroupElems; ++i) sum += xq[i];
            sums[size_t(t * ng + g)] = a.x_i16_scale[t * (a.ldx / kBlockElems) + g / 2] * float(sum);
        }
    return sums.data();
}

template <class F, int TT>
void quant_rows_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const Matrix& W = *a.W;
    const int64_t nb = W.cols / F::kElems, ng = W.cols / kGroupElems, ldxs = a.ldx / kBlockElems;
    const float* x_sum = F::kHasMin ? activation_group_sums(a, TT) : nullptr;
    alignas(64) int8_t q[F::kElems];
    float s[F::kGroups], m[F::kGroups];
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = W.row(a.mat, r);
        size_t fetched = 0;
#if defined(__AVX512F__)
        __m512 acc[TT];
        for (int t = 0; t < TT; ++t) acc[t] = _mm512_setzero_ps();
#else
        __m256 acc[TT];
        for (int t = 0; t < TT; ++t) acc[t] = _mm256_setzero_ps();
#endif
        float offset[TT] = {};
        for (int64_t b = 0; b < nb; ++b) {
            prefetch_through(row, fetched, size_t(b + 1) * F::kBytes);
            F::unpack(row + b * F::kBytes, q, s, m);
            const int64_t k0 = b * F::kElems;
#if defined(__AVX512F__)
            // 32 elements per step: the int32 lanes 0-7 hold group 2c's pair sums, 8-15 group 2c+1's.
            for (int c = 0; c < F::kElems / 32; ++c) {
                // Two 16-byte loads, as the unpackers stored them (store-to-load forwarding).
                const __m256i q32 = _mm256_inserti128_si256(
                    _mm256_castsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(q + 32 * c))),
                    _mm_load_si128(reinterpret_cast<const __m128i*>(q + 32 * c + 16)), 1);
                const __m512i w = _mm512_cvtepi8_epi16(q32);
                const __m512 sv = F::kElems == 32  // one scale per 32: both halves share it
                                      ? _mm512_set1_ps(s[0])
                                      : _mm512_insertf32x8(_mm512_set1_ps(s[2 * c]), _mm256_set1_ps(s[2 * c + 1]), 1);
                for (int t = 0; t < TT; ++t) {
                    const int64_t k = k0 + 32 * c;
                    const __m512i dot = _mm512_madd_epi16(w, _mm512_loadu_si512(a.x_i16 + t * a.ldx + k));
                    const __m512 scale = _mm512_mul_ps(sv, _mm512_set1_ps(a.x_i16_scale[t * ldxs + k / kBlockElems]));
                    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[t]);
                }
            }
#else
            for (int g = 0; g < F::kGroups; ++g) {
                const __m256i w = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(q + 16 * g)));
                for (int t = 0; t < TT; ++t) {
                    const int64_t k = k0 + 16 * g;
                    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.x_i16 + t * a.ldx + k));
                    const __m256i dot = _mm256_madd_epi16(w, x);
                    const float scale = s[g] * a.x_i16_scale[t * ldxs + k / kBlockElems];
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(scale), acc[t]);
                }
            }
#endif
            if constexpr (F::kHasMin)
                for (int t = 0; t < TT; ++t)
                    for (int g = 0; g < F::kGroups; ++g) offset[t] += m[g] * x_sum[t * ng + b * F::kGroups + g];
        }
        const float bias = a.bias ? a.bias[r] : 0.0f;
        for (int t = 0; t < TT; ++t) a.y[t * a.ldy + r] = hsum(vfloat(acc[t])) - offset[t] + bias;
    }
}
#endif

// The GEMV of format F: float32, or int16 where the caller gave int16 activations and the
// variant has integer dot products.
template <class F>
void gemv_quant(const MatmulArgs& a, int64_t r0, int64_t r1) {
    for (int64_t t0 = 0; t0 < a.n_tok; t0 += kTileTokens - 1) {
        MatmulArgs part = a;
        part.n_tok = std::min<int64_t>(kTileTokens - 1, a.n_tok - t0);
        part.x += t0 * a.ldx;
        part.y += t0 * a.ldy;
        if (part.x_i16) {
            part.x_i16 += t0 * a.ldx;
            part.x_i16_scale += t0 * (a.ldx / kBlockElems);
        }
        with_tile_tokens<kTileTokens - 1>(part.n_tok, [&](auto n) {
#if defined(__AVX512F__) || defined(__AVX2__)
            if (part.x_i16) return quant_rows_i16<F, n>(part, r0, r1);
#endif
            quant_rows_f32<F, n>(part, r0, r1);
        });
    }
}

}  // namespace ossrun::OSSRUN_ISA_NS
