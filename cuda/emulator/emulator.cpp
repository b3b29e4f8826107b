// The emulator's scheduler (emulator.h): a block's threads are fibers run round-robin until each
// reaches a synchronisation point or ends; a barrier opens when every thread still running (of
// the block, or of the warp) waits at it. A switch saves the callee-saved registers and the stack
// pointer (x86-64), ucontext elsewhere (its swapcontext also makes a signal-mask system call, which
// cost most of the emulator's time). "Device" memory is host memory, each
// allocation ending at a guard page so that reads past its end (rounded to 256 bytes) fault.
//
// OSSRUN_EMU_SCHEDULE picks the order in which a round resumes the ready threads: "forward" (the
// default, thread 0 first), "reverse", or "shuffle" / "shuffle:SEED" (a fresh random order every
// round). A correct kernel gives the same result in every order; one that reads shared memory
// another thread writes without a barrier between (in either direction) gives another in one of
// them, which is how tests/test_cuda_ops.py's schedule check finds the races the forward order hides.
// Every block starts with its dynamic shared memory and the .cu files' static shared variables
// (fresh_shared) filled with 0xCD bytes, as a device leaves them holding whatever the SM's last
// block wrote. The streams' orders (OSSRUN_EMU_STREAMS, emulator.h) are at the runtime API below.
#include "emulator.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <vector>

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace emu {

namespace {

enum class State { kReady, kAtBlock, kAtWarp, kDone };

constexpr size_t kStackBytes = 256 * 1024;
constexpr int kMaxThreads = 1024;

struct Fiber {
#if defined(__x86_64__)
    void* sp = nullptr;  // the stack pointer it was parked at
#else
    ucontext_t ctx;
#endif
    std::unique_ptr<char[]> stack;
    uint3 tid;
    int linear = 0;
    State state = State::kReady;
};

struct Scheduler {
#if defined(__x86_64__)
    void* main_sp = nullptr;
#else
    ucontext_t main;
#endif
    std::vector<Fiber> fibers;  // the first n run the current block
    size_t n = 0;
    Fiber* current = nullptr;
    void* body_arg = nullptr;
    void (*body)(void*) = nullptr;
    std::vector<float> slot_f;
    std::vector<int> slot_i;
    std::vector<std::array<uint32_t, 6>> slot_mma;  // a[4], b[2] of each thread
    std::vector<unsigned char> dynamic;
    std::string fault;  // the first fault of the running launch
};

Scheduler S;
std::mutex launch_mutex;

// The schedule (above): OSSRUN_EMU_SCHEDULE at first use, then set_schedule's.
struct Schedule {
    enum class Order { kForward, kReverse, kShuffle } order = Order::kForward;
    std::string spec = "forward";
    std::mt19937_64 rng{0};

    void set(const std::string& s) {
        if (s == "forward" || s == "reverse") {
            order = s == "forward" ? Order::kForward : Order::kReverse;
        } else if (s.rfind("shuffle", 0) == 0 && (s.size() == 7 || (s[7] == ':' && s.size() > 8 &&
                                                                     s.find_first_not_of("0123456789", 8) == s.npos))) {
            order = Order::kShuffle;
            rng.seed(s.size() > 8 ? std::stoull(s.substr(8)) : std::random_device{}());
        } else {
            throw std::invalid_argument("the emulator's schedule '" + s + "' is not forward, reverse or shuffle[:SEED]");
        }
        spec = s;
    }
    // The order of one round over n threads.
    void arrange(std::vector<size_t>& idx, size_t n) {
        idx.resize(n);
        std::iota(idx.begin(), idx.end(), size_t(0));
        if (order == Order::kReverse) std::reverse(idx.begin(), idx.end());
        if (order == Order::kShuffle) std::shuffle(idx.begin(), idx.end(), rng);
    }
};

Schedule& the_schedule() {
    static Schedule s = [] {
        Schedule d;
        const char* v = std::getenv("OSSRUN_EMU_SCHEDULE");
        if (v && *v) {
            try {
                d.set(v);
            } catch (const std::invalid_argument& e) {
                std::fprintf(stderr, "ossrun emulator: OSSRUN_EMU_SCHEDULE: %s\n", e.what());
                std::abort();
            }
        }
        return d;
    }();
    return s;
}

// The static shared variables already filled in the running block (fresh_shared).
std::vector<const void*> fresh_in_block;

void poison_shared() {
    fresh_in_block.clear();
    std::memset(S.dynamic.data(), 0xCD, S.dynamic.size());
}
cudaError_t last_error = cudaSuccess;
std::string last_fault;

#if defined(__x86_64__)
}  // namespace
}  // namespace emu
// switch_stacks(save, load): pushes the callee-saved registers, stores the stack pointer at *save,
// loads `load` and pops the registers saved there (System V x86-64).
extern "C" void ossrun_emu_switch_stacks(void** save, void* load);
asm(R"(
    .text
    .globl ossrun_emu_switch_stacks
    .type ossrun_emu_switch_stacks, @function
ossrun_emu_switch_stacks:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ossrun_emu_switch_stacks, .-ossrun_emu_switch_stacks
    .section .note.GNU-stack,"",@progbits
    .text
)");
namespace emu {
namespace {
#endif

void fiber_entry() {
    S.body(S.body_arg);
    S.current->state = State::kDone;
#if defined(__x86_64__)
    ossrun_emu_switch_stacks(&S.current->sp, S.main_sp);
#else
    swapcontext(&S.current->ctx, &S.main);
#endif
}

// A fresh fiber that starts in fiber_entry at its first switch.
void start_fiber(Fiber& f) {
#if defined(__x86_64__)
    // From the 16-byte aligned top: a null return address for fiber_entry, fiber_entry as the
    // switch's return address (so fiber_entry starts as if called), six zeroed registers.
    uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack.get()) + kStackBytes) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;
    *--sp = reinterpret_cast<void*>(&fiber_entry);
    for (int i = 0; i < 6; ++i) *--sp = nullptr;
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
#endif
}

