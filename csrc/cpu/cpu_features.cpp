// Picks the kernel variant at run time: the best one this CPU supports, or the one OSSRUN_ISA
// (or the caller) names, so that a single portable build runs everywhere and tests can force each.
#include <cstdlib>
#include <stdexcept>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "../kernels.h"
#include "cpu_tuning.h"

namespace ossrun {
namespace scalar { const KernelTable* table(); }
#ifdef OSSRUN_HAVE_AVX2
namespace avx2 { const KernelTable* table(); }
#endif
#ifdef OSSRUN_HAVE_AVX2VNNI
namespace avx2vnni { const KernelTable* table(); }
#endif
#ifdef OSSRUN_HAVE_AVX512
namespace avx512 { const KernelTable* table(); }
#endif
#ifdef OSSRUN_HAVE_AVX512VBMI
namespace avx512vbmi { const KernelTable* table(); }
#endif
#ifdef OSSRUN_HAVE_NEON
namespace neon { const KernelTable* table(); }
#endif

std::vector<const KernelTable*> available_kernel_tables() {
    std::vector<const KernelTable*> out;
#if defined(OSSRUN_HAVE_AVX512) && (defined(__x86_64__) || defined(__i386__))
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
#ifdef OSSRUN_HAVE_AVX512VBMI
        if (__builtin_cpu_supports("avx512vbmi")) out.push_back(avx512vbmi::table());
#endif
        out.push_back(avx512::table());
    }
#endif
#if defined(OSSRUN_HAVE_AVX2) && (defined(__x86_64__) || defined(__i386__))
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
#ifdef OSSRUN_HAVE_AVX2VNNI
        // GCC 12's __builtin_cpu_supports does not know AVX-VNNI: CPUID leaf 7.1, EAX bit 4.
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
        if (__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax >> 4 & 1u))
            out.push_back(avx2vnni::table());
#endif
        out.push_back(avx2::table());
    }
#endif
#ifdef OSSRUN_HAVE_NEON
    out.push_back(neon::table());  // NEON is part of the arm64 baseline
#endif
    out.push_back(scalar::table());
    return out;
}

const KernelTable* select_kernel_table(const std::string& requested) {
    std::string name = requested;
    if (name.empty() || name == "auto") {
        const char* env = std::getenv("OSSRUN_ISA");
        name = env && *env ? env : "auto";
    }
    // Read OSSRUN_MXFP4_PREFETCH and OSSRUN_MXFP4_ROWS_PER_PASS here, where a bad value is reported.
    mxfp4_prefetch();
    mxfp4_rows_per_pass();
    const auto tables = available_kernel_tables();
    if (name == "auto") return tables.front();
    std::string names;
    for (const KernelTable* t : tables) {
        if (name == t->name) return t;
        names += names.empty() ? t->name : std::string(", ") + t->name;
    }
    throw std::invalid_argument("ISA variant '" + name + "' is not available on this CPU/build (available: " +
                                names + ")");
}

}  // namespace ossrun
