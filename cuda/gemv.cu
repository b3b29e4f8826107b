// Matrix times a few vectors, for decode (MODEL.md §2.3, §4.3). MXFP4, Q8_0, F16, BF16 and F32
// rows of whole 32-element blocks: one warp per output row and up to kTokensPerWarp tokens, each
// lane owning whole blocks staged through shared memory (block_rows.cuh), so a row's bytes are
// read once for every token of the step. Other types and shapes: one warp per (row, token), lane
// i reading element i of each 32-element span (weight_element.h).
#include "../csrc/weight_element.h"
#include "block_rows.cuh"
#include "common.cuh"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {

constexpr int kRowsPerBlock = 4;  // warps per block

// grid (ceil(rows / kRowsPerBlock), ceil(n_tok / kTokensPerWarp)), block kRowsPerBlock * 32:
// warp w of block (bx, by) computes row bx * kRowsPerBlock + w for tokens by * kTokensPerWarp ..
template <class F>
__global__ void __launch_bounds__(kRowsPerBlock * kWarp) gemv_blocks_kernel(MatmulArgs a) {
    __shared__ __align__(16) uint8_t stage[kRowsPerBlock][kStageBytesOf<F>];
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + warp, t0 = int64_t(blockIdx.y) * kTokensPerWarp;
    if (r >= a.W.rows) return;  // whole warps leave; only warp-level syncs below
    const int nt = int(a.n_tok - t0 < kTokensPerWarp ? a.n_tok - t0 : kTokensPerWarp);
    float acc[kTokensPerWarp] = {};
    row_dot<F>(weight_row(a.W, a.mat, r), a.W.cols / kBlockElems, a.x + t0 * a.ldx, a.ldx, nt, stage[warp], lane, acc);
#pragma unroll
    for (int t = 0; t < kTokensPerWarp; ++t) {
        const float s = warp_sum(acc[t]);
        if (lane == 0 && t < nt) a.y[(t0 + t) * a.ldy + r] = a.bias ? s + a.bias[r] : s;
    }
}

// grid (ceil(rows / kRowsPerBlock), n_tok), block kRowsPerBlock * 32.
__global__ void gemv_elements_kernel(MatmulArgs a) {
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
    const dim3 grid(blocks_for(a.W.rows, kRowsPerBlock), blocks_for(a.n_tok, kTokensPerWarp));
    const bool blocks = block_rows_can_read(a.x, a.ldx) && with_block_format(a.W.type, a.W.cols, [&](auto format) {
        gemv_blocks_kernel<decltype(format)><<<grid, kRowsPerBlock * kWarp, 0, stream>>>(a);
    });
    if (!blocks)
        gemv_elements_kernel<<<dim3(blocks_for(a.W.rows, kRowsPerBlock), unsigned(a.n_tok)), kRowsPerBlock * kWarp, 0,
                               stream>>>(a);
    check_launch("gemv");
}

void matmul(const MatmulArgs& a, cudaStream_t stream) {
    if (a.n_tok < kGemmMinTokens)
        gemv(a, stream);
    else
        gemm(a, stream);
}

}  // namespace ossrun::cuda