void resume(Fiber& f) {
#if defined(__x86_64__)
    ossrun_emu_switch_stacks(&S.main_sp, f.sp);
#else
    swapcontext(&S.main, &f.ctx);
#endif
}

void park(State s) {
    Fiber* f = S.current;
    f->state = s;
#if defined(__x86_64__)
    ossrun_emu_switch_stacks(&f->sp, S.main_sp);
#else
    swapcontext(&f->ctx, &S.main);
#endif
}

// A fault inside a kernel: recorded for cudaDeviceSynchronize, the thread ends where it is.
[[noreturn]] void fault(const std::string& what) {
    if (S.fault.empty()) S.fault = what;
    park(State::kDone);
    std::abort();  // never resumed
}

float half_value(uint32_t pair, int hi) { return ossrun::fp16_to_float(uint16_t(hi ? pair >> 16 : pair & 0xFFFFu)); }

}  // namespace

void sync_block() { park(State::kAtBlock); }
void sync_warp() { park(State::kAtWarp); }

namespace {
// Each lane leaves v in its slot, the warp meets, each reads its partner's, the warp meets again
// (so that no lane overwrites its slot before every lane has read).
template <class T>
T exchange(std::vector<T>& slots, T v, int lane_mask) {
    const int me = S.current->linear;
    slots[size_t(me)] = v;
    park(State::kAtWarp);
    const int other = (me & ~31) | ((me & 31) ^ (lane_mask & 31));
    if (other >= int(S.n) || S.fibers[size_t(other)].state == State::kDone) fault("shfl from an exited lane");
    const T r = slots[size_t(other)];
    park(State::kAtWarp);
    return r;
}
}  // namespace

float shfl_xor(float v, int lane_mask) { return exchange(S.slot_f, v, lane_mask); }
int shfl_xor(int v, int lane_mask) { return exchange(S.slot_i, v, lane_mask); }

void* dynamic_shared() { return S.dynamic.data(); }

void fresh_shared(void* p, size_t bytes) {
    if (std::find(fresh_in_block.begin(), fresh_in_block.end(), p) != fresh_in_block.end()) return;
    fresh_in_block.push_back(p);
    std::memset(p, 0xCD, bytes);
}

void set_schedule(const std::string& spec) {
    std::lock_guard<std::mutex> lock(launch_mutex);
    the_schedule().set(spec);
}
std::string schedule() { return the_schedule().spec; }

namespace {
void neighbor_sum_kernel(const float* x, float* y, bool barrier) {
    float* s = static_cast<float*>(dynamic_shared());
    const unsigned i = threadIdx.x;
    s[i] = x[i];
    if (barrier) __syncthreads();
    y[i] = s[i] + (i > 0 ? s[i - 1] : 0.0f);
}
}  // namespace

