// The fast precision's int16 activations: their quantization, and the prefill GEMM of MXFP4 and
// Q8_0 weights against them (AVX512-VNNI `vpdpwssd`, 16 rows per vector; AVX2 `vpmaddwd`, 8).
//
// Each 32-element block of activations is an int16 vector with one float scale (quantize_i16:
// 2^-16 of the block's largest value is lost), and each weight block is an exact small integer
// with one scale (MXFP4: twice the e2m1 value, -12..12, and half the block's power of two; Q8_0:
// the int8 and its fp16 scale). A block's dot product is then exact in int32, and one float
// step per block applies both scales.
//
// Layout: a panel's weight rows sit in the vector lanes (AVX-512: two vectors of 16 rows; AVX2:
// one of 8), so one `vpdpwssd` multiplies 16 rows by the same 2 activations (a broadcast, shared
// by both vectors) and each 32-element block ends in a vector of 16 row sums: the per-block
// scale step costs 3 instructions per 16 x 32 products instead of a horizontal reduction per
// row. The panel is built once (MXFP4: row loads and word permutes; Q8_0: gathers of each row's
// bytes) and is reused for every token of the matmul, a few tokens at a time.
#include <utility>

#include "matmul_internal.h"

namespace ossrun::OSSRUN_ISA_NS {

#if defined(__AVX512F__)
#define OSSRUN_VNNI_GEMM __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")))

OSSRUN_VNNI_GEMM void quantize_i16_impl(const float* x, int64_t n, int16_t* q, float* scale) {
    for (int64_t b = 0; b < n / kBlockElems; ++b) {
        const __m512 x0 = _mm512_loadu_ps(x + b * kBlockElems), x1 = _mm512_loadu_ps(x + b * kBlockElems + 16);
        const float m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        const float d = m / 32767.0f, inv = m > 0.0f ? 32767.0f / m : 0.0f;
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, _mm512_set1_ps(inv)));  // nearest
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, _mm512_set1_ps(inv)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * kBlockElems), _mm512_cvtsepi32_epi16(q0));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * kBlockElems + 16), _mm512_cvtsepi32_epi16(q1));
        scale[b] = d;
    }
}

namespace {

constexpr int kLanes = 16;            // weight rows per vector (one zmm of int32 / float)
constexpr int kHalves = 2;            // vectors of rows per panel: 32 rows share each broadcast
constexpr int kPairsPerBlock = 16;    // int16 pairs per 32-element block
constexpr int kMaxTileTokens = 6;     // 2 x 6 int32 + 2 x 6 float accumulators in registers

struct Panel {
    // Block b, half h: pairs[(b * 16 + p) * 2 + h] lane i = (w[16h + i][32b + 2p], .. + 1), and
    // scale[(b * 2 + h) * 16 + i].
    std::vector<__m512i> pairs;
    std::vector<float> scale;
};

// Byte offsets of the panel's rows from the first; rows past `R` repeat row 0 (masked off later).
OSSRUN_VNNI_GEMM inline __m512i row_offsets(const Matrix& W, int64_t R) {
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i off = _mm512_mullo_epi32(lane, _mm512_set1_epi32(int32_t(W.row_bytes)));
    return _mm512_maskz_mov_epi32(__mmask16((1u << R) - 1u), off);
}

// The 16 rows' first bytes of block b, one pointer per lane (rows past `R` repeat row 0).
struct RowPointers {
    const uint8_t* p[kLanes];
    RowPointers(const Matrix& W, const uint8_t* row0, int64_t R) {
        for (int i = 0; i < kLanes; ++i) p[i] = row0 + (i < R ? size_t(i) * W.row_bytes : 0);
    }
};

// Four rows' 16 bytes at `off` past each pointer, one row per 128-bit lane.
OSSRUN_VNNI_GEMM inline __m512i load_4x16(const RowPointers& rp, int first, size_t off) {
    const __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rp.p[first] + off)));
    const __m512i a = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rp.p[first + 1] + off)), 1);
    const __m512i b = _mm512_inserti32x4(a, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rp.p[first + 2] + off)), 2);
    return _mm512_inserti32x4(b, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rp.p[first + 3] + off)), 3);
}

