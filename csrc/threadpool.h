// A small persistent thread pool for the forward pass: workers spin briefly between jobs (a
// decode step issues hundreds of short parallel loops) and then sleep, so an idle model costs nothing.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ossrun {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Calls fn(begin, end) over [0, n) in chunks of `grain`, handed out dynamically; the calling
    // thread works too. Returns when every chunk is done. Not reentrant.
    void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

private:
    void worker_loop();
    void run_chunks();

    int n_threads_;
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_;
    bool try_attach();

    std::atomic<uint64_t> generation_{0};
    // Which job workers may join: its generation (high 32 bits), kOpen while its chunks are being
    // handed out, and how many workers are inside it (low bits). The caller waits only for those:
    // a worker that wakes late (descheduled on a busy machine) finds the job closed and skips it,
    // where waiting for every worker to check in cost up to a time slice per parallel loop.
    static constexpr uint64_t kOpen = uint64_t(1) << 31;
    std::atomic<uint64_t> attach_{0};
    std::atomic<int64_t> next_{0};
    std::atomic<bool> stop_{false};
    // The current job; written before attach_ opens it, unchanged while a worker is attached.
    const std::function<void(int64_t, int64_t)>* job_ = nullptr;
    int64_t job_n_ = 0, job_grain_ = 1;
};

}  // namespace ossrun
