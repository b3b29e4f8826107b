#include "session.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace ossrun {

Session::Session(std::shared_ptr<Model> model, int64_t n_ctx)
    : model_(std::move(model)),
      kv_(model_->config(), n_ctx, kMaxChunk),
      scratch_(model_->config(), kMaxChunk) {}

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
        model_->forward(kv_, scratch_, ids + done, T, n_past(), out, all_logits);
        tokens_.insert(tokens_.end(), ids + done, ids + done + T);
        done += T;
    }
}

std::vector<float> Session::prefill_traced(const int32_t* ids, int64_t n, float* logits) {
    if (n < 1 || n > kMaxChunk) throw std::invalid_argument("a traced prefill takes 1..256 tokens");
    reset();
    std::vector<float> residuals;
    scratch_.trace = &residuals;
    try {
        prefill(ids, n, logits, true);
    } catch (...) {
        scratch_.trace = nullptr;
        throw;
    }
    scratch_.trace = nullptr;
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

void Session::reset() {
    tokens_.clear();
    kv_.clear();
}

}  // namespace ossrun
