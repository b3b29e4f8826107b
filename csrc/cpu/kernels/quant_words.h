// The fast decode vocabulary of the dense quants (quant_legacy.cpp, quant_k.cpp): the weights of
// one 32-element activation block (quantize_i16's blocks) widened from their packed codes to
// int16 in registers, and their exact integer dot with the int16 activations. Written once per
// ISA here so that each format's fast GEMV is written once over it: AVX-512 holds the 32 words
// in one zmm (vpdpwssd: x_i16 exists there only where the CPU has AVX512-VNNI, see
// gemm_i16.cpp), AVX2 in two ymm (vpmaddwd, or AVX-VNNI's vpdpwssd). Lane j is element j.
#pragma once
#include "matmul_internal.h"

#if defined(__AVX512F__) || defined(__AVX2__)
// The fast sections of the quant sources sit between these (the AVX-512 build's flags lack VNNI).
#if defined(__AVX512F__)
#define OSSRUN_I16_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx512vnni\")")
#define OSSRUN_I16_END _Pragma("GCC pop_options")
#else
#define OSSRUN_I16_BEGIN
#define OSSRUN_I16_END
#endif
OSSRUN_I16_BEGIN

namespace ossrun::OSSRUN_ISA_NS::words {

#if defined(__AVX512F__)
struct W32 {
    __m512i v;
};
using Mask = __mmask32;  // lane j selected where bit j is set
using Acc = __m512;

inline W32 splat(int16_t c) { return {_mm512_set1_epi16(c)}; }
// Lanes 0-15 `lo`, 16-31 `hi` (the two 16-element scales of a K-quant sub-block).
inline W32 pair_splat(int16_t lo, int16_t hi) { return {_mm512_mask_set1_epi16(_mm512_set1_epi16(lo), 0xFFFF0000u, hi)}; }
// A K-quant super-block's 16 integer group scales (16 bytes, as int8 or uint8), widened once;
// pair(i) = pair_splat(scale 2i, scale 2i + 1) in one vpermw (was two broadcasts from scalars).
struct GroupScales {
    __m512i words;
    static GroupScales of_int8(__m128i b) { return {_mm512_castsi256_si512(_mm256_cvtepi8_epi16(b))}; }
    static GroupScales of_uint8(__m128i b) { return {_mm512_castsi256_si512(_mm256_cvtepu8_epi16(b))}; }
    static GroupScales int8_at(const uint8_t* p) { return of_int8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
    static GroupScales low_nibbles_at(const uint8_t* p) {
        return of_uint8(_mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), _mm_set1_epi8(15)));
    }
    // Q3_K's 6-bit scales: four little-endian words of bytes, each biased by 32.
    static GroupScales biased6(const uint32_t (&packed)[4]) {
        return of_int8(_mm_sub_epi8(_mm_setr_epi32(int(packed[0]), int(packed[1]), int(packed[2]), int(packed[3])),
                                    _mm_set1_epi8(32)));
    }
    W32 pair(int i) const {
        return {_mm512_permutexvar_epi16(_mm512_mask_set1_epi16(_mm512_set1_epi16(int16_t(2 * i)), 0xFFFF0000u, int16_t(2 * i + 1)), words)};
    }
};
// 32 bytes, zero-extended.
inline W32 u8_words(const uint8_t* p) { return {_mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))}; }
// 16 bytes -> lanes 0-15 bytes 0-15 unchanged, lanes 16-31 the same bytes shifted right by 4.
inline __m512i split_bytes(const uint8_t* p) {
    const __m512i b = _mm512_cvtepu8_epi16(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    return _mm512_srlv_epi16(b, _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1));
}
// 16 bytes of nibble pairs -> lanes 0-15 the low nibbles, 16-31 the high ones (GGUF's order).
inline W32 nibble_words(const uint8_t* p) { return {_mm512_and_si512(split_bytes(p), _mm512_set1_epi16(15))}; }
// The nibbles of nibble_words, each looked up in a 16-entry table (given twice: vpermw reads 5
// index bits, so the unmasked neighbouring bit selects the same entry).
inline W32 nibble_lookup(const uint8_t* p, const int16_t* table32) {
    return {_mm512_permutexvar_epi16(split_bytes(p), _mm512_loadu_si512(table32))};
}
inline W32 and_c(W32 a, int16_t c) { return {_mm512_and_si512(a.v, _mm512_set1_epi16(c))}; }
inline W32 or_(W32 a, W32 b) { return {_mm512_or_si512(a.v, b.v)}; }
inline W32 add_c(W32 a, int16_t c) { return {_mm512_add_epi16(a.v, _mm512_set1_epi16(c))}; }
inline W32 mul(W32 a, W32 b) { return {_mm512_mullo_epi16(a.v, b.v)}; }
inline W32 shr(W32 a, int n) { return {_mm512_srli_epi16(a.v, unsigned(n))}; }
inline W32 shl(W32 a, int n) { return {_mm512_slli_epi16(a.v, unsigned(n))}; }
inline Mask bits_mask(uint32_t bits) { return Mask(bits); }
inline Mask word_bit_mask(W32 w, int bit) { return _mm512_test_epi16_mask(w.v, _mm512_set1_epi16(int16_t(1 << bit))); }
inline W32 add_where(W32 w, Mask m, int16_t c) { return {_mm512_mask_add_epi16(w.v, m, w.v, _mm512_set1_epi16(c))}; }
inline W32 add_where_not(W32 w, Mask m, int16_t c) { return add_where(w, Mask(~m), c); }

