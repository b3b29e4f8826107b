#include "kv_cache.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "numerics.h"

namespace ossrun {

KvType parse_kv_type(const std::string& name) {
    if (name == "f32") return KvType::F32;
    if (name == "f16") return KvType::F16;
    if (name == "bf16") return KvType::BF16;
    throw std::invalid_argument("kv_type must be 'f16', 'bf16' or 'f32', got '" + name + "'");
}

KvCache::KvCache(const ModelConfig& c, int64_t n_ctx, int64_t max_chunk, KvType type, int64_t layer_begin,
                 int64_t layer_end)
    : config_(c), n_ctx_(n_ctx), kv_width_(c.kv_width()), head_dim_(c.key_length), n_kv_(c.head_count_kv), type_(type),
      elem_(kv_type_bytes(type)) {
    const size_t L = size_t(c.block_count);
    cap_.resize(L);
    k_.resize(L);
    v_.resize(L);
    held_.resize(L);
    if (layer_end < 0) layer_end = c.block_count;
    if (layer_begin < 0 || layer_begin > layer_end || layer_end > c.block_count)
        throw std::invalid_argument("KvCache: layers outside [0, block_count]");
    for (size_t l = 0; l < L; ++l) {
        const int64_t ring = c.sliding_window - 1 + max_chunk + kRollbackMargin;
        const bool held = int64_t(l) >= layer_begin && int64_t(l) < layer_end;
        cap_[l] = !held ? 0 : c.is_sliding(int64_t(l)) ? std::min(n_ctx, ring) : n_ctx;
        k_[l].reset(new uint8_t[k_bytes(int64_t(l))]);
        v_[l].reset(new uint8_t[v_bytes(int64_t(l))]);
        held_[l].assign(size_t(cap_[l]), -1);
    }
}

namespace {

// Slot s of every kv head: k_row and v_row [n_kv][d] -> the heads' key blocks and value rows.
template <class E, class Convert>
void store_typed(uint8_t* k_bytes, uint8_t* v_bytes, int64_t n_kv, int64_t d, int64_t key_slots, int64_t cap,
                 int64_t s, const float* k_row, const float* v_row, Convert convert) {
    for (int64_t g = 0; g < n_kv; ++g) {
        E* k = reinterpret_cast<E*>(k_bytes) + g * key_slots * d + (s / kKeyBlock) * d * kKeyBlock + s % kKeyBlock;
        E* v = reinterpret_cast<E*>(v_bytes) + (g * cap + s) * d;
        for (int64_t c = 0; c < d; ++c) k[c * kKeyBlock] = convert(k_row[g * d + c]);
        for (int64_t c = 0; c < d; ++c) v[c] = convert(v_row[g * d + c]);
    }
}

}  // namespace

void KvCache::store(int64_t layer, int64_t pos, const float* k_row, const float* v_row) {
    const size_t l = size_t(layer);
    if (cap_[l] == 0) throw std::logic_error("KvCache: layer " + std::to_string(layer) + " is not held here");
    const int64_t s = slot(layer, pos), ks = key_slots(layer), cap = cap_[l];
    uint8_t* k = k_[l].get();
    uint8_t* v = v_[l].get();
    switch (type_) {
        case KvType::F16:
            store_typed<uint16_t>(k, v, n_kv_, head_dim_, ks, cap, s, k_row, v_row, float_to_fp16);
            break;
        case KvType::BF16:
            store_typed<uint16_t>(k, v, n_kv_, head_dim_, ks, cap, s, k_row, v_row, float_to_bf16);
            break;
        default:
            store_typed<float>(k, v, n_kv_, head_dim_, ks, cap, s, k_row, v_row, [](float x) { return x; });
    }
    held_[l][size_t(s)] = pos;
}

bool KvCache::can_resume_at(int64_t n) const {
    for (size_t l = 0; l < cap_.size(); ++l) {
        if (cap_[l] == 0) continue;  // not held here
        const int64_t lo = config_.is_sliding(int64_t(l)) ? std::max<int64_t>(0, n - config_.sliding_window + 1) : 0;
        for (int64_t p = lo; p < n; ++p)
            if (held_[l][size_t(p % cap_[l])] != p) return false;
    }
    return true;
}

void KvCache::fill_synthetic(int64_t n) {
    clear();
    std::vector<float> k(static_cast<size_t>(kv_width_)), v(static_cast<size_t>(kv_width_));
    uint32_t state = 12345u;
    auto next = [&] {  // uniform in [-1, 1): an LCG is plenty for values nobody reads
        state = state * 1664525u + 1013904223u;
        return float(int32_t(state)) * (1.0f / 2147483648.0f);
    };
    for (int64_t l = 0; l < config_.block_count; ++l)
        for (int64_t p = std::max<int64_t>(0, n - cap_[size_t(l)]); p < n && cap_[size_t(l)] > 0; ++p) {
            for (int64_t i = 0; i < kv_width_; ++i) k[size_t(i)] = next(), v[size_t(i)] = next();
            store(l, p, k.data(), v.data());
        }
}

void KvCache::clear() {
    for (auto& h : held_) std::fill(h.begin(), h.end(), -1);
}

void KvCache::commit() {
    for (size_t l = 0; l < cap_.size(); ++l) {
        std::fill_n(k_[l].get(), k_bytes(int64_t(l)), uint8_t(0));
        std::fill_n(v_[l].get(), v_bytes(int64_t(l)), uint8_t(0));
    }
}

size_t KvCache::bytes() const {
    size_t b = 0;
    for (size_t l = 0; l < cap_.size(); ++l) b += k_bytes(int64_t(l)) + v_bytes(int64_t(l));
    return b;
}

}  // namespace ossrun
