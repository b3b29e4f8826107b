#include "q8_0_interleave_weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <new>
#include <utility>
#include <stdexcept>
#include <vector>

#include "q8_0_interleave.h"

namespace ossrun {

InterleavedQ8_0::~InterleavedQ8_0() {
    if (storage_) munmap(storage_, bytes_);
}

namespace {

// The page-aligned interior of [p, p + n): whole pages only, so a neighbour's bytes sharing an
// edge page stay mapped.
void release_pages(const uint8_t* p, size_t n) {
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    const uintptr_t lo = (uintptr_t(p) + page - 1) / page * page, hi = (uintptr_t(p) + n) / page * page;
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

}  // namespace

void InterleavedQ8_0::interleave(ModelWeights& w, ThreadPool& pool, bool release_source_pages) {
    if (storage_) throw std::logic_error("the Q8_0 weights are interleaved already");
    std::vector<Matrix*> mats;
    auto add = [&](Matrix& m) {
        if (q8_0_interleavable(m)) mats.push_back(&m);
    };
    for (LayerWeights& L : w.layers) {
        add(L.attn_q);
        add(L.attn_k);
        add(L.attn_v);
        add(L.attn_output);
    }
    add(w.output);
    if (mats.empty()) return;
    std::vector<size_t> offset;  // of each copy, 64-byte aligned (every 32-byte load in one line)
    size_t total = 0;
    for (const Matrix* m : mats) {
        offset.push_back(total);
        total += (m->total_bytes() + 63) / 64 * 64;
    }
    // Its own anonymous map, not the heap: page-aligned and given back whole when the model goes.
    // Not MADV_HUGEPAGE: on the 4-layer file it made the first repack of a process 1.0-1.3 s
    // against 0.3-0.6 s (the kernel compacting memory for 2 MiB pages) for no decode speed that
    // showed above the noise.
    void* map = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) throw std::bad_alloc();
    storage_ = map;
    bytes_ = total;
    uint8_t* dst = static_cast<uint8_t*>(map);
    // Ask for the originals' pages at once: pages not in the page cache (a first load) then come
    // in large read-ahead I/O rather than one fault at a time.
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    for (const Matrix* m : mats) {
        const uintptr_t lo = uintptr_t(m->data) / page * page;
        madvise(reinterpret_cast<void*>(lo), uintptr_t(m->data) + m->total_bytes() - lo, MADV_WILLNEED);
    }
    // Units of work: 16 groups (256 rows) of one matrix, handed out over the pool.
    constexpr int64_t kGroupsPerUnit = 16;
    std::vector<std::pair<size_t, int64_t>> units;  // (matrix, first group)
    for (size_t i = 0; i < mats.size(); ++i)
        for (int64_t g = 0; g < mats[i]->rows / kInterleaveRows; g += kGroupsPerUnit) units.emplace_back(i, g);
    pool.parallel_for(int64_t(units.size()), 1, [&](int64_t u0, int64_t u1) {
        for (int64_t u = u0; u < u1; ++u) {
            const Matrix& m = *mats[units[size_t(u)].first];
            const int64_t g0 = units[size_t(u)].second, g1 = std::min(m.rows / kInterleaveRows, g0 + kGroupsPerUnit);
            interleave_q8_0_groups(m.data, dst + offset[units[size_t(u)].first], m.row_bytes, g0, g1);
        }
    });
    for (size_t i = 0; i < mats.size(); ++i) {
        if (release_source_pages) release_pages(mats[i]->data, mats[i]->total_bytes());
        mats[i]->data = dst + offset[i];
        mats[i]->layout = RowLayout::kQ8_0x16;
    }
    matrices_ = int(mats.size());
}

}  // namespace ossrun
