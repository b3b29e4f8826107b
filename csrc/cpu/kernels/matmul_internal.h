// Internal to the matmul kernels (compiled once per ISA): exact block decoders for the stored
// weight types (MODEL.md §3.3, §4.3), the shared constants, and the GEMV / GEMM entry points
// that matmul.cpp dispatches to (gemv.cpp: few tokens, gemm.cpp: many).
#pragma once
#include <algorithm>
#include <type_traits>
#include <vector>

#include "../../kernels.h"
#include "../../numerics.h"
#include "../simd.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace ossrun::OSSRUN_ISA_NS {

constexpr int kTileTokens = 4;  // below this many tokens a matmul is a GEMV
constexpr int kPanelRows = 4;   // weight rows decoded together
constexpr int64_t kTokenBlock = 64;  // activations of a block stay in L2 while panels stream by

// Decode streams every weight once from a memory map of 4 KiB pages, where the hardware
// prefetchers stop, so the GEMV loops ask for the bytes two pages ahead themselves, into L2
// (whose queue holds more misses than L1's fill buffers), one cache line per line consumed.
// Measured here: a whole row prefetched at its start made the MXFP4 GEMV 15-25 % slower, and one
// page ahead into L1 cost decode ~7 %. Prefetches never fault: running past the matrix is harmless.
// The one exception, chosen per CPU (cpu_tuning.h): the VBMI MXFP4 GEMV on Zen 4, which fetches
// into L1 4 KiB ahead (PrefetchL1Near below).
constexpr size_t kPrefetchAhead = 8192;

inline void prefetch_ahead(const uint8_t* p) { __builtin_prefetch(p + kPrefetchAhead, 0, 2); }

// The two policies of the VBMI MXFP4 GEMV (cpu_tuning.h), as types its loops are instantiated for.
struct PrefetchL2Far {
    static void at(const uint8_t* p) { prefetch_ahead(p); }
};
struct PrefetchL1Near {
    static void at(const uint8_t* p) { __builtin_prefetch(p + 4096, 0, 3); }
};

// Twice the e2m1 values (-12..12) as int16, twice over: the MXFP4 int16 kernels' word table,
// which vpermw (5 index bits) reads with no mask on a code's low nibble.
alignas(64) inline constexpr int16_t kDoubledE2M1Words[32] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
                                                              0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// Runs f(std::integral_constant<int, n>{}) for n = count (1 <= count <= kMax): turns a tile's
// run-time token count into the compile-time one its micro-kernel is instantiated for.
template <int kMax, class F>
inline void with_tile_tokens(int64_t count, F&& f) {
    if constexpr (kMax > 1) {
        if (count < kMax) return with_tile_tokens<kMax - 1>(count, f);
    }
    f(std::integral_constant<int, kMax>{});
}


inline float q8_0_scale(const uint8_t* blk) {
    uint16_t d_bits;
    std::memcpy(&d_bits, blk, 2);
#if defined(__F16C__)
    return _cvtsh_ss(d_bits);  // hardware conversion, subnormals included
#else
    return fp16_to_float(d_bits);
#endif
}

// One MXFP4 block (GGUF split order: byte k holds elements k and k + 16) -> 32 floats.
inline void decode_mxfp4_block(const uint8_t* blk, float* out) {
    const float scale = e8m0_to_float(blk[0]);
    const uint8_t* qs = blk + 1;
#if defined(__AVX512F__)
    // 16-entry table lookup with a lane permute; the scale multiply is exact (power of two).
    const __m512 table = _mm512_mul_ps(_mm512_loadu_ps(kE2M1), _mm512_set1_ps(scale));
    const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
    const __m512i lo = _mm512_and_si512(codes, _mm512_set1_epi32(0xF));
    const __m512i hi = _mm512_srli_epi32(codes, 4);
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(lo, table));
    _mm512_storeu_ps(out + 16, _mm512_permutexvar_ps(hi, table));
