// The kernel table of one ISA variant: what cpu_features.cpp hands to the forward pass.
#include "../../kernels.h"

#define OSSRUN_STR2(x) #x
#define OSSRUN_STR(x) OSSRUN_STR2(x)

namespace ossrun::OSSRUN_ISA_NS {

void decode_row(const Matrix& W, int64_t mat, int64_t r, float* out);
void matmul(const MatmulArgs& a, int64_t r0, int64_t r1);
void attention(const AttentionArgs& a);
void rmsnorm(const float* x, const float* g, float* y, int64_t n, float eps);
// Defined where the variant and CPU have int16 dot products; null otherwise.
extern void (*const quantize_i16)(const float* x, int64_t n, int16_t* q, float* scale);
void swiglu(const float* gate, const float* lin, float* h, int64_t n, float alpha, float limit);

#if defined(__AVX512F__)
constexpr bool kFastRowGroups = true;  // gemv_q8_0x16_avx512.cpp, gemv_mxfp4x16_avx512.cpp
#else
constexpr bool kFastRowGroups = false;
#endif

const KernelTable* table() {
    static const KernelTable t{OSSRUN_STR(OSSRUN_ISA_NS), decode_row, matmul, attention, rmsnorm,
                               quantize_i16, swiglu, kFastRowGroups};
    return &t;
}

}  // namespace ossrun::OSSRUN_ISA_NS
