// Prefill matmuls of MXFP4, Q8_0 and F16 weights on tensor cores (MODEL.md §2.3, §2.6): one GEMM, or
// the routed experts' pairs grouped by expert (moe_ops.cu's group_by_expert), each block a 64
// token x 64 weight-row tile of y stepping one 32-element block of K at a time.
//
// Exactness: an E2M1, int8 or F16 weight value is exact in IEEE half, so each block's codes go to the
// mma unscaled (E2M1 times 2^-14, csrc/mxfp4.h) and its scale multiplies the block's partial sums
// in float32, one FMA an output (F16 has none: its products accumulate in the mma). The
// activations arrive split (split_activations below, once per x for all the matmuls that read
// it): per token a power of two and halves x_hi (+ x_lo), whose products with the weights are
// exact; `exact` sends both through the mma (~22 of float32's 24 bits of x), `fast` only x_hi
// (11 bits). The token's power of two and the format's unit multiply each output once, at the
// end. Products and sums accumulate in float32 inside the tensor cores.
//
// The tiles are double-buffered: while the warps multiply block b from shared memory, each thread
// has its share of block b + 1 in flight from global memory into registers (16-byte loads of the
// split activations), stored to the other buffer afterwards, so one barrier a block suffices.
#include <cuda_fp16.h>

#include <stdexcept>
#include <type_traits>

#include "../csrc/mxfp4.h"
#include "../csrc/numerics.h"
#include "block_rows.cuh"
#include "common.cuh"
#include "kernels.cuh"
#include "mma.cuh"

namespace ossrun::cuda {

namespace {

constexpr int kBM = kMmaTileTokens;  // token rows of a block tile
constexpr int kBN = 64;              // weight rows of a block tile
constexpr int kThreads = 128;        // 4 warps: 2 x 2 pieces of 32 x 32
constexpr int kWords = 16;           // fp16 pairs per tile row per block of K
constexpr int kPitch = kWords + 4;   // words; 20 puts a fragment load's 32 words in 32 banks

// One block of K of both operands as fp16 pairs in the split's K order (word q of a row holds
// elements q and q + 16): the mma sums over K in any order, so the permutation leaves y unchanged.
struct Tiles {
    uint32_t w[kBN][kPitch];
    uint32_t x_hi[kBM][kPitch];
    uint32_t x_lo[kBM][kPitch];
    float w_scale[kBN];  // the block's scale per weight row (0 past the last row)
};

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

// A thread's share of one weight row's block (half h of its 16 words): fetch() reads it from
// global memory into registers (block null: a row past the matrix), store() decodes it into the
// tile. Byte loads: a row of blocks keeps no alignment beyond its format's.
template <class F>
struct WeightFetch;

template <>
struct WeightFetch<Mxfp4Blocks> {
    uint8_t code[8], scale;
    bool valid;
    __device__ void fetch(const uint8_t* block, int h) {
        valid = block != nullptr;
        if (!valid) return;
        scale = block[0];
#pragma unroll
        for (int i = 0; i < 8; ++i) code[i] = block[1 + 8 * h + i];
    }
    __device__ void store(Tiles& s, int n, int h) const {
        if (h == 0) s.w_scale[n] = valid ? e8m0_to_float(scale) : 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) s.w[n][8 * h + i] = valid ? e2m1_pair_half_bits(code[i]) : 0u;
    }
};

template <>
struct WeightFetch<Q8Blocks> {
    uint8_t lo[8], hi[8];  // the codes of elements 8h + i and 8h + i + 16
    uint16_t scale;
    bool valid;
    __device__ void fetch(const uint8_t* block, int h) {
        valid = block != nullptr;
        if (!valid) return;
        scale = load_u16_le(block);
#pragma unroll
        for (int i = 0; i < 8; ++i) lo[i] = block[2 + 8 * h + i], hi[i] = block[2 + 8 * h + i + 16];
    }
    __device__ void store(Tiles& s, int n, int h) const {
        if (h == 0) s.w_scale[n] = valid ? fp16_to_float(scale) : 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i)
            s.w[n][8 * h + i] = valid ? half_pair(__int2half_rn(int8_t(lo[i])), __int2half_rn(int8_t(hi[i]))) : 0u;
    }
};

