// One conversation's state over a shared Model: its KV cache, activation scratch and the tokens
// it has seen. Prefill runs in chunks; truncation that reaches past what the sliding-window rings
// still hold replays the kept tokens, so a session is always exact after any truncate().
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model.h"

namespace ossrun {

class Session;

// One session's part of a batched step: ids appended to its end, logits as in prefill(). S is
// Session here, cuda::DeviceSession on the GPU.
template <class S>
struct StepOf {
    S* session = nullptr;
    const int32_t* ids = nullptr;
    int64_t n = 0;
    float* logits = nullptr;
    bool all_logits = false;
};
using SessionStep = StepOf<Session>;

class Session {
public:
    static constexpr int64_t kMaxChunk = 256;

    Session(std::shared_ptr<Model> model, int64_t n_ctx, KvType kv_type = KvType::F32);

    int64_t n_past() const { return int64_t(tokens_.size()); }
    int64_t n_ctx() const { return kv_.n_ctx(); }
    const std::vector<int32_t>& tokens() const { return tokens_; }
    size_t kv_bytes() const { return kv_.bytes(); }
    KvType kv_type() const { return kv_.type(); }
    // Makes the whole KV cache resident now (what a full context holds): for memory benchmarks.
    void commit_kv() { kv_.commit(); }
    // For benchmarks of decode at depth: resets, then fills the cache with n positions of
    // pseudo-random keys and values (and n_past = n, tokens 0) instead of prefilling n tokens;
    // attention's cost does not depend on the values. The logits that follow are meaningless.
    void fill_synthetic(int64_t n);
    int64_t vocab_size() const { return model_->config().vocab_size; }
    const ModelConfig& config() const { return model_->config(); }

    // Appends tokens; writes [n, V] logits when all_logits, else the last position's [V].
    void prefill(const int32_t* ids, int64_t n, float* logits, bool all_logits);
    // prefill() on a fresh session that also returns the residual stream after every half
    // layer: [2L][n][H] (n <= kMaxChunk, one chunk).
    std::vector<float> prefill_traced(const int32_t* ids, int64_t n, float* logits);
    void truncate(int64_t n);
    // True when truncate(n) keeps the cache as it is (no replay of the kept tokens).
    bool truncates_in_place(int64_t n) const { return n == 0 || (n <= n_past() && kv_.can_resume_at(n)); }
    void reset();

    // One forward over several sessions of one model (continuous batching), each appending its
    // ids (n <= kMaxChunk in all) in one chunk; uses `scratch` (rows >= the total), not theirs.
    static void step(const SessionStep* steps, size_t n_steps, Scratch& scratch);

private:
    Scratch& scratch();

    std::shared_ptr<Model> model_;
    KvCache kv_;
    // Made on first use: sessions driven only by step() never need their own.
    std::unique_ptr<Scratch> scratch_;
    std::vector<int32_t> tokens_;
};

}  // namespace ossrun
