// A CUDA emulator for the kernels' tests on machines without a GPU: cuda/*.cu compiled as plain
// C++ against this header (it stands in for cuda_runtime.h and cuda_fp16.h), every kernel launch
// run on the CPU. A block's threads are fibers on one OS thread, switched only at the
// synchronisation points (__syncthreads, __syncwarp, the warp shuffles and mma), so shared memory
// (`__shared__` becomes `static`; blocks run one after another) and the warp-collective operations
// behave as on the device for kernels that are correct there. mma.sync follows the fragment
// layouts of the PTX ISA ("Matrix Fragments for mma.m16n8k16"). Races show as results that change
// with the order a round resumes the threads in (set_schedule) and with the order the streams run
// their work in (set_stream_order). What it cannot show: timing, races that every order hides,
// misaligned accesses other than __ldg's (which it checks), and the device's own float rounding
// inside the tensor cores (it sums in float32).
// Tests: tests/test_cuda_ops.py runs on ossrun._cuda_emu where no GPU is present.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <math.h>  // the float functions kernels call unqualified (expf, frexpf, ...)

// ---------------------------------------------------------------- the CUDA C++ dialect

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

struct uint3 {
    unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

constexpr int warpSize = 32;

// The running fiber's coordinates (one OS thread runs all of them; the scheduler sets these).
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

namespace emu {

// The synchronisation points: each parks the calling fiber until its block (or warp) arrives.
void sync_block();
void sync_warp();
float shfl_xor(float v, int lane_mask);
int shfl_xor(int v, int lane_mask);
void* dynamic_shared();
// A `__shared__` variable's declaration reached (rewrite_launches.py adds the call): the first
// thread of a block to reach it fills it with 0xCD bytes, as a device leaves a block's shared
// memory holding whatever the SM's last block wrote.
void fresh_shared(void* p, size_t bytes);
void check_aligned(const void* p, size_t align, const char* what);
// d += a b for one warp's m16n8k16 f16 x f16 -> f32 step (fragments as the PTX ISA lays them out).
void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2]);

// The order in which a round resumes a block's ready threads (emulator.cpp): "forward",
// "reverse" or "shuffle[:SEED]"; OSSRUN_EMU_SCHEDULE sets the first, set_schedule changes it
// (std::invalid_argument for another name).
void set_schedule(const std::string& spec);
std::string schedule();
// The schedule's self-test: one block of x.size() threads, y[i] = x[i] + x[i - 1] through shared
// memory, with or without the barrier between the writes and the reads (the race forward hides).
std::vector<float> neighbor_sum_selftest(const std::vector<float>& x, bool barrier);

// The streams (emulator.cpp). Work on a stream (a launch, an async copy, an event's record or
// wait) runs in its stream's order; whether it runs at once or waits in the stream's queue until
// something needs it (a synchronisation, another stream's wait on one of its events, a copy to
// the host) is the stream order's choice: "immediate" (OSSRUN_EMU_STREAMS' default) runs all
// work at once; "lazy-even" / "lazy-odd" hold the work of the streams created at even / odd
// counts and run the others' at once; "lazy-all" holds every stream's. The default stream runs
// at once in every order. A forward whose results change between these orders is missing an
// event between its streams. While a stream is captured (cudaStreamBeginCapture ..
// cudaStreamEndCapture), its launches and copies are kept, in order, as the graph's work.
void set_stream_order(const std::string& spec);
std::string stream_order();
// cudaHostRegister's answer: success (the default), or cudaErrorNotSupported for every range, as
// a device without read-only registration gives; tests of the pageable fall-back set it.
void set_host_register_works(bool works);
void submit(void* stream, std::function<void()> work);

// One kernel launch: every block in turn, its threads as fibers.
struct Launch {
    dim3 grid, block;
    size_t shared_bytes;
    void* stream;
    Launch(dim3 g, dim3 b, size_t smem = 0, void* st = nullptr) : grid(g), block(b), shared_bytes(smem), stream(st) {}
    template <class... P, class... A>
    void run(void (*kernel)(P...), A&&... args) {
        // The arguments converted once, as the launch copies them to the device.
        auto call = [kernel, packed = std::make_tuple(P(std::forward<A>(args))...)]() { std::apply(kernel, packed); };
        Launch self = *this;
        submit(stream, [self, call]() mutable {
            self.run_erased(&call, [](void* f) { (*static_cast<decltype(call)*>(f))(); });
        });
    }

private:
    void run_erased(void* f, void (*body)(void*));
};

}  // namespace emu

inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::sync_warp(); }
inline float __shfl_xor_sync(unsigned, float v, int m) { return emu::shfl_xor(v, m); }
inline int __shfl_xor_sync(unsigned, int v, int m) { return emu::shfl_xor(v, m); }
template <class T>
inline T __ldg(const T* p) {
    emu::check_aligned(p, alignof(T), "__ldg");
    return *p;
}
inline int atomicAdd(int* p, int v) {  // fibers never interleave inside it
    const int old = *p;
    *p = v + old;
    return old;
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
using std::max;
using std::min;

// ---------------------------------------------------------------- IEEE half and bfloat16

#include "../../csrc/numerics.h"

struct __half {
    uint16_t bits;
};
struct __nv_bfloat16 {
    uint16_t bits;
};
inline __half __float2half_rn(float f) { return {ossrun::float_to_fp16(f)}; }
inline float __half2float(__half h) { return ossrun::fp16_to_float(h.bits); }
inline __half __int2half_rn(int i) { return __float2half_rn(float(i)); }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {ossrun::float_to_bf16(f)}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }

// ---------------------------------------------------------------- the runtime API (host memory)

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorHostMemoryAlreadyRegistered = 712,
    cudaErrorHostMemoryNotRegistered = 713,
    cudaErrorNotSupported = 801,
    cudaErrorLaunchFailure = 719,
};
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal, cudaStreamCaptureModeThreadLocal, cudaStreamCaptureModeRelaxed };
constexpr unsigned cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDisableTiming = 2;
using cudaGraph_t = struct EmuGraph*;
using cudaGraphExec_t = struct EmuGraph*;
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
using cudaStream_t = void*;
using cudaEvent_t = struct EmuEvent*;
struct cudaDeviceProp {
    char name[256];
    int major, minor;
    size_t totalGlobalMem;
};
struct cudaFuncAttributes {
    int maxThreadsPerBlock;
};

const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop);
cudaError_t cudaRuntimeGetVersion(int* v);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
constexpr unsigned cudaHostRegisterReadOnly = 0x08;
cudaError_t cudaHostRegister(void* p, size_t bytes, unsigned flags);
cudaError_t cudaHostUnregister(void* p);
template <class F>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, F) {
    a->maxThreadsPerBlock = 1024;
    return cudaSuccess;
}
