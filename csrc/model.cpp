#include "model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "cpu_backend.h"
#include "forward.h"
#include "mxfp4_interleave.h"

namespace ossrun {

Scratch::Scratch(const ModelConfig& c, int64_t chunk) : max_chunk(chunk) {
    const size_t T = size_t(chunk), H = size_t(c.embedding_length), I = size_t(c.expert_feed_forward_length);
    const size_t k = size_t(c.expert_used_count), half = size_t(c.key_length / 2);
    residual.resize(T * H);
    normed.resize(T * H);
    q.resize(T * size_t(c.q_width()));
    this->k.resize(T * size_t(c.kv_width()));
    v.resize(T * size_t(c.kv_width()));
    attn.resize(T * size_t(c.q_width()));
    proj.resize(T * H);
    router_logits.resize(T * size_t(c.expert_count));
    rope_cos.resize(T * half);
    rope_sin.resize(T * half);
    positions.resize(T);
    expert_idx.resize(T * k);
    expert_weight.resize(T * k);
    const size_t E = size_t(c.expert_count), P = T * k;
    expert_count.resize(E);
    expert_offset.resize(E + 1);
    pair_token.resize(P);
    pair_weight.resize(P);
    token_pair.resize(P);
    expert_x.resize(P * H);
    expert_gate.resize(P * I);
    expert_up.resize(P * I);
    expert_h.resize(P * I);
    expert_y.resize(P * H);
    jobs.reserve(2 * E);
    row_segment.resize(T);
}

Model::Model(const ModelConfig& config, ModelWeights weights, const ModelOptions& options)
    : config_(config),
      weights_(std::move(weights)),
      kernels_(select_kernel_table(options.isa)),
      pool_(options.threads),
      rope_(make_rope_table(config)),
      use_i16_(options.precision == "fast" && kernels_->quantize_i16 != nullptr),
      fast_precision_(options.precision == "fast") {
    if (options.precision != "fast" && options.precision != "f32")
        throw std::invalid_argument("precision must be 'fast' or 'f32'");
}

size_t Model::interleave_q8_0(bool release_source_pages) {
    if (!use_i16_ || !kernels_->fast_row_groups) return 0;
    std::lock_guard<std::mutex> lock(forward_mutex_);
    interleaved_.interleave(weights_, pool_, release_source_pages);
    return interleaved_.bytes();
}

size_t Model::interleave_mxfp4_experts_in_place() {
    if (!use_i16_ || !kernels_->fast_row_groups) return 0;
    std::lock_guard<std::mutex> lock(forward_mutex_);
    const size_t n = ossrun::interleave_mxfp4_experts_in_place(weights_, pool_);
    interleaved_mxfp4_bytes_ += n;
    return n;
}

void Model::forward(KvCache& kv, Scratch& s, const int32_t* tokens, int64_t T, int64_t pos0,
                    float* logits, bool all_logits) {
    Segment seg;
    seg.kv = &kv;
    seg.tokens = tokens;
    seg.n = T;
    seg.pos0 = pos0;
    seg.logits = logits;
    seg.all_logits = all_logits;
    forward_batch(&seg, 1, s);
}

void Model::forward_batch(const Segment* segs, size_t n_segs, Scratch& s) {
    if (n_segs < 1) throw std::invalid_argument("forward: no segments");
    Batch batch{segs, n_segs, 0};
    for (size_t i = 0; i < n_segs; ++i) {
        const Segment& g = segs[i];
        if (!g.kv || !g.tokens || !g.logits || g.n < 1) throw std::invalid_argument("forward: empty segment");
        if (g.pos0 < 0 || g.pos0 + g.n > g.kv->n_ctx()) throw std::invalid_argument("forward: context overflow");
        for (size_t j = 0; j < i; ++j)
            if (segs[j].kv == g.kv) throw std::invalid_argument("forward: two segments share one KV cache");
        batch.T += g.n;
    }
    if (batch.T > s.max_chunk) throw std::invalid_argument("forward: chunk size out of range");
    std::lock_guard<std::mutex> lock(forward_mutex_);
    struct StopTimer {
        PartTimer& t;
        ~StopTimer() { t.stop(); }
    } stop_timer{part_timer_};
    part_timer_.switch_to(Part::kOther);
    CpuBackend cpu(*this, s);
    forward_pass(config_, batch, ForwardPlan::on(cpu, config_.block_count), s.trace);
}

}  // namespace ossrun