std::vector<float> neighbor_sum_selftest(const std::vector<float>& x, bool barrier) {
    if (x.empty() || x.size() > size_t(kMaxThreads)) throw std::invalid_argument("1 to 1024 values");
    std::vector<float> y(x.size());
    Launch(dim3(1), dim3(unsigned(x.size())), x.size() * sizeof(float)).run(neighbor_sum_kernel, x.data(), y.data(), barrier);
    if (last_error != cudaSuccess) throw std::runtime_error(cudaGetErrorString(cudaGetLastError()));
    return y;
}

void check_aligned(const void* p, size_t align, const char* what) {
    if (reinterpret_cast<uintptr_t>(p) % align) fault(std::string("misaligned ") + what);
}

// PTX ISA, mma.m16n8k16 with .f16 A/B and .f32 C/D, g = lane / 4, t = lane % 4: A (16 x 16,
// row-major) a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9], a[3] =
// A[g+8][2t+8, 2t+9], the lower index in the low half; B (16 x 8) b[0] = B[2t, 2t+1][g],
// b[1] = B[2t+8, 2t+9][g]; C/D d[0..1] = D[g][2t, 2t+1], d[2..3] = D[g+8][2t, 2t+1].
void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    const int me = S.current->linear, warp0 = me & ~31, lane = me & 31;
    auto& mine = S.slot_mma[size_t(me)];
    for (int i = 0; i < 4; ++i) mine[size_t(i)] = a[i];
    mine[4] = b[0];
    mine[5] = b[1];
    park(State::kAtWarp);
    for (int w = warp0; w < warp0 + 32; ++w)
        if (w >= int(S.n) || S.fibers[size_t(w)].state == State::kDone) fault("mma with an exited lane");
    auto A = [&](int r, int k) {
        const int owner = warp0 + 4 * (r % 8) + (k % 8) / 2;
        return half_value(S.slot_mma[size_t(owner)][size_t((k >= 8 ? 2 : 0) + (r >= 8 ? 1 : 0))], k % 2);
    };
    auto B = [&](int k, int n) {
        const int owner = warp0 + 4 * n + (k % 8) / 2;
        return half_value(S.slot_mma[size_t(owner)][size_t(4 + (k >= 8 ? 1 : 0))], k % 2);
    };
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int r = g + (i >= 2 ? 8 : 0), n = 2 * t + (i & 1);
        float acc = d[i];
        for (int k = 0; k < 16; ++k) acc += A(r, k) * B(k, n);  // products exact in float32
        d[i] = acc;
    }
    park(State::kAtWarp);
}

void Launch::run_erased(void* f, void (*body)(void*)) {
    std::lock_guard<std::mutex> lock(launch_mutex);
    const size_t n = size_t(block.x) * block.y * block.z;
    if (n < 1 || n > size_t(kMaxThreads) || grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535) {
        last_error = cudaErrorInvalidValue;
        return;
    }
    if (S.fibers.size() < n) {
        S.fibers.resize(n);
        for (Fiber& fb : S.fibers)
            if (!fb.stack) fb.stack.reset(new char[kStackBytes]);
    }
    S.n = n;
    S.slot_f.assign(n, 0.0f);
    S.slot_i.assign(n, 0);
    S.slot_mma.assign(n, {});
    S.dynamic.assign(shared_bytes, 0xCD);  // not zeros: a kernel must write what it reads
    std::vector<size_t> order;
    S.body = body;
    S.body_arg = f;
    S.fault.clear();
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z && S.fault.empty(); ++bz)
        for (unsigned by = 0; by < grid.y && S.fault.empty(); ++by)
            for (unsigned bx = 0; bx < grid.x && S.fault.empty(); ++bx) {
                blockIdx = {bx, by, bz};
                poison_shared();
                for (size_t i = 0; i < n; ++i) {
                    Fiber& fb = S.fibers[i];
                    fb.linear = int(i);
                    fb.tid = {unsigned(i % block.x), unsigned(i / block.x % block.y), unsigned(i / (size_t(block.x) * block.y))};
                    fb.state = State::kReady;
                    start_fiber(fb);
                }
                for (;;) {
                    bool ran = false;
                    the_schedule().arrange(order, n);
                    for (const size_t i : order)
                        if (S.fibers[i].state == State::kReady) {
                            S.current = &S.fibers[i];
                            threadIdx = S.fibers[i].tid;
                            resume(S.fibers[i]);
                            ran = true;
                        }
                    // Open the barriers every running thread of a warp, or of the block, waits at.
                    bool opened = false, all_done = true, all_at_block = true;
                    for (size_t w0 = 0; w0 < n; w0 += 32) {
                        bool any = false, all_warp = true;
                        for (size_t i = w0; i < std::min(n, w0 + 32); ++i) {
                            const State s = S.fibers[i].state;
                            if (s == State::kDone) continue;
                            any = true;
                            all_done = false;
                            all_warp &= s == State::kAtWarp;
                            all_at_block &= s == State::kAtBlock;
                        }
                        if (any && all_warp) {
                            for (size_t i = w0; i < std::min(n, w0 + 32); ++i)
                                if (S.fibers[i].state == State::kAtWarp) S.fibers[i].state = State::kReady;
                            opened = true;
                        }
                    }
                    if (all_done) break;
                    if (!opened && all_at_block) {
                        for (size_t i = 0; i < n; ++i)
                            if (S.fibers[i].state == State::kAtBlock) S.fibers[i].state = State::kReady;
                        opened = true;
                    }
                    if (!opened && !ran) {
                        S.fault = "deadlock: threads wait at different barriers";
                        break;
                    }
                }
            }
    if (!S.fault.empty()) {
        last_error = cudaErrorLaunchFailure;
        last_fault = S.fault;
    }
}

}  // namespace emu

