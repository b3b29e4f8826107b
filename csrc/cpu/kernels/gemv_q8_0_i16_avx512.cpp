// Fast-precision decode of Q8_0 rows: int16 activations (quantized by gemm_i16.cpp's
// quantize_i16) times the int8 weights with AVX512-VNNI vpdpwssd, 1-8 tokens per call (the
// avx512 and avx512vbmi variants; the latter builds the weight vectors with VBMI). Token
// groups and the shape of the loops: gemv_i16_groups (matmul_internal.h).
// Shape contract in kernels.h (MatmulArgs).
#include "matmul_internal.h"

#if defined(__AVX512F__)
namespace ossrun::OSSRUN_ISA_NS {

#define OSSRUN_ALWAYS_INLINE inline __attribute__((always_inline))

namespace {

// Four blocks per vector. Q8_0 weights are int8 already, so widening is cheap and the
// per-token work decides: lanes 4b..4b+3 of one int32 vector sum block b of a quad (four
// vpdpwssd, eight products a lane), and one convert, one multiply and one FMA per token serve
// four blocks, where the paired layout spent two of each. For that a quad's 4 x 32 weight bytes
// are transposed in 8-byte units (unpack + lane permute, shared by all tokens; one byte permute
// per vector with VBMI, below) and the activations re-laid to match, once per call (quad_acts). From L2 on one core this is 17-20 %
// faster than the paired layout at 1-2 tokens and 10 % at 4.

// The re-laid activations of all tokens of a call (thread-local, reused: no allocation once warm).
struct QuadActs {
    const int16_t* x;       // [t][quad][4][32]: vector k holds elements 8k..8k+7 of the quad's 4 blocks
    const float* quad_scale;  // [t][quad][16]: block b's activation scale in lanes 4b..4b+3
    const int16_t* tail_x;  // natural layout (x_i16 rows, ldx apart) for the last nb % 4 blocks
    const float* scale;     // x_i16_scale rows, ldx / 32 apart
    int64_t ldx;
    int64_t quads;
    QuadActs from(int64_t t0) const {  // the same, starting at token t0
        return QuadActs{x + t0 * quads * 128, quad_scale + t0 * quads * 16, tail_x + t0 * ldx,
                        scale + t0 * (ldx / kBlockElems), ldx, quads};
    }
};

alignas(64) constexpr int32_t kQuadLanes[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
// A quad's four fp16 scales sit at bytes 0, 34, 68, 102: words 0 and 17 of its first 64 bytes,
// words 2 and 19 of the next 64 (32 + i in vpermt2w's index).
alignas(64) constexpr int16_t kQuadScaleWords[32] = {0, 17, 34, 51};

OSSRUN_VNNI QuadActs quad_acts(const int16_t* xq, const float* xs, int64_t ldx, int64_t nb, int64_t nt) {
    thread_local std::vector<int16_t> xbuf;
    thread_local std::vector<float> sbuf;
    const int64_t quads = nb / 4;
    if (int64_t(xbuf.size()) < nt * quads * 128) xbuf.resize(size_t(nt * quads * 128));
    if (int64_t(sbuf.size()) < nt * quads * 16) sbuf.resize(size_t(nt * quads * 16));
    const __m512i lanes = _mm512_load_si512(kQuadLanes);
    for (int64_t t = 0; t < nt; ++t) {
        const int16_t* src = xq + t * ldx;
        int16_t* dst = xbuf.data() + t * quads * 128;
        float* sdst = sbuf.data() + t * quads * 16;
        const float* ssrc = xs + t * (ldx / kBlockElems);
        for (int64_t q = 0; q < quads; ++q) {
            const int16_t* b = src + 4 * q * kBlockElems;
            for (int k = 0; k < 4; ++k) {
                auto part = [&](int blk) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + blk * kBlockElems + 8 * k)); };
                const __m256i lo = _mm256_inserti128_si256(_mm256_castsi128_si256(part(0)), part(1), 1);
                const __m256i hi = _mm256_inserti128_si256(_mm256_castsi128_si256(part(2)), part(3), 1);
                _mm512_storeu_si512(dst + q * 128 + 32 * k, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
            }
            _mm512_storeu_ps(sdst + q * 16, _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(_mm_loadu_ps(ssrc + 4 * q))));
        }
    }
    return QuadActs{xbuf.data(), sbuf.data(), xq, xs, ldx, quads};
}