// Word indices for the two-stage word transpose of 16 rows x 8 words (pack_mxfp4). Stage 1
// merges rows 0-7 (or 8-15) held 4 per vector into words 4s..4s+3 of 8 rows: out word 8k + r =
// row r, word 4s + k. Stage 2 merges both halves of rows: out word 16h + i = row i, word 2q + h.
struct TransposeIndex {
    alignas(64) int16_t stage1[2][32], stage2[2][32];
    constexpr TransposeIndex() : stage1(), stage2() {
        for (int s = 0; s < 2; ++s)
            for (int k = 0; k < 4; ++k)
                for (int r = 0; r < 8; ++r) stage1[s][8 * k + r] = int16_t((r >= 4 ? 32 : 0) + 8 * (r % 4) + 4 * s + k);
        for (int odd = 0; odd < 2; ++odd)
            for (int h = 0; h < 2; ++h)
                for (int i = 0; i < 16; ++i) stage2[odd][16 * h + i] = int16_t((i >= 8 ? 32 : 0) + 8 * (2 * odd + h) + i % 8);
    }
};
constexpr TransposeIndex kTranspose{};

// MXFP4 rows -> the panel without gathers for the codes: each row's 16 code bytes of a block are
// one load, two rounds of word permutes (vpermt2w) turn 16 rows x 8 byte pairs into 8 vectors of
// one byte pair across the 16 rows, and each byte pair widens to the int16 pairs of its low and
// of its high nibbles through a table permute. Measured here (tools/bench_prefill_gemm.py, one
// thread): an expert's 2880 x 2880 matrix against 32 tokens, 1.55 ms, 1.86 ms with the codes gathered.
OSSRUN_VNNI_GEMM void pack_mxfp4(const Matrix& W, const uint8_t* row0, int64_t R, Panel& P, int h) {
    const int64_t nb = W.cols / kBlockElems;
    const __m512i off = row_offsets(W, R);
    const RowPointers rp(W, row0, R);
    const __m512i table = _mm512_load_si512(kDoubledE2M1Words);
    const __m512i s1a = _mm512_load_si512(kTranspose.stage1[0]), s1b = _mm512_load_si512(kTranspose.stage1[1]);
    const __m512i s2a = _mm512_load_si512(kTranspose.stage2[0]), s2b = _mm512_load_si512(kTranspose.stage2[1]);
    const float* half = e8m0_half_table();
    for (int64_t b = 0; b < nb; ++b) {
        const size_t at = size_t(b) * kMxfp4BlockBytes;
        const __m512i e = _mm512_and_si512(_mm512_i32gather_epi32(off, row0 + at, 1), _mm512_set1_epi32(0xFF));
        _mm512_storeu_ps(P.scale.data() + (b * kHalves + h) * kLanes, _mm512_i32gather_ps(e, half, 4));
        // Word k of a row holds code bytes 2k, 2k + 1: elements 2k, 2k + 1 (low nibbles) and
        // 16 + 2k, 17 + 2k (high nibbles).
        const __m512i z0 = load_4x16(rp, 0, at + 1), z1 = load_4x16(rp, 4, at + 1);
        const __m512i z2 = load_4x16(rp, 8, at + 1), z3 = load_4x16(rp, 12, at + 1);
        const __m512i rows_0_7[2] = {_mm512_permutex2var_epi16(z0, s1a, z1), _mm512_permutex2var_epi16(z0, s1b, z1)};
        const __m512i rows_8_15[2] = {_mm512_permutex2var_epi16(z2, s1a, z3), _mm512_permutex2var_epi16(z2, s1b, z3)};
        __m512i* out = P.pairs.data() + b * kPairsPerBlock * kHalves + h;
        for (int q = 0; q < 4; ++q) {
            // Lower half: byte pair 2q of rows 0-15; upper half: byte pair 2q + 1.
            const __m512i o = _mm512_permutex2var_epi16(rows_0_7[q / 2], q % 2 ? s2b : s2a, rows_8_15[q / 2]);
            for (int j = 0; j < 2; ++j) {
                const int k = 2 * q + j;
                const __m512i bytes = _mm512_cvtepu8_epi16(j ? _mm512_extracti64x4_epi64(o, 1) : _mm512_castsi512_si256(o));
                out[kHalves * k] = _mm512_permutexvar_epi16(bytes, table);  // index bits 0-4: bit 4 repeats the table
                out[kHalves * (8 + k)] = _mm512_permutexvar_epi16(_mm512_srli_epi16(bytes, 4), table);
            }
        }
    }
}

