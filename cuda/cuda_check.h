// CUDA runtime errors as CudaError exceptions (cuda_error.h), for the kernels' launchers and the
// host code of the device model alike (host C++; nothing here needs nvcc).
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "cuda_error.h"

namespace ossrun::cuda {

inline void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess)
        throw CudaError(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(e) + " (" +
                        cudaGetErrorString(e) + ")");
}

// After a launch: a bad configuration shows at once, a fault in the kernel at the next sync.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

}  // namespace ossrun::cuda
