// Rows of weights in whole 32-element blocks (the decode GEMVs of gemv.cu and
// moe_ops.cu; the formats of csrc/block_values.h): a warp stages a run of a row's blocks in shared
// memory with 16-byte loads, then each lane decodes a quarter of a block at a time exactly and
// dots it with up to kTokensPerWarp activation rows. A warp keeps ~4 KiB of loads in flight (4
// MXFP4 or Q8_0 blocks a lane), where reading one element per lane (weight_element.h's order)
// kept 17-128 bytes.
#pragma once
#include <cstdint>

#include "../csrc/block_values.h"
#include "common.cuh"

namespace ossrun::cuda {

constexpr int kTokensPerWarp = 8;  // activation rows one pass dots

// A warp's blocks of format F per staging round: up to 4 a lane, within ~4.3 KiB of shared memory;
// and the shared memory bytes one warp stages into.
template <class F>
constexpr int kStagedBlocksOf = kWarp * (4352 / (kWarp * F::kBytes) < 1   ? 1
                                         : 4352 / (kWarp * F::kBytes) > 4 ? 4
                                                                          : 4352 / (kWarp * F::kBytes));
template <class F>
constexpr int kStageBytesOf = kStagedBlocksOf<F> * F::kBytes + 16;

// 16-byte words per lane that one staging round of format F (kStageBytesOf<F> - 16 bytes, at
// any offset within 16) takes.
template <class F>
constexpr int kStageWordsOf = ((kStagedBlocksOf<F> * F::kBytes + 15 + 15) / 16 + kWarp - 1) / kWarp;

// Copies src[0 .. n) (global memory, any alignment; n <= kWords * 512 - 15) into dst (shared,
// 16-byte aligned, n + 16 bytes of room) with the lanes of one warp, keeping src's offset within
// 16 bytes so that the 16-byte words of both sides line up; returns where src[0] landed. Only
// bytes of [src, src + n) are read. Every load is issued before the first store, so a round
// costs one memory latency (in a loop of load-store pairs each store waits for its load; with
// such a loop the MXFP4 GEMV read 756 GB/s on an H200, a sixth of the HBM's rate; this order's
// gain is unmeasured). The caller __syncwarp()s before reading dst.
template <int kWords>
__device__ inline const uint8_t* warp_stage(uint8_t* dst, const uint8_t* src, int n, int lane) {
    const int skew = int(reinterpret_cast<uintptr_t>(src) & 15);
    const uint8_t* base = src - skew;
    const int end = skew + n, words = (end + 15) / 16;
    uint4 v[kWords];
#pragma unroll
    for (int k = 0; k < kWords; ++k) {
        const int lo = 16 * (lane + k * kWarp);
        if (lo >= skew && lo + 16 <= end) v[k] = __ldg(reinterpret_cast<const uint4*>(base + lo));
    }
    // The first and last words where they are partly outside the range, a byte a lane: lanes
    // 0-15 take the first word's, lanes 16-31 the last's (when it is another word).
    const int at = (lane < 16 ? 0 : 16 * (words - 1)) + lane % 16;
    const bool ragged = lane < 16 ? (skew > 0 || end < 16) : (words > 1 && end % 16 != 0);
    const bool mine = ragged && at >= skew && at < end;
    const uint8_t byte = mine ? __ldg(base + at) : uint8_t(0);
#pragma unroll
    for (int k = 0; k < kWords; ++k) {
        const int lo = 16 * (lane + k * kWarp);
        if (lo >= skew && lo + 16 <= end) *reinterpret_cast<uint4*>(dst + lo) = v[k];
    }
    if (mine) dst[at] = byte;
    return dst + skew;
}

// Σ w[i] * x[first + i] + w[4 + i] * x[second + i], i < 4: a lane's quarter of a block
// (csrc/block_values.h); x 16-byte aligned (the launchers check; first and second are multiples of 4).
__device__ inline float part_dot(const float w[kPartElems], const float* x, int first, int second) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(x + first));
    const float4 b = __ldg(reinterpret_cast<const float4*>(x + second));
    return w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y + w[6] * b.z + w[7] * b.w;
}

// acc[t] (on every lane, to be warp-summed) += this lane's share of row · x[t * ldx ..] for
// t < nt <= kTokensPerWarp, the row holding n_blocks blocks of format F. The 4 lanes of a block
// take a quarter each, so a warp's loads of x read 8 blocks' runs of 128 contiguous bytes (where a
// lane owning a whole block made each load touch 32 lines: on an H200 that read MXFP4 rows at
// 364 GB/s, 8 % of the HBM's rate). `stage` is this warp's kStageBytesOf<F> of
// shared memory. Called by all 32 lanes.
template <class F>
__device__ inline void row_dot(const uint8_t* row, int64_t n_blocks, const float* x, int64_t ldx, int nt,
                               uint8_t* stage, int lane, float acc[kTokensPerWarp]) {
    constexpr int kStaged = kStagedBlocksOf<F>;
    constexpr int kBlocksAPass = kWarp / kBlockParts;
    const int q = lane % kBlockParts, first = F::first(q), second = F::second(q);
    for (int64_t b0 = 0; b0 < n_blocks; b0 += kStaged) {
        const int n = int(n_blocks - b0 < kStaged ? n_blocks - b0 : kStaged);
        const uint8_t* blocks = warp_stage<kStageWordsOf<F>>(stage, row + b0 * F::kBytes, n * F::kBytes, lane);
        __syncwarp();
        for (int b = lane / kBlockParts; b < n; b += kBlocksAPass) {
            float w[kPartElems];
            const float scale = F::decode_part(blocks + b * F::kBytes, q, w);
            const float* xb = x + (b0 + b) * kBlockElems;
#pragma unroll
            for (int t = 0; t < kTokensPerWarp; ++t)  // the unit first: no overflow
                if (t < nt) acc[t] += part_dot(w, xb + t * ldx, first, second) * F::kUnit * scale;
        }
        __syncwarp();  // the stage is overwritten next round
    }
}

// Whether row_dot can read x: 16-byte aligned rows (x and ldx), whole blocks.
inline bool block_rows_can_read(const void* x, int64_t ldx) {
    return reinterpret_cast<uintptr_t>(x) % 16 == 0 && ldx % 4 == 0;
}

}  // namespace ossrun::cuda