#elif defined(__AVX2__)
    // 8-entry magnitude table (permutevar8x32 uses the low 3 bits); bit 3 becomes the sign bit.
    const __m256 mags = _mm256_mul_ps(_mm256_loadu_ps(kE2M1), _mm256_set1_ps(scale));
    for (int half = 0; half < 2; ++half) {
        const __m256i codes = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 8 * half)));
        const __m256i lo = _mm256_and_si256(codes, _mm256_set1_epi32(0xF));
        const __m256i hi = _mm256_srli_epi32(codes, 4);
        const __m256i sign_lo = _mm256_slli_epi32(_mm256_and_si256(lo, _mm256_set1_epi32(8)), 28);
        const __m256i sign_hi = _mm256_slli_epi32(_mm256_and_si256(hi, _mm256_set1_epi32(8)), 28);
        const __m256 v_lo = _mm256_xor_ps(_mm256_permutevar8x32_ps(mags, lo), _mm256_castsi256_ps(sign_lo));
        const __m256 v_hi = _mm256_xor_ps(_mm256_permutevar8x32_ps(mags, hi), _mm256_castsi256_ps(sign_hi));
        _mm256_storeu_ps(out + 8 * half, v_lo);
        _mm256_storeu_ps(out + 16 + 8 * half, v_hi);
    }
#else
    float table[16];
    for (int i = 0; i < 16; ++i) table[i] = kE2M1[i] * scale;
    for (int k = 0; k < 16; ++k) {
        out[k] = table[qs[k] & 0xF];
        out[k + 16] = table[qs[k] >> 4];
    }
#endif
}

inline void decode_q8_0_block(const uint8_t* blk, float* out) {
    const float d = q8_0_scale(blk);
    const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
    for (int i = 0; i < kBlockElems; ++i) out[i] = d * float(q[i]);
}

// The dense quants, one source per family (quant_legacy.cpp: 32-element blocks, quant_k.cpp:
// 256-element K-quants). Each returns false when the type is not of its family.
bool decode_legacy_quant_row(DType t, const uint8_t* row, int64_t cols, float* out);
bool decode_k_quant_row(DType t, const uint8_t* row, int64_t cols, float* out);
bool gemv_legacy_quant(const MatmulArgs& a, int64_t r0, int64_t r1);  // few tokens (< kTileTokens)
bool gemv_k_quant(const MatmulArgs& a, int64_t r0, int64_t r1);

inline void decode_row_bytes(const Matrix& W, const uint8_t* src, float* out) {
    const int64_t n = W.cols;
    switch (W.type) {
        case DType::F32: std::memcpy(out, src, size_t(n) * 4); break;
        case DType::BF16:
            for (int64_t i = 0; i < n; ++i) {
                uint16_t b;
                std::memcpy(&b, src + 2 * i, 2);
                out[i] = bf16_to_float(b);
            }
            break;
        case DType::F16: {
            int64_t i = 0;
#if defined(__F16C__)
            for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(
                                              reinterpret_cast<const __m128i*>(src + 2 * i))));
#endif
            for (; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, src + 2 * i, 2);
                out[i] = fp16_to_float(h);
            }
            break;
        }
        case DType::Q8_0:
            for (int64_t b = 0; b < n / kBlockElems; ++b)
                decode_q8_0_block(src + b * kQ8BlockBytes, out + b * kBlockElems);
            break;
        case DType::MXFP4:
            for (int64_t b = 0; b < n / kBlockElems; ++b)
                decode_mxfp4_block(src + b * kMxfp4BlockBytes, out + b * kBlockElems);
            break;
        default:
            if (!decode_legacy_quant_row(W.type, src, n, out)) decode_k_quant_row(W.type, src, n, out);
            break;
    }
}

