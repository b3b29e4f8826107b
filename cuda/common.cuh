// What every CUDA source of ossrun shares: CUDA errors as C++ exceptions (cuda_check.h, which the
// binding turns into Python ones), block-wide reductions, and the address of a weight row.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../csrc/weights.h"
#include "cuda_check.h"

namespace ossrun::cuda {

constexpr int kWarp = 32;

__device__ inline float warp_sum(float v) {
    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ inline float warp_max(float v) {
    for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The sum over the block, returned to every thread. Every thread of the block must call it;
// blockDim.x a multiple of 32 (<= 1024), blockDim.y = blockDim.z = 1.
__device__ inline float block_sum(float v) {
    __shared__ float part[kWarp];
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    v = warp_sum(v);
    __syncthreads();  // a previous call's readers are done with `part`
    if (lane == 0) part[warp] = v;
    __syncthreads();
    return warp_sum(lane < int(blockDim.x / kWarp) ? part[lane] : 0.0f);
}

// The maximum over the block, as block_sum (-inf for an empty max).
__device__ inline float block_max(float v) {
    __shared__ float part[kWarp];
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    return warp_max(lane < int(blockDim.x / kWarp) ? part[lane] : -INFINITY);
}

// Row r of matrix `mat` of a stack whose bytes lie in device memory (Matrix::row, on the device).
__device__ inline const uint8_t* weight_row(const Matrix& W, int64_t mat, int64_t r) {
    return W.data + (size_t(mat) * size_t(W.rows) + size_t(r)) * W.row_bytes;
}

inline unsigned blocks_for(int64_t n, int64_t per_block) { return unsigned((n + per_block - 1) / per_block); }

}  // namespace ossrun::cuda
