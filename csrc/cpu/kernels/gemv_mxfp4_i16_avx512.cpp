// The fast decode GEMV of MXFP4 weights on AVX-512 (AVX512-VNNI vpdpwssd): int16 activations
// (gemm_i16.cpp's quantize_i16) times the exact weights, 1-8 tokens (decode, a decode batch, an
// expert's routed tokens). The AVX2 counterpart is in gemv_i16.cpp. Shape contract in kernels.h.
#include "matmul_internal.h"

namespace ossrun::OSSRUN_ISA_NS {

#if defined(__AVX512F__)
namespace {

// MXFP4 values doubled are small integers (0, 1, 2, 3, 4, 6, 8, 12 and their negatives), so a
// block times int16 activations is an exact int32 dot (|sum| <= 32 * 12 * 32767 < 2^24, exact in
// float too); the block scale halved stays a power of two.
alignas(64) constexpr int16_t kDoubledE2M1Words[32] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
                                                       0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

#if defined(__AVX512VBMI__)
// With AVX512-VBMI (the avx512vbmi variant): four blocks per vector, as the Q8_0 GEMV lays them
// (gemv_q8_0_i16_avx512.cpp), and VBMI's byte permutes take the codes and scales straight from the row. Lanes
// 4b..4b+3 of one int32 vector sum block b of a quad (four vpdpwssd a token), so per token and
// 4 blocks there is one convert, one scale product and one FMA. A quad's 68 bytes come in as two
// overlapping 64-byte loads (bytes 0..63 and 4..67); one vpermb each gathers code bytes 0..7 and
// 8..15 of the 4 blocks into words, which give elements 0..7 and 16..23 (low and high nibble)
// and 8..15 and 24..31 through the table. A third puts each block's scale byte e at bit 24 of
// its lanes: shifted right by one it is the float 2^(e-127) for e >= 1 (255: infinity), and an
// unsigned max with 2^-127's bits gives e = 0 its value, so halved it is e8m0_half_table()[e].
#define OSSRUN_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,f16c")))

// Per token and quad, five 64-byte lines: the activations of vector k (elements 8k..8k+7 of the
// quad's 4 blocks) for k = 0..3, then the blocks' scales (block b's in lanes 4b..4b+3).
struct alignas(64) ActLine {
    int16_t v[32];
};
constexpr int kQuadLines = 5;

// The re-laid activations of all tokens of a call (thread-local, reused: no allocation once warm).
struct QuadActs {
    const ActLine* lines;  // [t][quad][kQuadLines]
    int64_t quads;         // ceil(nb / 4): a last partial quad is padded with zero activations
    QuadActs from(int64_t t0) const { return QuadActs{lines + t0 * quads * kQuadLines, quads}; }
};

OSSRUN_VBMI QuadActs quad_acts(const int16_t* xq, const float* xs, int64_t ldx, int64_t nb, int64_t nt) {
    thread_local std::vector<ActLine> buf;
    const int64_t quads = (nb + 3) / 4;
    if (int64_t(buf.size()) < nt * quads * kQuadLines) buf.resize(size_t(nt * quads * kQuadLines));
    for (int64_t t = 0; t < nt; ++t) {
        const int16_t* src = xq + t * ldx;
        const float* ssrc = xs + t * (ldx / kBlockElems);
        for (int64_t q = 0; q < quads; ++q) {
            ActLine* dst = buf.data() + (t * quads + q) * kQuadLines;
            float scales[16];
            for (int b = 0; b < 4; ++b) {
                const int64_t blk = 4 * q + b;
                for (int k = 0; k < 4; ++k)
                    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst[k].v + 8 * b),
                                     blk < nb ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + blk * kBlockElems + 8 * k))
                                              : _mm_setzero_si128());
                for (int j = 0; j < 4; ++j) scales[4 * b + j] = blk < nb ? ssrc[blk] : 0.0f;
            }
            std::memcpy(dst[4].v, scales, 64);
        }
    }
    return QuadActs{buf.data(), quads};
}

