// Elementwise steps of the forward pass on the device: the residual adds.
#include "common.cuh"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void add_into_kernel(float* dst, const float* src, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) dst[i] += src[i];
}

}  // namespace

void add_into(float* dst, const float* src, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    add_into_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(dst, src, n);
    check_launch("add_into");
}

}  // namespace ossrun::cuda
