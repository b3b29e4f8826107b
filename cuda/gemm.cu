// Matrix times many vectors, for prefill (MODEL.md §2.3, §4.3): each block computes a 32 x 32 tile
// of y (32 rows of W by 32 tokens), stepping through the columns 32 at a time; each step decodes a
// 32 x 32 tile of W exactly to float32 in shared memory beside a 32 x 32 tile of x, and every thread
// accumulates one output. A plain correct tiling; tensor cores (mma on dequantized bf16 tiles or
// int8 IMMA) replace it later and are checked against the same tests. MXFP4, Q8_0 and F16 go to
// the tensor cores instead (gemm_mma.cu), on the split activations.
#include "../csrc/weight_element.h"
#include "common.cuh"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {

constexpr int kTile = 32;

// grid (ceil(rows / 32), ceil(n_tok / 32)), block (32, 32): thread (tx, ty) owns y[t0 + ty][r0 + tx].
__global__ void __launch_bounds__(kTile * kTile) gemm_kernel(MatmulArgs a) {
    // +1 column: threads of a warp read w_tile[tx][k] down a column without bank conflicts.
    __shared__ float w_tile[kTile][kTile + 1];  // [row][column]
    __shared__ float x_tile[kTile][kTile + 1];  // [token][column]
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int64_t r0 = int64_t(blockIdx.x) * kTile, t0 = int64_t(blockIdx.y) * kTile;
    const int64_t rows = a.W.rows, cols = a.W.cols;
    // The row this thread loads (r0 + ty) and the row it computes (r0 + tx) differ.
    const bool load_row_ok = r0 + ty < rows, load_tok_ok = t0 + ty < a.n_tok;
    const uint8_t* load_row = load_row_ok ? weight_row(a.W, a.mat, r0 + ty) : nullptr;
    const float* load_x = load_tok_ok ? a.x + (t0 + ty) * a.ldx : nullptr;
    float acc = 0.0f;
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
        const int64_t c = c0 + tx;
        w_tile[ty][tx] = load_row_ok && c < cols ? weight_element(a.W.type, load_row, c) : 0.0f;
        x_tile[ty][tx] = load_tok_ok && c < cols ? load_x[c] : 0.0f;
        __syncthreads();
        for (int k = 0; k < kTile; ++k) acc += w_tile[tx][k] * x_tile[ty][k];
        __syncthreads();  // the tiles are overwritten next step
    }
    const int64_t r = r0 + tx, t = t0 + ty;
    if (r < rows && t < a.n_tok) a.y[t * a.ldy + r] = a.bias ? acc + a.bias[r] : acc;
}

}  // namespace

void gemm(const MatmulArgs& a, cudaStream_t stream) {
    if (a.W.rows == 0 || a.n_tok == 0) return;
    if (gemm_mma_can_run(a.W)) {
        MmaGemmArgs m;
        m.W = a.W;
        m.mat = a.mat;
        m.x = a.split;
        m.n_tok = a.n_tok;
        m.y = a.y;
        m.ldy = a.ldy;
        m.bias = a.bias;
        gemm_mma(m, (a.n_tok + kMmaTileTokens - 1) / kMmaTileTokens, stream);
        return;
    }
    const dim3 grid(blocks_for(a.W.rows, kTile), blocks_for(a.n_tok, kTile)), block(kTile, kTile);
    gemm_kernel<<<grid, block, 0, stream>>>(a);
    check_launch("gemm");
}

}  // namespace ossrun::cuda
