// Flash-decoding: one query's key range cut into chunks that threads attend to separately
// (AttentionArgs partial mode: per-head max, sum of exp and unnormalised value sum), then merged
// with the sinks. Decode has few (token, kv head) tasks, fewer than a many-core CPU has threads,
// and each task's range grows with the context; chunks give every thread a share of it.
#pragma once
#include <cstdint>

#include "numerics.h"  // OSSRUN_HD: the CUDA backend cuts its rows the same way

namespace ossrun {

// Keys per chunk. Chunks start at multiples of it (absolute positions), so how a row is cut, and
// so its result, depends on its own key range alone, not on the batch or the thread count.
constexpr int64_t kAttentionSplitChunk = 2048;
// A forward splits its rows when it has fewer (token, kv head) tasks than this (decode steps);
// prefill chunks have enough tasks to keep every thread busy unsplit.
constexpr int64_t kAttentionSplitMaxTasks = 64;

// Chunks of keys lo..hi (inclusive) when split: 1 (attend unsplit) below two chunks.
OSSRUN_HD inline int64_t attention_chunks(int64_t lo, int64_t hi) {
    if (hi < lo) return 1;
    return hi / kAttentionSplitChunk - lo / kAttentionSplitChunk + 1;
}
// Key range of chunk i of lo..hi.
OSSRUN_HD inline void attention_chunk_range(int64_t lo, int64_t hi, int64_t i, int64_t& c_lo, int64_t& c_hi) {
    const int64_t base = (lo / kAttentionSplitChunk + i) * kAttentionSplitChunk;
    c_lo = i == 0 ? lo : base;
    c_hi = base + kAttentionSplitChunk - 1 < hi ? base + kAttentionSplitChunk - 1 : hi;
}

// out[h][d] = the softmax over n_parts partial results and the sink of each head:
// with M = max(sink_h, max_p max_p,h), out_h = Σ_p exp(max_p,h - M) acc_p,h /
// (exp(sink_h - M) + Σ_p exp(max_p,h - M) sum_p,h). acc [n_parts][n_heads][d], max/sum [n_parts][n_heads].
void merge_attention_parts(const float* acc, const float* part_max, const float* part_sum,
                           int64_t n_parts, int64_t n_heads, int64_t d, const float* sinks, float* out);

}  // namespace ossrun