OSSRUN_VNNI_GEMM void pack_q8_0(const Matrix& W, const uint8_t* row0, int64_t R, Panel& P, int h) {
    const int64_t nb = W.cols / kBlockElems;
    const __m512i off = row_offsets(W, R);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row0 + b * kQ8BlockBytes;
        const __m512i d = _mm512_i32gather_epi32(off, blk, 1);  // low 16 bits: the fp16 scale
        _mm512_storeu_ps(P.scale.data() + (b * kHalves + h) * kLanes, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(d)));
        __m512i* out = P.pairs.data() + b * kPairsPerBlock * kHalves + h;
        for (int g = 0; g < 8; ++g) {
            const __m512i q = _mm512_i32gather_epi32(off, blk + 2 + 4 * g, 1);  // 4 int8 per row
            const __m512i even = _mm512_srai_epi16(_mm512_slli_epi16(q, 8), 8);  // bytes 0, 2
            const __m512i odd = _mm512_srai_epi16(q, 8);                         // bytes 1, 3
            out[kHalves * (2 * g)] = _mm512_mask_blend_epi16(0xAAAAAAAAu, even, _mm512_slli_epi32(odd, 16));
            out[kHalves * (2 * g + 1)] = _mm512_mask_blend_epi16(0xAAAAAAAAu, _mm512_srli_epi32(even, 16), odd);
        }
    }
}

// A 16-row group of interleaved Q8_0 (RowLayout::kQ8_0x16, q8_0_interleave.h) is a panel half
// as it lies: chunk p of block b widens to pair vector p, and the 16 scales are one load.
OSSRUN_VNNI_GEMM void pack_q8_0x16(const Matrix& W, const uint8_t* group, Panel& P, int h) {
    const int64_t nb = W.cols / kBlockElems;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = group + b * kQ8GroupBlockBytes;
        _mm512_storeu_ps(P.scale.data() + (b * kHalves + h) * kLanes,
                         _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk))));
        __m512i* out = P.pairs.data() + b * kPairsPerBlock * kHalves + h;
        for (int p = 0; p < kPairsPerBlock; ++p)
            out[kHalves * p] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 32 + 32 * p)));
    }
}

// A 16-row group of interleaved MXFP4 (RowLayout::kMxfp4x16, mxfp4_interleave.h): chunk k of
// block b widens to words, whose low and high nibbles through the table are pair vectors k and
// 8 + k (pack_mxfp4's, bit for bit); the 16 scale bytes index the halved E8M0 table.
OSSRUN_VNNI_GEMM void pack_mxfp4x16(const Matrix& W, const uint8_t* group, Panel& P, int h) {
    const int64_t nb = W.cols / kBlockElems;
    const __m512i table = _mm512_load_si512(kDoubledE2M1Words);
    const float* half = e8m0_half_table();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = group + b * kMxfp4GroupBlockBytes;
        const __m512i e = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
        _mm512_storeu_ps(P.scale.data() + (b * kHalves + h) * kLanes, _mm512_i32gather_ps(e, half, 4));
        __m512i* out = P.pairs.data() + b * kPairsPerBlock * kHalves + h;
        for (int k = 0; k < 8; ++k) {
            const __m512i codes = _mm512_cvtepu8_epi16(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + kInterleaveRows + 32 * k)));
            out[kHalves * k] = _mm512_permutexvar_epi16(codes, table);
            out[kHalves * (8 + k)] = _mm512_permutexvar_epi16(_mm512_srli_epi16(codes, 4), table);
        }
    }
}

