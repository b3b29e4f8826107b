// YaRN rotary embedding (MODEL.md §2.4) on the device, the same arithmetic as csrc/rope.cpp: the
// float32 angle p * theta_i, its cos/sin in double rounded to float32, times the float32
// concentration, then the half-split rotation (element i pairs with i + d/2). The products and
// sums use the _rn intrinsics so nvcc does not contract them into FMAs the CPU does not do.
#include "common.cuh"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {

constexpr int kThreads = 128;

// grid (T), block kThreads: each thread rotates pairs (head, i) of token blockIdx.x.
__global__ void rope_kernel(float* x, const int64_t* positions, int64_t n_heads, int64_t d,
                            const float* theta, float concentration) {
    const int64_t t = blockIdx.x, half = d / 2;
    const float p = float(positions[t]);  // exact below 2^24
    float* xt = x + t * n_heads * d;
    for (int64_t pair = threadIdx.x; pair < n_heads * half; pair += blockDim.x) {
        const int64_t h = pair / half, i = pair % half;
        const float angle = __fmul_rn(p, theta[i]);
        const float c = __fmul_rn(float(cos(double(angle))), concentration);
        const float s = __fmul_rn(float(sin(double(angle))), concentration);
        float* v = xt + h * d;
        const float a = v[i], b = v[i + half];
        v[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        v[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
    }
}

}  // namespace

void rope(float* x, const int64_t* positions, int64_t T, int64_t n_heads, int64_t d,
          const float* theta, float concentration, cudaStream_t stream) {
    if (T == 0) return;
    rope_kernel<<<unsigned(T), kThreads, 0, stream>>>(x, positions, n_heads, d, theta, concentration);
    check_launch("rope");
}

}  // namespace ossrun::cuda
