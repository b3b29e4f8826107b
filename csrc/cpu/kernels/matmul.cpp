// Weight-row decoding and float32 matmul for every stored type (MODEL.md §3, §4.3), compiled
// once per ISA. Exact path: each weight is decoded exactly to float32 and multiplied with float32
// activations, float32 accumulation. Shape contract in kernels.h (MatmulArgs).
#include <algorithm>
#include <vector>

#include "../../kernels.h"
#include "../../numerics.h"
#include "../simd.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace ossrun::OSSRUN_ISA_NS {

namespace {

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

inline float q8_0_scale(const uint8_t* blk);

inline void decode_q8_0_block(const uint8_t* blk, float* out) {
    const float d = q8_0_scale(blk);
    const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
    for (int i = 0; i < kBlockElems; ++i) out[i] = d * float(q[i]);
}

void decode_row_bytes(const Matrix& W, const uint8_t* src, float* out) {
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

// ---- Decode (few tokens): each weight row is decoded in registers and consumed at once. ----

inline float q8_0_scale(const uint8_t* blk) {
    uint16_t d_bits;
    std::memcpy(&d_bits, blk, 2);
#if defined(__F16C__)
    return _cvtsh_ss(d_bits);  // hardware conversion, subnormals included
#else
    return fp16_to_float(d_bits);
#endif
}

float dot_mxfp4_row(const uint8_t* row, const float* x, int64_t n) {
    const int64_t nb = n / kBlockElems;
#if defined(__AVX512F__)
    const __m512 table = _mm512_loadu_ps(kE2M1);
    const float* scales = e8m0_table();
    // acc += block b · x. The table is scaled by the block's power of two (exact), so each code
    // becomes its value in one permute; permutexvar reads only the low 4 bits of each index, so
    // the low nibble needs no mask.
    auto block = [&](int64_t b, __m512& acc) {
        const uint8_t* blk = row + b * kMxfp4BlockBytes;
        const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 1)));
        const __m512 t = _mm512_mul_ps(table, _mm512_set1_ps(scales[blk[0]]));
        const float* xb = x + b * kBlockElems;
        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(codes, t), _mm512_loadu_ps(xb), acc);
        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), t), _mm512_loadu_ps(xb + 16), acc);
    };
    // Four named accumulators: enough independent FMA chains, and no stack spills.
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        block(b, acc0);
        block(b + 1, acc1);
        block(b + 2, acc2);
        block(b + 3, acc3);
    }
    for (; b < nb; ++b) block(b, acc0);
    acc0 = _mm512_add_ps(acc0, acc2);
    acc1 = _mm512_add_ps(acc1, acc3);
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#elif defined(__AVX2__)
    const __m256 mags = _mm256_loadu_ps(kE2M1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * kMxfp4BlockBytes;
        const float* xb = x + b * kBlockElems;
        __m256 part = _mm256_setzero_ps();
        for (int half = 0; half < 2; ++half) {
            const __m256i codes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 1 + 8 * half)));
            const __m256i lo = _mm256_and_si256(codes, _mm256_set1_epi32(0xF));
            const __m256i hi = _mm256_srli_epi32(codes, 4);
            // permutevar8x32 reads the low 3 bits (magnitude); bit 3 moves to the float sign bit.
            const __m256 wl = _mm256_xor_ps(_mm256_permutevar8x32_ps(mags, lo),
                                            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(lo, _mm256_set1_epi32(8)), 28)));
            const __m256 wh = _mm256_xor_ps(_mm256_permutevar8x32_ps(mags, hi),
                                            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(hi, _mm256_set1_epi32(8)), 28)));
            part = _mm256_fmadd_ps(wl, _mm256_loadu_ps(xb + 8 * half), part);
            part = _mm256_fmadd_ps(wh, _mm256_loadu_ps(xb + 16 + 8 * half), part);
        }
        acc = _mm256_fmadd_ps(part, _mm256_set1_ps(e8m0_to_float(blk[0])), acc);
    }
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * kMxfp4BlockBytes;
        const float* xb = x + b * kBlockElems;
        float part = 0.0f;
        for (int k = 0; k < 16; ++k)
            part += kE2M1[blk[1 + k] & 0xF] * xb[k] + kE2M1[blk[1 + k] >> 4] * xb[k + 16];
        acc += part * e8m0_to_float(blk[0]);
    }
    return acc;
