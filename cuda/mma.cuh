// The tensor cores' one step that ossrun's prefill kernels share (gemm_mma.cu, attention_mma.cu):
// mma m16n8k16 on IEEE half pairs with float32 sums, and the pairs' packing.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ossrun::cuda {

// d += a b for one 16 x 8 x 16 step (PTX ISA "mma.m16n8k16" fragments: a[0] rows g, a[1] rows
// g + 8 at k 2t, 2t + 1; a[2], a[3] the same at k 2t + 8, 2t + 9; b[0] k 2t, 2t + 1 of column g,
// b[1] k 2t + 8, 2t + 9; d[0..1] row g, columns 2t, 2t + 1, d[2..3] row g + 8, with g = lane / 4,
// t = lane % 4). Turing (sm_75) has only the k8 shape: two of them.
__device__ inline void mma_16x8x16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(OSSRUN_CUDA_EMULATOR)  // cuda/emulator: the same fragments, on the CPU
    emu::mma_m16n8k16_f16(d, a, b);
#elif __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b[0]));
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[2]), "r"(a[3]), "r"(b[1]));
#endif
}

// Two halves as one fragment word: lo (the lower k or column) in the low 16 bits.
__device__ inline uint32_t half_pair(__half lo, __half hi) {
    return uint32_t(__half_as_ushort(lo)) | (uint32_t(__half_as_ushort(hi)) << 16);
}

}  // namespace ossrun::cuda
