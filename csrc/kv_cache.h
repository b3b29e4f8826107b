// The KV cache (MODEL.md §2.5): K after RoPE and V, float32 [slot][n_kv][d] per layer. Full
// layers hold every position; sliding layers hold a ring of the last positions, big enough for
// one prefill chunk plus a rollback margin, and remember which position each slot holds so that
// a truncation that reaches past the ring is detected (the session then replays its tokens).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "config.h"

namespace ossrun {

class KvCache {
public:
    // Rollback depth a sliding layer survives without a replay.
    static constexpr int64_t kRollbackMargin = 1024;

    KvCache(const ModelConfig& c, int64_t n_ctx, int64_t max_chunk);

    int64_t n_ctx() const { return n_ctx_; }
    int64_t capacity(int64_t layer) const { return cap_[size_t(layer)]; }
    int64_t slot_stride() const { return kv_width_; }  // floats from one slot to the next
    float* k(int64_t layer) { return k_[size_t(layer)].get(); }
    float* v(int64_t layer) { return v_[size_t(layer)].get(); }
    float* k_at(int64_t layer, int64_t pos) { return k(layer) + slot(layer, pos) * kv_width_; }
    float* v_at(int64_t layer, int64_t pos) { return v(layer) + slot(layer, pos) * kv_width_; }
    void mark_written(int64_t layer, int64_t pos) { held_[size_t(layer)][size_t(slot(layer, pos))] = pos; }

    // True when every layer still holds the keys a query at position n would read below n.
    bool can_resume_at(int64_t n) const;
    void clear();
    size_t bytes() const;

private:
    int64_t slot(int64_t layer, int64_t pos) const { return pos % cap_[size_t(layer)]; }

    ModelConfig config_;
    int64_t n_ctx_, kv_width_;
    std::vector<int64_t> cap_;
    // Left uninitialised: pages are only touched (and counted in RSS) once positions are written.
    std::vector<std::unique_ptr<float[]>> k_, v_;
    std::vector<std::vector<int64_t>> held_;  // position held by each slot, -1 if none
};

}  // namespace ossrun
