// The CUDA backend (csrc/backend.h): the ops of a forward on the CUDA kernels (kernels.cuh), the
// device model's weights in its arena and its activation buffers, on its stream. Made for each
// forward under the device model's lock. Segments are stacked as on the CPU: the matmuls and the
// MoE block run over all rows at once, RoPE, the K/V stores and attention per segment on its own
// device cache. Plain C++ (no CUDA headers), like device_model.h.
#pragma once
#include <cstdint>

#include "../csrc/backend.h"
#include "device_model.h"

namespace ossrun::cuda {

class CudaBackend final : public Backend {
public:
    explicit CudaBackend(DeviceModel& model) : m_(model) {}

    void begin(const Batch& batch) override;
    void embed() override;
    void norm(int64_t layer, LayerNorm which) override;
    void attention(int64_t layer, const AttentionParams& params) override;
    void moe(int64_t layer, const SwigluParams& params) override;
    void add_residual() override;
    void logits() override;
    float* host_rows(Activation) override { return nullptr; }  // device memory
    void download(Activation a, float* host) override;
    void upload(Activation a, const float* host) override;

private:
    float* rows(Activation a) const;
    const LayerWeights& on_gpu(int64_t layer) const;  // its device views; logic_error if on the CPU
    // y[n, W.rows] = x[n, W.cols] · W^T + bias on the device, its bytes counted.
    void matmul(const Matrix& W, const float* x, int64_t n, float* y, const float* bias);
    // One routed pair per row of y: W[expert of pair p] · x[p / x_div] + its bias.
    // grouped: the pairs of expert_groups (prefill) on the tensor cores where the weights allow.
    void experts(const Matrix& W, const float* x, int64_t ldx, int64_t x_div, float* y, const float* bias, bool grouped);

    DeviceModel& m_;
    const Batch* batch_ = nullptr;
};

}  // namespace ossrun::cuda
