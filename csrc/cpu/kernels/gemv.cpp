// Decode-time matmuls (few tokens), compiled once per ISA: each weight row is decoded in
// registers and consumed at once, streaming the weights from memory exactly once. The fast path
// gives Q8_0 and MXFP4 rows int16 activations (AVX512-VNNI: Q8_0 here, MXFP4 in
// gemv_mxfp4_i16_avx512.cpp; AVX2 in gemv_i16.cpp; quantized by gemm_i16.cpp's quantize_i16).
// Shape contract in kernels.h (MatmulArgs).
#include "matmul_internal.h"

namespace ossrun::OSSRUN_ISA_NS {

namespace {

float dot_mxfp4_row(const uint8_t* row, const float* x, int64_t n) {
    const int64_t nb = n / kBlockElems;
#if defined(__AVX512F__)
    const float* tables = e2m1_scaled_tables();
    // acc += block b · x. The table of values times the block's power of two is one load (a
    // multiply fewer per block on the ports that run the FMAs), so each code becomes its value in
    // one permute; permutexvar reads only the low 4 bits of each index, so the low nibble needs
    // no mask.
    auto block = [&](int64_t b, __m512& acc) {
        const uint8_t* blk = row + b * kMxfp4BlockBytes;
        const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 1)));
        const __m512 t = _mm512_load_ps(tables + 16 * blk[0]);
        const float* xb = x + b * kBlockElems;
        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(codes, t), _mm512_loadu_ps(xb), acc);
        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), t), _mm512_loadu_ps(xb + 16), acc);
    };
    // Four named accumulators: enough independent FMA chains, and no stack spills.
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        prefetch_ahead(row + b * kMxfp4BlockBytes);
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
        if (b % 4 == 0) prefetch_ahead(blk);
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
    return hsum(vfloat(acc));
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * kMxfp4BlockBytes;
        if (b % 4 == 0) prefetch_ahead(blk);
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
        prefetch_ahead(row + b * kQ8BlockBytes);
        acc0 = _mm512_add_ps(acc0, block(b));
        acc1 = _mm512_add_ps(acc1, block(b + 1));
    }
    if (b < nb) acc0 = _mm512_add_ps(acc0, block(b));
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#elif defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * kQ8BlockBytes;
        if (b % 2 == 0) prefetch_ahead(blk);
        const float* xb = x + b * kBlockElems;
        __m256 part = _mm256_setzero_ps();
        for (int j = 0; j < 4; ++j) {
            const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * j))));
            part = _mm256_fmadd_ps(q, _mm256_loadu_ps(xb + 8 * j), part);
        }
        acc = _mm256_fmadd_ps(part, _mm256_set1_ps(q8_0_scale(blk)), acc);
    }
    return hsum(vfloat(acc));
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * kQ8BlockBytes;
        if (b % 2 == 0) prefetch_ahead(blk);
        const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
        const float* xb = x + b * kBlockElems;
        float part = 0.0f;
        for (int k = 0; k < kBlockElems; ++k) part += float(q[k]) * xb[k];
        acc += part * q8_0_scale(blk);
    }
    return acc;
#endif
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

}  // namespace

void gemv(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const Matrix& W = *a.W;
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = W.row(a.mat, r);
        if (W.type != DType::MXFP4 && W.type != DType::Q8_0)  // their dot loops prefetch as they go
            for (size_t off = 0; off < W.row_bytes; off += 64) prefetch_ahead(row + off);
        const float b = a.bias ? a.bias[r] : 0.0f;
        for (int64_t t = 0; t < a.n_tok; ++t) a.y[t * a.ldy + r] = dot_row(W, row, a.x + t * a.ldx) + b;
    }
}

#if defined(__AVX512F__)
// ---- Fast decode: int16 activations x Q8_0 weights (AVX512-VNNI vpdpwssd; MXFP4's is in
// gemv_mxfp4_i16_avx512.cpp). Token groups and the shape of the loops: gemv_i16_groups
// (matmul_internal.h).
// ---- Q8_0: four blocks per vector. Its weights are int8 already, so widening is cheap and the
// per-token work decides: lanes 4b..4b+3 of one int32 vector sum block b of a quad (four
// vpdpwssd, eight products a lane), and one convert, one multiply and one FMA per token serve
// four blocks, where the paired layout spent two of each. For that a quad's 4 x 32 weight bytes
// are transposed in 8-byte units (unpack + lane permute, shared by all tokens) and the
// activations re-laid to match, once per call (quad_acts). From L2 on one core this is 17-20 %
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

// Rows r and r + 1 of Q8_0 (NR = 2) or row r alone (NR = 1) times NT tokens: out[i * 4 + t].
// With 3-4 tokens two rows per pass share every activation load (4 vectors per token and quad,
// otherwise more loads than multiplies): through ops.matmul on one core (1024 rows, from L3)
// 1.41 against 1.93 ns per block and row at 4 tokens, 1.18 against 1.61 at 3, 2.47 against
// 3.8 at 8 (two groups); at 1-2 tokens it measured no faster (2: 10 % slower), so they take
// one row per pass.
template <int NT, int NR>
OSSRUN_VNNI void q8_0_i16_rows(const uint8_t* row, int64_t row_bytes, const QuadActs& x, int64_t nb, float* out) {
    const __m512i lanes = _mm512_load_si512(kQuadLanes);
    const __m512i scale_words = _mm512_load_si512(kQuadScaleWords);
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
            const __m512i halves = _mm512_permutex2var_epi16(_mm512_loadu_si512(b), scale_words, _mm512_loadu_si512(b + 64));
            ws[i] = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(_mm_cvtph_ps(_mm512_castsi512_si128(halves))));
        }
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
    for (int64_t blk = 4 * x.quads; blk < nb; ++blk) {  // the last nb % 4 blocks, one per vector
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

OSSRUN_VNNI void gemv_q8_0_i16(const MatmulArgs& a, int64_t r0, int64_t r1) {
    const QuadActs x = quad_acts(a.x_i16, a.x_i16_scale, a.ldx, a.W->cols / kBlockElems, a.n_tok);
    const int64_t row_bytes = int64_t(a.W->row_bytes);
    gemv_i16_groups(a, r0, r1, x, [row_bytes](auto nt, int nr, const uint8_t* row, const QuadActs& x, int64_t n, float* out) {
        constexpr int kTokens = decltype(nt)::value;
        if (kTokens > 2 && nr == 2) return q8_0_i16_rows<kTokens, 2>(row, row_bytes, x, n, out);
        for (int i = 0; i < nr; ++i) q8_0_i16_rows<kTokens, 1>(row + i * row_bytes, row_bytes, x, n, out + i * 4);
    }, 2);
}

#endif

}  // namespace ossrun::OSSRUN_ISA_NS