// One chunk's activations on the device, carved from one block (device_model.h's DeviceModel
// owns it; cuda_backend.cpp's ops read and write it). Host C++: pointers only (kernels.cuh for
// ExpertGroups).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "../csrc/config.h"
#include "device_model.h"
#include "kernels.cuh"

namespace ossrun::cuda {

// Bump allocation of one device block, each piece aligned; with base 0 it only counts.
struct Carver {
    uintptr_t base;
    size_t used = 0;
    template <class T>
    T* take(size_t n) {
        T* p = reinterpret_cast<T*>(base + used);
        used += aligned(n * sizeof(T));
        return p;
    }
};

// The activations of one chunk of up to max_chunk tokens, carved from one device block.
struct DeviceBuffers {
    float *residual, *normed, *q, *k, *v, *attn, *proj, *router_logits, *expert_weight;
    float *gate, *up, *h, *expert_y, *logits, *theta;
    int32_t* expert_idx;
    ExpertGroups expert_groups;  // the pairs sorted by expert, for the grouped expert GEMM
    int64_t* positions;
    void* split;  // the activations of one matrix split for the tensor cores (CudaBackend::split)
    void* block = nullptr;
    size_t bytes = 0;

    // With memory == nullptr only counts (device_scratch_bytes). experts: some MoE block runs on
    // the GPU; without one (--cpu-moe) the router's and the routed pairs' buffers are empty.
    DeviceBuffers(const ModelConfig& c, int64_t max_chunk, bool experts, void* memory) {
        const size_t T = size_t(max_chunk), H = size_t(c.embedding_length), I = size_t(c.expert_feed_forward_length);
        const size_t P = experts ? T * size_t(c.expert_used_count) : 0;  // routed pairs
        const size_t Q = size_t(c.q_width()), KV = size_t(c.kv_width());
        Carver m{reinterpret_cast<uintptr_t>(memory)};
        residual = m.take<float>(T * H);
        normed = m.take<float>(T * H);
        q = m.take<float>(T * Q);
        k = m.take<float>(T * KV);
        v = m.take<float>(T * KV);
        attn = m.take<float>(T * Q);
        proj = m.take<float>(T * H);
        router_logits = m.take<float>(experts ? T * size_t(c.expert_count) : 0);
        expert_weight = m.take<float>(P);
        expert_idx = m.take<int32_t>(P);
        const size_t tiles = experts ? size_t(expert_tiles_max(int64_t(P), c.expert_count)) : 0;
        expert_groups.order = m.take<int32_t>(P);
        expert_groups.tile_expert = m.take<int32_t>(tiles);
        expert_groups.tile_start = m.take<int32_t>(tiles);
        expert_groups.tile_count = m.take<int32_t>(tiles);
        expert_groups.n_tiles = m.take<int32_t>(experts ? 1 : 0);
        gate = m.take<float>(P * I);
        up = m.take<float>(P * I);
        h = m.take<float>(P * I);
        expert_y = m.take<float>(P * H);
        logits = m.take<float>(size_t(kLogitRowsPerPass) * size_t(c.vocab_size));
        theta = m.take<float>(size_t(c.key_length / 2));
        positions = m.take<int64_t>(T);
        // The largest x a prefill's matmuls read: normed, attn, the experts' h or the logits' rows.
        const size_t split_bytes = std::max({split_activations_bytes(int64_t(T), int64_t(H)),
                                             split_activations_bytes(int64_t(T), int64_t(Q)),
                                             split_activations_bytes(int64_t(P), int64_t(I)),
                                             split_activations_bytes(kLogitRowsPerPass, int64_t(H))});
        split = m.take<uint8_t>(split_bytes);
        bytes = m.used;
        block = memory;
    }
};

}  // namespace ossrun::cuda
