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
#include "quant_words.h"

namespace ossrun::OSSRUN_ISA_NS {

// Prefetch every cache line of [done, upto) of the row two pages ahead (see prefetch_ahead).
inline void prefetch_through(const uint8_t* row, size_t& done, size_t upto) {
    for (; done < upto; done += 64) prefetch_ahead(row + done);
}

// Prefetch the kBytes from p two pages ahead, one line per 64 bytes, unrolled: successive steps
// leave no two prefetched addresses more than 64 bytes apart, so every line of the row is
// fetched (some twice), without prefetch_through's loop.
template <int kBytes>
inline void prefetch_step(const uint8_t* p) {
    for (int o = 0; o < kBytes; o += 64) prefetch_ahead(p + o);
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
OSSRUN_I16_BEGIN
// The activations' sum per group of `group` elements (the formats' offset granularity), in
// float: scale of the group's 32-block times the exact int32 sum of its int16 codes.
inline void activation_group_sums(const int16_t* xq, const float* xs, int64_t K, int group, float* out) {
    for (int64_t g = 0; g < K / group; ++g) {
        int32_t sum = 0;
        for (int i = 0; i < group; ++i) sum += xq[g * group + i];
        out[g] = xs[g * group / kBlockElems] * float(sum);
    }
}

// F::dot_i16<TT>(block, b, tokens, acc, mins) adds block b's scaled integer dots to acc[t][0/1]
// (F::dot_pair_i16, where F::kPairs, blocks b and b + 1 against the paired activations;
// F::dot_quad_i16 blocks b .. b + 3 as two such pairs, on acc[0] and acc[1]; where F::kQuads,
// AVX2, four blocks against the natural activations)
// (K-quants alternate between the two, the 32-element formats use acc[t][0]) and writes its offsets m (element = s * q - m) to
// mins[b * kElems / kMinGroup ..]; the row then subtracts mins · (activation sums per group).
template <class F, int TT>
void quant_rows_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    using namespace words;
    const Matrix& W = *a.W;
    const int64_t nb = W.cols / F::kElems, ldxs = a.ldx / kBlockElems;
    const int64_t ng = F::kMinGroup ? W.cols / F::kMinGroup : 0;
    thread_local std::vector<float> scratch;
    scratch.resize(size_t((TT + 1) * ng));
    float* mins = scratch.data();
    float* x_sum = mins + ng;  // [TT][ng]
    Tokens<TT> x, paired;  // paired: rearranged for F::dot_pair_i16 (two blocks per call)
    for (int t = 0; t < TT; ++t) {
        x.q[t] = a.x_i16 + t * a.ldx;
        x.s[t] = a.x_i16_scale + t * ldxs;
        if (F::kMinGroup) activation_group_sums(x.q[t], x.s[t], W.cols, F::kMinGroup, x_sum + t * ng);
    }
    if constexpr (F::kPairs) {
        thread_local std::vector<int16_t> arranged;
        arranged.resize(size_t(TT * W.cols));
        for (int t = 0; t < TT; ++t) {
            pair_activations(x.q[t], W.cols, arranged.data() + t * W.cols);
            paired.q[t] = arranged.data() + t * W.cols;
            paired.s[t] = x.s[t];
        }
    }
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = W.row(a.mat, r);
        // Blocks in pairs, each on its own accumulators: the FMA chains of neighbouring blocks
        // overlap (the index must be a constant: an array indexed at run time lives in memory).
        Acc acc[2][TT][2];
        for (int t = 0; t < TT; ++t) acc[0][t][0] = acc[0][t][1] = acc[1][t][0] = acc[1][t][1] = zero();
        int64_t b = 0;
        if constexpr (F::kPairs) {
            for (; b + 8 <= nb; b += 8) {
                prefetch_step<8 * F::kBytes>(row + b * F::kBytes);
                F::template dot_quad_i16<TT>(row + b * F::kBytes, b, paired, acc, mins);
                F::template dot_quad_i16<TT>(row + (b + 4) * F::kBytes, b + 4, paired, acc, mins);
            }
            if (b + 4 <= nb) {
                prefetch_step<4 * F::kBytes>(row + b * F::kBytes);
                F::template dot_quad_i16<TT>(row + b * F::kBytes, b, paired, acc, mins);
                b += 4;
            }
            if (b + 2 <= nb) {
                F::template dot_pair_i16<TT>(row + b * F::kBytes, b, paired, acc[0], mins);
                b += 2;
            }
        } else if constexpr (F::kQuads) {
            for (; b + 4 <= nb; b += 4) {
                prefetch_step<4 * F::kBytes>(row + b * F::kBytes);
                F::template dot_quad_i16<TT>(row + b * F::kBytes, b, x, acc, mins);
            }
        }
        for (; b + 2 <= nb; b += 2) {
            prefetch_step<2 * F::kBytes>(row + b * F::kBytes);
            F::template dot_i16<TT>(row + b * F::kBytes, b, x, acc[0], mins);
            F::template dot_i16<TT>(row + (b + 1) * F::kBytes, b + 1, x, acc[1], mins);
        }
        if (b < nb) F::template dot_i16<TT>(row + b * F::kBytes, b, x, acc[0], mins);
        const float bias = a.bias ? a.bias[r] : 0.0f;
        for (int t = 0; t < TT; ++t) {
            const float offset = F::kMinGroup ? dot(mins, x_sum + t * ng, ng) : 0.0f;
            const float sum = reduce(acc[0][t][0] + acc[1][t][0]) + reduce(acc[0][t][1] + acc[1][t][1]);
            a.y[t * a.ldy + r] = sum - offset + bias;
        }
    }
}
OSSRUN_I16_END
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