// ---------------------------------------------------------------- the runtime API

struct EmuGraph {
    std::vector<std::function<void()>> work;
};

// A stream: its queue of work not yet run (emu::submit), counted so that an event can name a
// point in it. The default stream (a null cudaStream_t) is `immediate` below.
struct EmuStream {
    bool lazy = false;  // the stream order's choice, made at its creation
    std::deque<std::function<void()>> queue;
    uint64_t submitted = 0, ran = 0;
};

// An event: the point of its stream it was last recorded at, and when that point ran.
struct EmuEvent {
    EmuStream* stream = nullptr;  // null: never recorded, or recorded on the default stream
    uint64_t point = 0;
    std::chrono::steady_clock::time_point at = std::chrono::steady_clock::now();
};

namespace {

EmuGraph* capture = nullptr;  // the graph being captured (one stream at a time)

std::mutex memory_mutex;
std::map<uintptr_t, std::pair<void*, size_t>> mappings;  // user pointer -> (mapping, bytes)

// The streams and their order (emu::set_stream_order); recursive: running one stream's work may
// run another's (a wait on its event).
std::recursive_mutex stream_mutex;
std::vector<EmuStream*> live_streams;
uint64_t streams_created = 0;
enum class StreamOrder { kImmediate, kLazyEven, kLazyOdd, kLazyAll };
// The stream orders by name (emu::set_stream_order, OSSRUN_EMU_STREAMS, emu::stream_order).
constexpr std::pair<const char*, StreamOrder> kStreamOrders[] = {{"immediate", StreamOrder::kImmediate},
                                                                 {"lazy-even", StreamOrder::kLazyEven},
                                                                 {"lazy-odd", StreamOrder::kLazyOdd},
                                                                 {"lazy-all", StreamOrder::kLazyAll}};

StreamOrder parse_stream_order(const std::string& spec) {
    for (const auto& [name, order] : kStreamOrders)
        if (spec == name) return order;
    throw std::invalid_argument("the emulator's stream order '" + spec +
                                "' is not immediate, lazy-even, lazy-odd or lazy-all");
}

StreamOrder stream_order_value = [] {
    const char* v = std::getenv("OSSRUN_EMU_STREAMS");
    if (!v || !*v) return StreamOrder::kImmediate;
    try {
        return parse_stream_order(v);
    } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "ossrun emulator: OSSRUN_EMU_STREAMS: %s\n", e.what());
        std::abort();
    }
}();

bool live(EmuStream* s) { return std::find(live_streams.begin(), live_streams.end(), s) != live_streams.end(); }

// Runs s's queued work up to its point `point` (all of it: UINT64_MAX). A destroyed stream's
// work has all run (cudaStreamDestroy).
void run_stream_to(EmuStream* s, uint64_t point) {
    std::lock_guard<std::recursive_mutex> lock(stream_mutex);
    while (s && live(s) && s->ran < point && !s->queue.empty()) {
        std::function<void()> work = std::move(s->queue.front());
        s->queue.pop_front();
        ++s->ran;
        work();
    }
}

