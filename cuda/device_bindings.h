// The device model's part of ossrun._core (device_bindings.cpp), registered by csrc/bindings.cpp
// when the build has the CUDA target (OSSRUN_HAVE_DEVICE_MODEL).
#pragma once
#include <pybind11/pybind11.h>

namespace ossrun::cuda {

void bind_device_model(pybind11::module_& m);

}  // namespace ossrun::cuda
