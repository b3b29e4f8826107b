// The KV cache in device memory (device_model.h): the CPU cache's capacities and resume rules
// (csrc/kv_cache.cpp), its K and V as [cap][n_kv][d] arrays on the GPU.
#include <algorithm>
#include <atomic>
#include <stdexcept>

#include "cuda_check.h"
#include "device_model.h"
#include "kernels.cuh"

namespace ossrun::cuda {

int64_t kv_capacity(const ModelConfig& c, int64_t layer, int64_t n_ctx, int64_t max_chunk) {
    const int64_t ring = c.sliding_window - 1 + max_chunk + KvCache::kRollbackMargin;
    return c.is_sliding(layer) ? std::min(n_ctx, ring) : n_ctx;
}

size_t kv_cache_bytes(const ModelConfig& c, int64_t n_ctx, int64_t max_chunk, KvType type, int64_t first_gpu_layer) {
    size_t b = 0;
    for (int64_t l = first_gpu_layer; l < c.block_count; ++l)
        b += 2 * size_t(kv_capacity(c, l, n_ctx, max_chunk) * c.kv_width() * kv_type_bytes(type));
    return b;
}

uint64_t DeviceKvCache::next_id() {
    static std::atomic<uint64_t> last{0};
    return ++last;
}

DeviceKvCache::DeviceKvCache(const ModelConfig& c, int64_t n_ctx, int64_t max_chunk, KvType type,
                             int64_t first_gpu_layer)
    : config_(c), n_ctx_(n_ctx), type_(type), id_(next_id()) {
    if (n_ctx < 1) throw std::invalid_argument("n_ctx must be positive");
    if (first_gpu_layer < 0 || first_gpu_layer >= c.block_count)
        throw std::invalid_argument("DeviceKvCache: the first GPU layer is outside the model");
    const size_t L = size_t(c.block_count);
    cap_.resize(L);
    k_.assign(L, nullptr);
    v_.assign(L, nullptr);
    held_.resize(L);
    try {
        for (size_t l = 0; l < L; ++l) {
            if (int64_t(l) < first_gpu_layer) continue;  // cap 0: the CPU's layer
            cap_[l] = kv_capacity(c, int64_t(l), n_ctx, max_chunk);
            const size_t bytes = size_t(cap_[l] * c.kv_width() * kv_type_bytes(type));
            for (void** p : {&k_[l], &v_[l]}) {
                const cudaError_t e = cudaMalloc(p, bytes);
                if (e != cudaSuccess) {
                    cudaGetLastError();
                    *p = nullptr;
                    throw CudaError("cannot allocate the KV cache (" +
                                    std::to_string(kv_cache_bytes(c, n_ctx, max_chunk, type, first_gpu_layer) >> 20) +
                                    " MiB at n_ctx " + std::to_string(n_ctx) + ") in device memory: " +
                                    cudaGetErrorName(e) + "; use a shorter n_ctx or a 16-bit kv_type");
                }
                // Never read before written; zeros keep the memory checkers quiet.
                check(cudaMemset(*p, 0, bytes), "cudaMemset");
            }
            bytes_ += 2 * bytes;
            held_[l].assign(size_t(cap_[l]), -1);
        }
        // cudaMemset is asynchronous and the model's stream does not wait for the default one.
        check(cudaDeviceSynchronize(), "cudaMemset");
    } catch (...) {
        for (size_t l = 0; l < L; ++l) cudaFree(k_[l]), cudaFree(v_[l]);
        throw;
    }
}

DeviceKvCache::~DeviceKvCache() {
    for (size_t l = 0; l < k_.size(); ++l) cudaFree(k_[l]), cudaFree(v_[l]);
}

void DeviceKvCache::mark_held(int64_t pos0, int64_t n) {
    for (size_t l = 0; l < cap_.size(); ++l)
        for (int64_t p = std::max(pos0, pos0 + n - cap_[l]); p < pos0 + n && cap_[l] > 0; ++p) held_[l][size_t(p % cap_[l])] = p;
}

bool DeviceKvCache::can_resume_at(int64_t n) const {
    for (size_t l = 0; l < cap_.size(); ++l) {
        if (cap_[l] == 0) continue;  // the CPU's layer
        const int64_t lo = config_.is_sliding(int64_t(l)) ? std::max<int64_t>(0, n - config_.sliding_window + 1) : 0;
        for (int64_t p = lo; p < n; ++p)
            if (held_[l][size_t(p % cap_[l])] != p) return false;
    }
    return true;
}

void DeviceKvCache::clear() {
    for (auto& h : held_) std::fill(h.begin(), h.end(), -1);
}

void DeviceKvCache::fill_synthetic(int64_t n) {
    clear();
    for (size_t l = 0; l < cap_.size(); ++l) {
        if (cap_[l] == 0) continue;
        const int64_t elems = cap_[l] * config_.kv_width();
        kv_fill(k_[l], elems, type_, uint32_t(2 * l + 1), nullptr);
        kv_fill(v_[l], elems, type_, uint32_t(2 * l + 2), nullptr);
    }
    check(cudaDeviceSynchronize(), "kv_fill");
    mark_held(0, n);
}

}  // namespace ossrun::cuda