// out[h][j] (rows 16h.. of token j) = sum over blocks of (int dot) * weight scale * activation
// scale. Each broadcast activation pair feeds both halves; each weight load feeds TT tokens.
// One activation pair of a block against both halves of the panel, for tokens J... (fold
// expressions: GCC leaves a `#pragma unroll` loop rolled past ~6 tokens). The block's first pair
// starts the sums with `vpmaddwd` (no zeroed registers to copy in).
template <bool kFirst, int... J>
OSSRUN_VNNI_GEMM inline void pair_dots(__m512i w0, __m512i w1, const int32_t* xt_p, __m512i* dot0, __m512i* dot1,
                                       std::integer_sequence<int, J...>) {
    if constexpr (kFirst) {
        ((dot0[J] = _mm512_madd_epi16(w0, _mm512_set1_epi32(xt_p[J * kPairsPerBlock])),
          dot1[J] = _mm512_madd_epi16(w1, _mm512_set1_epi32(xt_p[J * kPairsPerBlock]))), ...);
    } else {
        ((dot0[J] = _mm512_dpwssd_epi32(dot0[J], w0, _mm512_set1_epi32(xt_p[J * kPairsPerBlock])),
          dot1[J] = _mm512_dpwssd_epi32(dot1[J], w1, _mm512_set1_epi32(xt_p[J * kPairsPerBlock]))), ...);
    }
}

template <int TT, int... Ps>
OSSRUN_VNNI_GEMM inline void block_dots(const __m512i* w, const int32_t* xt, __m512i* dot0, __m512i* dot1,
                                        std::integer_sequence<int, Ps...>) {
    (pair_dots<Ps == 0>(_mm512_load_si512(w + kHalves * Ps), _mm512_load_si512(w + kHalves * Ps + 1), xt + Ps,
                        dot0, dot1, std::make_integer_sequence<int, TT>{}), ...);
}

template <int TT>
OSSRUN_VNNI_GEMM inline void tile(const Panel& P, int64_t nb, const int16_t* x, int64_t ldx,
                                  const float* xs, int64_t ldxs, __m512 out[kHalves][kMaxTileTokens]) {
    __m512 acc0[TT], acc1[TT];
    for (int j = 0; j < TT; ++j) acc0[j] = acc1[j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const __m512i* w = P.pairs.data() + b * kPairsPerBlock * kHalves;
        // The tile's activations of this block side by side: every broadcast below is then one
        // base register plus a constant (strided rows needed a register per token, and spilled).
        alignas(64) int32_t xt[TT][kPairsPerBlock];
        for (int j = 0; j < TT; ++j)
            _mm512_store_si512(xt[j], _mm512_loadu_si512(x + j * ldx + b * kBlockElems));
        __m512i dot0[TT], dot1[TT];
        block_dots<TT>(w, &xt[0][0], dot0, dot1, std::make_integer_sequence<int, kPairsPerBlock>{});
        const __m512 ws0 = _mm512_loadu_ps(P.scale.data() + b * kHalves * kLanes);
        const __m512 ws1 = _mm512_loadu_ps(P.scale.data() + (b * kHalves + 1) * kLanes);
        for (int j = 0; j < TT; ++j) {
            const __m512 xsj = _mm512_set1_ps(xs[j * ldxs + b]);
            acc0[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot0[j]), _mm512_mul_ps(ws0, xsj), acc0[j]);
            acc1[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot1[j]), _mm512_mul_ps(ws1, xsj), acc1[j]);
        }
    }
    for (int j = 0; j < TT; ++j) out[0][j] = acc0[j], out[1][j] = acc1[j];
}

}  // namespace

