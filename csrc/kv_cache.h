// The KV cache (MODEL.md §2.5): K after RoPE and V, per layer, in float32 or a 16-bit type
// (KvType: IEEE half or bfloat16, rounded to nearest even when stored), each KV head's apart, so
// that attention reads one head's keys and values as two streams: V is [n_kv][slot][d]; K is
// [n_kv][slot block][d][kKeyBlock], blocks of kKeyBlock slots transposed (kernels.h), so
// attention scores a vector of keys at once. Full
// layers hold every position; sliding layers hold a ring of the last positions, big enough for
// one prefill chunk plus a rollback margin, and remember which position each slot holds so that
// a truncation that reaches past the ring is detected (the session then replays its tokens).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "kernels.h"

namespace ossrun {

class KvCache {
public:
    // Rollback depth a sliding layer survives without a replay.
    static constexpr int64_t kRollbackMargin = 1024;

    // Holds the layers layer_begin .. layer_end - 1 (default: all); the others have no slots (a
    // device session's cache for the layers that run on the CPU).
    KvCache(const ModelConfig& c, int64_t n_ctx, int64_t max_chunk, KvType type = KvType::F32,
            int64_t layer_begin = 0, int64_t layer_end = -1);

    int64_t n_ctx() const { return n_ctx_; }
    KvType type() const { return type_; }
    int64_t capacity(int64_t layer) const { return cap_[size_t(layer)]; }
    int64_t v_stride() const { return head_dim_; }  // elements from one value slot to the next
    // Keys of kv head g in blocks (kKeyBlock, AttentionArgs::k).
    const void* k(int64_t layer, int64_t g) const {
        return k_[size_t(layer)].get() + size_t(g * key_slots(layer) * head_dim_ * elem_);
    }
    const void* v(int64_t layer, int64_t g) const {
        return v_[size_t(layer)].get() + size_t(g * cap_[size_t(layer)] * head_dim_ * elem_);
    }
    // Writes position pos: k_row and v_row are [n_kv * d] (K after RoPE), converted to type().
    void store(int64_t layer, int64_t pos, const float* k_row, const float* v_row);

    // True when every layer held still has the keys a query at position n would read below n.
    bool can_resume_at(int64_t n) const;
    // Fills every held slot of positions 0 .. n - 1 with pseudo-random keys and values (for
    // benchmarks at depth: attention's cost does not depend on them).
    void fill_synthetic(int64_t n);
    void clear();
    size_t bytes() const;
    // Writes every page of the cache now (contents meaningless: no slot is marked held by it),
    // so its whole size is resident from the start, as at a full context.
    void commit();

private:
    int64_t slot(int64_t layer, int64_t pos) const { return pos % cap_[size_t(layer)]; }
    int64_t key_slots(int64_t layer) const { return key_block_slots(cap_[size_t(layer)]); }
    size_t k_bytes(int64_t layer) const { return size_t(key_slots(layer) * kv_width_ * elem_); }
    size_t v_bytes(int64_t layer) const { return size_t(cap_[size_t(layer)] * kv_width_ * elem_); }

    ModelConfig config_;
    int64_t n_ctx_, kv_width_, head_dim_, n_kv_;
    KvType type_;
    int64_t elem_;  // bytes per element
    std::vector<int64_t> cap_;
    // Left uninitialised: pages are only touched (and counted in RSS) once positions are written.
    std::vector<std::unique_ptr<uint8_t[]>> k_, v_;
    std::vector<std::vector<int64_t>> held_;  // position held by each slot, -1 if none
};

// "f32", "f16" or "bf16" -> KvType; throws std::invalid_argument otherwise.
KvType parse_kv_type(const std::string& name);

}  // namespace ossrun
