// Where a forward's time goes: wall time per part of the network, summed since load, so a
// benchmark (tools/bench_batch.py) can say which part a batched decode step spends its time in.
// Exclusive timing: switching to a part charges the time since the last switch to the previous one.
#pragma once
#include <array>
#include <chrono>
#include <cstdint>

namespace ossrun {

enum class Part : int {
    kOther,          // embedding, norms, residual adds
    kDenseMatmul,    // q, k, v and attention output projections
    kAttention,      // RoPE, KV stores, the attention kernel
    kRouter,         // the router matmul
    kExperts,        // the routed experts' matmuls
    kMoeOther,       // top-k, gathering, int16 quantizing, SwiGLU, the weighted sum
    kOutput,         // final norm, unembedding matmul, logits copies
    kCount
};

inline const char* part_name(Part p) {
    static const char* const names[] = {"other", "dense_matmul", "attention", "router",
                                        "experts", "moe_other", "output"};
    return names[int(p)];
}

class PartTimer {
public:
    using Clock = std::chrono::steady_clock;
    // Starts charging `p` (the part before it gets the time since the last switch).
    Part switch_to(Part p) {
        const Clock::time_point now = Clock::now();
        if (running_) ns_[size_t(current_)] += uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(now - last_).count());
        const Part before = current_;
        current_ = p;
        last_ = now;
        running_ = true;
        return before;
    }
    Part current() const { return current_; }
    void stop() {
        switch_to(Part::kOther);
        running_ = false;
    }
    double seconds(Part p) const { return double(ns_[size_t(p)]) * 1e-9; }

private:
    std::array<uint64_t, size_t(Part::kCount)> ns_{};
    Part current_ = Part::kOther;
    Clock::time_point last_{};
    bool running_ = false;
};

}  // namespace ossrun
