// The coarse ops a forward pass is made of (STYLE.md, "One kernel interface for CPU and CUDA").
// The CPU backend (cpu_backend.h) and the CUDA backend (cuda/cuda_backend.h) implement them over
// their own activation buffers; forward_pass() (forward.h) is the network, written once on top.
// Attention and the MoE block are single ops because each backend groups their work its own way.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ossrun {

class KvCache;
namespace cuda {
class DeviceKvCache;
}

// One sequence's part of a batched forward: n tokens at positions pos0 .. pos0+n-1 of its own
// cache. logits receives [n, V] when all_logits, else the last token's [V] (host memory).
struct Segment {
    KvCache* kv = nullptr;                     // its K/V for layers whose attention runs on the CPU
    cuda::DeviceKvCache* device_kv = nullptr;  // and for those on the GPU
    const int32_t* tokens = nullptr;
    int64_t n = 0;
    int64_t pos0 = 0;
    float* logits = nullptr;
    bool all_logits = false;
};

// The rows of one forward: the segments' tokens stacked, T rows in all.
struct Batch {
    const Segment* segs = nullptr;
    size_t n_segs = 0;
    int64_t T = 0;
};

// The activations that pass between ops and backends, each [T, embedding_length] floats.
enum class Activation { kResidual, kNormed, kProj };
enum class LayerNorm { kAttention, kPostAttention };

struct AttentionParams {
    int64_t window = 0;  // a query at p sees keys p - window + 1 .. p; 0: all of 0 .. p
    float scale = 0.0f;  // applied to q·k
};

struct SwigluParams {
    float alpha = 0.0f;
    float limit = 0.0f;
};

class Backend {
public:
    virtual ~Backend() = default;

    // Starts a forward over `batch` (which outlives it): the rows' positions and what derives
    // from them (RoPE's angles), for every op below.
    virtual void begin(const Batch& batch) = 0;
    // residual = the tokens' embedding rows.
    virtual void embed() = 0;
    // normed = rmsnorm(residual) with the layer's `which` weight.
    virtual void norm(int64_t layer, LayerNorm which) = 0;
    // proj = the attention block of normed: q, k, v; RoPE; K and V appended to each segment's
    // cache; grouped-query attention with sinks; the output projection.
    virtual void attention(int64_t layer, const AttentionParams& params) = 0;
    // proj = the MoE block of normed: router top-k, each routed expert's gate and up
    // projections, clamped SwiGLU, down projection, the routing-weighted sum.
    virtual void moe(int64_t layer, const SwigluParams& params) = 0;
    // residual += proj.
    virtual void add_residual() = 0;
    // The final norm and unembedding of each segment's wanted rows of residual, into its logits.
    virtual void logits() = 0;

    // Handing activations to another backend: the rows [T, H] of `a` where they lie in host
    // memory, else nullptr; and copies to and from host memory (whose rows may be reused, and
    // after a download read, once the call returns).
    virtual float* host_rows(Activation a) = 0;
    virtual void download(Activation a, float* host) = 0;
    virtual void upload(Activation a, const float* host) = 0;
};

}  // namespace ossrun
