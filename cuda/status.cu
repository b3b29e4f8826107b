// What CUDA can do in this process: the runtime and driver versions, each device's name, compute
// capability and free/total memory, and whether this build holds code the device can run. With
// the static runtime a missing driver shows as an error code, not as a failed import.
#include "common.cuh"
#include "ops.h"

#ifndef OSSRUN_CUDA_ARCHITECTURES
#define OSSRUN_CUDA_ARCHITECTURES "?"
#endif

namespace ossrun::cuda {

namespace {

// Launched by nobody: asking for its attributes tells whether a kernel image fits the device.
__global__ void probe_kernel() {}

}  // namespace

const char* built_architectures() { return OSSRUN_CUDA_ARCHITECTURES; }

Status query_status() {
    Status st;
    cudaRuntimeGetVersion(&st.runtime_version);
    if (cudaDriverGetVersion(&st.driver_version) != cudaSuccess) st.driver_version = 0;
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        st.error_code = int(e);
        st.error = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
        cudaGetLastError();  // leave no error behind for the next call
        return st;
    }
    for (int i = 0; i < n; ++i) {
        DeviceInfo d;
        d.index = i;
        cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, i) == cudaSuccess) {
            d.name = p.name;
            d.cc_major = p.major;
            d.cc_minor = p.minor;
        }
        if (cudaSetDevice(i) == cudaSuccess) {
            cudaMemGetInfo(&d.free_bytes, &d.total_bytes);
            cudaFuncAttributes attr;
            d.has_kernel_image = cudaFuncGetAttributes(&attr, probe_kernel) == cudaSuccess;
        }
        cudaGetLastError();
        st.devices.push_back(d);
    }
    if (n > 0) cudaSetDevice(0);
    return st;
}

}  // namespace ossrun::cuda