// The per-token work of a quad, shared by both ways of widening the weights: acc[i][t] += row
// i's quad (w[i][0..3] as laid by quad_acts, scales ws[i] in lanes 4b..4b+3) · token t's quad q.
template <int NT, int NR>
OSSRUN_VNNI OSSRUN_ALWAYS_INLINE void quad_dots(const __m512i (&w)[NR][4], const __m512 (&ws)[NR], const QuadActs& x,
                                                int64_t q, __m512 (&acc)[NR][NT]) {
    for (int t = 0; t < NT; ++t) {
        const int16_t* xp = x.x + (t * x.quads + q) * 128;
        const __m512i x0 = _mm512_loadu_si512(xp), x1 = _mm512_loadu_si512(xp + 32);
        const __m512i x2 = _mm512_loadu_si512(xp + 64), x3 = _mm512_loadu_si512(xp + 96);
        const __m512 xs = _mm512_loadu_ps(x.quad_scale + (t * x.quads + q) * 16);
        for (int i = 0; i < NR; ++i) {
            __m512i dot = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w[i][0], x0);
            dot = _mm512_dpwssd_epi32(dot, w[i][1], x1);
            dot = _mm512_dpwssd_epi32(dot, w[i][2], x2);
            dot = _mm512_dpwssd_epi32(dot, w[i][3], x3);
            acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws[i], xs), acc[i][t]);
        }
    }
}

// The quad's four fp16 scales (words 0, 17 of lo = its bytes 0..63 and 2, 19 of hi = 64..127) in
// lanes 4b..4b+3 as floats.
OSSRUN_VNNI OSSRUN_ALWAYS_INLINE __m512 quad_scales(__m512i lo, __m512i hi) {
    const __m512i halves = _mm512_permutex2var_epi16(lo, _mm512_load_si512(kQuadScaleWords), hi);
    return _mm512_permutexvar_ps(_mm512_load_si512(kQuadLanes), _mm512_castps128_ps512(_mm_cvtph_ps(_mm512_castsi512_si128(halves))));
}

// The last nb % 4 blocks, one per vector, then out[i * 4 + t] = row i · token t.
template <int NT, int NR>
OSSRUN_VNNI OSSRUN_ALWAYS_INLINE void finish_rows(const uint8_t* row, int64_t row_bytes, const QuadActs& x, int64_t nb,
                                                  __m512 (&acc)[NR][NT], float* out) {
    for (int64_t blk = 4 * x.quads; blk < nb; ++blk) {
        for (int i = 0; i < NR; ++i) {
            const uint8_t* bp = row + i * row_bytes + blk * kQ8BlockBytes;
            const __m512i w = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + 2)));
            const float ws = q8_0_scale(bp);
            for (int t = 0; t < NT; ++t) {
                const __m512i dot = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w,
                                                        _mm512_loadu_si512(x.tail_x + t * x.ldx + blk * kBlockElems));
                acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                                            _mm512_set1_ps(ws * x.scale[t * (x.ldx / kBlockElems) + blk]), acc[i][t]);
            }
        }
    }
    for (int i = 0; i < NR; ++i)
        for (int t = 0; t < NT; ++t) out[i * 4 + t] = _mm512_reduce_add_ps(acc[i][t]);
}

// The two lines of a quad ahead (prefetch_ahead). Two rows per pass read the matrix at two
// points a row apart; for them the same position three rows on (the pass after next) measured
// best from DRAM: at 4 tokens 1.41-1.53 against 1.79-1.90 ns per block and row 8 KiB ahead.
template <int NR>
OSSRUN_VNNI OSSRUN_ALWAYS_INLINE void prefetch_quad(const uint8_t* b, int64_t row_bytes) {
    const uint8_t* ahead = NR == 2 ? b + 3 * row_bytes : b + kPrefetchAhead;
    __builtin_prefetch(ahead, 0, 2);
    __builtin_prefetch(ahead + 64, 0, 2);
}

