// Choices a kernel makes by the CPU it runs on, where the same instructions are best fed
// differently on different microarchitectures (docs/PERFORMANCE.md, ninth session). Each is
// chosen at run time from CPUID, can be forced (the environment, or ops.set_mxfp4_tuning for tests
// and benchmarks), and never changes a result: only the order the weights are fetched and read in.
#pragma once

namespace ossrun {

// Where the AVX512-VBMI MXFP4 decode GEMV prefetches the weights it streams:
// - kL2Far: 8 KiB ahead into L2, the other GEMVs' policy, which Zen 5 sessions tuned (distances
//   of 4-32 KiB there made no difference; L1 alone was not measured on Zen 5);
// - kL1Near: 4 KiB ahead into L1. On Zen 4, which splits each 512-bit operation in two, the
//   kernel is bound by its instructions and stalls on loads that only reach L2: there a decode
//   step of the 20b-shaped file spent 47-52 ms in the experts against 77-82 ms with kL2Far.
enum class Mxfp4Prefetch : int { kL2Far = 0, kL1Near = 1 };

// The policy in force: set_mxfp4_prefetch's, else OSSRUN_MXFP4_PREFETCH ("l1" or "l2"), else
// mxfp4_prefetch_for_cpu(): kL1Near on Zen 4, kL2Far elsewhere.
Mxfp4Prefetch mxfp4_prefetch();
void set_mxfp4_prefetch(Mxfp4Prefetch p);
Mxfp4Prefetch mxfp4_prefetch_for_cpu();

// Rows the same GEMV reads per pass at 2-8 tokens: 2 share each activation load (Zen 5: 4 tokens
// 1.17 -> 0.93 ns per block and row); on Zen 4 one row per pass spent 1.5-7.5 % less time in a
// 4-sequence step's experts (three A/B runs). set_mxfp4_rows_per_pass's, else OSSRUN_MXFP4_ROWS_PER_PASS (1 or 2),
// else mxfp4_rows_per_pass_for_cpu(): 1 on Zen 4, 2 elsewhere.
int mxfp4_rows_per_pass();
void set_mxfp4_rows_per_pass(int rows);
int mxfp4_rows_per_pass_for_cpu();

}  // namespace ossrun
