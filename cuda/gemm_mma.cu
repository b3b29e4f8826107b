// Prefill matmuls of MXFP4, Q8_0 and F16 weights on tensor cores (MODEL.md §2.3, §2.6): one GEMM, or
// the routed experts' pairs grouped by expert (moe_ops.cu's group_by_expert), each block a 64
// token x 64 weight-row tile of y stepping one 32-element block of K at a time.
//
// Exactness: an E2M1, int8 or F16 weight value is exact in IEEE half, so each block's codes go to the
// mma unscaled (E2M1 times 2^-14, csrc/mxfp4.h) and its scale is applied in float32 to the
// block's partial sums. Each token's 32 activations of the block are scaled by a power of two to
// a largest magnitude in [2^14, 2^15) (no half overflow, full half precision) and split into a
// half x_hi plus a half residual x_lo: `exact` (precision="f32") sends both through the mma, so x
// keeps ~22 of float32's 24 bits and every product is exact; `fast` only x_hi (11 bits).
// Products and sums accumulate in float32 inside the tensor cores.
#include <cuda_fp16.h>

#include <type_traits>

#include "../csrc/mxfp4.h"
#include "../csrc/numerics.h"
#include "block_rows.cuh"
#include "common.cuh"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {

constexpr int kBM = kMmaTileTokens;  // token rows of a block tile
constexpr int kBN = 64;              // weight rows of a block tile
constexpr int kThreads = 128;        // 4 warps: 2 x 2 pieces of 32 x 32
constexpr int kWords = 16;           // fp16 pairs per tile row per block of K
constexpr int kPitch = kWords + 4;   // words; 20 puts a fragment load's 32 words in 32 banks

// One block of K of both operands as fp16 pairs in a permuted K order that both share: word q
// of a row holds elements q (low half) and q + 16 (high half), the two nibbles of MXFP4 code
// byte q. The mma sums over K in any order, so the permutation leaves y unchanged.
struct Tiles {
    uint32_t w[kBN][kPitch];
    uint32_t x_hi[kBM][kPitch];
    uint32_t x_lo[kBM][kPitch];
    float w_scale[kBN];  // the block's scale per weight row (0 past the last row)
    float x_scale[kBM];  // the power of two each token's activations were divided by
};

// d += a b for one 16 x 8 x 16 step (PTX ISA "mma.m16n8k16" fragments: a[0] rows g, a[1] rows
// g + 8 at k 2t, 2t + 1; a[2], a[3] the same at k 2t + 8, 2t + 9; b[0] k 2t, 2t + 1 of column g,
// b[1] k 2t + 8, 2t + 9; d[0..1] row g, columns 2t, 2t + 1, d[2..3] row g + 8, with g = lane / 4,
// t = lane % 4). Turing (sm_75) has only the k8 shape: two of them.
__device__ inline void mma_16x8x16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(OSSRUN_CUDA_EMULATOR)  // cuda/emulator: the same fragments, on the CPU
    emu::mma_m16n8k16_f16(d, a, b);
#elif __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b[0]));
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[2]), "r"(a[3]), "r"(b[1]));
#endif
}

// f(mi, ni, i, m, n) for each float this lane holds of its warp's 32 x 32 piece at (wm, wn):
// mma tile (mi, ni)'s d[i], which is row m, column n of the block tile (d[0..1] row g, columns 2t,
// 2t + 1; d[2..3] row g + 8).
template <class F>
__device__ inline void for_each_output(int wm, int wn, int lane, F&& f) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int i = 0; i < 4; ++i) f(mi, ni, i, wm + 16 * mi + g + (i >= 2 ? 8 : 0), wn + 8 * ni + 2 * t + (i & 1));
}

__device__ inline uint32_t half_pair(__half lo, __half hi) {
    return uint32_t(__half_as_ushort(lo)) | (uint32_t(__half_as_ushort(hi)) << 16);
}

