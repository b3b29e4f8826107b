// The dense quant formats of community gpt-oss files (ggml's block_q4_0 .. block_q6_K), compiled
// once per ISA. Every format is unpacked into one common form: a small signed integer per element
// and, per 16 elements, a float scale s and offset m, so that element = s * q - m exactly
// (s is an fp16 times an integer of at most 8 bits, s * q needs at most 25 significant bits:
// the only rounding is the final one, as in ggml's own dequantization). Row decoding and the
// float32 GEMV are written once over that form (quant_gemv.h); the int16 GEMVs widen each
// format's codes in registers instead (quant_words.h, quant_legacy.cpp, quant_k.cpp).
#pragma once
#include "../../quant_element.h"
#include "matmul_internal.h"

namespace ossrun::OSSRUN_ISA_NS {

constexpr int kGroupElems = 16;  // elements per scale/offset pair (K-quants' finest sub-block)

inline float half_at(const uint8_t* p) { return q8_0_scale(p); }

inline uint32_t u32_at(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// Each format: kElems per block of kBytes; unpack writes q[kElems], s[kGroups], m[kGroups].
// kHasMin: whether m can be non-zero (the others write m = 0).

// The unpackers work on 16-byte vectors (GCC vector types: SSE/AVX/NEON from one source) and
// store whole vectors, so the consumers' vector loads of q are forwarded from the stores.
typedef uint8_t u8x16 __attribute__((vector_size(16)));

inline u8x16 load16(const uint8_t* p) {
    u8x16 v;
    std::memcpy(&v, p, 16);
    return v;
}
inline void store16(int8_t* p, u8x16 v) { std::memcpy(p, &v, 16); }

// Byte j of the result is 16 where bit j of the 16 bits is set, else 0.
inline u8x16 bit4_of_bits(uint32_t bits16) {
    const uint8_t lo = uint8_t(bits16), hi = uint8_t(bits16 >> 8);
    const u8x16 b = {lo, lo, lo, lo, lo, lo, lo, lo, hi, hi, hi, hi, hi, hi, hi, hi};
    const u8x16 bit = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    return (u8x16)((b & bit) != 0) & 16;
}

// ---- 32-element blocks (quant_legacy.cpp) ---------------------------------------------------

// Element j of the block is the low nibble of byte j (j < 16) or the high nibble of byte j - 16;
// plus, for the 5-bit formats, bit j of the little-endian 32-bit qh as bit 4.
inline void unpack_nibbles32(const uint8_t* qs, int8_t* q, uint8_t bias, const uint8_t* qh = nullptr) {
    const u8x16 v = load16(qs);
    u8x16 lo = v & 15, hi = v >> 4;
    if (qh) {
        const uint32_t bits = u32_at(qh);
        lo |= bit4_of_bits(bits & 0xFFFF);
        hi |= bit4_of_bits(bits >> 16);
    }
    store16(q, lo - bias);  // wraps to the signed value in int8
    store16(q + 16, hi - bias);
}

struct Q4_0Format {
    static constexpr int kElems = 32, kBytes = 18, kGroups = 2;
    static constexpr bool kHasMin = false;
    static void unpack(const uint8_t* blk, int8_t* q, float* s, float* m) {
        unpack_nibbles32(blk + 2, q, 8);  // (nibble - 8) * d
        s[0] = s[1] = half_at(blk);
        m[0] = m[1] = 0.0f;
    }
};

struct Q4_1Format {
    static constexpr int kElems = 32, kBytes = 20, kGroups = 2;
    static constexpr bool kHasMin = true;
    static void unpack(const uint8_t* blk, int8_t* q, float* s, float* m) {
        unpack_nibbles32(blk + 4, q, 0);  // nibble * d + min
        s[0] = s[1] = half_at(blk);
        m[0] = m[1] = -half_at(blk + 2);
    }
};

struct Q5_0Format {
    static constexpr int kElems = 32, kBytes = 22, kGroups = 2;
    static constexpr bool kHasMin = false;
    static void unpack(const uint8_t* blk, int8_t* q, float* s, float* m) {
        unpack_nibbles32(blk + 6, q, 16, blk + 2);  // (5-bit value - 16) * d
        s[0] = s[1] = half_at(blk);
        m[0] = m[1] = 0.0f;
    }
};

struct Q5_1Format {
    static constexpr int kElems = 32, kBytes = 24, kGroups = 2;
    static constexpr bool kHasMin = true;
    static void unpack(const uint8_t* blk, int8_t* q, float* s, float* m) {
        unpack_nibbles32(blk + 8, q, 0, blk + 4);
        s[0] = s[1] = half_at(blk);
        m[0] = m[1] = -half_at(blk + 2);
    }
};

// IQ4_NL: each nibble indexes a fixed non-linear table of int8 levels, times the fp16 d.
alignas(16) constexpr int8_t kIq4nlLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                 1,    13,   25,  38,  53,  69,  89,  113};

struct Iq4NlFormat {
    static constexpr int kElems = 32, kBytes = 18, kGroups = 2;
    static constexpr bool kHasMin = false;
    static void unpack(const uint8_t* blk, int8_t* q, float* s, float* m) {
        u8x16 levels;
        std::memcpy(&levels, kIq4nlLevels, 16);
        const u8x16 v = load16(blk + 2);
        store16(q, __builtin_shuffle(levels, u8x16(v & 15)));  // a byte table lookup (pshufb)
        store16(q + 16, __builtin_shuffle(levels, u8x16(v >> 4)));
        s[0] = s[1] = half_at(blk);
        m[0] = m[1] = 0.0f;
    }
};

// ---- 256-element super-blocks (quant_k.cpp) -------------------------------------------------
// Element e = 128h + 32j + l (h < 2, j < 4, l < 32) of Q2_K / Q3_K: bits 2j, 2j+1 of quant byte
// 32h + l; Q3_K's third bit is bit 4h + j of hmask byte l.

struct Q2_KFormat {
    static constexpr int kElems = 256, kBytes = 84, kGroups = 16;
    static constexpr bool kHasMin = true;
    static void unpack(const uint8_t* blk, int8_t* q, float* s, float* m) {
        const uint8_t* scales = blk;  // per 16 elements: low nibble scale, high nibble min
        const uint8_t* qs = blk + 16;
        const float d = half_at(blk + 80), dmin = half_at(blk + 82);
        for (int h = 0; h < 2; ++h)
            for (int half = 0; half < 2; ++half) {
                const u8x16 v = load16(qs + 32 * h + 16 * half);
                for (int j = 0; j < 4; ++j) store16(q + 128 * h + 32 * j + 16 * half, (v >> (2 * j)) & 3);
            }
        for (int g = 0; g < 16; ++g) {
            s[g] = d * float(scales[g] & 0xF);
            m[g] = dmin * float(scales[g] >> 4);
        }
    }
};

struct Q3_KFormat {
    static constexpr int kElems = 256, kBytes = 110, kGroups = 16;
    static constexpr bool kHasMin = false;
    static void unpack(const uint8_t* blk, int8_t* q, float* s, float* m) {
        const uint8_t* hmask = blk;
        const uint8_t* qs = blk + 32;
        const uint8_t* sc = blk + 96;  // 16 6-bit scales, biased by 32
        const float d = half_at(blk + 108);
        for (int half = 0; half < 2; ++half) {
            const u8x16 hm = load16(hmask + 16 * half);
            for (int h = 0; h < 2; ++h) {
                const u8x16 v = load16(qs + 32 * h + 16 * half);
                for (int j = 0; j < 4; ++j) {
                    const u8x16 clear = ((hm >> (4 * h + j)) & 1) ^ 1;  // a clear bit means -4
                    store16(q + 128 * h + 32 * j + 16 * half, ((v >> (2 * j)) & 3) - (clear << 2));
                }
            }
        }
        for (int g = 0; g < 16; ++g) {
            // Low 4 bits: nibbles of bytes 0-7 (scales 0-7 low, 8-15 high); high 2 bits: bytes
            // 8-11, bit pair g / 4 of byte 8 + g % 4.
            const int low = g < 8 ? sc[g] & 0xF : sc[g - 8] >> 4;
            const int high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
            s[g] = d * float((low | high << 4) - 32);
            m[g] = 0.0f;
        }
    }
};

// Q4_K / Q5_K: eight sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes (ggml's
// get_scale_min_k4): sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scale) and 4-7 (min),
// 4-7 in the nibbles of bytes 8-11 plus the top 2 bits of bytes 0-3 (scale) and 4-7 (min).
// ossrun::k4_scale_min (quant_element.h), written once for the host and CUDA.

inline void k4_scales(const uint8_t* blk, float* s, float* m) {
    const float d = half_at(blk), dmin = half_at(blk + 2);
    for (int j = 0; j < 8; ++j) {
        int scale, min;
        k4_scale_min(blk + 4, j, scale, min);
        s[2 * j] = s[2 * j + 1] = d * float(scale);
        m[2 * j] = m[2 * j + 1] = dmin * float(min);
    }
}

// Element e = 64c + 32hi + l: nibble hi of quant byte 32c + l; with qh (Q5_K), plus bit e / 32
// of byte l of qh as bit 4.
inline void unpack_nibbles256(const uint8_t* qs, int8_t* q, const uint8_t* qh = nullptr) {
    for (int half = 0; half < 2; ++half) {
        const u8x16 high = qh ? load16(qh + 16 * half) : u8x16{};
        for (int c = 0; c < 4; ++c) {
            const u8x16 v = load16(qs + 32 * c + 16 * half);
            u8x16 lo = v & 15, hi = v >> 4;
            if (qh) {
                lo |= ((high >> (2 * c)) & 1) << 4;
                hi |= ((high >> (2 * c + 1)) & 1) << 4;
            }
            store16(q + 64 * c + 16 * half, lo);
            store16(q + 64 * c + 32 + 16 * half, hi);
        }
    }
}

struct Q4_KFormat {
    static constexpr int kElems = 256, kBytes = 144, kGroups = 16;
    static constexpr bool kHasMin = true;
    static void unpack(const uint8_t* blk, int8_t* q, float* s, float* m) {
        unpack_nibbles256(blk + 16, q);
        k4_scales(blk, s, m);
    }
};

struct Q5_KFormat {
    static constexpr int kElems = 256, kBytes = 176, kGroups = 16;
    static constexpr bool kHasMin = true;
    static void unpack(const uint8_t* blk, int8_t* q, float* s, float* m) {
        unpack_nibbles256(blk + 48, q, blk + 16);
        k4_scales(blk, s, m);
    }
};

// Q6_K: element e = 128h + 32p + l: low nibble (p < 2) or high nibble (p >= 2) of ql byte
// 64h + 32(p & 1) + l, bits 2p, 2p+1 of qh byte 32h + l on top; minus 32; int8 scale per 16.
struct Q6_KFormat {
    static constexpr int kElems = 256, kBytes = 210, kGroups = 16;
    static constexpr bool kHasMin = false;
    static void unpack(const uint8_t* blk, int8_t* q, float* s, float* m) {
        const uint8_t* ql = blk;
        const uint8_t* qh = blk + 128;
        const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
        const float d = half_at(blk + 208);
        for (int h = 0; h < 2; ++h)
            for (int half = 0; half < 2; ++half) {
                const u8x16 high = load16(qh + 32 * h + 16 * half);
                for (int p = 0; p < 4; ++p) {
                    const u8x16 byte = load16(ql + 64 * h + 32 * (p & 1) + 16 * half);
                    const u8x16 low = p < 2 ? byte & 15 : byte >> 4;
                    store16(q + 128 * h + 32 * p + 16 * half, (low | (((high >> (2 * p)) & 3) << 4)) - 32);
                }
            }
        for (int g = 0; g < 16; ++g) {
            s[g] = d * float(sc[g]);
            m[g] = 0.0f;
        }
    }
};

// ---- the common form, consumed --------------------------------------------------------------

// kVW int8 -> kVW floats (GCC's __builtin_convertvector widens element by element here: the
// sign-extending moves are spelled out).
inline vfloat int8_to_vfloat(const int8_t* p) {
#if defined(__AVX512F__)
    return vfloat(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
#elif defined(__AVX2__)
    return vfloat(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))));