inline Acc zero() { return _mm512_setzero_ps(); }
// acc += float(w · x, exact in int32) * scale.
inline void dot_acc(Acc& acc, W32 w, const int16_t* x, __m512 scales) {
    const __m512i dot = _mm512_madd_epi16(w.v, _mm512_loadu_si512(x));  // vpdpwssd on zero, without the zeroing
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scales, acc);
}
inline void dot_acc(Acc& acc, W32 w, const int16_t* x, const float& scale) { dot_acc(acc, w, x, _mm512_set1_ps(scale)); }
// Lane i of the 8 scales s in every lane of a scale vector: one vpermps (GCC spells
// set1(s[i]) of a register as two shuffles).
inline __m512 lane_splat(__m256 s, int i) { return _mm512_permutexvar_ps(_mm512_set1_epi32(i), _mm512_castps256_ps512(s)); }
inline float reduce(Acc a) { return _mm512_reduce_add_ps(a); }

// Two neighbouring 32-element blocks in one pass: `lo` holds elements 0-15 of both (block 0 in
// lanes 0-15, block 1 in 16-31), `hi` elements 16-31 of both, so the nibbles of both blocks
// widen in one vpmovzxbw and one dot covers 64 elements. The activations are rearranged to
// match once per GEMV (pair_activations); the dot ends with block 0's sums in lanes 0-7 and
// block 1's in 8-15, scaled by one vector of the two blocks' scales.
constexpr bool kHasPairs = true;
struct Pair {
    W32 lo, hi;
};
struct PairMask {
    Mask lo, hi;
};
inline Pair nibble_words(const uint8_t* p0, const uint8_t* p1) {
    const __m256i both = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p0))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p1)), 1);
    const __m512i w = _mm512_cvtepu8_epi16(both);
    return {{_mm512_and_si512(w, _mm512_set1_epi16(15))}, {_mm512_srli_epi16(w, 4)}};
}
inline Pair lookup(Pair w, const int16_t* table16) {
    const __m512i t = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(table16)));
    return {{_mm512_permutexvar_epi16(w.lo.v, t)}, {_mm512_permutexvar_epi16(w.hi.v, t)}};
}
// Bit j of each block's qh is its element j's fifth bit.
inline PairMask bits_mask(uint32_t bits0, uint32_t bits1) {
    return {Mask((bits0 & 0xFFFFu) | bits1 << 16), Mask(bits0 >> 16 | (bits1 & 0xFFFF0000u))};
}
inline Pair add_c(Pair w, int16_t c) { return {add_c(w.lo, c), add_c(w.hi, c)}; }
inline Pair add_where(Pair w, PairMask m, int16_t c) { return {add_where(w.lo, m.lo, c), add_where(w.hi, m.hi, c)}; }
inline Pair add_where_not(Pair w, PairMask m, int16_t c) {
    return {add_where_not(w.lo, m.lo, c), add_where_not(w.hi, m.hi, c)};
}
// The fp16 scales at p0 and p1, as floats in lanes 0 and 1.
inline __m128 half_pair(const uint8_t* p0, const uint8_t* p1) {
    uint16_t h0, h1;
    std::memcpy(&h0, p0, 2);
    std::memcpy(&h1, p1, 2);
    return _mm_cvtph_ps(_mm_insert_epi16(_mm_cvtsi32_si128(h0), h1, 1));
}
// Fifth-bit masks of two blocks from their qh words already side by side: `lows` = (qh0 bits
// 0-15, qh1 bits 0-15), `highs` = (qh0 bits 16-31, qh1 bits 16-31), the lanes of Pair's lo / hi.
inline PairMask side_by_side_mask(uint32_t lows, uint32_t highs) { return {Mask(lows), Mask(highs)}; }
// The 16-bit words minus 16 (w | 0xFFF0 = w - 16 where w < 16): Q5_0's bias, one OR per vector.
inline Pair nibble_words_minus16(const uint8_t* p0, const uint8_t* p1) {
    const __m256i both = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p0))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p1)), 1);
    const __m512i w = _mm512_cvtepu8_epi16(both), high4 = _mm512_set1_epi16(int16_t(0xFFF0));
    return {{_mm512_or_si512(w, high4)}, {_mm512_or_si512(_mm512_srli_epi16(w, 4), high4)}};
}
// Lanes 2p, 2p + 1 of s (pair p of four blocks' scales), each spread over 8 lanes.
inline __m512 pair_scales(__m128 s, int p) {
    const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi32(2 * p), _mm256_set1_epi32(2 * p + 1), 1);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(s));
}
// acc += float(w · x) * scales (pair_scales); x rearranged by pair_activations.
inline void pair_dot_acc(Acc& acc, Pair w, const int16_t* x, __m512 scales) {
    __m512i dot = _mm512_madd_epi16(w.lo.v, _mm512_loadu_si512(x));
    dot = _mm512_dpwssd_epi32(dot, w.hi.v, _mm512_loadu_si512(x + 32));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scales, acc);
}
// acc += float(w · x) * (d0 xs0 in lanes 0-7, d1 xs1 in lanes 8-15), d = the two blocks' scales,
// xs their activation scales; x rearranged by pair_activations.
inline void pair_dot_acc(Acc& acc, Pair w, const int16_t* x, __m128 d, const float* xs) {
    const __m128 s = _mm_mul_ps(d, _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(xs))));
    pair_dot_acc(acc, w, x, pair_scales(s, 0));
}
// Per pair of blocks: elements 0-15 of both, then 16-31 of both; an odd last block as it is.
inline void pair_activations(const int16_t* x, int64_t K, int16_t* out) {
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        std::memcpy(out + k, x + k, 32);
        std::memcpy(out + k + 16, x + k + 32, 32);
        std::memcpy(out + k + 32, x + k + 16, 32);
        std::memcpy(out + k + 48, x + k + 48, 32);
    }
    std::memcpy(out + k, x + k, size_t(K - k) * 2);
}

