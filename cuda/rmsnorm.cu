// RMSNorm (MODEL.md §2.2): eps inside the sqrt, added to the mean; one block per row, the sum of
// squares in float32 (as the CPU kernel, csrc/cpu/kernels/rmsnorm.cpp).
#include "common.cuh"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {

constexpr int kThreads = 256;

// grid (n_rows), block kThreads.
__global__ void rmsnorm_kernel(const float* x, const float* g, float* y, int64_t n, float eps) {
    const float* xr = x + int64_t(blockIdx.x) * n;
    float* yr = y + int64_t(blockIdx.x) * n;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / float(n) + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = g[i] * (xr[i] * inv);
}

}  // namespace

void rmsnorm(const float* x, const float* g, float* y, int64_t n_rows, int64_t n, float eps,
             cudaStream_t stream) {
    if (n_rows == 0) return;
    rmsnorm_kernel<<<unsigned(n_rows), kThreads, 0, stream>>>(x, g, y, n, eps);
    check_launch("rmsnorm");
}

}  // namespace ossrun::cuda