inline float dot(const float* a, const float* b, int64_t n) {
    vfloat acc0 = {}, acc1 = {};
    int64_t i = 0;
    for (; i + 2 * kVW <= n; i += 2 * kVW) {
        acc0 += vload(a + i) * vload(b + i);
        acc1 += vload(a + i + kVW) * vload(b + i + kVW);
    }
    float s = hsum(acc0 + acc1);
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

// Scratch rows reused by each thread: no allocation once warm.
inline float* row_scratch(int64_t n) {
    thread_local std::vector<float> buf;
    if (int64_t(buf.size()) < n) buf.resize(size_t(n));
    return buf.data();
}

// Few tokens: every weight is decoded in registers and used at once (gemv.cpp).
void gemv(const MatmulArgs& a, int64_t r0, int64_t r1);
// Many tokens: panels of decoded rows reused across tiles of tokens (gemm.cpp).
void gemm(const MatmulArgs& a, int64_t r0, int64_t r1);

// Fast precision: int16 activations (only reached where quantize_i16 is non-null).
#if defined(__AVX512F__)
// Up to this many tokens, AVX-512's int16 GEMVs beat the GEMM (decode batches of a few sequences).
constexpr int kGemvI16MaxTokens = 8;
#endif
#if defined(__AVX512F__)
// ---- Fast decode on AVX-512: int16 activations x Q8_0 (gemv_q8_0_i16_avx512.cpp) or MXFP4
// (gemv_mxfp4_i16_avx512.cpp) weights, AVX512-VNNI vpdpwssd.
#define OSSRUN_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")))

// One token (decode of one sequence) or a few (a decode batch, one per sequence of a step, or an
// expert's routed tokens) take the same loops. Each weight block is loaded and widened once for
// up to 4 tokens, and the per-token work is cut down by laying several blocks into one vector.
// A token's arithmetic does not depend on how many tokens share the pass, so a row gives each
// token the same result in a batch as alone.

// Rows r0..r1 for every token, in groups of up to 4 tokens per pass over the rows (their re-laid
// activations, 4 x 11.5 KiB at 2880 columns, stay in L1 beside the streaming weights; 8 did not).
// With more than one group the rows go in chunks of 32, every group per chunk, so the second
// group reads the chunk from L2 rather than the whole range again from memory.
// acts = the re-laid activations of all tokens (with .from(t0)).
template <class Acts, class Rows>
OSSRUN_VNNI void gemv_i16_groups(const MatmulArgs& a, int64_t r0, int64_t r1, const Acts& acts, Rows rows,
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

// Rows interleaved 16 at a time (q8_0_interleave.h, mxfp4_interleave.h): the lanes of group g
// whose rows lie in [r0, r1), and the store of nt tokens' sums (acc[t], lane j = row 16g + j)
// plus the bias to those rows only.
inline __mmask16 group_lanes_in(int64_t g, int64_t r0, int64_t r1) {
    const int64_t lo = std::max<int64_t>(0, r0 - g * kInterleaveRows);
    const int64_t hi = std::min<int64_t>(kInterleaveRows, r1 - g * kInterleaveRows);
    return hi > lo ? __mmask16(((1u << hi) - 1u) & ~((1u << lo) - 1u)) : __mmask16(0);
}

OSSRUN_VNNI inline void store_group_lanes(const MatmulArgs& a, int64_t g, int64_t r0, int64_t r1, const __m512* acc,
                                          int nt) {
    const int64_t row0 = g * kInterleaveRows;
    const __mmask16 m = group_lanes_in(g, r0, r1);
    const __m512 bias = a.bias ? _mm512_maskz_loadu_ps(m, a.bias + row0) : _mm512_setzero_ps();
    for (int t = 0; t < nt; ++t) _mm512_mask_storeu_ps(a.y + t * a.ldy + row0, m, _mm512_add_ps(acc[t], bias));
}
#endif

#if defined(__AVX512F__) || defined(__AVX2__)
// AVX-512 (1-8 tokens): gemv_q8_0_i16_avx512.cpp, gemv_mxfp4_i16_avx512.cpp; AVX2 (1-3): gemv_i16.cpp.
void gemv_q8_0_i16(const MatmulArgs& a, int64_t r0, int64_t r1);
#if defined(__AVX512F__)
void gemv_q8_0x16_i16(const MatmulArgs& a, int64_t r0, int64_t r1);    // interleaved rows: gemv_q8_0x16_avx512.cpp
void gemv_mxfp4x16_i16(const MatmulArgs& a, int64_t r0, int64_t r1);  // and gemv_mxfp4x16_avx512.cpp
#endif
void gemv_mxfp4_i16(const MatmulArgs& a, int64_t r0, int64_t r1);
void gemm_i16(const MatmulArgs& a, int64_t r0, int64_t r1);         // gemm_i16.cpp
#endif

}  // namespace ossrun::OSSRUN_ISA_NS