#else  // AVX2
struct W32 {
    __m256i a, b;  // lanes 0-15, 16-31
};
using Mask = W32;  // all ones where selected
using Acc = __m256;

inline W32 splat(int16_t c) { return {_mm256_set1_epi16(c), _mm256_set1_epi16(c)}; }
inline W32 pair_splat(int16_t lo, int16_t hi) { return {_mm256_set1_epi16(lo), _mm256_set1_epi16(hi)}; }
// AVX2: the 16 group scales read as bytes where they lie, each broadcast from a scalar register
// (a widened vector measured slower here).
struct GroupScales {
    enum Kind { kInt8, kLowNibble, kBiased6 };
    const uint8_t* p;
    Kind kind;
    uint8_t own[16];  // kBiased6: the bytes assembled
    static GroupScales int8_at(const uint8_t* at) { return {at, kInt8, {}}; }
    static GroupScales low_nibbles_at(const uint8_t* at) { return {at, kLowNibble, {}}; }
    static GroupScales biased6(const uint32_t (&packed)[4]) {
        GroupScales g{nullptr, kBiased6, {}};
        std::memcpy(g.own, packed, 16);
        return g;
    }
    int16_t at(int k) const {
        switch (kind) {
            case kInt8: return int8_t(p[k]);
            case kLowNibble: return p[k] & 15;
            default: return int16_t(own[k] - 32);
        }
    }
    W32 pair(int i) const { return pair_splat(at(2 * i), at(2 * i + 1)); }
};
inline __m256i widen16(__m128i bytes) { return _mm256_cvtepu8_epi16(bytes); }
inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline W32 u8_words(const uint8_t* p) { return {widen16(load16(p)), widen16(load16(p + 16))}; }
// The bytes widened first (vpmovzxbw from memory): the high nibble is then one shift.
inline W32 nibble_words(const uint8_t* p) {
    const __m256i w = widen16(load16(p));
    return {_mm256_and_si256(w, _mm256_set1_epi16(15)), _mm256_srli_epi16(w, 4)};
}
// The unsigned 5-bit codes (nibble + 16 * fifth bit, 0..31) of one block straight as words:
// qs's 16 bytes widened once (word k = byte k: element k's nibble low, element k + 16's high)
// and the 32 fifth bits spread to bytes by one pshufb, byte 2k testing bit k and byte 2k + 1
// bit k + 16, so each word's two bytes meet the two elements of that word's byte: 16 lands in
// bit 4 of the low half, and in bit 8 before the high half's shift by 4. No widening of bytes,
// three shuffles fewer than the nibbles and bits as bytes, then widened (measured: Q5_0 14.6 -> see
// docs/PERFORMANCE.md).
inline W32 five_bit_words(const uint8_t* qs, const uint8_t* qh) {
    int32_t bits;
    std::memcpy(&bits, qh, 4);
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits), _mm256_setr_epi8(0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 1, 3, 1, 3, 1, 3, 1, 3,
                                                  1, 3, 1, 3, 1, 3, 1, 3));
    const __m256i bit = _mm256_setr_epi8(1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 64, -128, -128, 1, 1, 2, 2, 4, 4,
                                         8, 8, 16, 16, 32, 32, 64, 64, -128, -128);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    const __m256i w = widen16(load16(qs));
    return {_mm256_or_si256(_mm256_and_si256(w, _mm256_set1_epi16(15)), _mm256_and_si256(set, _mm256_set1_epi16(0x10))),
            _mm256_srli_epi16(_mm256_or_si256(w, _mm256_and_si256(set, _mm256_set1_epi16(0x100))), 4)};
}
inline W32 nibble_lookup(const uint8_t* p, const int16_t* table32) {
    // pshufb looks bytes up: the table as int8 (its entries fit), then sign-extended.
    const __m128i c = load16(p), low4 = _mm_set1_epi8(15);
    const __m128i t = _mm_packs_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table32)),
                                      _mm_loadu_si128(reinterpret_cast<const __m128i*>(table32 + 8)));
    return {_mm256_cvtepi8_epi16(_mm_shuffle_epi8(t, _mm_and_si128(c, low4))),
            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(t, _mm_and_si128(_mm_srli_epi16(c, 4), low4)))};
}
inline W32 and_c(W32 w, int16_t c) {
    const __m256i k = _mm256_set1_epi16(c);
    return {_mm256_and_si256(w.a, k), _mm256_and_si256(w.b, k)};
}
inline W32 or_(W32 x, W32 y) { return {_mm256_or_si256(x.a, y.a), _mm256_or_si256(x.b, y.b)}; }
inline W32 add_c(W32 w, int16_t c) {
    const __m256i k = _mm256_set1_epi16(c);
    return {_mm256_add_epi16(w.a, k), _mm256_add_epi16(w.b, k)};
}
inline W32 mul(W32 x, W32 y) { return {_mm256_mullo_epi16(x.a, y.a), _mm256_mullo_epi16(x.b, y.b)}; }
inline W32 shr(W32 w, int n) { return {_mm256_srli_epi16(w.a, n), _mm256_srli_epi16(w.b, n)}; }
inline W32 shl(W32 w, int n) { return {_mm256_slli_epi16(w.a, n), _mm256_slli_epi16(w.b, n)}; }
inline __m256i bit_lanes(__m256i w, __m256i bit) { return _mm256_cmpeq_epi16(_mm256_and_si256(w, bit), bit); }
inline Mask bits_mask(uint32_t bits) {
    const __m256i bit = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
                                          int16_t(0x8000));
    return {bit_lanes(_mm256_set1_epi16(int16_t(bits)), bit), bit_lanes(_mm256_set1_epi16(int16_t(bits >> 16)), bit)};
}
inline Mask word_bit_mask(W32 w, int bit) {
    const __m256i k = _mm256_set1_epi16(int16_t(1 << bit));
    return {bit_lanes(w.a, k), bit_lanes(w.b, k)};
}
inline W32 add_where(W32 w, Mask m, int16_t c) {
    const __m256i k = _mm256_set1_epi16(c);
    return {_mm256_add_epi16(w.a, _mm256_and_si256(m.a, k)), _mm256_add_epi16(w.b, _mm256_and_si256(m.b, k))};
}
inline W32 add_where_not(W32 w, Mask m, int16_t c) {
    const __m256i k = _mm256_set1_epi16(c);
    return {_mm256_add_epi16(w.a, _mm256_andnot_si256(m.a, k)), _mm256_add_epi16(w.b, _mm256_andnot_si256(m.b, k))};
}