OSSRUN_VNNI_GEMM void gemm_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const Matrix& W = *a.W;
    const int64_t nb = W.cols / kBlockElems, ldxs = a.ldx / kBlockElems;
    constexpr int64_t kPanelRows = kLanes * kHalves;
    thread_local Panel P;
    if (int64_t(P.scale.size()) < nb * kPanelRows) {
        P.pairs.resize(size_t(nb * kPairsPerBlock * kHalves));
        P.scale.resize(size_t(nb * kPanelRows));
    }
    // Interleaved rows go by whole groups from the one holding r0; lanes outside [r0, r1) are
    // computed and not stored.
    const bool groups = W.layout != RowLayout::kRows;
    for (int64_t r = groups ? r0 / kLanes * kLanes : r0; r < r1; r += kPanelRows) {
        __mmask16 rows[kHalves];
        __m512 bias[kHalves];
        for (int h = 0; h < kHalves; ++h) {
            const int64_t lo = std::clamp<int64_t>(r0 - r - h * kLanes, 0, kLanes);
            const int64_t hi = std::clamp<int64_t>(r1 - r - h * kLanes, 0, kLanes);
            rows[h] = hi > lo ? __mmask16(((1u << hi) - 1u) & ~((1u << lo) - 1u)) : __mmask16(0);
            // A half past the last row repeats the panel's first rows (read, never stored).
            const int64_t first_row = hi > lo ? r + h * kLanes : r;
            if (W.layout == RowLayout::kQ8_0x16) pack_q8_0x16(W, W.group_block(a.mat, first_row / kLanes, 0), P, h);
            else if (W.layout == RowLayout::kMxfp4x16) pack_mxfp4x16(W, W.group_block(a.mat, first_row / kLanes, 0), P, h);
            else if (W.type == DType::MXFP4) pack_mxfp4(W, W.row(a.mat, first_row), hi, P, h);
            else pack_q8_0(W, W.row(a.mat, first_row), hi, P, h);
            bias[h] = a.bias && hi > lo ? _mm512_maskz_loadu_ps(rows[h], a.bias + r + h * kLanes) : _mm512_setzero_ps();
        }
        // Tiles of as equal a size as the token count allows (32 tokens: 6, 6, 5, 5, 5, 5, not
        // 6 x 5 + 2): a small tail tile loads each weight vector for only a few products.
        const int64_t n_tiles = (a.n_tok + kMaxTileTokens - 1) / kMaxTileTokens;
        for (int64_t i = 0, t = 0; i < n_tiles; ++i) {
            const int64_t TT = a.n_tok / n_tiles + (i < a.n_tok % n_tiles ? 1 : 0);
            __m512 out[kHalves][kMaxTileTokens];
            const int16_t* x = a.x_i16 + t * a.ldx;
            const float* xs = a.x_i16_scale + t * ldxs;
            with_tile_tokens<kMaxTileTokens>(TT, [&](auto n) { tile<n>(P, nb, x, a.ldx, xs, ldxs, out); });
            for (int h = 0; h < kHalves; ++h)
                for (int64_t j = 0; j < TT; ++j)
                    _mm512_mask_storeu_ps(a.y + (t + j) * a.ldy + r + h * kLanes, rows[h], _mm512_add_ps(out[h][j], bias[h]));
            t += TT;
        }
    }
}

extern void (*const quantize_i16)(const float*, int64_t, int16_t*, float*) =
    __builtin_cpu_supports("avx512vnni") ? quantize_i16_impl : nullptr;

#elif defined(__AVX2__)
// ---- AVX2: 8 rows per panel, `vpmaddwd` + `vpaddd` per pair of products (one `vpdpwssd` with
// AVX-VNNI, the avx2vnni variant). ------------------------------------------------------------

