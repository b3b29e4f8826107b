// MXFP4 rows interleaved 16 at a time (RowLayout::kMxfp4x16, weights.h): why, the layout, and
// the code that converts between it and the GGUF's row after row.
//
// Why: the fast decode GEMV of GGUF rows puts four blocks of one row in a vector (VBMI permutes
// gather them) and, per token and 4 blocks, spends 4 vpdpwssd, 1 convert, 1 scale product and
// 1 FMA, beside ~10 permutes, shifts and masks per 4 blocks to decode the codes: on Zen 4, which
// splits each 512-bit operation in two, it is bound by its instructions, and a 2-token expert
// costs 1.4x a 1-token one. With 16 rows in the 16 lanes (as RowLayout::kQ8_0x16 does for Q8_0)
// the codes need no gather, each token's activation pair is broadcast from memory against them,
// and one convert, product and FMA serve 16 rows. One thread on Zen 4, an expert's 2880 x 2880
// matrix from L3, ns per block and row (docs/PERFORMANCE.md, tenth session): 1 token 1.03 ->
// 0.85, 2 tokens 1.32 -> 1.05, 4 tokens 2.09 -> 1.68; in the model, a 4-sequence decode step's
// experts 173-185 -> 141-145 ms.
//
// Layout: group g (rows 16g .. 16g + 15 of one matrix) takes the bytes those rows took, block
// after block; block b of the group is 272 bytes: the 16 rows' E8M0 scale bytes (row j at byte
// j), then 8 chunks of 32 bytes, chunk k holding code bytes 2k, 2k + 1 of each row's block (row
// j at bytes 2j, 2j + 1). GGUF code byte i of a block holds elements i (low nibble) and i + 16
// (high nibble), so chunk k, widened to words, is the element pairs (2k, 2k + 1) and
// (2k + 16, 2k + 17) of all 16 rows: the int16 activations' own pairs, in their own order.
#pragma once
#include <cstdint>
#include <cstring>

#include "threadpool.h"
#include "weights.h"

namespace ossrun {

// Whether W can take the layout: MXFP4 matrices (one or a stack of experts) in GGUF order whose
// rows fill whole groups.
inline bool mxfp4_interleavable(const Matrix& W) {
    return W.type == DType::MXFP4 && W.layout == RowLayout::kRows && W.n_mats >= 1 && W.rows > 0 &&
           W.rows % kInterleaveRows == 0 && W.cols % kBlockElems == 0;
}

// One group: src = its 16 rows in GGUF order, dst = the group interleaved (not overlapping).
inline void interleave_mxfp4_group(const uint8_t* src, uint8_t* dst, size_t row_bytes) {
    const int64_t nb = int64_t(row_bytes / kMxfp4BlockBytes);
    for (int64_t b = 0; b < nb; ++b, dst += kMxfp4GroupBlockBytes) {
        for (int j = 0; j < kInterleaveRows; ++j) {
            const uint8_t* in = src + size_t(j) * row_bytes + size_t(b) * kMxfp4BlockBytes;
            dst[j] = in[0];
            for (int k = 0; k < 8; ++k) std::memcpy(dst + kInterleaveRows + 32 * k + 2 * j, in + 1 + 2 * k, 2);
        }
    }
}

// Row r of W[mat] (layout kMxfp4x16) back in GGUF order: out[row_bytes].
inline void deinterleave_mxfp4_row(const Matrix& W, int64_t mat, int64_t r, uint8_t* out) {
    const int64_t nb = W.cols / kBlockElems;
    const int j = int(r % kInterleaveRows);
    for (int64_t b = 0; b < nb; ++b, out += kMxfp4BlockBytes) {
        const uint8_t* blk = W.group_block(mat, r / kInterleaveRows, b);
        out[0] = blk[j];
        for (int k = 0; k < 8; ++k) std::memcpy(out + 1 + 2 * k, blk + kInterleaveRows + 32 * k + 2 * j, 2);
    }
}

// Repacks, in place, the expert matrices (gate, up, down) of every layer where
// mxfp4_interleavable, and marks them kMxfp4x16; returns the bytes repacked. In place, so no
// second copy is ever held: only matrices in memory this process may write (the Python model's
// copy of the experts, weights_in_ram.py); those in the file's read-only map keep its layout.
size_t interleave_mxfp4_experts_in_place(ModelWeights& w, ThreadPool& pool);

}  // namespace ossrun