inline Acc zero() { return _mm256_setzero_ps(); }
inline void dot_acc(Acc& acc, W32 w, const int16_t* x, __m256 scales) {
    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 16));
#if defined(__AVXVNNI__)
    const __m256i dot = _mm256_dpwssd_avx_epi32(_mm256_madd_epi16(w.a, x0), w.b, x1);
#else
    const __m256i dot = _mm256_add_epi32(_mm256_madd_epi16(w.a, x0), _mm256_madd_epi16(w.b, x1));
#endif
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scales, acc);
}
inline void dot_acc(Acc& acc, W32 w, const int16_t* x, const float& scale) { dot_acc(acc, w, x, _mm256_set1_ps(scale)); }
inline __m256 lane_splat(__m256 s, int i) { return _mm256_permutevar8x32_ps(s, _mm256_set1_epi32(i)); }
inline float reduce(Acc a) { return hsum(vfloat(a)); }

constexpr bool kHasPairs = false;  // two ymm per block already: nothing to share between two
#endif

// 8 bytes (little-endian in `v`) -> 8 floats, times f (exact where byte * f fits 24 bits).
inline __m256 bytes8_times(uint64_t v, float f) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(v)))), _mm256_set1_ps(f));
}

// The activations of TT tokens at block 0 of the row: int16 codes and one scale per 32.
template <int TT>
struct Tokens {
    const int16_t* q[TT];
    const float* s[TT];
};

}  // namespace ossrun::OSSRUN_ISA_NS::words
OSSRUN_I16_END
#endif