// Weight row n's block (null: a row past the matrix) into the tile: this thread's half h of its
// 16 words, and the scale.
template <class F>
__device__ inline void load_weights(Tiles& s, const uint8_t* block, int n, int h) {
    if (!block) {
        if (h == 0) s.w_scale[n] = 0.0f;
#pragma unroll
        for (int q = 8 * h; q < 8 * h + 8; ++q) s.w[n][q] = 0u;
    } else if constexpr (std::is_same_v<F, F16Blocks>) {  // already halves
        if (h == 0) s.w_scale[n] = 1.0f;
#pragma unroll
        for (int q = 8 * h; q < 8 * h + 8; ++q)
            s.w[n][q] = uint32_t(load_u16_le(block + 2 * q)) | (uint32_t(load_u16_le(block + 2 * q + 32)) << 16);
    } else if constexpr (std::is_same_v<F, Mxfp4Blocks>) {
        if (h == 0) s.w_scale[n] = e8m0_to_float(block[0]);
#pragma unroll
        for (int q = 8 * h; q < 8 * h + 8; ++q) s.w[n][q] = e2m1_pair_half_bits(block[1 + q]);
    } else {
        if (h == 0) s.w_scale[n] = fp16_to_float(load_u16_le(block));
#pragma unroll
        for (int q = 8 * h; q < 8 * h + 8; ++q)
            s.w[n][q] = half_pair(__int2half_rn(int8_t(block[2 + q])), __int2half_rn(int8_t(block[2 + q + 16])));
    }
}

// Token row m's block (x, 32 floats, 16-byte aligned; null: a row past the tile's tokens) into
// the tile; threads 2m and 2m + 1 (lanes of one warp) share a row, each with 8 words.
__device__ inline void load_activations(Tiles& s, const float* x, int m, int h) {
    float v[16];  // elements 8h .. 8h + 7, then 16 + 8h .. 16 + 8h + 7
    float big = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float4 f = x ? __ldg(reinterpret_cast<const float4*>(x + 8 * h + (i < 2 ? 4 * i : 16 + 4 * (i - 2))))
                           : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) big = fmaxf(big, fabsf(v[i]));  // fmaxf drops NaN; a NaN x stays NaN below
    big = fmaxf(big, __shfl_xor_sync(0xffffffffu, big, 1));
    // Divide by 2^k, k = exponent(big) - 15 (clamped to float32's normal powers), so the largest
    // lands in [2^14, 2^15): both ways exact powers of two; an infinity keeps k = 0.
    int k = 0;
    if (big > 0.0f && big <= 3.4e38f) {
        int e;
        frexpf(big, &e);
        k = max(-126, min(127, e - 15));
    }
    const float down = ldexpf(1.0f, -k);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const float a = v[i] * down, b = v[8 + i] * down;
        const __half ah = __float2half_rn(a), bh = __float2half_rn(b);
        s.x_hi[m][8 * h + i] = half_pair(ah, bh);
        s.x_lo[m][8 * h + i] = half_pair(__float2half_rn(a - __half2float(ah)), __float2half_rn(b - __half2float(bh)));
    }
    if (h == 0) s.x_scale[m] = ldexpf(1.0f, k);
}