void quantize_i16_impl(const float* x, int64_t n, int16_t* q, float* scale) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (int64_t b = 0; b < n / kBlockElems; ++b) {
        const float* xb = x + b * kBlockElems;
        __m256 v[4];
        for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xb + 8 * i);
        __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask)),
                                  _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        const float m = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        const float d = m / 32767.0f, inv = m > 0.0f ? 32767.0f / m : 0.0f;  // as the AVX-512 path
        __m256i qi[4];
        for (int i = 0; i < 4; ++i) qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], _mm256_set1_ps(inv)));
        // packs works within 128-bit lanes; the permute restores element order.
        for (int h = 0; h < 2; ++h)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * kBlockElems + 16 * h),
                                _mm256_permute4x64_epi64(_mm256_packs_epi32(qi[2 * h], qi[2 * h + 1]), 0xD8));
        scale[b] = d;
    }
}

namespace {

constexpr int kLanes = 8;
constexpr int kPairsPerBlock = 16;
constexpr int kMaxTileTokens = 4;  // 16 ymm registers: 4 int + 4 float accumulators and temps

struct Panel {
    std::vector<__m256i> pairs;  // block b: pairs[b * 16 + p] lane i = (w[i][32b + 2p], w[i][32b + 2p + 1])
    std::vector<float> scale;    // block b: scale[b * 8 + i]
};

inline __m256i row_offsets(const Matrix& W, int64_t R) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i in_panel = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(R)), lane);
    return _mm256_and_si256(_mm256_mullo_epi32(lane, _mm256_set1_epi32(int32_t(W.row_bytes))), in_panel);
}

// Four int8 per lane -> int16 pairs (elements 0, 1) and (2, 3).
inline void widen_pairs(__m256i v, __m256i& p01, __m256i& p23) {
    const __m256i even = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8);  // bytes 0, 2
    const __m256i odd = _mm256_srai_epi16(v, 8);                         // bytes 1, 3
    p01 = _mm256_blend_epi16(even, _mm256_slli_epi32(odd, 16), 0xAA);
    p23 = _mm256_blend_epi16(_mm256_srli_epi32(even, 16), odd, 0xAA);
}

void pack_mxfp4(const Matrix& W, const uint8_t* row0, int64_t R, Panel& P) {
    const int64_t nb = W.cols / kBlockElems;
    const __m256i off = row_offsets(W, R);
    // Twice the e2m1 values as int8, for vpshufb (per 128-bit lane).
    const __m256i table = _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
                                           0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const float* half = e8m0_half_table();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row0 + b * kMxfp4BlockBytes;
        const __m256i e = _mm256_and_si256(_mm256_i32gather_epi32(reinterpret_cast<const int*>(blk), off, 1),
                                           _mm256_set1_epi32(0xFF));
        _mm256_storeu_ps(P.scale.data() + b * kLanes, _mm256_i32gather_ps(half, e, 4));
        __m256i* out = P.pairs.data() + b * kPairsPerBlock;
        for (int g = 0; g < 4; ++g) {
            // Bytes 4g..4g+3 of each row: elements 4g.. (low nibbles) and 16+4g.. (high).
            const __m256i q = _mm256_i32gather_epi32(reinterpret_cast<const int*>(blk + 1 + 4 * g), off, 1);
            const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(q, nibble));
            const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(q, 4), nibble));
            widen_pairs(lo, out[2 * g], out[2 * g + 1]);
            widen_pairs(hi, out[8 + 2 * g], out[8 + 2 * g + 1]);
        }
    }
}

