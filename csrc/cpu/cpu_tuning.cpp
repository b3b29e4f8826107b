#include "cpu_tuning.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace ossrun {
namespace {

bool is_zen4() {
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

Mxfp4Prefetch initial_mxfp4_prefetch() {
    const char* env = std::getenv("OSSRUN_MXFP4_PREFETCH");
    const std::string v = env ? env : "";
    if (v == "l1") return Mxfp4Prefetch::kL1Near;
    if (v == "l2") return Mxfp4Prefetch::kL2Far;
    if (!v.empty() && v != "auto")
        throw std::invalid_argument("OSSRUN_MXFP4_PREFETCH must be l1, l2 or auto, not '" + v + "'");
    return mxfp4_prefetch_for_cpu();
}

std::atomic<int>& mxfp4_prefetch_state() {
    static std::atomic<int> state{int(initial_mxfp4_prefetch())};
    return state;
}

}  // namespace

Mxfp4Prefetch mxfp4_prefetch_for_cpu() {
    static const Mxfp4Prefetch choice = is_zen4() ? Mxfp4Prefetch::kL1Near : Mxfp4Prefetch::kL2Far;
    return choice;
}

Mxfp4Prefetch mxfp4_prefetch() { return Mxfp4Prefetch(mxfp4_prefetch_state().load(std::memory_order_relaxed)); }

void set_mxfp4_prefetch(Mxfp4Prefetch p) { mxfp4_prefetch_state().store(int(p), std::memory_order_relaxed); }

}  // namespace ossrun
