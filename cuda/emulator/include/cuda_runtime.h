// Stands in for CUDA's <cuda_runtime.h> in the emulator build (cuda/emulator/emulator.h).
#pragma once
#include "../emulator.h"