// Byte indices into a quad's bytes 0..63 (vpermb): word 8b + m gets code byte m of block b (at
// 17b + 1 + m), in both of its bytes (vpermw reads only the low 5 bits, the shift the low 8).
// Into bytes 4..67: code byte 8 + m, at 17b + 9 + m - 4. Scales: byte 3 of dword 4b + j gets
// block b's scale byte (at 17b), the others are zeroed.
struct QuadIndices {
    alignas(64) uint8_t codes_lo[64], codes_hi[64], scales[64], padding[64];
    constexpr QuadIndices() : codes_lo(), codes_hi(), scales(), padding() {
        for (int b = 0; b < 4; ++b) padding[17 * b] = 127;
        for (int b = 0; b < 4; ++b)
            for (int m = 0; m < 8; ++m)
                for (int i = 0; i < 2; ++i) {
                    codes_lo[2 * (8 * b + m) + i] = uint8_t(17 * b + 1 + m);
                    codes_hi[2 * (8 * b + m) + i] = uint8_t(17 * b + 5 + m);
                }
        for (int lane = 0; lane < 16; ++lane) scales[4 * lane + 3] = uint8_t(17 * (lane / 4));
    }
};
constexpr QuadIndices kQuadIndices;

template <int NT>
OSSRUN_VBMI void mxfp4_quad_rows(const uint8_t* row, const QuadActs& x, int64_t nb, float* out) {
    const __m512i table = _mm512_load_si512(kDoubledE2M1Words);
    const __m512i codes_lo = _mm512_load_si512(kQuadIndices.codes_lo);
    const __m512i codes_hi = _mm512_load_si512(kQuadIndices.codes_hi);
    const __m512i scale_bytes = _mm512_load_si512(kQuadIndices.scales);
    const __mmask64 byte3 = 0x8888888888888888ull;
    const __m512i e0_bits = _mm512_set1_epi32(0x00400000);  // 2^-127, E8M0's e = 0
    const __m512 half = _mm512_set1_ps(0.5f);
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
    const int64_t full = nb / 4;
    for (int64_t q = 0; q < x.quads; ++q) {
        const uint8_t* p = row + q * 4 * kMxfp4BlockBytes;
        __m512i lo, hi;
        if (q < full) {
            prefetch_ahead(p);
            lo = _mm512_loadu_si512(p);
            hi = _mm512_loadu_si512(p + 4);
        } else {  // 1-3 blocks left: loads that stop at the row's end, zero codes past it
            // and scale bytes 127 (not 0, whose 2^-128 would make the FPU take a slow path)
            const int bytes = int(nb - 4 * full) * kMxfp4BlockBytes;
            lo = _mm512_mask_loadu_epi8(_mm512_load_si512(kQuadIndices.padding), (__mmask64(1) << bytes) - 1, p);
            hi = _mm512_maskz_loadu_epi8((__mmask64(1) << (bytes - 4)) - 1, p + 4);
        }
        const __m512i c0 = _mm512_permutexvar_epi8(codes_lo, lo);
        const __m512i c1 = _mm512_permutexvar_epi8(codes_hi, hi);
        const __m512i w0 = _mm512_permutexvar_epi16(c0, table);
        const __m512i w1 = _mm512_permutexvar_epi16(c1, table);
        const __m512i w2 = _mm512_permutexvar_epi16(_mm512_srli_epi16(c0, 4), table);
        const __m512i w3 = _mm512_permutexvar_epi16(_mm512_srli_epi16(c1, 4), table);
        const __m512i e24 = _mm512_maskz_permutexvar_epi8(byte3, scale_bytes, lo);
        const __m512 ws = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_max_epu32(_mm512_srli_epi32(e24, 1), e0_bits)), half);
        for (int t = 0; t < NT; ++t) {
            const ActLine* xl = x.lines + (t * x.quads + q) * kQuadLines;
            __m512i dot = _mm512_madd_epi16(w0, _mm512_load_si512(xl[0].v));
            dot = _mm512_dpwssd_epi32(dot, w1, _mm512_load_si512(xl[1].v));
            dot = _mm512_dpwssd_epi32(dot, w2, _mm512_load_si512(xl[2].v));
            dot = _mm512_dpwssd_epi32(dot, w3, _mm512_load_si512(xl[3].v));
            const __m512 s = _mm512_mul_ps(ws, _mm512_load_ps(reinterpret_cast<const float*>(xl[4].v)));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[t]);
        }
    }
    for (int t = 0; t < NT; ++t) out[t] = _mm512_reduce_add_ps(acc[t]);
}

}  // namespace

