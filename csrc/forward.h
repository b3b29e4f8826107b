// The forward pass of gpt-oss (MODEL.md §2), once for every placement: which backend runs each
// layer's attention and MoE block. The residual stream lives where the attention runs; the MoE
// block's input and output cross to its backend and back when it runs elsewhere.
#pragma once
#include <cstdint>
#include <vector>

#include "backend.h"
#include "config.h"

namespace ossrun {

struct LayerPlacement {
    Backend* attention = nullptr;  // also its norms and residual adds
    Backend* moe = nullptr;
};

struct ForwardPlan {
    std::vector<LayerPlacement> layers;  // [block_count]
    Backend* output = nullptr;           // the final norm and unembedding

    // Every part on one backend.
    static ForwardPlan on(Backend& b, int64_t n_layers);
};

// Runs the batch through the network on the plan's backends. When trace is set, appends the
// residual stream [T, H] after every attention and MoE half (2 per layer), so a tool can find the
// first step where we leave the reference.
void forward_pass(const ModelConfig& c, const Batch& batch, const ForwardPlan& plan, std::vector<float>* trace);

}  // namespace ossrun