#endif
}

float dot_q8_0_row(const uint8_t* row, const float* x, int64_t n) {
    const int64_t nb = n / kBlockElems;
#if defined(__AVX512F__)
    auto block = [&](int64_t b) {
        const uint8_t* blk = row + b * kQ8BlockBytes;
        const float* xb = x + b * kBlockElems;
        const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2))));
        const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18))));
        const __m512 part = _mm512_fmadd_ps(q1, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(q0, _mm512_loadu_ps(xb)));
        return _mm512_mul_ps(part, _mm512_set1_ps(q8_0_scale(blk)));
    };
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        acc0 = _mm512_add_ps(acc0, block(b));
        acc1 = _mm512_add_ps(acc1, block(b + 1));
    }
    if (b < nb) acc0 = _mm512_add_ps(acc0, block(b));
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#elif defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * kQ8BlockBytes;
        const float* xb = x + b * kBlockElems;
        __m256 part = _mm256_setzero_ps();
        for (int j = 0; j < 4; ++j) {
            const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * j))));
            part = _mm256_fmadd_ps(q, _mm256_loadu_ps(xb + 8 * j), part);
        }
        acc = _mm256_fmadd_ps(part, _mm256_set1_ps(q8_0_scale(blk)), acc);
    }
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * kQ8BlockBytes;
        const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
        const float* xb = x + b * kBlockElems;
        float part = 0.0f;
        for (int k = 0; k < kBlockElems; ++k) part += float(q[k]) * xb[k];
        acc += part * q8_0_scale(blk);
    }
    return acc;
#endif
}

// Scratch rows reused by each thread: no allocation once warm.
float* row_scratch(int64_t n) {
    thread_local std::vector<float> buf;
    if (int64_t(buf.size()) < n) buf.resize(size_t(n));
    return buf.data();
}

float dot_row(const Matrix& W, const uint8_t* row, const float* x) {
    switch (W.type) {
        case DType::MXFP4: return dot_mxfp4_row(row, x, W.cols);
        case DType::Q8_0: return dot_q8_0_row(row, x, W.cols);
        case DType::F32: return dot(reinterpret_cast<const float*>(row), x, W.cols);
        default: {
            float* w = row_scratch(W.cols);
            decode_row_bytes(W, row, w);
            return dot(w, x, W.cols);
        }
    }
}

// Decode streams every weight once from a memory map of 4 KiB pages, where the hardware
// prefetchers stop; asking for the bytes 4 KiB ahead (into L1) raised one core's MXFP4 GEMV
// from ~5.9 to ~8.6 GB/s here. Prefetches never fault, so running past the matrix is harmless.
constexpr size_t kPrefetchAhead = 4096;

void gemv(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const Matrix& W = *a.W;
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = W.row(a.mat, r);
        for (size_t off = 0; off < W.row_bytes; off += 64) __builtin_prefetch(row + kPrefetchAhead + off, 0, 3);
        const float b = a.bias ? a.bias[r] : 0.0f;
        for (int64_t t = 0; t < a.n_tok; ++t) a.y[t * a.ldy + r] = dot_row(W, row, a.x + t * a.ldx) + b;
    }
}

// ---- Prefill (many tokens): decode a panel of rows once, reuse it across a tile of tokens. ----

constexpr int kPanelRows = 4;   // weight rows decoded together
constexpr int kTileTokens = 4;  // tokens per micro-kernel call
constexpr int64_t kTokenBlock = 64;  // activations of a block stay in L2 while panels stream by

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

}  // namespace

