#include "threadpool.h"

#include <algorithm>

namespace ossrun {

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
    for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
        generation_.fetch_add(1);
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
}

void ThreadPool::run_chunks() {
    for (;;) {
        const int64_t begin = next_.fetch_add(job_grain_);
        if (begin >= job_n_) break;
        (*job_)(begin, std::min(job_n_, begin + job_grain_));
    }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain,
                              const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(1, grain);
    if (n_threads_ == 1 || n <= grain) {
        fn(0, n);
        return;
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        job_ = &fn;
        job_n_ = n;
        job_grain_ = grain;
        next_ = 0;
        // Open the job before waking anyone: a worker that sees the new generation finds it open.
        const uint64_t gen = generation_.load(std::memory_order_relaxed) + 1;
        attach_.store((gen << 32) | kOpen, std::memory_order_release);
        generation_.store(gen, std::memory_order_release);
    }
    wake_.notify_all();
    run_chunks();
    // Every chunk is claimed: close the job to latecomers, then wait for the chunks in flight.
    attach_.fetch_and(~kOpen, std::memory_order_acq_rel);
    while ((attach_.load(std::memory_order_acquire) & (kOpen - 1)) != 0) std::this_thread::yield();
}

bool ThreadPool::try_attach() {
    uint64_t s = attach_.load(std::memory_order_acquire);
    while (s & kOpen)
        if (attach_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) return true;
    return false;
}

void ThreadPool::worker_loop() {
    uint64_t seen = 0;
    for (;;) {
        // Spin a little: the next parallel loop of a decode step usually comes within microseconds.
        uint64_t gen = generation_.load(std::memory_order_acquire);
        for (int spin = 0; gen == seen && spin < 20000; ++spin) {
            std::this_thread::yield();
            gen = generation_.load(std::memory_order_acquire);
        }
        if (gen == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [&] { return generation_.load() != seen; });
            gen = generation_.load();
        }
        seen = gen;
        if (stop_) return;
        if (!try_attach()) continue;  // that job is done already (or this is a later one's turn)
        run_chunks();
        attach_.fetch_sub(1, std::memory_order_release);
    }
}

}  // namespace ossrun
