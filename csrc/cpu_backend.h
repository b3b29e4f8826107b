// The CPU backend (backend.h): the ops of a forward on a Model's kernel table, weights and
// thread pool, over one session's Scratch. Made for each forward; the Model's forward lock (or,
// for the CUDA device model's CPU MoE blocks, the device model's own) serialises its users.
#pragma once
#include <cstdint>

#include "backend.h"
#include "model.h"

namespace ossrun {

class CpuBackend final : public Backend {
public:
    CpuBackend(Model& model, Scratch& scratch) : m_(model), s_(scratch) {}

    void begin(const Batch& batch) override;
    void embed() override;
    void norm(int64_t layer, LayerNorm which) override;
    void attention(int64_t layer, const AttentionParams& params) override;
    void moe(int64_t layer, const SwigluParams& params) override;
    void add_residual() override;
    void logits() override;
    float* host_rows(Activation a) override;
    void download(Activation a, float* host) override;
    void upload(Activation a, const float* host) override;

private:
    void rmsnorm_rows(const float* x, const float* g, float* y, int64_t T);
    MatmulArgs matmul_args(const Matrix& W, int64_t mat, const float* x, int64_t T, float* y,
                           const float* bias) const;
    // Several independent matmuls in one parallel loop (one sync, not n); rows split across threads.
    void matmuls(const MatmulArgs* jobs, size_t n_jobs);
    // int16 copy of rows [n, width] (blocks of 32, one scale each) into s.x_i16, in parallel.
    void quantize_i16(const float* x, int64_t n, int64_t width);
    // Fast precision: give the matmul args an int16 copy of their input rows where it pays.
    void attach_i16(const float* x, int64_t T, int64_t width, MatmulArgs& a);
    void attend(int64_t layer, const AttentionParams& params);  // s.q and the caches -> s.attn

    Model& m_;
    Scratch& s_;
    const Batch* batch_ = nullptr;
    bool rope_ready_ = false;  // s_.rope_cos / rope_sin hold this batch's angles
};

}  // namespace ossrun
