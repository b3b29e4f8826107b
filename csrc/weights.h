// Views of the weights as they lie in the GGUF memory map (MODEL.md §4.3). Nothing here owns
// memory: the Python model keeps the map alive for as long as these views exist.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ossrun {

// ggml type ids of the formats we accept.
enum class DType : int { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30, MXFP4 = 39 };

constexpr int kQ8BlockBytes = 34;     // fp16 scale + 32 int8
constexpr int kMxfp4BlockBytes = 17;  // E8M0 scale + 16 bytes of split-order nibbles
constexpr int kBlockElems = 32;

inline const char* dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::Q8_0: return "Q8_0";
        case DType::BF16: return "BF16";
        case DType::MXFP4: return "MXFP4";
    }
    return "?";
}

// Bytes one row of `cols` elements takes; 0 when cols does not fit the type's block size.
inline size_t row_bytes_for(DType t, int64_t cols) {
    switch (t) {
        case DType::F32: return size_t(cols) * 4;
        case DType::F16:
        case DType::BF16: return size_t(cols) * 2;
        case DType::Q8_0: return cols % kBlockElems ? 0 : size_t(cols / kBlockElems) * kQ8BlockBytes;
        case DType::MXFP4:
            return cols % kBlockElems ? 0 : size_t(cols / kBlockElems) * kMxfp4BlockBytes;
    }
    return 0;
}

// A stack of `n_mats` row-major matrices [rows, cols] (n_mats = E for expert tensors).
struct Matrix {
    const uint8_t* data = nullptr;
    DType type = DType::F32;
    int64_t n_mats = 1, rows = 0, cols = 0;
    size_t row_bytes = 0;

    const uint8_t* row(int64_t mat, int64_t r) const {
        return data + (size_t(mat) * size_t(rows) + size_t(r)) * row_bytes;
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
