// A conversation over a DeviceModel (device_model.h): csrc/session.cpp's contract (chunked
// prefill, exact truncation that replays the kept tokens when a sliding ring lost keys).
#include <algorithm>
#include <stdexcept>
#include <string>

#include "device_model.h"

namespace ossrun::cuda {

DeviceSession::DeviceSession(std::shared_ptr<DeviceModel> model, int64_t n_ctx, KvType kv_type)
    : model_(std::move(model)), kv_(model_->config(), n_ctx, kMaxChunk, kv_type, model_->first_gpu_layer()) {
    if (model_->first_gpu_layer() > 0)
        host_kv_ = std::make_unique<KvCache>(model_->config(), n_ctx, kMaxChunk, kv_type, 0, model_->first_gpu_layer());
}

Segment DeviceSession::segment(const int32_t* ids, int64_t n, float* logits, bool all_logits) {
    Segment g;
    g.kv = host_kv_.get();
    g.device_kv = &kv_;
    g.tokens = ids;
    g.n = n;
    g.pos0 = n_past();
    g.logits = logits;
    g.all_logits = all_logits;
    return g;
}

void DeviceSession::prefill(const int32_t* ids, int64_t n, float* logits, bool all_logits) {
    if (n < 1) throw std::invalid_argument("prefill needs at least one token");
    if (n_past() + n > n_ctx())
        throw std::length_error("context overflow: " + std::to_string(n_past()) + " + " + std::to_string(n) +
                                " tokens exceed n_ctx = " + std::to_string(n_ctx()));
    const int64_t V = vocab_size();
    for (int64_t i = 0; i < n; ++i)
        if (ids[i] < 0 || ids[i] >= V)
            throw std::out_of_range("token id " + std::to_string(ids[i]) + " is outside the vocabulary [0, " +
                                    std::to_string(V) + ")");
    for (int64_t done = 0; done < n;) {
        const int64_t T = std::min(kMaxChunk, n - done);
        float* out = all_logits ? logits + done * V : logits;  // else the final chunk's last row stays
        const Segment g = segment(ids + done, T, out, all_logits);
        model_->forward_batch(&g, 1);
        kv_.mark_held(n_past(), T);
        tokens_.insert(tokens_.end(), ids + done, ids + done + T);
        done += T;
    }
}

void DeviceSession::truncate(int64_t n) {
    if (n < 0 || n > n_past())
        throw std::out_of_range("truncate(" + std::to_string(n) + ") outside [0, n_past = " +
                                std::to_string(n_past()) + "]");
    tokens_.resize(size_t(n));
    if (n == 0 || can_resume_at(n)) return;
    std::vector<int32_t> kept = std::move(tokens_);  // a sliding ring lost keys: rebuild
    reset();
    std::vector<float> last(static_cast<size_t>(vocab_size()));
    prefill(kept.data(), int64_t(kept.size()), last.data(), false);
}

void DeviceSession::step(const DeviceSessionStep* steps, size_t n_steps) {
    if (n_steps == 0) return;
    std::vector<Segment> segs(n_steps);
    int64_t total = 0;
    for (size_t i = 0; i < n_steps; ++i) {
        const DeviceSessionStep& st = steps[i];
        DeviceSession& s = *st.session;
        if (s.model_ != steps[0].session->model_) throw std::invalid_argument("step: the sessions belong to different models");
        if (st.n < 1) throw std::invalid_argument("step: every session needs at least one token");
        if (s.n_past() + st.n > s.n_ctx())
            throw std::length_error("context overflow: " + std::to_string(s.n_past()) + " + " + std::to_string(st.n) +
                                    " tokens exceed n_ctx = " + std::to_string(s.n_ctx()));
        total += st.n;
        segs[i] = s.segment(st.ids, st.n, st.logits, st.all_logits);
    }
    if (total > kMaxChunk)
        throw std::invalid_argument("step: " + std::to_string(total) + " tokens exceed one chunk of " +
                                    std::to_string(kMaxChunk));
    steps[0].session->model_->forward_batch(segs.data(), n_steps);
    for (size_t i = 0; i < n_steps; ++i) {
        DeviceSession& s = *steps[i].session;
        s.kv_.mark_held(s.n_past(), steps[i].n);
        s.tokens_.insert(s.tokens_.end(), steps[i].ids, steps[i].ids + steps[i].n);
    }
}

void DeviceSession::reset() {
    tokens_.clear();
    kv_.clear();
    if (host_kv_) host_kv_->clear();
}

void DeviceSession::fill_synthetic(int64_t n) {
    if (n < 0 || n > n_ctx()) throw std::out_of_range("fill_synthetic: n outside [0, n_ctx]");
    reset();
    kv_.fill_synthetic(n);
    if (host_kv_) host_kv_->fill_synthetic(n);
    tokens_.assign(size_t(n), 0);
}

}  // namespace ossrun::cuda
