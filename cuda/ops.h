// The host face of the CUDA code, in plain C++ (cuda/bindings.cpp includes it without CUDA's
// headers): what the device is (status.cu) and each kernel as a call on host memory (ops.cu),
// which copies its inputs to the device, runs the kernel, waits and copies the result back: the
// entry points of tests/test_cuda_ops.py, not of the forward pass. Inputs are checked here with a
// sentence naming the argument (std::invalid_argument); CUDA failures throw CudaError.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../csrc/weights.h"
#include "cuda_error.h"

namespace ossrun::cuda {

struct DeviceInfo {
    int index = 0;
    std::string name;
    int cc_major = 0, cc_minor = 0;
    size_t free_bytes = 0, total_bytes = 0;
    bool has_kernel_image = false;  // this build holds code the device can run
};

struct Status {
    int runtime_version = 0;  // e.g. 13000 for CUDA 13.0 (the static runtime this build carries)
    int driver_version = 0;   // 0: no driver could be loaded
    int error_code = 0;       // of cudaGetDeviceCount; 0 = success
    std::string error;        // its name and text, "" on success
    std::vector<DeviceInfo> devices;
};

// Never throws: a machine without a driver or a device is an answer, not an error.
Status query_status();
// The CUDA architectures this build was compiled for, as CMake lists them ("75-real;...;120").
const char* built_architectures();

enum class MatmulKernel { Auto, Gemv, Gemm };

// W_host.data is host memory; x [n_tok][cols], y [n_tok][rows], bias [rows] or null. exact:
// the tensor-core GEMM's activations in two halves (precision "f32") or one ("fast").
void matmul_host(const Matrix& W_host, const float* x, int64_t n_tok, const float* bias, float* y,
                 MatmulKernel which, bool exact = true);
// Matmuls of one x (kernels.cuh matmul_parts, up to 3): ys[i] [n_tok][Ws[i].rows] = x · Ws[i]^T
// + biases[i] (null: none); returns whether they ran as one launch. Precision "f32".
bool matmul_parts_host(const std::vector<Matrix>& Ws, const float* x, int64_t n_tok,
                       const std::vector<const float*>& biases, const std::vector<float*>& ys);
// The routed experts' matmuls: W_host an [E][rows][cols] stack, idx [n_pairs] (each < E),
// x [ceil(n_pairs / x_div)][cols], bias [E][rows] -> y [n_pairs][rows], y[p] = W[idx[p]] ·
// x[p / x_div] + bias[idx[p]]; grouped: sorted by expert onto the tensor-core GEMM (MXFP4 / Q8_0),
// else pair by pair (the decode kernels).
void expert_matmul_host(const Matrix& W_host, const int32_t* idx, int64_t n_pairs, const float* x, int64_t x_div,
                        const float* bias, float* y, bool grouped, bool exact);
// Seconds per call of the matmul kernel on W (copied to the device once) and random x of n_tok
// tokens, the median of `reps` timed calls after two warm-ups (CUDA events; the tensor-core
// GEMM's time includes splitting x): for tools/device_check.sh's kernel rates, not for tests.
double time_matmul_host(const Matrix& W_host, int64_t n_tok, MatmulKernel which, int reps, bool exact = true);
// Seconds per call of the attention kernel for T query rows at the last T positions of a cache of
// n_keys (pseudo-random K and V of kv_type), as the device model runs them (decode rows of several
// 2048-key parts split), the median of `reps` after two warm-ups: for the kernel rates.
double time_attention_host(int64_t T, int64_t n_q, int64_t n_kv, int64_t d, int64_t n_keys, int64_t window,
                           int kv_type, int reps, bool exact = true);
void rmsnorm_host(const float* x, const float* g, float* y, int64_t n_rows, int64_t n, float eps);
// x [T][n_heads][d] is rotated in place.
void rope_host(float* x, const int64_t* positions, int64_t T, int64_t n_heads, int64_t d,
               const float* theta, float concentration);
// q [T][n_q][d], k and v [cap][n_kv][d], positions [T], sinks [n_q] -> out [T][n_q][d]; the
// cache is stored as kv_type (0 float32, 1 IEEE half, 2 bfloat16: KvType), rounded to nearest even;
// exact: AttentionArgs::exact. Returns the kernel that ran (kernels.cuh attention_path): "rows",
// "split", "tensor cores" or "tiled".
const char* attention_host(const float* q, const float* k, const float* v, const int64_t* positions,
                           const float* sinks, float* out, int64_t T, int64_t n_q, int64_t n_kv, int64_t d,
                           int64_t cap, int64_t window, float scale, int kv_type = 0, bool split = false,
                           bool exact = true);
// Decode's gate and up expert matmuls of the same pairs and x and their SwiGLU (kernels.cuh
// expert_gate_up): h [n_pairs][rows]; false (h untouched) where the fused kernel does not read them.
bool expert_gate_up_host(const Matrix& gate_host, const Matrix& up_host, const int32_t* idx, int64_t n_pairs,
                         const float* x, int64_t x_div, const float* gate_bias, const float* up_bias, float alpha,
                         float limit, float* h);
void router_topk_host(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* idx, float* weight);
void swiglu_host(const float* gate, const float* lin, float* h, int64_t n, float alpha, float limit);

}  // namespace ossrun::cuda