// Rows r and r + 1 of Q8_0 (NR = 2) or row r alone (NR = 1) times NT tokens: out[i * 4 + t].
// With 3-4 tokens two rows per pass share every activation load (4 vectors per token and quad,
// otherwise more loads than multiplies): through ops.matmul on one core (1024 rows, from L3)
// 1.41 against 1.93 ns per block and row at 4 tokens, 1.18 against 1.61 at 3, 2.47 against
// 3.8 at 8 (two groups); at 1-2 tokens it measured no faster (2: 10 % slower), so they take
// one row per pass.
template <int NT, int NR>
OSSRUN_VNNI void q8_0_i16_rows(const uint8_t* row, int64_t row_bytes, const QuadActs& x, int64_t nb, float* out) {
    __m512 acc[NR][NT];
    for (int i = 0; i < NR; ++i)
        for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_setzero_ps();
    for (int64_t q = 0; q < x.quads; ++q) {
        __m512i w[NR][4];
        __m512 ws[NR];
        for (int i = 0; i < NR; ++i) {
            const uint8_t* b = row + i * row_bytes + 4 * q * kQ8BlockBytes;  // 136 bytes
            prefetch_ahead(b);
            prefetch_ahead(b + 64);
            auto payload = [&](int blk) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + blk * kQ8BlockBytes + 2)); };
            const __m256i y0 = payload(0), y1 = payload(1), y2 = payload(2), y3 = payload(3);
            // 8-byte unit k of every block into vector k: a 4 x 4 transpose of 64-bit units.
            const __m256i t0 = _mm256_unpacklo_epi64(y0, y1), t1 = _mm256_unpackhi_epi64(y0, y1);
            const __m256i t2 = _mm256_unpacklo_epi64(y2, y3), t3 = _mm256_unpackhi_epi64(y2, y3);
            w[i][0] = _mm512_cvtepi8_epi16(_mm256_permute2x128_si256(t0, t2, 0x20));
            w[i][1] = _mm512_cvtepi8_epi16(_mm256_permute2x128_si256(t1, t3, 0x20));
            w[i][2] = _mm512_cvtepi8_epi16(_mm256_permute2x128_si256(t0, t2, 0x31));
            w[i][3] = _mm512_cvtepi8_epi16(_mm256_permute2x128_si256(t1, t3, 0x31));
            ws[i] = quad_scales(_mm512_loadu_si512(b), _mm512_loadu_si512(b + 64));
        }
        quad_dots<NT, NR>(w, ws, x, q, acc);
    }
    finish_rows<NT, NR>(row, row_bytes, x, nb, acc, out);
}

#if defined(__AVX512VBMI__)
// ---- With AVX512-VBMI (the avx512vbmi variant): one byte permute per weight vector. vpermt2b
// picks any 64 of 128 bytes, so vector k of a quad is one instruction over two 64-byte registers,
// each weight byte placed in the high byte of its word; an arithmetic shift right by 8
// sign-extends it. Units 0..2 of all four blocks (elements 0..23: bytes 2..127 of the quad) lie
// in its bytes 0..127, unit 3 (elements 24..31: bytes 26..135) in bytes 8..135, so the layout is
// the one above, bit for bit the same vectors. Per quad and row that is 4 permutes and 4 shifts
// (plus 2 inserts and 2 aligns) where the unpack path spends 12 shuffles. Its loop repeats
// q8_0_i16_rows' around the weight loads: one loop over a weight-loading policy measured 8-14 %
// slower at 4-8 tokens (1024 rows from L3, one thread) in both variants.
#define OSSRUN_VNNI_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,f16c")))

