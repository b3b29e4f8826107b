// The exception every CUDA failure becomes (an error code, an out-of-memory, a fault in a kernel);
// plain C++ so that the host-compiled binding can catch it and raise ossrun.CudaError.
#pragma once
#include <stdexcept>

namespace ossrun::cuda {

class CudaError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

}  // namespace ossrun::cuda