void run_all_streams() {
    std::lock_guard<std::recursive_mutex> lock(stream_mutex);
    for (size_t i = 0; i < live_streams.size(); ++i) run_stream_to(live_streams[i], UINT64_MAX);
}

EmuStream* as_emu(cudaStream_t s) { return static_cast<EmuStream*>(s); }

// As the runtime does, a failed call is also the error cudaGetLastError() returns next: an
// unchecked failure (a destructor's, say) shows at the next checked launch.
cudaError_t fail(cudaError_t e) {
    emu::last_error = e;
    return e;
}

cudaError_t take_error() {
    const cudaError_t e = emu::last_error;
    emu::last_error = cudaSuccess;
    return e;
}

}  // namespace

void emu::set_stream_order(const std::string& spec) {
    std::lock_guard<std::recursive_mutex> lock(stream_mutex);
    stream_order_value = parse_stream_order(spec);
}

std::string emu::stream_order() {
    for (const auto& [name, order] : kStreamOrders)
        if (order == stream_order_value) return name;
    return "";
}

void emu::submit(void* stream, std::function<void()> work) {
    std::lock_guard<std::recursive_mutex> lock(stream_mutex);
    if (capture) {  // a graph keeps the work (a launch's arguments included) instead of running it
        capture->work.push_back(std::move(work));
        return;
    }
    EmuStream* s = as_emu(stream);
    if (!s || !s->lazy) {  // nothing waits in an immediate stream's queue
        if (s) ++s->submitted, ++s->ran;
        work();
        return;
    }
    s->queue.push_back(std::move(work));
    ++s->submitted;
}

const char* cudaGetErrorName(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
        case cudaErrorHostMemoryAlreadyRegistered: return "cudaErrorHostMemoryAlreadyRegistered";
        case cudaErrorHostMemoryNotRegistered: return "cudaErrorHostMemoryNotRegistered";
        case cudaErrorNotSupported: return "cudaErrorNotSupported";
        case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t e) {
    if (e == cudaErrorLaunchFailure) return emu::last_fault.c_str();
    return cudaGetErrorName(e);
}

cudaError_t cudaGetLastError() { return take_error(); }

cudaError_t cudaMalloc(void** p, size_t bytes) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE)), used = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
    const size_t body = (used + page - 1) / page * page;
    void* m = mmap(nullptr, body + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return fail(cudaErrorMemoryAllocation);
    mprotect(static_cast<char*>(m) + body, page, PROT_NONE);  // the guard page
    char* user = static_cast<char*>(m) + body - used;
    std::lock_guard<std::mutex> lock(memory_mutex);
    mappings[reinterpret_cast<uintptr_t>(user)] = {m, body + page};
    *p = user;
    return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
    if (!p) return cudaSuccess;
    run_all_streams();  // cudaFree waits for the device, so no queued work reads freed memory
    std::lock_guard<std::mutex> lock(memory_mutex);
    auto it = mappings.find(reinterpret_cast<uintptr_t>(p));
    if (it == mappings.end()) return fail(cudaErrorInvalidValue);
    munmap(it->second.first, it->second.second);
    mappings.erase(it);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
    if (bytes) std::memcpy(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    if (capture) {  // a graph's copy reads its source when the graph runs
        emu::submit(stream, [dst, src, bytes, kind] { cudaMemcpy(dst, src, bytes, kind); });
        return cudaSuccess;
    }
    if (kind == cudaMemcpyHostToDevice) {
        // From pageable memory the driver stages the host's bytes before it returns (the CUDA
        // runtime's "API synchronization behavior"): the host may reuse them at once.
        auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                                   static_cast<const unsigned char*>(src) + bytes);
        emu::submit(stream, [dst, staged] {
            if (!staged->empty()) std::memcpy(dst, staged->data(), staged->size());
        });
        return cudaSuccess;
    }
    emu::submit(stream, [dst, src, bytes, kind] { cudaMemcpy(dst, src, bytes, kind); });
    // To pageable memory the copy is done when it returns: the stream runs up to it.
    if (kind == cudaMemcpyDeviceToHost) run_stream_to(as_emu(stream), UINT64_MAX);
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
    std::lock_guard<std::recursive_mutex> lock(stream_mutex);
    auto* st = new EmuStream;
    const uint64_t n = streams_created++;
    st->lazy = stream_order_value == StreamOrder::kLazyAll || (stream_order_value == StreamOrder::kLazyEven && n % 2 == 0) ||
               (stream_order_value == StreamOrder::kLazyOdd && n % 2 == 1);
    live_streams.push_back(st);
    *s = st;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::recursive_mutex> lock(stream_mutex);
    run_stream_to(as_emu(s), UINT64_MAX);  // its work still runs, as on a device
    live_streams.erase(std::remove(live_streams.begin(), live_streams.end(), as_emu(s)), live_streams.end());
    delete as_emu(s);
    return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
    std::lock_guard<std::recursive_mutex> lock(stream_mutex);
    if (capture) return fail(cudaErrorInvalidValue);
    run_stream_to(as_emu(s), UINT64_MAX);  // the graph's work follows the stream's queued work
    capture = new EmuGraph;
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t* graph) {
    std::lock_guard<std::recursive_mutex> lock(stream_mutex);
    if (!capture) return fail(cudaErrorInvalidValue);
    *graph = capture;
    capture = nullptr;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
    *exec = new EmuGraph(*graph);
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    // The launch keeps its own copy of the work: a graph may be destroyed while its launch waits.
    auto work = std::make_shared<std::vector<std::function<void()>>>(exec->work);
    emu::submit(s, [work] {
        for (auto& w : *work) w();
    });
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete graph;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}

