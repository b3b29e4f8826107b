// This machine's ceilings for `ossrun bench`: DRAM read bandwidth (threads streaming disjoint
// parts of a buffer far larger than the caches) and the int16 dot-product peak of the best
// instruction the CPU has (vpdpwssd with AVX512-VNNI, else AVX2 vpmaddwd + vpaddd). The same
// loops as tools/machine_rates.cpp, which also measures the float and int8 rates.
#include "machine_probe.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace ossrun {

namespace {

template <class F>
double wall_seconds(int threads, F&& fn) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    for (int i = 0; i < threads; ++i) ts.emplace_back([&, i] { fn(i); });
    for (auto& t : ts) t.join();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Eight independent 64-bit xor chains over each cache line, so the loop itself never limits the
// rate, and the access pattern of the decode GEMVs (cpu/kernels/matmul_internal.h): each line
// consumed asks for the one kPrefetchAhead bytes on into L2. Without it a thread has only the
// hardware prefetchers' misses in flight, which stop at every 4 KiB page: the plain loop read
// 37-40 GB/s with 2 threads on the AMD EPYC where decode streams its weights at 49-50 GB/s.
constexpr size_t kPrefetchAhead = 8192;

uint64_t read_words(const uint64_t* p, size_t n) {
    uint64_t a[8] = {};
    for (size_t i = 0; i + 8 <= n; i += 8) {
        __builtin_prefetch(reinterpret_cast<const char*>(p + i) + kPrefetchAhead, 0, 2);
        for (int j = 0; j < 8; ++j) a[j] ^= p[i + j];
    }
    return a[0] ^ a[1] ^ a[2] ^ a[3] ^ a[4] ^ a[5] ^ a[6] ^ a[7];
}

#if defined(__x86_64__) || defined(__i386__)
constexpr long kIters = 20000000;

// Twelve accumulators in named registers; 12 x 32 int16 products x 2 ops per iteration.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) double vnni_loop() {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
    __m512i a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
    const __m512i x = _mm512_set1_epi16(3), y = _mm512_set1_epi16(5);
    for (long i = 0; i < kIters; ++i) {
        asm volatile("vpdpwssd %[x], %[y], %[a0]\n\tvpdpwssd %[x], %[y], %[a1]\n\tvpdpwssd %[x], %[y], %[a2]\n\t"
                     "vpdpwssd %[x], %[y], %[a3]\n\tvpdpwssd %[x], %[y], %[a4]\n\tvpdpwssd %[x], %[y], %[a5]\n\t"
                     "vpdpwssd %[x], %[y], %[a6]\n\tvpdpwssd %[x], %[y], %[a7]\n\tvpdpwssd %[x], %[y], %[a8]\n\t"
                     "vpdpwssd %[x], %[y], %[a9]\n\tvpdpwssd %[x], %[y], %[a10]\n\tvpdpwssd %[x], %[y], %[a11]"
                     : [a0] "+v"(a0), [a1] "+v"(a1), [a2] "+v"(a2), [a3] "+v"(a3), [a4] "+v"(a4),
                       [a5] "+v"(a5), [a6] "+v"(a6), [a7] "+v"(a7), [a8] "+v"(a8), [a9] "+v"(a9),
                       [a10] "+v"(a10), [a11] "+v"(a11)
                     : [x] "v"(x), [y] "v"(y));
    }
    volatile int sink = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a11));
    (void)sink;
    return 12.0 * 32 * 2;
}

// AVX2 has no accumulating form: a product and an add per 16 int16 pairs (6 chains).
__attribute__((target("avx2"))) double avx2_loop() {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
    __m256i p0, p1, p2, p3, p4, p5;
    const __m256i x = _mm256_set1_epi16(3), y = _mm256_set1_epi16(5);
    for (long i = 0; i < kIters; ++i) {
        asm volatile("vpmaddwd %[x], %[y], %[p0]\n\tvpmaddwd %[x], %[y], %[p1]\n\tvpmaddwd %[x], %[y], %[p2]\n\t"
                     "vpmaddwd %[x], %[y], %[p3]\n\tvpmaddwd %[x], %[y], %[p4]\n\tvpmaddwd %[x], %[y], %[p5]\n\t"
                     "vpaddd %[p0], %[a0], %[a0]\n\tvpaddd %[p1], %[a1], %[a1]\n\tvpaddd %[p2], %[a2], %[a2]\n\t"
                     "vpaddd %[p3], %[a3], %[a3]\n\tvpaddd %[p4], %[a4], %[a4]\n\tvpaddd %[p5], %[a5], %[a5]"
                     : [a0] "+x"(a0), [a1] "+x"(a1), [a2] "+x"(a2), [a3] "+x"(a3), [a4] "+x"(a4),
                       [a5] "+x"(a5), [p0] "=&x"(p0), [p1] "=&x"(p1), [p2] "=&x"(p2), [p3] "=&x"(p3),
                       [p4] "=&x"(p4), [p5] "=&x"(p5)
                     : [x] "x"(x), [y] "x"(y));
    }
    volatile int sink = _mm256_extract_epi32(_mm256_add_epi32(a0, a5), 0);
    (void)sink;
    return 6.0 * 16 * 2;
}
#endif

}  // namespace

double measure_read_bandwidth(int threads, size_t bytes) {
    threads = std::max(1, threads);
    const size_t words = bytes / 8;
    std::unique_ptr<uint64_t[]> buf(new uint64_t[words]);
    for (size_t i = 0; i < words; ++i) buf[i] = i;  // touch every page before timing
    double best = 1e30;
    std::vector<uint64_t> xors(static_cast<size_t>(threads));
    const size_t part = words / size_t(threads);
    for (int rep = 0; rep < 5; ++rep) {
        const double t = wall_seconds(threads, [&](int i) {
            xors[size_t(i)] = read_words(buf.get() + size_t(i) * part, part);
        });
        best = std::min(best, t);
    }
    volatile uint64_t keep = xors[0];  // the loads have a use
    (void)keep;
    return double(part * size_t(threads) * 8) / best / 1e9;
}

double measure_int16_peak(int threads, std::string* instruction) {
    threads = std::max(1, threads);
#if defined(__x86_64__) || defined(__i386__)
    const bool vnni = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
    if (!vnni && !__builtin_cpu_supports("avx2")) return 0.0;
    if (instruction) *instruction = vnni ? "vpdpwssd (AVX512-VNNI)" : "vpmaddwd + vpaddd (AVX2)";
    const double ops = vnni ? 12.0 * 32 * 2 : 6.0 * 16 * 2;  // per iteration, as the loops state
    const double t = wall_seconds(threads, [&](int) { vnni ? vnni_loop() : avx2_loop(); });
    return threads * double(kIters) * ops / t / 1e9;
#else
    if (instruction) *instruction = "";
    return 0.0;
#endif
}

}  // namespace ossrun
