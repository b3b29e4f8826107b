// Stands in for CUDA's <cuda_bf16.h> in the emulator build (cuda/emulator/emulator.h).
#pragma once
#include "../emulator.h"