template <>
struct WeightFetch<F16Blocks> {  // already halves
    uint16_t lo[8], hi[8];
    bool valid;
    __device__ void fetch(const uint8_t* block, int h) {
        valid = block != nullptr;
        if (!valid) return;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            lo[i] = load_u16_le(block + 2 * (8 * h + i));
            hi[i] = load_u16_le(block + 2 * (8 * h + i) + 32);
        }
    }
    __device__ void store(Tiles& s, int n, int h) const {
        if (h == 0) s.w_scale[n] = valid ? 1.0f : 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) s.w[n][8 * h + i] = valid ? uint32_t(lo[i]) | (uint32_t(hi[i]) << 16) : 0u;
    }
};

// A thread's share of one token row's split block: words 8h .. 8h + 7 of x_hi (and x_lo), two
// 16-byte loads each (row -1: past the tile's tokens).
template <bool kExact>
struct ActivationFetch {
    uint4 hi[2], lo[2];
    bool valid;
    __device__ void fetch(const SplitActivations& x, int64_t row, int64_t b, int h) {
        valid = row >= 0;
        if (!valid) return;
        const int64_t word = row * (x.cols / 2) + b * kWords + 8 * h;
        const uint4* hi4 = reinterpret_cast<const uint4*>(x.hi + word);
        hi[0] = __ldg(hi4), hi[1] = __ldg(hi4 + 1);
        if (kExact) {
            const uint4* lo4 = reinterpret_cast<const uint4*>(x.lo + word);
            lo[0] = __ldg(lo4), lo[1] = __ldg(lo4 + 1);
        }
    }
    __device__ void store(Tiles& s, int m, int h) const {
        const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
        uint4* hi4 = reinterpret_cast<uint4*>(&s.x_hi[m][8 * h]);
        hi4[0] = valid ? hi[0] : zero, hi4[1] = valid ? hi[1] : zero;
        if (kExact) {
            uint4* lo4 = reinterpret_cast<uint4*>(&s.x_lo[m][8 * h]);
            lo4[0] = valid ? lo[0] : zero, lo4[1] = valid ? lo[1] : zero;
        }
    }
};

// One warp a row (kSplitRows a block): the row's largest |x| (fmaxf drops NaN; a NaN x stays NaN
// below), then a lane a 32-element block, as its words of hi (and lo).
constexpr int kSplitRows = 8;
__global__ void split_kernel(const float* x, int64_t ldx, int64_t rows, int64_t cols, bool exact, uint32_t* hi,
                             uint32_t* lo, float* scale) {
    const int lane = threadIdx.x % kWarp;
    const int64_t r = int64_t(blockIdx.x) * kSplitRows + threadIdx.x / kWarp, nb = cols / kBlockElems;
    if (r >= rows) return;  // the whole warp
    const float* xr = x + r * ldx;
    float big = 0.0f;
    for (int64_t c = lane; c < cols; c += kWarp) big = fmaxf(big, fabsf(xr[c]));
    big = warp_max(big);
    // Divide by 2^k, k = exponent(big) - 15 (clamped to float32's normal powers), so the largest
    // lands in [2^14, 2^15): both ways exact powers of two; an infinity keeps k = 0. x_hi keeps 11
    // bits of every element down to 2^-28 of the row's largest, and an element's x_hi + x_lo errs
    // by at most 2^-39 of it beyond the 22 bits (with a power per block: of the block's largest).
    int k = 0;
    if (big > 0.0f && big <= 3.4e38f) {
        int e;
        frexpf(big, &e);
        k = max(-126, min(127, e - 15));
    }
    const float down = ldexpf(1.0f, -k);
    for (int64_t b = lane; b < nb; b += kWarp) {
        const float* xb = xr + b * kBlockElems;
        const int64_t w0 = (r * nb + b) * kWords;  // row r's block b: its 16 words
#pragma unroll
        for (int q = 0; q < kWords; ++q) {
            const float a = xb[q] * down, c = xb[q + 16] * down;
            const __half ah = __float2half_rn(a), ch = __float2half_rn(c);
            hi[w0 + q] = half_pair(ah, ch);
            if (exact)
                lo[w0 + q] = half_pair(__float2half_rn(a - __half2float(ah)), __float2half_rn(c - __half2float(ch)));
        }
    }
    if (lane == 0) scale[r] = ldexpf(1.0f, k);
}

