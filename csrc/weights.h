// Views of the weights as they lie in the GGUF memory map (MODEL.md §4.3). Nothing here owns
// memory: the Python model keeps the map alive for as long as these views exist.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ossrun {

// ggml type ids of the formats we accept: the floats, Q8_0 and MXFP4, and the dense quants of
// community files (32-element blocks Q4_0 .. IQ4_NL, 256-element K-quant super-blocks Q2_K .. Q6_K).
enum class DType : int {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, IQ4_NL = 20, BF16 = 30, MXFP4 = 39
};

constexpr int kQ8BlockBytes = 34;     // fp16 scale + 32 int8
constexpr int kMxfp4BlockBytes = 17;  // E8M0 scale + 16 bytes of split-order nibbles
constexpr int kBlockElems = 32;
constexpr int kSuperBlockElems = 256;  // K-quants

struct BlockShape {
    int elems;  // elements per block (1 for the float types)
    int bytes;  // bytes per block
};

// The ggml block of each type (ggml-common.h's block_* structs).
inline BlockShape block_shape(DType t) {
    switch (t) {
        case DType::F32: return {1, 4};
        case DType::F16:
        case DType::BF16: return {1, 2};
        case DType::Q4_0: return {32, 18};    // fp16 d, 16 bytes of nibbles
        case DType::Q4_1: return {32, 20};    // fp16 d, fp16 m, nibbles
        case DType::Q5_0: return {32, 22};    // fp16 d, 32 high bits, nibbles
        case DType::Q5_1: return {32, 24};    // fp16 d, fp16 m, 32 high bits, nibbles
        case DType::Q8_0: return {32, kQ8BlockBytes};
        case DType::IQ4_NL: return {32, 18};  // fp16 d, 16 bytes of table indices
        case DType::MXFP4: return {32, kMxfp4BlockBytes};
        case DType::Q2_K: return {256, 84};   // 16 scale|min bytes, 64 of 2-bit quants, d, dmin
        case DType::Q3_K: return {256, 110};  // 32 high-bit bytes, 64 of 2-bit, 12 scales, d
        case DType::Q4_K: return {256, 144};  // d, dmin, 12 scale/min bytes, 128 of nibbles
        case DType::Q5_K: return {256, 176};  // d, dmin, 12 scale/min bytes, 32 high-bit, nibbles
        case DType::Q6_K: return {256, 210};  // 128 low nibbles, 64 high 2-bit, 16 int8 scales, d
    }
    return {0, 0};
}

inline const char* dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::Q4_0: return "Q4_0";
        case DType::Q4_1: return "Q4_1";
        case DType::Q5_0: return "Q5_0";
        case DType::Q5_1: return "Q5_1";
        case DType::Q8_0: return "Q8_0";
        case DType::Q2_K: return "Q2_K";
        case DType::Q3_K: return "Q3_K";
        case DType::Q4_K: return "Q4_K";
        case DType::Q5_K: return "Q5_K";
        case DType::Q6_K: return "Q6_K";
        case DType::IQ4_NL: return "IQ4_NL";
        case DType::BF16: return "BF16";
        case DType::MXFP4: return "MXFP4";
    }
    return "?";
}

// The dense quants beside Q8_0 (quant_legacy.cpp, quant_k.cpp).
inline bool is_dense_quant(DType t) {
    switch (t) {
        case DType::Q4_0: case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: case DType::IQ4_NL:
        case DType::Q2_K: case DType::Q3_K: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K:
            return true;
        default: return false;
    }
}

// Bytes one row of `cols` elements takes; 0 when cols does not fit the type's block size.
inline size_t row_bytes_for(DType t, int64_t cols) {
    const BlockShape b = block_shape(t);
    if (b.elems == 0 || cols <= 0 || cols % b.elems) return 0;
    return size_t(cols / b.elems) * size_t(b.bytes);
}

// How a matrix's bytes are laid out. kRows: as the GGUF stores it, row after row. kQ8_0x16 and
// kMxfp4x16: Q8_0 or MXFP4 rows repacked at load in groups of 16, block by block
// (q8_0_interleave.h, mxfp4_interleave.h), so that the fast decode GEMV holds 16 rows in the 16
// lanes of a vector; `row()` does not apply to them.
enum class RowLayout : uint8_t { kRows = 0, kQ8_0x16 = 1, kMxfp4x16 = 2 };

constexpr int kInterleaveRows = 16;                                     // rows of one group
constexpr int kQ8GroupBlockBytes = kInterleaveRows * kQ8BlockBytes;       // 544: 16 scales, 16 x 32 int8
constexpr int kMxfp4GroupBlockBytes = kInterleaveRows * kMxfp4BlockBytes;  // 272: 16 scales, 8 x 32 code bytes

// A stack of `n_mats` row-major matrices [rows, cols] (n_mats = E for expert tensors).
struct Matrix {
    const uint8_t* data = nullptr;
    DType type = DType::F32;
    int64_t n_mats = 1, rows = 0, cols = 0;
    size_t row_bytes = 0;
    RowLayout layout = RowLayout::kRows;

    // Row r's bytes (layout kRows only).
    const uint8_t* row(int64_t mat, int64_t r) const {
        return data + (size_t(mat) * size_t(rows) + size_t(r)) * row_bytes;
    }
    // Block b of the 16-row group g (layouts kQ8_0x16, kMxfp4x16): the group takes the bytes of
    // its 16 rows.
    const uint8_t* group_block(int64_t mat, int64_t g, int64_t b) const {
        const size_t block_bytes = layout == RowLayout::kMxfp4x16 ? kMxfp4GroupBlockBytes : kQ8GroupBlockBytes;
        return data + (size_t(mat) * size_t(rows) + size_t(g) * kInterleaveRows) * row_bytes + size_t(b) * block_bytes;
    }
    size_t total_bytes() const { return size_t(n_mats) * size_t(rows) * row_bytes; }
};

struct LayerWeights {
    const float* attn_norm = nullptr;  // [H]
    Matrix attn_q, attn_k, attn_v;     // [n_q*d, H], [n_kv*d, H], [n_kv*d, H]
    const float *attn_q_b = nullptr, *attn_k_b = nullptr, *attn_v_b = nullptr;
    Matrix attn_output;                // [H, n_q*d]
    const float* attn_output_b = nullptr;
    const float* attn_sinks = nullptr;  // [n_q]
    const float* post_attention_norm = nullptr;  // [H]
    Matrix router;                      // ffn_gate_inp [E, H]
    const float* router_b = nullptr;    // [E]
    Matrix gate_exps, up_exps;          // [E][I, H]
    Matrix down_exps;                   // [E][H, I]
    const float *gate_exps_b = nullptr, *up_exps_b = nullptr;  // [E, I]
    const float* down_exps_b = nullptr;                        // [E, H]
};

struct ModelWeights {
    Matrix token_embd;                   // [V, H]
    const float* output_norm = nullptr;  // [H]
    Matrix output;                       // [V, H]
    std::vector<LayerWeights> layers;
};

}  // namespace ossrun
