// Stands in for CUDA's <cuda_fp16.h> in the emulator build (cuda/emulator/emulator.h).
#pragma once
#include "../emulator.h"
