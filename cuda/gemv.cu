// Matrix times a few vectors, for decode (MODEL.md §2.3, §4.3): one warp per output row and token;
// lane i reads element i of each 32-element span of the row (one MXFP4 or Q8_0 block per step, so a
// warp's loads of a block fall in one or two cache lines) and the warp sums its lanes.
// Simple and exact-decoding first; vectorised loads and int8 dot products come later.
#include "../csrc/weight_element.h"
#include "common.cuh"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {

constexpr int kRowsPerBlock = 4;  // warps per block

// grid (ceil(rows / kRowsPerBlock), n_tok), block kRowsPerBlock * 32 threads.
__global__ void gemv_kernel(MatmulArgs a) {
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + warp, t = blockIdx.y;
    if (r >= a.W.rows) return;  // the whole warp leaves together; no block-wide sync below
    const uint8_t* row = weight_row(a.W, a.mat, r);
    const float* x = a.x + t * a.ldx;
    float acc = 0.0f;
    for (int64_t c = lane; c < a.W.cols; c += kWarp) acc += weight_element(a.W.type, row, c) * x[c];
    acc = warp_sum(acc);
    if (lane == 0) a.y[t * a.ldy + r] = a.bias ? acc + a.bias[r] : acc;
}

}  // namespace

void gemv(const MatmulArgs& a, cudaStream_t stream) {
    if (a.W.rows == 0 || a.n_tok == 0) return;
    const dim3 grid(blocks_for(a.W.rows, kRowsPerBlock), unsigned(a.n_tok));
    gemv_kernel<<<grid, kRowsPerBlock * kWarp, 0, stream>>>(a);
    check_launch("gemv");
}

void matmul(const MatmulArgs& a, cudaStream_t stream) {
    if (a.n_tok < kGemmMinTokens)
        gemv(a, stream);
    else
        gemm(a, stream);
}

}  // namespace ossrun::cuda
