// Measures the ceilings that bound ossrun on this machine: DRAM read bandwidth and the peak
// rates of float32 FMA, bf16 dot products and int8 dot products (VNNI), per core and for all
// threads. Built and run by tools/machine_rates.py; prints one JSON object.
#include <immintrin.h>

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

static double read_bandwidth(int threads, size_t bytes) {
    std::vector<uint8_t> buf(bytes, 1);
    double best = 1e30;
    for (int rep = 0; rep < 5; ++rep) {
        double t = run_threads(threads, [&](int i) {
            const size_t part = bytes / threads;
            const __m256i* p = reinterpret_cast<const __m256i*>(buf.data() + i * part);
            __m256i acc = _mm256_setzero_si256();
            for (size_t k = 0; k < part / 32; ++k) acc = _mm256_xor_si256(acc, _mm256_loadu_si256(p + k));
            volatile int sink = _mm256_extract_epi32(acc, 0);
            (void)sink;
        });
        best = std::min(best, t);
    }
    return bytes / best / 1e9;
}

constexpr long kIters = 20000000;

__attribute__((target("avx512f"))) static void fma_loop() {
    __m512 acc[12];
    for (auto& a : acc) a = _mm512_setzero_ps();
    __m512 x = _mm512_set1_ps(1e-9f), y = _mm512_set1_ps(1.0f);
    for (long k = 0; k < kIters; ++k) {
        for (auto& a : acc) a = _mm512_fmadd_ps(x, y, a);
        asm volatile("" : "+v"(x));
    }
    volatile float s = _mm512_reduce_add_ps(acc[0]);
    (void)s;
}

__attribute__((target("avx512f,avx512bf16"))) static void bf16_loop() {
    __m512 acc[12];
    for (auto& a : acc) a = _mm512_setzero_ps();
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = x;
    for (long k = 0; k < kIters; ++k) {
        for (auto& a : acc) a = _mm512_dpbf16_ps(a, x, y);
        asm volatile("" : "+v"(x));
    }
    volatile float s = _mm512_reduce_add_ps(acc[0]);
    (void)s;
}

__attribute__((target("avx512f,avx512vnni"))) static void vnni_loop() {
    __m512i acc[12];
    for (auto& a : acc) a = _mm512_setzero_si512();
    __m512i x = _mm512_set1_epi8(1), y = _mm512_set1_epi8(1);
    for (long k = 0; k < kIters; ++k) {
        for (auto& a : acc) a = _mm512_dpbusd_epi32(a, x, y);
        asm volatile("" : "+v"(x));
    }
    volatile int s = _mm512_reduce_add_epi32(acc[0]);
    (void)s;
}

__attribute__((target("avx512f,avx512vnni"))) static void vnni16_loop() {
    __m512i acc[12];
    for (auto& a : acc) a = _mm512_setzero_si512();
    __m512i x = _mm512_set1_epi16(1), y = _mm512_set1_epi16(1);
    for (long k = 0; k < kIters; ++k) {
        for (auto& a : acc) a = _mm512_dpwssd_epi32(a, x, y);
        asm volatile("" : "+v"(x));
    }
    volatile int s = _mm512_reduce_add_epi32(acc[0]);
    (void)s;
}

template <class F>
static double rate(int threads, double ops_per_iter, F loop) {  // Gop/s
    double t = run_threads(threads, [&](int) { loop(); });
    return threads * kIters * ops_per_iter / t / 1e9;
}

int main(int argc, char** argv) {
    const int n = argc > 1 ? std::atoi(argv[1]) : int(std::thread::hardware_concurrency());
    const size_t bytes = size_t(1) << 30;
    std::printf("{\"threads\": %d, \"read_gb_s_1\": %.2f, \"read_gb_s_all\": %.2f", n,
                read_bandwidth(1, bytes), read_bandwidth(n, bytes));
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
                        rate(1, 12 * 64, vnni16_loop), rate(n, 12 * 64, vnni16_loop),
                        rate(1, 12 * 128, vnni_loop), rate(n, 12 * 128, vnni_loop));
    }
    std::printf("}\n");
    return 0;
}
