// Writing the device KV cache (MODEL.md §2.5): each new position's K (after RoPE) and V rows go
// to their ring slot, converted to the cache's element type with round-to-nearest-even (CUDA's
// _rn conversions round as csrc/numerics.h's float_to_fp16 / float_to_bf16 do).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {

constexpr int kThreads = 256;

template <KvType kType>
__device__ inline void kv_put(void* p, int64_t i, float x) {
    if constexpr (kType == KvType::F32) static_cast<float*>(p)[i] = x;
    else if constexpr (kType == KvType::F16) static_cast<uint16_t*>(p)[i] = __half_as_ushort(__float2half_rn(x));
    else static_cast<uint16_t*>(p)[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

// grid (ceil(width / kThreads), T).
template <KvType kType>
__global__ void kv_store_kernel(const float* k, const float* v, const int64_t* positions, int64_t width,
                                int64_t cap, void* k_cache, void* v_cache) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (i >= width) return;
    const int64_t dst = (positions[t] % cap) * width + i;
    kv_put<kType>(k_cache, dst, k[t * width + i]);
    kv_put<kType>(v_cache, dst, v[t * width + i]);
}

template <KvType kType>
__global__ void kv_fill_kernel(void* cache, int64_t n, uint32_t seed) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;  // a hash is plenty for values nobody reads
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    kv_put<kType>(cache, i, float(int32_t(h)) * (1.0f / 2147483648.0f));
}

}  // namespace

void kv_store(const float* k, const float* v, const int64_t* positions, int64_t T, int64_t width,
              int64_t cap, KvType type, void* k_cache, void* v_cache, cudaStream_t stream) {
    if (T == 0 || width == 0) return;
    const dim3 grid(blocks_for(width, kThreads), unsigned(T));
    switch (type) {
        case KvType::F16:
            kv_store_kernel<KvType::F16><<<grid, kThreads, 0, stream>>>(k, v, positions, width, cap, k_cache, v_cache);
            break;
        case KvType::BF16:
            kv_store_kernel<KvType::BF16><<<grid, kThreads, 0, stream>>>(k, v, positions, width, cap, k_cache, v_cache);
            break;
        default:
            kv_store_kernel<KvType::F32><<<grid, kThreads, 0, stream>>>(k, v, positions, width, cap, k_cache, v_cache);
    }
    check_launch("kv_store");
}

void kv_fill(void* cache, int64_t n, KvType type, uint32_t seed, cudaStream_t stream) {
    if (n == 0) return;
    const unsigned grid = blocks_for(n, kThreads);
    switch (type) {
        case KvType::F16: kv_fill_kernel<KvType::F16><<<grid, kThreads, 0, stream>>>(cache, n, seed); break;
        case KvType::BF16: kv_fill_kernel<KvType::BF16><<<grid, kThreads, 0, stream>>>(cache, n, seed); break;
        default: kv_fill_kernel<KvType::F32><<<grid, kThreads, 0, stream>>>(cache, n, seed);
    }
    check_launch("kv_fill");
}

}  // namespace ossrun::cuda
