#include "kv_cache.h"

#include <algorithm>

namespace ossrun {

KvCache::KvCache(const ModelConfig& c, int64_t n_ctx, int64_t max_chunk)
    : config_(c), n_ctx_(n_ctx), kv_width_(c.kv_width()), head_dim_(c.key_length) {
    const size_t L = size_t(c.block_count);
    cap_.resize(L);
    k_.resize(L);
    v_.resize(L);
    held_.resize(L);
    for (size_t l = 0; l < L; ++l) {
        const int64_t ring = c.sliding_window - 1 + max_chunk + kRollbackMargin;
        cap_[l] = c.is_sliding(int64_t(l)) ? std::min(n_ctx, ring) : n_ctx;
        k_[l].reset(new float[size_t(k_stride(int64_t(l)) * kv_width_)]);
        v_[l].reset(new float[size_t(cap_[l] * kv_width_)]);
        held_[l].assign(size_t(cap_[l]), -1);
    }
}

void KvCache::store(int64_t layer, int64_t pos, const float* k_row, const float* v_row) {
    const size_t l = size_t(layer);
    const int64_t s = slot(layer, pos), stride = k_stride(layer);
    float* kt = k_[l].get();
    for (int64_t i = 0; i < kv_width_; ++i) kt[i * stride + s] = k_row[i];  // [g][c] -> [g][c][slot]
    std::copy_n(v_row, kv_width_, v_[l].get() + s * kv_width_);
    held_[l][size_t(s)] = pos;
}

bool KvCache::can_resume_at(int64_t n) const {
    for (size_t l = 0; l < cap_.size(); ++l) {
        const int64_t lo = config_.is_sliding(int64_t(l)) ? std::max<int64_t>(0, n - config_.sliding_window + 1) : 0;
        for (int64_t p = lo; p < n; ++p)
            if (held_[l][size_t(p % cap_[l])] != p) return false;
    }
    return true;
}

void KvCache::clear() {
    for (auto& h : held_) std::fill(h.begin(), h.end(), -1);
}

size_t KvCache::bytes() const {
    size_t b = 0;
    for (int64_t c : cap_) b += 2 * size_t(c * kv_width_) * sizeof(float);
    return b;
}

}  // namespace ossrun