OSSRUN_VBMI void gemv_mxfp4_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const QuadActs x = quad_acts(a.x_i16, a.x_i16_scale, a.ldx, a.W->cols / kBlockElems, a.n_tok);
    gemv_i16_groups(a, r0, r1, x, [](auto nt, int, const uint8_t* row, const QuadActs& x, int64_t n, float* out) {
        mxfp4_quad_rows<decltype(nt)::value>(row, x, n, out);
    });
}

#else
// MXFP4: two blocks share one vector (even lanes sum block 2p, odd lanes block 2p+1), so per
// token and block pair there are two vpdpwssd, one convert, one multiply and one FMA, where one
// block per vector cost a convert, a scalar multiply, a broadcast and an FMA per block. The
// pair's two activation scales are one 64-bit broadcast. For that the activations are re-laid
// once per call (paired_acts): per token and pair, xa holds elements 0..15 and xb 16..31 of both
// blocks, 32-bit units alternating between them. (Four blocks per vector, as Q8_0 and the VBMI
// path above lay them, measured 15 % slower here at 3-4 tokens and no faster at 1-2.)

// The re-laid activations of all tokens of a call (thread-local, reused: no allocation once warm).
struct PairedActs {
    const int16_t* x;        // [t][pair][64]: xa then xb
    const float* scale;      // x_i16_scale rows, ldx / 32 apart: pair p's two scales at 2p
    const int16_t* tail_x;   // natural layout of the odd last block: x_i16 rows, ldx apart
    int64_t ldx;
    int64_t pairs;
    PairedActs from(int64_t t0) const {  // the same, starting at token t0
        return PairedActs{x + t0 * pairs * 64, scale + t0 * (ldx / kBlockElems), tail_x + t0 * ldx, ldx, pairs};
    }
};

// Word i of a paired vector comes from block (i / 2) % 2, element 2 * (i / 4) + i % 2.
alignas(64) constexpr int16_t kPairWords[32] = {0,  1,  16, 17, 2,  3,  18, 19, 4,  5,  20, 21, 6,  7,  22, 23,
                                                8,  9,  24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31};

OSSRUN_VNNI PairedActs paired_acts(const int16_t* xq, const float* xs, int64_t ldx, int64_t nb, int nt) {
    thread_local std::vector<int16_t> xbuf;
    const int64_t pairs = nb / 2;
    if (int64_t(xbuf.size()) < nt * pairs * 64) xbuf.resize(size_t(nt * pairs * 64));
    const __m512i order = _mm512_load_si512(kPairWords);
    for (int t = 0; t < nt; ++t) {
        const int16_t* src = xq + t * ldx;
        int16_t* dst = xbuf.data() + t * pairs * 64;
        for (int64_t p = 0; p < pairs; ++p) {
            const int16_t* b0 = src + 2 * p * kBlockElems;  // b0[0..32) block 2p, b0[32..64) block 2p+1
            const __m512i lo = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0))),
                                                  _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 32)), 1);
            const __m512i hi = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 16))),
                                                  _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 48)), 1);
            _mm512_storeu_si512(dst + p * 64, _mm512_permutexvar_epi16(order, lo));
            _mm512_storeu_si512(dst + p * 64 + 32, _mm512_permutexvar_epi16(order, hi));
        }
    }
    return PairedActs{xbuf.data(), xs, xq + (nb - 1) * kBlockElems, ldx, pairs};
}

// [a, b, a, b, ...]: one scale for the even lanes, one for the odd.
OSSRUN_VNNI inline __m512 alternating(float a, float b) {
    return _mm512_castpd_ps(_mm512_broadcastsd_pd(_mm_castps_pd(_mm_unpacklo_ps(_mm_set_ss(a), _mm_set_ss(b)))));
}

