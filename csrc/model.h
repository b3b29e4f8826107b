// A loaded gpt-oss model: config, weight views into the GGUF map, the chosen kernels and the
// thread pool. forward() runs the network (forward.h) on the CPU backend (cpu_backend.h).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend.h"
#include "config.h"
#include "kernels.h"
#include "kv_cache.h"
#include "part_timer.h"
#include "q8_0_interleave_weights.h"
#include "rope.h"
#include "threadpool.h"
#include "weights.h"

namespace ossrun {

struct ModelOptions {
    int threads = 1;
    std::string isa = "auto";  // kernel variant, see kernels.h
    // "f32": float32 activations end to end. "fast": MXFP4 and Q8_0 matmuls take int16
    // activations where the kernel variant has int16 dot products (weights stay exact).
    std::string precision = "fast";
};

// Activation buffers for up to max_chunk tokens, allocated once per session.
struct Scratch {
    explicit Scratch(const ModelConfig& c, int64_t max_chunk);
    int64_t max_chunk;
    std::vector<float> residual, normed, q, k, v, attn, proj, router_logits;
    std::vector<float> rope_cos, rope_sin;
    std::vector<int64_t> positions;
    std::vector<int32_t> expert_idx;    // [T, k]
    std::vector<float> expert_weight;   // [T, k]
    // MoE: the (token, expert) pairs grouped by expert; row p of each buffer belongs to pair p.
    std::vector<int64_t> expert_count, expert_offset;  // [E], [E + 1]
    std::vector<int32_t> pair_token;                     // [T * k]
    std::vector<float> pair_weight;                      // [T * k]
    std::vector<int32_t> token_pair;                     // [T, k]: its pairs, ascending
    std::vector<float> expert_x, expert_gate, expert_up, expert_h, expert_y;
    std::vector<int16_t> expert_x_i16;                   // fast precision: expert_x as int16
    std::vector<float> expert_x_i16_scale;               //   and one scale per 32
    std::vector<int16_t> x_i16;                          // fast precision: [rows, width]
    std::vector<float> x_i16_scale;                      //   and one scale per 32
    std::vector<MatmulArgs> jobs;
    // Attention tasks: the first task of each (token, kv head) row, and the partial results of
    // rows split into chunks of keys (flash-decoding): [task][head][d], and max and sum [task][head].
    std::vector<int64_t> attn_task_first;
    std::vector<float> attn_part_acc, attn_part_max, attn_part_sum;
    // Batched forwards: the segment of each row, and the wanted logits rows of all segments
    // before they are copied to each segment's own buffer.
    std::vector<int32_t> row_segment;  // [T]
    std::vector<float> logits;
    // When set, forward() appends the residual stream [T, H] after every attention and MoE
    // half (2 per layer), so a tool can find the first step where we leave the reference.
    std::vector<float>* trace = nullptr;
};

class Model {
public:
    Model(const ModelConfig& config, ModelWeights weights, const ModelOptions& options);

    const ModelConfig& config() const { return config_; }
    const KernelTable& kernels() const { return *kernels_; }
    int threads() const { return pool_.size(); }
    const RopeTable& rope() const { return rope_; }
    bool uses_i16() const { return use_i16_; }
    // precision == "fast" (whatever this CPU's kernels make of it; a device model reads it too).
    bool fast_precision() const { return fast_precision_; }
    // Bytes of weight matrices read by matmuls since load (each matmul's rows once, however many
    // tokens share them): what `ossrun bench` divides by the tokens decoded.
    uint64_t weight_bytes_read() const { return weight_bytes_read_; }
    // Wall seconds each part of the forward took since load (part_timer.h); read between forwards.
    double part_seconds(Part p) const { return part_timer_.seconds(p); }

    // Runs T tokens at positions pos0 .. pos0+T-1 (T <= scratch.max_chunk), appending their K/V
    // to the cache. Writes logits of every token ([T, V]) when all_logits, else of the last one.
    // Sessions of one model may be driven from several threads: their forwards take turns.
    void forward(KvCache& kv, Scratch& s, const int32_t* tokens, int64_t T, int64_t pos0,
                 float* logits, bool all_logits);
    // Several sequences in one forward (continuous batching): their rows are stacked (at most
    // s.max_chunk in all), so every matmul reads its weights once for all of them and each expert
    // once for all tokens routed to it; RoPE and attention use each row's own position and cache.
    // Each segment needs its own cache. forward() is the one-segment case.
    void forward_batch(const Segment* segs, size_t n_segs, Scratch& s);

    // The weight views (the CUDA device model uploads from them).
    const ModelWeights& weights() const { return weights_; }

    // Fast precision on the AVX-512 variants: repacks the dense Q8_0 matrices into 16-row
    // groups (q8_0_interleave.h), the layout their decode GEMV is fastest on; elsewhere nothing.
    // Not for a model whose weights a device model copies (it expects the GGUF's bytes). Returns
    // the bytes repacked. release_source_pages: see InterleavedQ8_0::interleave.
    size_t interleave_q8_0(bool release_source_pages);
    const InterleavedQ8_0& interleaved_q8_0() const { return interleaved_; }
    // The same for the MXFP4 experts (mxfp4_interleave.h), in place: only experts that lie in
    // memory this process may write (weights_in_ram.py's copy); those in the file's read-only
    // map are left as they are. Returns the bytes repacked; a second call repacks nothing.
    size_t interleave_mxfp4_experts_in_place();
    size_t interleaved_mxfp4_bytes() const { return interleaved_mxfp4_bytes_; }

private:
    friend class CpuBackend;  // the ops of a forward on this model's kernels, weights and pool

    ModelConfig config_;
    ModelWeights weights_;
    const KernelTable* kernels_;
    ThreadPool pool_;
    std::mutex forward_mutex_;  // the pool runs one forward at a time
    RopeTable rope_;
    bool use_i16_;
    bool fast_precision_;
    uint64_t weight_bytes_read_ = 0;  // written under forward_mutex_
    PartTimer part_timer_;            // likewise
    InterleavedQ8_0 interleaved_;     // owns the interleaved copies weights_ points at
    size_t interleaved_mxfp4_bytes_ = 0;
};

}  // namespace ossrun