// Byte indices of vector k's words: word 8b + i (block b, element 8k + i) at quad byte
// 34b + 2 + 8k + i, counted from the quad's byte 0 for k < 3 and from byte 8 for k = 3.
struct VbmiQuadIndex {
    alignas(64) uint8_t idx[4][64];
    constexpr VbmiQuadIndex() : idx{} {
        for (int k = 0; k < 4; ++k)
            for (int w = 0; w < 32; ++w) {
                const int b = w / 8, i = w % 8;
                const int pos = 34 * b + 2 + 8 * k + i - (k == 3 ? 8 : 0);
                idx[k][2 * w] = uint8_t(pos);
                idx[k][2 * w + 1] = uint8_t(pos);
            }
    }
};
constexpr VbmiQuadIndex kVbmiQuadIndex;

template <int NT, int NR>
OSSRUN_VNNI_VBMI void q8_0_i16_rows_vbmi(const uint8_t* row, int64_t row_bytes, const QuadActs& x, int64_t nb,
                                         float* out) {
    const __m512i idx0 = _mm512_load_si512(kVbmiQuadIndex.idx[0]), idx1 = _mm512_load_si512(kVbmiQuadIndex.idx[1]);
    const __m512i idx2 = _mm512_load_si512(kVbmiQuadIndex.idx[2]), idx3 = _mm512_load_si512(kVbmiQuadIndex.idx[3]);
    __m512 acc[NR][NT];
    for (int i = 0; i < NR; ++i)
        for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_setzero_ps();
    for (int64_t q = 0; q < x.quads; ++q) {
        __m512i w[NR][4];
        __m512 ws[NR];
        for (int i = 0; i < NR; ++i) {
            const uint8_t* b = row + i * row_bytes + 4 * q * kQ8BlockBytes;  // 136 bytes
            prefetch_quad<NR>(b, row_bytes);
            // Two 32-byte loads per 64 bytes: a 64-byte load across two cache lines, one not yet in
            // L1, measured far slower here when the weights stream from DRAM (2 tokens: 1.8
            // against 1.0 ns per block and row; no difference from L3).
            auto half = [&](int off) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + off)); };
            const __m512i lo = _mm512_inserti64x4(_mm512_castsi256_si512(half(0)), half(32), 1);
            const __m512i hi = _mm512_inserti64x4(_mm512_castsi256_si512(half(64)), half(96), 1);
            const __m512i tail = _mm512_castsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 128)));
            const __m512i lo8 = _mm512_alignr_epi64(hi, lo, 1), hi8 = _mm512_alignr_epi64(tail, hi, 1);
            w[i][0] = _mm512_srai_epi16(_mm512_permutex2var_epi8(lo, idx0, hi), 8);
            w[i][1] = _mm512_srai_epi16(_mm512_permutex2var_epi8(lo, idx1, hi), 8);
            w[i][2] = _mm512_srai_epi16(_mm512_permutex2var_epi8(lo, idx2, hi), 8);
            w[i][3] = _mm512_srai_epi16(_mm512_permutex2var_epi8(lo8, idx3, hi8), 8);
            ws[i] = quad_scales(lo, hi);
        }
        quad_dots<NT, NR>(w, ws, x, q, acc);
    }
    finish_rows<NT, NR>(row, row_bytes, x, nb, acc, out);
}

#define OSSRUN_Q8_0_ROWS q8_0_i16_rows_vbmi
#else
#define OSSRUN_Q8_0_ROWS q8_0_i16_rows
#endif

}  // namespace

OSSRUN_VNNI void gemv_q8_0_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const QuadActs x = quad_acts(a.x_i16, a.x_i16_scale, a.ldx, a.W->cols / kBlockElems, a.n_tok);
    const int64_t row_bytes = int64_t(a.W->row_bytes);
    gemv_i16_groups(a, r0, r1, x, [row_bytes](auto nt, int nr, const uint8_t* row, const QuadActs& x, int64_t n, float* out) {
        constexpr int kTokens = decltype(nt)::value;
        if (kTokens > 2 && nr == 2) return OSSRUN_Q8_0_ROWS<kTokens, 2>(row, row_bytes, x, n, out);
        for (int i = 0; i < nr; ++i) OSSRUN_Q8_0_ROWS<kTokens, 1>(row + i * row_bytes, row_bytes, x, n, out + i * 4);
    }, 2);
}

}  // namespace ossrun::OSSRUN_ISA_NS
#endif
