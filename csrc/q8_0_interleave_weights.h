// The model's interleaved Q8_0 matrices (q8_0_interleave.h): repacked once at load into memory
// this object owns, with the file-mapped pages of the originals given back, so the weights are
// never held twice.
#pragma once
#include <cstddef>
#include <cstdint>

#include "threadpool.h"
#include "weights.h"

namespace ossrun {

class InterleavedQ8_0 {
public:
    // Repacks attn_q/k/v/output of every layer and the output head where q8_0_interleavable
    // (not token_embd: its rows are looked up one by one) and points w's views at the copies.
    // release_source_pages: the originals lie in a read-only file map (MADV_DONTNEED then drops
    // this process's pages, a later read faults them back from the page cache); never for
    // anonymous memory, whose pages it would zero.
    void interleave(ModelWeights& w, ThreadPool& pool, bool release_source_pages);
    size_t bytes() const { return bytes_; }  // of the copies
    int matrices() const { return matrices_; }

    InterleavedQ8_0() = default;
    InterleavedQ8_0(const InterleavedQ8_0&) = delete;
    InterleavedQ8_0& operator=(const InterleavedQ8_0&) = delete;
    ~InterleavedQ8_0();

private:
    void* storage_ = nullptr;  // an anonymous map of bytes_ (returned to the system when freed)
    size_t bytes_ = 0;
    int matrices_ = 0;
};

}  // namespace ossrun