// acc[t] += paired weight vectors (wa, wb) · token t's pair p, scaled by ws (the weights' scales).
template <int NT>
OSSRUN_VNNI inline void pair_dots(__m512i wa, __m512i wb, __m512 ws, const PairedActs& x, int64_t p,
                                  __m512* acc) {
    for (int t = 0; t < NT; ++t) {
        const int16_t* xp = x.x + (t * x.pairs + p) * 64;
        __m512i dot = _mm512_dpwssd_epi32(_mm512_setzero_si512(), wa, _mm512_loadu_si512(xp));
        dot = _mm512_dpwssd_epi32(dot, wb, _mm512_loadu_si512(xp + 32));
        double scales;  // the pair's two activation scales
        std::memcpy(&scales, x.scale + t * (x.ldx / kBlockElems) + 2 * p, 8);
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws, _mm512_castpd_ps(_mm512_set1_pd(scales))),
                                 acc[t]);
    }
}

// acc[t] += one unpaired block w (natural order, scale ws) · token t's last block.
template <int NT>
OSSRUN_VNNI inline void tail_dots(__m512i w, float ws, const PairedActs& x, int64_t nb, __m512* acc) {
    for (int t = 0; t < NT; ++t) {
        const __m512i dot = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w, _mm512_loadu_si512(x.tail_x + t * x.ldx));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                                 _mm512_set1_ps(ws * x.scale[t * (x.ldx / kBlockElems) + nb - 1]), acc[t]);
    }
}

template <int NT>
OSSRUN_VNNI void mxfp4_i16_rows(const uint8_t* row, const PairedActs& x, int64_t nb, const float* halves,
                                float* out) {
    // vpermw reads 5 index bits and the table lists the 16 values twice, so a code byte widened
    // to a word indexes its low nibble unmasked; shifted right by 4, its high nibble.
    const __m512i table = _mm512_load_si512(kDoubledE2M1Words);
    const __m512i order = _mm512_load_si512(kPairWords);
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t p = 0; p < x.pairs; ++p) {
        const uint8_t* b0 = row + 2 * p * kMxfp4BlockBytes;
        const uint8_t* b1 = b0 + kMxfp4BlockBytes;
        if (p % 2 == 0) prefetch_ahead(b0);
        // Byte k of a block holds elements k (low nibble) and k + 16 (high); kPairWords puts
        // byte k of both blocks where element k goes (the high nibbles follow, 16 later).
        const __m512i codes = _mm512_permutexvar_epi16(order, _mm512_cvtepu8_epi16(_mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 1))),
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(b1 + 1)), 1)));
        const __m512i wa = _mm512_permutexvar_epi16(codes, table);
        const __m512i wb = _mm512_permutexvar_epi16(_mm512_srli_epi16(codes, 4), table);
        pair_dots<NT>(wa, wb, alternating(halves[b0[0]], halves[b1[0]]), x, p, acc);
    }
    if (nb % 2) {
        const uint8_t* blk = row + (nb - 1) * kMxfp4BlockBytes;
        const __m256i c = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 1)));
        const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(c), _mm256_srli_epi16(c, 4), 1);
        tail_dots<NT>(_mm512_permutexvar_epi16(idx, table), halves[blk[0]], x, nb, acc);
    }
    for (int t = 0; t < NT; ++t) out[t] = _mm512_reduce_add_ps(acc[t]);
}

}  // namespace

OSSRUN_VNNI void gemv_mxfp4_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const float* halves = e8m0_half_table();
    const PairedActs x = paired_acts(a.x_i16, a.x_i16_scale, a.ldx, a.W->cols / kBlockElems, int(a.n_tok));
    gemv_i16_groups(a, r0, r1, x, [halves](auto nt, int, const uint8_t* row, const PairedActs& x, int64_t n, float* out) {
        mxfp4_i16_rows<decltype(nt)::value>(row, x, n, halves, out);
    });
}

#endif
#endif

}  // namespace ossrun::OSSRUN_ISA_NS