void decode_row(const Matrix& W, int64_t mat, int64_t r, float* out) {
    decode_row_bytes(W, W.row(mat, r), out);
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
    float block[kBlockElems];
    for (int64_t t0 = 0; t0 < a.n_tok; t0 += kTokenBlock) {
        const int64_t t1 = std::min(a.n_tok, t0 + kTokenBlock);
        for (int64_t r = r0; r < r1; r += kPanelRows) {
            const int64_t R = std::min<int64_t>(kPanelRows, r1 - r);
            for (int64_t i = 0; i < R; ++i) {
                const uint8_t* row = W.row(a.mat, r + i);
                for (int64_t b = 0; b < K / kBlockElems; ++b) {
                    decode_mxfp4_block(row + b * kMxfp4BlockBytes, block);
                    to_bf16_impl(block, kBlockElems, panel + i * K + b * kBlockElems);  // exact
                }
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

bool cpu_has_bf16() { return __builtin_cpu_supports("avx512bf16"); }

// ---- Fast decode: int16 activations x int8 Q8_0 weights (AVX512-VNNI vpdpwssd). ------------
#define OSSRUN_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")))

OSSRUN_VNNI void quantize_i16_impl(const float* x, int64_t n, int16_t* q, float* scale) {
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

// acc += one Q8_0 block · its int16 activations: an exact integer dot, then both scales.
OSSRUN_VNNI inline __m512 q8_0_i16_block(const uint8_t* blk, const int16_t* xq, float xs, __m512 acc) {
    const __m512i w = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2)));
    const __m512i dot = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w, _mm512_loadu_si512(xq));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(q8_0_scale(blk) * xs), acc);
}

OSSRUN_VNNI float dot_q8_0_i16_row(const uint8_t* row, const int16_t* xq, const float* xs, int64_t nb) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        acc0 = q8_0_i16_block(row + b * kQ8BlockBytes, xq + b * kBlockElems, xs[b], acc0);
        acc1 = q8_0_i16_block(row + (b + 1) * kQ8BlockBytes, xq + (b + 1) * kBlockElems, xs[b + 1], acc1);
    }
    if (b < nb) acc0 = q8_0_i16_block(row + b * kQ8BlockBytes, xq + b * kBlockElems, xs[b], acc0);
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

OSSRUN_VNNI void gemv_q8_0_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const Matrix& W = *a.W;
    const int64_t nb = W.cols / kBlockElems;
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = W.row(a.mat, r);
        for (size_t off = 0; off < W.row_bytes; off += 64) __builtin_prefetch(row + kPrefetchAhead + off, 0, 3);
        const float b = a.bias ? a.bias[r] : 0.0f;
        for (int64_t t = 0; t < a.n_tok; ++t)
            a.y[t * a.ldy + r] = dot_q8_0_i16_row(row, a.x_i16 + t * a.ldx, a.x_i16_scale + t * nb, nb) + b;
    }
}

bool cpu_has_vnni() { return __builtin_cpu_supports("avx512vnni"); }
#endif

void matmul(const MatmulArgs& a, int64_t r0, int64_t r1) {
#if defined(__AVX512F__)
    if (a.x_bf16 && a.W->type == DType::MXFP4 && a.n_tok >= kTileTokens) return gemm_mxfp4_bf16(a, r0, r1);
    if (a.x_i16 && a.W->type == DType::Q8_0 && a.n_tok < kTileTokens) return gemv_q8_0_i16(a, r0, r1);
#endif
    if (a.n_tok < kTileTokens) gemv(a, r0, r1);
    else gemm(a, r0, r1);
}

#if defined(__AVX512F__)
extern void (*const to_bf16)(const float*, int64_t, uint16_t*) = cpu_has_bf16() ? to_bf16_impl : nullptr;
extern void (*const quantize_i16)(const float*, int64_t, int16_t*, float*) =
    cpu_has_vnni() ? quantize_i16_impl : nullptr;
#else
extern void (*const to_bf16)(const float*, int64_t, uint16_t*) = nullptr;
extern void (*const quantize_i16)(const float*, int64_t, int16_t*, float*) = nullptr;
#endif

}  // namespace ossrun::OSSRUN_ISA_NS