// grid (ceil(rows / kBN), m tiles), kThreads threads. Grouped (g.n_tiles set): m tile i is
// g.tile_*[i] of the expert-sorted pairs g.order, whose x rows are x[(pair / x_div) * ldx] and
// y rows y[pair * ldy]; else tokens i * kBM .. of one matrix `mat`.
template <class F, bool kExact>
__global__ void __launch_bounds__(kThreads) gemm_mma_kernel(MmaGemmArgs a) {
    __shared__ __align__(16) Tiles s;
    __shared__ const float* x_rows[kBM];
    __shared__ int64_t y_rows[kBM];
    const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
    const int64_t n0 = int64_t(blockIdx.x) * kBN, tile = blockIdx.y;
    int64_t mat = a.mat, first = tile * kBM, count = a.n_tok - first;
    const int32_t* order = nullptr;
    if (a.groups.n_tiles) {
        if (tile >= *a.groups.n_tiles) return;  // the whole block: the grid is an upper bound
        mat = a.groups.tile_expert[tile];
        first = a.groups.tile_start[tile];
        count = a.groups.tile_count[tile];
        order = a.groups.order;
    }
    if (count > kBM) count = kBM;
    const float* bias = a.bias ? a.bias + (order ? mat * a.W.rows : 0) : nullptr;  // [rows] of this matrix
    if (tid < kBM) {
        const int64_t r = tid < count ? (order ? order[first + tid] : first + tid) : -1;
        x_rows[tid] = r < 0 ? nullptr : a.x + (order ? r / a.x_div : r) * a.ldx;
        y_rows[tid] = r;
    }
    __syncthreads();

    const int g = lane / 4, t = lane % 4;
    const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;  // this warp's 32 x 32 piece
    float acc[2][4][4] = {};
    const int half = tid & 1, row = tid >> 1;  // the loaders' split: two threads a row
    const int64_t n_load = n0 + row;
    const uint8_t* w_row = n_load < a.W.rows ? weight_row(a.W, mat, n_load) : nullptr;
    const int64_t nb = a.W.cols / kBlockElems;
    for (int64_t b = 0; b < nb; ++b) {
        load_weights<F>(s, w_row ? w_row + b * F::kBytes : nullptr, row, half);
        load_activations(s, x_rows[row] ? x_rows[row] + b * kBlockElems : nullptr, row, half);
        __syncthreads();

        float part[2][4][4] = {};
#pragma unroll
        for (int step = 0; step < 2; ++step) {  // the two 16-element halves of the block
            const int q = 8 * step + t;
            uint32_t bf[4][2];
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                bf[ni][0] = s.w[wn + 8 * ni + g][q];
                bf[ni][1] = s.w[wn + 8 * ni + g][q + 4];
            }
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int r0 = wm + 16 * mi + g;
                const uint32_t hi[4] = {s.x_hi[r0][q], s.x_hi[r0 + 8][q], s.x_hi[r0][q + 4], s.x_hi[r0 + 8][q + 4]};
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) mma_16x8x16(part[mi][ni], hi, bf[ni]);
                if (kExact) {
                    const uint32_t lo[4] = {s.x_lo[r0][q], s.x_lo[r0 + 8][q], s.x_lo[r0][q + 4], s.x_lo[r0 + 8][q + 4]};
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni) mma_16x8x16(part[mi][ni], lo, bf[ni]);
                }
            }
        }
        // The block's scales, in float32: (partial * unit) * (token scale * weight scale).
        for_each_output(wm, wn, lane, [&](int mi, int ni, int i, int m, int n) {
            acc[mi][ni][i] = fmaf(part[mi][ni][i] * F::kUnit, s.x_scale[m] * s.w_scale[n], acc[mi][ni][i]);
        });
        __syncthreads();  // the tiles are overwritten next block
    }

    for_each_output(wm, wn, lane, [&](int mi, int ni, int i, int m, int n_in_tile) {
        const int64_t n = n0 + n_in_tile, yr = y_rows[m];
        if (yr >= 0 && n < a.W.rows) a.y[yr * a.ldy + n] = bias ? acc[mi][ni][i] + bias[n] : acc[mi][ni][i];
    });
}

template <class F>
void launch(const MmaGemmArgs& a, unsigned m_tiles, cudaStream_t stream) {
    const dim3 grid(blocks_for(a.W.rows, kBN), m_tiles);
    if (a.exact)
        gemm_mma_kernel<F, true><<<grid, kThreads, 0, stream>>>(a);
    else
        gemm_mma_kernel<F, false><<<grid, kThreads, 0, stream>>>(a);
}

}  // namespace

bool gemm_mma_can_run(const Matrix& W, const float* x, int64_t ldx) {
    const bool exact_in_half = W.type == DType::MXFP4 || W.type == DType::Q8_0 || W.type == DType::F16;
    return exact_in_half && W.cols % kBlockElems == 0 && block_rows_can_read(x, ldx);
}

void gemm_mma(const MmaGemmArgs& a, int64_t max_tiles, cudaStream_t stream) {
    if (a.W.rows == 0 || max_tiles == 0) return;
    if (a.W.type == DType::MXFP4)
        launch<Mxfp4Blocks>(a, unsigned(max_tiles), stream);
    else if (a.W.type == DType::Q8_0)
        launch<Q8Blocks>(a, unsigned(max_tiles), stream);
    else
        launch<F16Blocks>(a, unsigned(max_tiles), stream);
    check_launch("gemm_mma");
}

void expert_gemm(const ExpertMatmulArgs& e, const ExpertGroups& groups, bool exact, cudaStream_t stream) {
    MmaGemmArgs a;
    a.W = e.W;
    a.x = e.x;
    a.ldx = e.ldx;
    a.x_div = e.x_div;
    a.y = e.y;
    a.ldy = e.ldy;
    a.bias = e.bias;
    a.exact = exact;
    a.groups = groups;
    gemm_mma(a, expert_tiles_max(e.n_pairs, e.W.n_mats), stream);
}

}  // namespace ossrun::cuda
