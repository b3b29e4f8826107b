// Q8_0 rows interleaved 16 at a time (RowLayout::kQ8_0x16, weights.h): why, the layout, and the
// code that converts between it and the GGUF's row after row.
//
// Why: the fast decode GEMV of GGUF rows puts four blocks of one row in a vector and, per token
// and 4 blocks, spends 4 vpdpwssd, 1 convert, 1 scale multiply and 1 FMA, all on the multiply
// pipes (28 per 16 block-rows): with 2-4 tokens of a decode batch it stops being bound by memory.
// With 16 rows in the 16 lanes, one token's activation pair is broadcast against them (16
// vpdpwssd per block) and one convert, multiply and FMA serve all 16 rows: 19 per 16 block-rows,
// and no horizontal sum at the end (the lanes are the outputs). Same bytes: 34 per block-row.
//
// Layout: group g (rows 16g .. 16g + 15) takes the bytes those rows took, block after block;
// block b of the group is 544 bytes: the 16 rows' fp16 scales (row j at byte 2j), then 16
// chunks of 32 bytes, chunk k holding the element pair (2k, 2k + 1) of each row (row j at bytes
// 2j, 2j + 1), so one 32-byte load widened by vpmovsxbw is vector k of int16 pairs, lane j = row j.
// A 64-byte aligned group keeps every 32-byte load inside one cache line.
#pragma once
#include <cstdint>
#include <cstring>

#include "weights.h"

namespace ossrun {

// Whether W can take the layout: one Q8_0 matrix in GGUF order whose rows fill whole groups.
inline bool q8_0_interleavable(const Matrix& W) {
    return W.type == DType::Q8_0 && W.layout == RowLayout::kRows && W.n_mats == 1 && W.rows > 0 &&
           W.rows % kInterleaveRows == 0 && W.cols % kBlockElems == 0;
}

// Groups g0 .. g1 - 1 of a matrix of rows `row_bytes` long: src in GGUF order, dst interleaved
// (both at the matrix's start; each group lands where its rows were).
inline void interleave_q8_0_groups(const uint8_t* src, uint8_t* dst, size_t row_bytes, int64_t g0, int64_t g1) {
    const int64_t nb = int64_t(row_bytes / kQ8BlockBytes);
    for (int64_t g = g0; g < g1; ++g) {
        const uint8_t* rows = src + size_t(g) * kInterleaveRows * row_bytes;
        uint8_t* out = dst + size_t(g) * kInterleaveRows * row_bytes;
        for (int64_t b = 0; b < nb; ++b, out += kQ8GroupBlockBytes) {
            for (int j = 0; j < kInterleaveRows; ++j) {
                const uint8_t* in = rows + size_t(j) * row_bytes + size_t(b) * kQ8BlockBytes;
                std::memcpy(out + 2 * j, in, 2);  // the scale
                for (int k = 0; k < kBlockElems / 2; ++k) std::memcpy(out + 32 + 32 * k + 2 * j, in + 2 + 2 * k, 2);
            }
        }
    }
}

// Row r of W[mat] (layout kQ8_0x16) back in GGUF order: out[row_bytes].
inline void deinterleave_q8_0_row(const Matrix& W, int64_t mat, int64_t r, uint8_t* out) {
    const int64_t nb = W.cols / kBlockElems;
    const int j = int(r % kInterleaveRows);
    for (int64_t b = 0; b < nb; ++b, out += kQ8BlockBytes) {
        const uint8_t* blk = W.group_block(mat, r / kInterleaveRows, b);
        std::memcpy(out, blk + 2 * j, 2);
        for (int k = 0; k < kBlockElems / 2; ++k) std::memcpy(out + 2 + 2 * k, blk + 32 + 32 * k + 2 * j, 2);
    }
}

}  // namespace ossrun