// Whether a format's blocks have scales (F16's have none).
template <class F>
constexpr bool kScaled = !std::is_same_v<F, F16Blocks>;

// grid (ceil(rows / kBN), m tiles), kThreads threads. Grouped (g.n_tiles set): m tile i is
// g.tile_*[i] of the expert-sorted pairs g.order, whose x rows are x[pair / x_div] and y rows
// y[pair * ldy]; else tokens i * kBM .. of one matrix `mat`.
template <class F, bool kExact>
__global__ void __launch_bounds__(kThreads) gemm_mma_kernel(MmaGemmArgs a) {
    __shared__ __align__(16) Tiles s[2];
    __shared__ int64_t x_rows[kBM];  // the split row of each tile row (-1: none)
    __shared__ int64_t y_rows[kBM];
    __shared__ float y_scale[kBM];   // the row's power of two times the format's unit
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
        x_rows[tid] = r < 0 ? -1 : (order ? r / a.x_div : r);
        y_rows[tid] = r;
        y_scale[tid] = r < 0 ? 0.0f : a.x.scale[x_rows[tid]] * F::kUnit;  // 2^(k + 14) at most 2^127
    }
    __syncthreads();

    const int g = lane / 4, t = lane % 4;
    const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;  // this warp's 32 x 32 piece
    float acc[2][4][4] = {};
    const int half = tid & 1, row = tid >> 1;  // the loaders' split: two threads a row
    const int64_t n_load = n0 + row, x_row = x_rows[row];
    const uint8_t* w_row = n_load < a.W.rows ? weight_row(a.W, mat, n_load) : nullptr;
    const int64_t nb = a.W.cols / kBlockElems;
    WeightFetch<F> wf;
    ActivationFetch<kExact> xf;
    wf.fetch(w_row, half);
    xf.fetch(a.x, x_row, 0, half);
    wf.store(s[0], row, half);
    xf.store(s[0], row, half);
    __syncthreads();
    for (int64_t b = 0; b < nb; ++b) {
        const Tiles& cur = s[b & 1];
        const bool next = b + 1 < nb;
        if (next) {  // block b + 1's loads in flight during this block's mma
            wf.fetch(w_row ? w_row + (b + 1) * F::kBytes : nullptr, half);
            xf.fetch(a.x, x_row, b + 1, half);
        }
        // The block's partial sums, scaled into acc below; F16's need no scale: straight into acc.
        float part[2][4][4] = {};
        float (&sums)[2][4][4] = kScaled<F> ? part : acc;
#pragma unroll
        for (int step = 0; step < 2; ++step) {  // the two 16-element halves of the block
            const int q = 8 * step + t;
            uint32_t bf[4][2];
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                bf[ni][0] = cur.w[wn + 8 * ni + g][q];
                bf[ni][1] = cur.w[wn + 8 * ni + g][q + 4];
            }
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int r0 = wm + 16 * mi + g;
                const uint32_t hi[4] = {cur.x_hi[r0][q], cur.x_hi[r0 + 8][q], cur.x_hi[r0][q + 4],
                                        cur.x_hi[r0 + 8][q + 4]};
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) mma_16x8x16(sums[mi][ni], hi, bf[ni]);
                if (kExact) {
                    const uint32_t lo[4] = {cur.x_lo[r0][q], cur.x_lo[r0 + 8][q], cur.x_lo[r0][q + 4],
                                            cur.x_lo[r0 + 8][q + 4]};
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni) mma_16x8x16(sums[mi][ni], lo, bf[ni]);
                }
            }
        }
        if constexpr (kScaled<F>) {  // the block's weight scales, in float32
            for_each_output(wm, wn, lane, [&](int mi, int ni, int i, int, int n) {
                acc[mi][ni][i] = fmaf(part[mi][ni][i], cur.w_scale[n], acc[mi][ni][i]);
            });
        }
        if (next) {  // the other buffer: its last readers passed the previous barrier
            wf.store(s[(b + 1) & 1], row, half);
            xf.store(s[(b + 1) & 1], row, half);
        }
        __syncthreads();
    }

    for_each_output(wm, wn, lane, [&](int mi, int ni, int i, int m, int n_in_tile) {
        const int64_t n = n0 + n_in_tile, yr = y_rows[m];
        const float y = acc[mi][ni][i] * y_scale[m];
        if (yr >= 0 && n < a.W.rows) a.y[yr * a.ldy + n] = bias ? y + bias[n] : y;
    });
}

