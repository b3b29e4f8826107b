#include "session.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace ossrun {

Session::Session(std::shared_ptr<Model> model, int64_t n_ctx, KvType kv_type)
    : model_(std::move(model)),
      kv_(model_->config(), n_ctx, kMaxChunk, kv_type) {}

Scratch& Session::scratch() {
    if (!scratch_) scratch_ = std::make_unique<Scratch>(model_->config(), kMaxChunk);
    return *scratch_;
}

void Session::prefill(const int32_t* ids, int64_t n, float* logits, bool all_logits) {
    if (n < 1) throw std::invalid_argument("prefill needs at least one token");
    if (n_past() + n > n_ctx())
        throw std::length_error("context overflow: " + std::to_string(n_past()) + " + " +
                                std::to_string(n) + " tokens exceed n_ctx = " +
                                std::to_string(n_ctx()));
    const int64_t V = model_->config().vocab_size;
    for (int64_t i = 0; i < n; ++i)
        if (ids[i] < 0 || ids[i] >= V)
            throw std::out_of_range("token id " + std::to_string(ids[i]) +
                                    " is outside the vocabulary [0, " + std::to_string(V) + ")");
    for (int64_t done = 0; done < n;) {
        const int64_t T = std::min(kMaxChunk, n - done);
        // Without all_logits every chunk writes its last row to `logits`; the final one stays.
        float* out = all_logits ? logits + done * V : logits;
        model_->forward(kv_, scratch(), ids + done, T, n_past(), out, all_logits);
        tokens_.insert(tokens_.end(), ids + done, ids + done + T);
        done += T;
    }
}

std::vector<float> Session::prefill_traced(const int32_t* ids, int64_t n, float* logits) {
    if (n < 1 || n > kMaxChunk) throw std::invalid_argument("a traced prefill takes 1..256 tokens");
    reset();
    std::vector<float> residuals;
    scratch().trace = &residuals;
    try {
        prefill(ids, n, logits, true);
    } catch (...) {
        scratch().trace = nullptr;
        throw;
    }
    scratch().trace = nullptr;
    return residuals;
}

void Session::truncate(int64_t n) {
    if (n < 0 || n > n_past())
        throw std::out_of_range("truncate(" + std::to_string(n) + ") outside [0, n_past = " +
                                std::to_string(n_past()) + "]");
    tokens_.resize(size_t(n));
    if (n == 0 || kv_.can_resume_at(n)) return;
    // A sliding-window ring lost keys we need: rebuild the cache from the kept tokens.
    std::vector<int32_t> kept = std::move(tokens_);
    reset();
    std::vector<float> last(size_t(model_->config().vocab_size));
    prefill(kept.data(), int64_t(kept.size()), last.data(), false);
}

void Session::step(const SessionStep* steps, size_t n_steps, Scratch& scratch) {
    std::vector<Segment> segs(n_steps);
    int64_t total = 0;
    for (size_t i = 0; i < n_steps; ++i) {
        const SessionStep& st = steps[i];
        Session& s = *st.session;
        if (i > 0 && s.model_ != steps[0].session->model_)
            throw std::invalid_argument("step: the sessions belong to different models");
        if (st.n < 1) throw std::invalid_argument("step: every session needs at least one token");
        if (s.n_past() + st.n > s.n_ctx())
            throw std::length_error("context overflow: " + std::to_string(s.n_past()) + " + " +
                                    std::to_string(st.n) + " tokens exceed n_ctx = " +
                                    std::to_string(s.n_ctx()));
        total += st.n;
        segs[i].kv = &s.kv_;
        segs[i].tokens = st.ids;
        segs[i].n = st.n;
        segs[i].pos0 = s.n_past();
        segs[i].logits = st.logits;
        segs[i].all_logits = st.all_logits;
    }
    if (total > kMaxChunk || total > scratch.max_chunk)
        throw std::invalid_argument("step: " + std::to_string(total) + " tokens exceed one chunk of " +
                                    std::to_string(std::min(kMaxChunk, scratch.max_chunk)));
    if (n_steps == 0) return;
    steps[0].session->model_->forward_batch(segs.data(), n_steps, scratch);
    for (size_t i = 0; i < n_steps; ++i)
        steps[i].session->tokens_.insert(steps[i].session->tokens_.end(), steps[i].ids, steps[i].ids + steps[i].n);
}

void Session::fill_synthetic(int64_t n) {
    if (n < 0 || n > n_ctx()) throw std::out_of_range("fill_synthetic: n outside [0, n_ctx]");
    reset();
    kv_.fill_synthetic(n);
    tokens_.assign(size_t(n), 0);
}

void Session::reset() {
    tokens_.clear();
    kv_.clear();
}

}  // namespace ossrun
