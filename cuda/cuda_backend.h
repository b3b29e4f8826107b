// The CUDA backend (csrc/backend.h): the ops of a forward on the CUDA kernels (kernels.cuh), the
// device model's weights in its arena and its activation buffers, on its stream. Made for each
// forward under the device model's lock. Segments are stacked as on the CPU: the matmuls and the
// MoE block run over all rows at once, RoPE, the K/V stores and attention per segment on its own
// device cache. Plain C++ (no CUDA headers), like device_model.h.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "../csrc/backend.h"
#include "device_model.h"

namespace ossrun::cuda {

struct SplitActivations;  // kernels.cuh

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
    class PartScope;  // an op's launches charged to a part (DeviceModel::part_timing)
    float* rows(Activation a) const;
    const LayerWeights& on_gpu(int64_t layer) const;  // its device views; logic_error if on the CPU
    // x's n rows split for the tensor-core GEMM into the one split buffer (so the view lasts
    // until the next split) when n is a prefill's (>= kGemmMinTokens) and one of the matrices
    // that read x next takes the tensor cores (gemm_mma_can_run); else an empty view. The
    // readers share their cols, x's.
    SplitActivations split(const float* x, int64_t n, std::initializer_list<const Matrix*> readers);
    // y[n, W.rows] = x[n, W.cols] · W^T + bias on the device, its bytes counted; xs: split(x, n, W.cols).
    void matmul(const Matrix& W, const float* x, const SplitActivations& xs, int64_t n, float* y, const float* bias);
    // Matmuls of one x as matmul_parts launches them (decode: one launch), each counted.
    struct MatmulOutput {
        const Matrix* W;
        float* y;
        const float* bias;
    };
    void matmuls(const float* x, const SplitActivations& xs, int64_t n, std::initializer_list<MatmulOutput> outputs);
    // One routed pair per row of y: W[expert of pair p] · x[p / x_div] + its bias; xs: x's rows
    // split. grouped: the pairs of expert_groups (prefill) on the tensor cores where the weights allow.
    void experts(const Matrix& W, const float* x, const SplitActivations& xs, int64_t ldx, int64_t x_div, float* y,
                 const float* bias, bool grouped);

    // The decode step's graph (decode_graphs.h): begin() sets graph_key_ when this forward may
    // use one; the first layer op replays it (and every layer op returns at once after that) or
    // starts recording it, which logits() ends.
    bool layers_replayed();
    void plan_decode_graph();

    DeviceModel& m_;
    const Batch* batch_ = nullptr;
    std::vector<int64_t> graph_key_;
    bool layers_started_ = false, replayed_ = false, recording_ = false;
    uint64_t bytes_before_record_ = 0;
};

}  // namespace ossrun::cuda