#else
    vfloat v;
    for (int i = 0; i < kVW; ++i) v[i] = float(p[i]);
    return v;
#endif
}

// f in every lane, as one broadcast (simd.h's vsplat compiles to a masked insert per lane here).
inline vfloat broadcast(float f) {
#if defined(__AVX512F__)
    return vfloat(_mm512_set1_ps(f));
#elif defined(__AVX2__)
    return vfloat(_mm256_set1_ps(f));
#else
    return vsplat(f);
#endif
}

// One block -> its kElems floats, exactly: s * q - m per element (see the header).
template <class F>
inline void decode_quant_block(const uint8_t* blk, float* out) {
    alignas(64) int8_t q[F::kElems];
    float s[F::kGroups], m[F::kGroups];
    F::unpack(blk, q, s, m);
    for (int g = 0; g < F::kGroups; ++g) {
        const vfloat sv = broadcast(s[g]), mv = broadcast(m[g]);
        for (int i = 0; i < kGroupElems; i += kVW)
            vstore(out + g * kGroupElems + i, int8_to_vfloat(q + g * kGroupElems + i) * sv - mv);
    }
}

template <class F>
inline void decode_quant_row(const uint8_t* row, int64_t cols, float* out) {
    for (int64_t b = 0; b < cols / F::kElems; ++b) decode_quant_block<F>(row + b * F::kBytes, out + b * F::kElems);
}

}  // namespace ossrun::OSSRUN_ISA_NS
