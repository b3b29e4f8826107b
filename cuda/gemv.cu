// Matrix times a few vectors, for decode (MODEL.md §2.3, §4.3). MXFP4, Q8_0, F16, BF16 and F32
// rows of whole 32-element blocks: one warp per output row and up to kTokensPerWarp tokens, the
// row staged through shared memory and each lane taking a quarter of a block at a time
// (block_rows.cuh), so a row's bytes are read once for every token of the step. Other types and
// shapes: one warp per (row, token), lane i reading element i of each 32-element span
// (weight_element.h). Matmuls of one x (decode's q, k
// and v) go as one launch where the block kernel reads them all (matmul_parts).
#include <climits>

#include "../csrc/weight_element.h"
#include "block_rows.cuh"
#include "common.cuh"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {

constexpr int kRowsPerBlock = 4;  // warps per block

// Matmuls of one x in one launch (matmul_parts): part i's rows are blocks first_block[i] .. of
// grid.x (a part past n: UINT_MAX).
struct GemvParts {
    MatmulArgs part[kMaxMatmulParts];
    unsigned first_block[kMaxMatmulParts];
};

// grid (the parts' ceil(rows / kRowsPerBlock) summed, ceil(n_tok / kTokensPerWarp)), block
// kRowsPerBlock * 32: warp w of block (bx, by) computes row (bx - first_block[p]) * kRowsPerBlock
// + w of the part p that bx falls in, for tokens by * kTokensPerWarp ..
template <class F>
__global__ void __launch_bounds__(kRowsPerBlock * kWarp) gemv_blocks_kernel(GemvParts g) {
    __shared__ __align__(16) uint8_t stage[kRowsPerBlock][kStageBytesOf<F>];
    int p = 0;
#pragma unroll
    for (int i = 1; i < kMaxMatmulParts; ++i)
        if (blockIdx.x >= g.first_block[i]) p = i;  // a part of no rows shares its successor's first block
    const MatmulArgs& a = g.part[p];
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t r = int64_t(blockIdx.x - g.first_block[p]) * kRowsPerBlock + warp;
    const int64_t t0 = int64_t(blockIdx.y) * kTokensPerWarp;
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

// Launches gemv_blocks_kernel for parts[0 .. n) if it reads them all: one x (and ldx, n_tok), one
// block format and cols; else launches nothing and returns false.
bool gemv_blocks(const MatmulArgs* parts, int n, cudaStream_t stream) {
    const MatmulArgs& a = parts[0];
    if (n < 1 || n > kMaxMatmulParts || !block_rows_can_read(a.x, a.ldx)) return false;
    GemvParts g;
    unsigned blocks = 0;
    for (int i = 0; i < kMaxMatmulParts; ++i) {
        g.first_block[i] = i < n ? blocks : UINT_MAX;
        if (i >= n) continue;
        const MatmulArgs& b = parts[i];
        if (b.W.type != a.W.type || b.W.cols != a.W.cols || b.x != a.x || b.ldx != a.ldx || b.n_tok != a.n_tok)
            return false;
        g.part[i] = b;
        blocks += blocks_for(b.W.rows, kRowsPerBlock);
    }
    if (blocks == 0 || a.n_tok == 0) return true;  // nothing to compute
    const dim3 grid(blocks, blocks_for(a.n_tok, kTokensPerWarp));
    return with_block_format(a.W.type, a.W.cols, [&](auto format) {
        gemv_blocks_kernel<decltype(format)><<<grid, kRowsPerBlock * kWarp, 0, stream>>>(g);
    });
}

}  // namespace

void gemv(const MatmulArgs& a, cudaStream_t stream) {
    if (a.W.rows == 0 || a.n_tok == 0) return;
    if (!gemv_blocks(&a, 1, stream))
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

bool matmul_parts(const MatmulArgs* parts, int n, cudaStream_t stream) {
    if (n > 1 && parts[0].n_tok < kGemmMinTokens && gemv_blocks(parts, n, stream)) {
        check_launch("gemv (parts)");
        return true;
    }
    for (int i = 0; i < n; ++i) matmul(parts[i], stream);
    return false;
}

}  // namespace ossrun::cuda
