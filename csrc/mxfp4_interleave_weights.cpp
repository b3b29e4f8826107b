#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "mxfp4_interleave.h"

namespace ossrun {

namespace {

// Whether the matrix's bytes may be written: mprotect asks the kernel to allow it, which it
// refuses (EACCES) for a shared map of a file opened read-only, as the GGUF's is; pages this
// process writes already (its anonymous copy) stay as they were.
bool writable(const Matrix& m) {
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    const uintptr_t lo = uintptr_t(m.data) / page * page;
    const uintptr_t hi = (uintptr_t(m.data) + m.total_bytes() + page - 1) / page * page;
    return mprotect(reinterpret_cast<void*>(lo), hi - lo, PROT_READ | PROT_WRITE) == 0;
}

}  // namespace

size_t interleave_mxfp4_experts_in_place(ModelWeights& w, ThreadPool& pool) {
    std::vector<Matrix*> mats;
    for (LayerWeights& L : w.layers)
        for (Matrix* m : {&L.gate_exps, &L.up_exps, &L.down_exps})
            if (mxfp4_interleavable(*m) && writable(*m)) mats.push_back(m);
    // Units of work: 16 groups (256 rows) of one matrix of the stack, handed out over the pool.
    constexpr int64_t kGroupsPerUnit = 16;
    struct Unit {
        Matrix* m;
        int64_t first_group;  // of the whole stack: n_mats * rows / 16 groups, end to end
    };
    std::vector<Unit> units;
    size_t bytes = 0;
    for (Matrix* m : mats) {
        for (int64_t g = 0; g < m->n_mats * m->rows / kInterleaveRows; g += kGroupsPerUnit) units.push_back({m, g});
        bytes += m->total_bytes();
    }
    pool.parallel_for(int64_t(units.size()), 1, [&](int64_t u0, int64_t u1) {
        std::vector<uint8_t> rows;  // one group's rows in GGUF order, copied out before it is overwritten
        for (int64_t u = u0; u < u1; ++u) {
            Matrix& m = *units[size_t(u)].m;
            const size_t group_bytes = kInterleaveRows * m.row_bytes;
            rows.resize(group_bytes);
            const int64_t g0 = units[size_t(u)].first_group;
            const int64_t g1 = std::min(m.n_mats * m.rows / kInterleaveRows, g0 + kGroupsPerUnit);
            uint8_t* base = const_cast<uint8_t*>(m.data);
            for (int64_t g = g0; g < g1; ++g) {
                std::memcpy(rows.data(), base + size_t(g) * group_bytes, group_bytes);
                interleave_mxfp4_group(rows.data(), base + size_t(g) * group_bytes, m.row_bytes);
            }
        }
    });
    for (Matrix* m : mats) m->layout = RowLayout::kMxfp4x16;
    return bytes;
}

}  // namespace ossrun