template <class F>
void launch(const MmaGemmArgs& a, unsigned m_tiles, cudaStream_t stream) {
    const dim3 grid(blocks_for(a.W.rows, kBN), m_tiles);
    if (a.x.exact)
        gemm_mma_kernel<F, true><<<grid, kThreads, 0, stream>>>(a);
    else
        gemm_mma_kernel<F, false><<<grid, kThreads, 0, stream>>>(a);
}

}  // namespace

SplitActivations split_activations(const float* x, int64_t ldx, int64_t rows, int64_t cols, bool exact,
                                   void* memory, cudaStream_t stream) {
    // The layout of split_activations_bytes: hi, lo and scale, each 256-aligned.
    const size_t part = split_halves_bytes(rows, cols);

    uint8_t* base = static_cast<uint8_t*>(memory);
    uint32_t* hi = reinterpret_cast<uint32_t*>(base);
    uint32_t* lo = reinterpret_cast<uint32_t*>(base + part);
    float* scale = reinterpret_cast<float*>(base + 2 * part);
    SplitActivations out;
    out.hi = hi;
    out.lo = exact ? lo : nullptr;
    out.scale = scale;
    out.rows = rows;
    out.cols = cols;
    out.exact = exact;
    if (rows == 0 || cols == 0) return out;
    split_kernel<<<blocks_for(rows, kSplitRows), kSplitRows * kWarp, 0, stream>>>(x, ldx, rows, cols, exact, hi, lo,
                                                                               scale);
    check_launch("split_activations");
    return out;
}

bool gemm_mma_can_run(const Matrix& W) {
    const bool exact_in_half = W.type == DType::MXFP4 || W.type == DType::Q8_0 || W.type == DType::F16;
    return exact_in_half && W.cols % kBlockElems == 0;
}

void gemm_mma(const MmaGemmArgs& a, int64_t max_tiles, cudaStream_t stream) {
    if (a.W.rows == 0 || max_tiles == 0) return;
    if (!a.x.hi || a.x.cols != a.W.cols)
        throw std::logic_error("gemm_mma: the activations must be split for these weights (split_activations)");
    if (a.W.type == DType::MXFP4)
        launch<Mxfp4Blocks>(a, unsigned(max_tiles), stream);
    else if (a.W.type == DType::Q8_0)
        launch<Q8Blocks>(a, unsigned(max_tiles), stream);
    else
        launch<F16Blocks>(a, unsigned(max_tiles), stream);
    check_launch("gemm_mma");
}

void expert_gemm(const ExpertMatmulArgs& e, const ExpertGroups& groups, const SplitActivations& xs,
                 cudaStream_t stream) {
    MmaGemmArgs a;
    a.W = e.W;
    a.x = xs;
    a.x_div = e.x_div;
    a.y = e.y;
    a.ldy = e.ldy;
    a.bias = e.bias;
    a.groups = groups;
    gemm_mma(a, expert_tiles_max(e.n_pairs, e.W.n_mats), stream);
}

}  // namespace ossrun::cuda
