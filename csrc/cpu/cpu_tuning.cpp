#include "cpu_tuning.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace ossrun {
namespace {

bool cpuid_says_zen4() {
#if defined(__x86_64__) || defined(__i386__)
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
    char vendor[13] = {};
    std::memcpy(vendor, &ebx, 4);
    std::memcpy(vendor + 4, &edx, 4);
    std::memcpy(vendor + 8, &ecx, 4);
    if (std::strcmp(vendor, "AuthenticAMD") != 0 || !__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
    const unsigned family = ((eax >> 8) & 0xF) + ((eax >> 20) & 0xFF);
    // Family 19h is Zen 3 and Zen 4; of the two only Zen 4 has AVX-512.
    return family == 0x19 && __builtin_cpu_supports("avx512f");
#else
    return false;
#endif
}

bool is_zen4() {
    static const bool zen4 = cpuid_says_zen4();
    return zen4;
}

// The environment variable `name` as one of `values` (index), -1 when unset or "auto".
int from_environment(const char* name, std::initializer_list<const char*> values) {
    const char* env = std::getenv(name);
    if (!env || !*env || std::strcmp(env, "auto") == 0) return -1;
    std::string allowed;
    int i = 0;
    for (const char* v : values) {
        if (std::strcmp(env, v) == 0) return i;
        allowed += allowed.empty() ? v : std::string(", ") + v;
        ++i;
    }
    throw std::invalid_argument(std::string(name) + " must be " + allowed + " or auto, not '" + env + "'");
}

std::atomic<int>& prefetch_state() {
    static std::atomic<int> state{[] {
        const int v = from_environment("OSSRUN_MXFP4_PREFETCH", {"l2", "l1"});  // Mxfp4Prefetch's order
        return v < 0 ? int(mxfp4_prefetch_for_cpu()) : v;
    }()};
    return state;
}

std::atomic<int>& rows_per_pass_state() {
    static std::atomic<int> state{[] {
        const int v = from_environment("OSSRUN_MXFP4_ROWS_PER_PASS", {"1", "2"});
        return v < 0 ? mxfp4_rows_per_pass_for_cpu() : v + 1;
    }()};
    return state;
}

}  // namespace

Mxfp4Prefetch mxfp4_prefetch_for_cpu() { return is_zen4() ? Mxfp4Prefetch::kL1Near : Mxfp4Prefetch::kL2Far; }

Mxfp4Prefetch mxfp4_prefetch() { return Mxfp4Prefetch(prefetch_state().load(std::memory_order_relaxed)); }

void set_mxfp4_prefetch(Mxfp4Prefetch p) { prefetch_state().store(int(p), std::memory_order_relaxed); }

int mxfp4_rows_per_pass_for_cpu() { return is_zen4() ? 1 : 2; }

int mxfp4_rows_per_pass() { return rows_per_pass_state().load(std::memory_order_relaxed); }

void set_mxfp4_rows_per_pass(int rows) {
    if (rows != 1 && rows != 2) throw std::invalid_argument("rows per pass must be 1 or 2");
    rows_per_pass_state().store(rows, std::memory_order_relaxed);
}

}  // namespace ossrun