cudaError_t cudaMemset(void* p, int value, size_t bytes) {
    std::memset(p, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
    run_all_streams();
    return take_error();
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    run_stream_to(as_emu(s), UINT64_MAX);
    return take_error();
}

cudaError_t cudaEventCreate(cudaEvent_t* e) {
    *e = new EmuEvent;
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::recursive_mutex> lock(stream_mutex);
    emu::submit(s, [e] { e->at = std::chrono::steady_clock::now(); });
    e->stream = capture ? nullptr : as_emu(s);
    e->point = e->stream ? e->stream->submitted : 0;
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    // The point the event names now (a later record does not move this wait), run when s gets here.
    EmuStream* other = e->stream;
    const uint64_t point = e->point;
    emu::submit(s, [other, point] { run_stream_to(other, point); });
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    run_stream_to(e->stream, e->point);
    return take_error();
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
    *ms = std::chrono::duration<float, std::milli>(stop->at - start->at).count();
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* v) {
    *v = 0;  // no CUDA runtime: the emulator
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
    *v = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
    std::snprintf(p->name, sizeof p->name, "%s", "ossrun CUDA emulator (CPU)");
    p->major = 9;
    p->minor = 0;
    p->totalGlobalMem = size_t(1) << 32;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : fail(cudaErrorInvalidValue); }
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
    *free_bytes = *total_bytes = size_t(1) << 32;
    return cudaSuccess;
}

namespace {
bool host_register_works = true;
std::map<uintptr_t, size_t> host_registered;  // start -> bytes, as the runtime keeps them
std::mutex host_register_mutex;
}  // namespace

void emu::set_host_register_works(bool works) { host_register_works = works; }

cudaError_t cudaHostRegister(void* p, size_t bytes, unsigned) {
    const uintptr_t lo = reinterpret_cast<uintptr_t>(p), page = uintptr_t(sysconf(_SC_PAGESIZE));
    if (!p || bytes == 0 || lo % page || bytes % page) return fail(cudaErrorInvalidValue);
    if (!host_register_works) return fail(cudaErrorNotSupported);
    std::lock_guard<std::mutex> lock(host_register_mutex);
    auto next = host_registered.lower_bound(lo);
    const bool overlaps = (next != host_registered.end() && next->first < lo + bytes) ||
                          (next != host_registered.begin() && std::prev(next)->first + std::prev(next)->second > lo);
    if (overlaps) return fail(cudaErrorHostMemoryAlreadyRegistered);
    host_registered[lo] = bytes;
    return cudaSuccess;
}

cudaError_t cudaHostUnregister(void* p) {
    std::lock_guard<std::mutex> lock(host_register_mutex);
    if (host_registered.erase(reinterpret_cast<uintptr_t>(p)) == 0) return fail(cudaErrorHostMemoryNotRegistered);
    return cudaSuccess;
}
