// Hyperparameters of one gpt-oss model (MODEL.md §1). Names follow the GGUF keys; the constants
// that GGUF does not store (window parity, YaRN betas, SwiGLU alpha/limit) are fixed by the arch.
#pragma once
#include <cstdint>

namespace ossrun {

struct ModelConfig {
    int64_t block_count = 0;              // L
    int64_t embedding_length = 0;         // H
    int64_t expert_feed_forward_length = 0;  // I
    int64_t head_count = 0;               // n_q
    int64_t head_count_kv = 0;            // n_kv
    int64_t key_length = 0;               // d (== value_length)
    int64_t expert_count = 0;             // E
    int64_t expert_used_count = 0;        // k
    int64_t vocab_size = 0;               // V (rows of token_embd)
    int64_t sliding_window = 0;           // W, on even layers only
    double rope_freq_base = 150000.0;
    double rope_scaling_factor = 32.0;
    double rope_original_context = 4096.0;
    double yarn_beta_fast = 32.0;
    double yarn_beta_slow = 1.0;
    float rms_norm_eps = 1e-5f;
    float swiglu_alpha = 1.702f;
    float swiglu_limit = 7.0f;

    int64_t q_width() const { return head_count * key_length; }
    int64_t kv_width() const { return head_count_kv * key_length; }
    bool is_sliding(int64_t layer) const { return layer % 2 == 0; }
};

}  // namespace ossrun
