// Measures the ceilings that bound ossrun on this machine: DRAM read bandwidth and the peak
// rates of float32 FMA, bf16, int16 and int8 dot products (VNNI), per core and for all
// threads. The read bandwidth and int16 rate are `ossrun bench`'s own probes
// (csrc/cpu/machine_probe.cpp, built in with this file). Built and run by tools/machine_rates.py;
// prints one JSON object.
#include <immintrin.h>

#include "../csrc/cpu/machine_probe.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

template <class F>
static double run_threads(int n, F&& fn) {  // wall time of n threads running fn(thread)
    std::vector<std::thread> ts;
    auto t = Clock::now();
    for (int i = 0; i < n; ++i) ts.emplace_back(fn, i);
    for (auto& th : ts) th.join();
    return seconds_since(t);
}

constexpr long kIters = 50000000;

// Twelve independent accumulators per iteration, in inline assembly, held in registers: the
// first version of this probe kept them in an array that the compiler stored back every
// iteration, and fed the float loops denormals; it measured a third of the real rates.
#define OSSRUN_TWELVE(op)                                                                         \
    asm volatile(op " %[x], %[y], %[a0]\n\t" op " %[x], %[y], %[a1]\n\t" op " %[x], %[y], %[a2]\n\t"  \
                 op " %[x], %[y], %[a3]\n\t" op " %[x], %[y], %[a4]\n\t" op " %[x], %[y], %[a5]\n\t"  \
                 op " %[x], %[y], %[a6]\n\t" op " %[x], %[y], %[a7]\n\t" op " %[x], %[y], %[a8]\n\t"  \
                 op " %[x], %[y], %[a9]\n\t" op " %[x], %[y], %[a10]\n\t" op " %[x], %[y], %[a11]"    \
                 : [a0] "+v"(a0), [a1] "+v"(a1), [a2] "+v"(a2), [a3] "+v"(a3), [a4] "+v"(a4),       \
                   [a5] "+v"(a5), [a6] "+v"(a6), [a7] "+v"(a7), [a8] "+v"(a8), [a9] "+v"(a9),      \
                   [a10] "+v"(a10), [a11] "+v"(a11)                                                \
                 : [x] "v"(x), [y] "v"(y))

#define OSSRUN_PEAK_LOOP(name, features, op)                                                      \
    __attribute__((target(features))) static void name() {                                       \
        /* named, not an array: an array's elements were stored back every iteration */        \
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0; \
        __m512i a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;                                     \
        /* normal numbers both as float32 and as bf16 pairs: no denormal assists */            \
        const __m512i x = _mm512_set1_epi32(0x3B003B00), y = _mm512_set1_epi32(0x3F803F80);       \
        for (long k = 0; k < kIters; ++k) OSSRUN_TWELVE(op);                                      \
        volatile int s = _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a11), a5)); \
        (void)s;                                                                                  \
    }

OSSRUN_PEAK_LOOP(fma_loop, "avx512f", "vfmadd231ps")
OSSRUN_PEAK_LOOP(bf16_loop, "avx512f,avx512bf16", "vdpbf16ps")
OSSRUN_PEAK_LOOP(vnni_loop, "avx512f,avx512vnni", "vpdpbusd")

template <class F>
static double rate(int threads, double ops_per_iter, F loop) {  // Gop/s
    double t = run_threads(threads, [&](int) { loop(); });
    return threads * kIters * ops_per_iter / t / 1e9;
}

int main(int argc, char** argv) {
    const int n = argc > 1 ? std::atoi(argv[1]) : int(std::thread::hardware_concurrency());
    const size_t bytes = size_t(1) << 30;
    std::printf("{\"threads\": %d, \"read_gb_s_1\": %.2f, \"read_gb_s_all\": %.2f", n,
                ossrun::measure_read_bandwidth(1, bytes), ossrun::measure_read_bandwidth(n, bytes));
    if (__builtin_cpu_supports("avx512f")) {
        // 12 vectors x 16 lanes x 2 flops (fma); x 32 pairs x 2 (bf16 dot, int16 vnni); x 64
        // bytes x 2 (int8 vnni).
        std::printf(", \"fma_gflops_1\": %.1f, \"fma_gflops_all\": %.1f", rate(1, 12 * 32, fma_loop),
                    rate(n, 12 * 32, fma_loop));
        if (__builtin_cpu_supports("avx512bf16"))
            std::printf(", \"bf16_gflops_1\": %.1f, \"bf16_gflops_all\": %.1f",
                        rate(1, 12 * 64, bf16_loop), rate(n, 12 * 64, bf16_loop));
        if (__builtin_cpu_supports("avx512vnni"))
            std::printf(", \"int16_gops_1\": %.1f, \"int16_gops_all\": %.1f, \"int8_gops_1\": %.1f, "
                        "\"int8_gops_all\": %.1f",
                        ossrun::measure_int16_peak(1, nullptr), ossrun::measure_int16_peak(n, nullptr),
                        rate(1, 12 * 128, vnni_loop), rate(n, 12 * 128, vnni_loop));
    }
    std::printf("}\n");
    return 0;
}