void pack_q8_0(const Matrix& W, const uint8_t* row0, int64_t R, Panel& P) {
    const int64_t nb = W.cols / kBlockElems;
    const __m256i off = row_offsets(W, R);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row0 + b * kQ8BlockBytes;
        // Low 16 bits of each lane: the fp16 scale; packed to 8 halves in order, then widened.
        const __m256i d = _mm256_and_si256(_mm256_i32gather_epi32(reinterpret_cast<const int*>(blk), off, 1),
                                           _mm256_set1_epi32(0xFFFF));
        const __m256i halves = _mm256_permute4x64_epi64(_mm256_packus_epi32(d, d), 0x08);
        _mm256_storeu_ps(P.scale.data() + b * kLanes, _mm256_cvtph_ps(_mm256_castsi256_si128(halves)));
        __m256i* out = P.pairs.data() + b * kPairsPerBlock;
        for (int g = 0; g < 8; ++g)
            widen_pairs(_mm256_i32gather_epi32(reinterpret_cast<const int*>(blk + 2 + 4 * g), off, 1),
                        out[2 * g], out[2 * g + 1]);
    }
}

template <int TT>
inline void tile(const Panel& P, int64_t nb, const int16_t* x, int64_t ldx, const float* xs, int64_t ldxs,
                 __m256 out[TT]) {
    __m256 acc[TT];
    for (int j = 0; j < TT; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const __m256i* w = P.pairs.data() + b * kPairsPerBlock;
        const int16_t* xb = x + b * kBlockElems;
        __m256i dot[TT];
        for (int j = 0; j < TT; ++j) dot[j] = _mm256_setzero_si256();
        for (int p = 0; p < kPairsPerBlock; ++p) {
            const __m256i wp = _mm256_load_si256(w + p);
            for (int j = 0; j < TT; ++j) {
                int32_t pair;
                std::memcpy(&pair, xb + j * ldx + 2 * p, 4);
#if defined(__AVXVNNI__)
                dot[j] = _mm256_dpwssd_avx_epi32(dot[j], wp, _mm256_set1_epi32(pair));
#else
                dot[j] = _mm256_add_epi32(dot[j], _mm256_madd_epi16(wp, _mm256_set1_epi32(pair)));
#endif
            }
        }
        const __m256 ws = _mm256_loadu_ps(P.scale.data() + b * kLanes);
        for (int j = 0; j < TT; ++j)
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[j]), _mm256_mul_ps(ws, _mm256_set1_ps(xs[j * ldxs + b])),
                                     acc[j]);
    }
    for (int j = 0; j < TT; ++j) out[j] = acc[j];
}

}  // namespace

void gemm_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const Matrix& W = *a.W;
    const int64_t nb = W.cols / kBlockElems, ldxs = a.ldx / kBlockElems;
    thread_local Panel P;
    if (int64_t(P.scale.size()) < nb * kLanes) {
        P.pairs.resize(size_t(nb * kPairsPerBlock));
        P.scale.resize(size_t(nb * kLanes));
    }
    for (int64_t r = r0; r < r1; r += kLanes) {
        const int64_t R = std::min<int64_t>(kLanes, r1 - r);
        if (W.type == DType::MXFP4) pack_mxfp4(W, W.row(a.mat, r), R, P);
        else pack_q8_0(W, W.row(a.mat, r), R, P);
        const __m256i rows = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(R)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256 bias = a.bias ? _mm256_maskload_ps(a.bias + r, rows) : _mm256_setzero_ps();
        for (int64_t t = 0; t < a.n_tok; t += kMaxTileTokens) {
            const int64_t TT = std::min<int64_t>(kMaxTileTokens, a.n_tok - t);
            __m256 out[kMaxTileTokens];
            const int16_t* x = a.x_i16 + t * a.ldx;
            const float* xs = a.x_i16_scale + t * ldxs;
            with_tile_tokens<kMaxTileTokens>(TT, [&](auto n) { tile<n>(P, nb, x, a.ldx, xs, ldxs, out); });
            for (int64_t j = 0; j < TT; ++j)
                _mm256_maskstore_ps(a.y + (t + j) * a.ldy + r, rows, _mm256_add_ps(out[j], bias));
        }
    }
}

extern void (*const quantize_i16)(const float*, int64_t, int16_t*, float*) = quantize_i16_impl;
#else
extern void (*const quantize_i16)(const float*, int64_t, int16_t*, float*) = nullptr;
#endif

}  // namespace ossrun::OSSRUN_ISA_NS
