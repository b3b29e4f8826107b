// The device model's host side (device_model.h): the upload layout, the weights' one copy to the
// GPU, and the forward pass as Model::forward_batch's steps on the CUDA kernels (kernels.cuh),
// handing the CPU backend the MoE blocks of the first n_cpu_moe layers.
#include "device_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <type_traits>
#include <stdexcept>

#include "../csrc/weight_element.h"
#include "cuda_check.h"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {

size_t aligned(size_t n) { return (n + kUploadAlign - 1) / kUploadAlign * kUploadAlign; }

std::string gib(size_t bytes) {
    char text[32];
    std::snprintf(text, sizeof text, "%.2f GiB", double(bytes) / double(1ull << 30));
    return text;
}

// cudaMalloc that says what it was for and how much was free when it fails.
void* device_alloc(size_t bytes, const std::string& what) {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
    if (e != cudaSuccess) {
        cudaGetLastError();  // an allocation failure is not sticky; leave no error behind
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        throw CudaError("cannot allocate " + gib(bytes) + " of device memory for " + what + " (" +
                        gib(free_b) + " free of " + gib(total_b) + "): " + cudaGetErrorName(e) +
                        "; put fewer parts on the GPU (cpu_moe / --n-cpu-moe) or shorten n_ctx");
    }
    return p;
}

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

}  // namespace

// ---------------------------------------------------------------- layout and sizes

UploadLayout upload_layout(const ModelWeights& host, const ModelConfig& c, int64_t n_cpu_moe) {
    UploadLayout out;
    ModelWeights w = host;  // for_each_device_tensor may repoint fields; this copy is only read
    for_each_device_tensor(w, c, n_cpu_moe, [&](const std::string& name, auto& field, size_t bytes) {
        UploadItem it;
        it.name = name;
        it.host = reinterpret_cast<const uint8_t*>(field);
        it.bytes = bytes;
        it.offset = out.total;
        out.total += aligned(bytes);
        out.items.push_back(std::move(it));
    });
    return out;
}

std::string unsupported_device_weight(const ModelWeights& host, const ModelConfig& c, int64_t n_cpu_moe) {
    auto bad = [](const Matrix& m) { return !has_weight_element(m.type); };
    if (bad(host.output)) return std::string("output.weight is ") + dtype_name(host.output.type);
    for (size_t l = 0; l < host.layers.size(); ++l) {
        const LayerWeights& L = host.layers[l];
        const std::string p = "blk." + std::to_string(l) + ".";
        const std::pair<const char*, const Matrix*> dense[] = {
            {"attn_q", &L.attn_q}, {"attn_k", &L.attn_k}, {"attn_v", &L.attn_v}, {"attn_output", &L.attn_output}};
        for (const auto& [name, m] : dense)
            if (bad(*m)) return p + name + ".weight is " + dtype_name(m->type);
        if (int64_t(l) < n_cpu_moe) continue;
        const std::pair<const char*, const Matrix*> moe[] = {
            {"ffn_gate_inp", &L.router}, {"ffn_gate_exps", &L.gate_exps}, {"ffn_up_exps", &L.up_exps},
            {"ffn_down_exps", &L.down_exps}};
        for (const auto& [name, m] : moe)
            if (bad(*m)) return p + name + ".weight is " + dtype_name(m->type);
    }
    (void)c;
    return "";
}

// The activations of one chunk of up to max_chunk tokens, carved from one device block.
struct DeviceBuffers {
    float *residual, *normed, *q, *k, *v, *attn, *proj, *router_logits, *expert_weight;
    float *gate, *up, *h, *expert_y, *logits, *theta;
    int32_t* expert_idx;
    int64_t* positions;
    void* block = nullptr;
    size_t bytes = 0;

    // With memory == nullptr only counts (device_scratch_bytes).
    DeviceBuffers(const ModelConfig& c, int64_t max_chunk, void* memory) {
        const size_t T = size_t(max_chunk), H = size_t(c.embedding_length), I = size_t(c.expert_feed_forward_length);
        const size_t P = T * size_t(c.expert_used_count), Q = size_t(c.q_width()), KV = size_t(c.kv_width());
        Carver m{reinterpret_cast<uintptr_t>(memory)};
        residual = m.take<float>(T * H);
        normed = m.take<float>(T * H);
        q = m.take<float>(T * Q);
        k = m.take<float>(T * KV);
        v = m.take<float>(T * KV);
        attn = m.take<float>(T * Q);
        proj = m.take<float>(T * H);
        router_logits = m.take<float>(T * size_t(c.expert_count));
        expert_weight = m.take<float>(P);
        expert_idx = m.take<int32_t>(P);
        gate = m.take<float>(P * I);
        up = m.take<float>(P * I);
        h = m.take<float>(P * I);
        expert_y = m.take<float>(P * H);
        logits = m.take<float>(size_t(kLogitRowsPerPass) * size_t(c.vocab_size));
        theta = m.take<float>(size_t(c.key_length / 2));
        positions = m.take<int64_t>(T);
        bytes = m.used;
        block = memory;
    }
};

size_t device_scratch_bytes(const ModelConfig& c, int64_t max_chunk) {
    return DeviceBuffers(c, max_chunk, nullptr).bytes;
}

// ---------------------------------------------------------------- the model

DeviceModel::DeviceModel(std::shared_ptr<Model> host, int64_t n_cpu_moe)
    : host_(std::move(host)),
      n_cpu_moe_(std::clamp<int64_t>(n_cpu_moe, 0, host_->config().block_count)),
      host_scratch_(host_->config(), DeviceSession::kMaxChunk) {
    const ModelConfig& c = config();
    const std::string bad = unsupported_device_weight(host_->weights(), c, n_cpu_moe_);
    if (!bad.empty())
        throw std::invalid_argument("the CUDA kernels read F32, F16, BF16, Q8_0 and MXFP4 weights; " + bad);
    if (c.key_length > kMaxHeadDim) throw std::invalid_argument("the CUDA attention takes head dimensions up to 256");
    check(cudaSetDevice(0), "cudaSetDevice");
    cudaStream_t stream;
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    stream_ = stream;
    try {
        layout_ = upload_layout(host_->weights(), c, n_cpu_moe_);
        arena_ = device_alloc(layout_.total, "the weights");
        uint8_t* base = static_cast<uint8_t*>(arena_);
        // One copy each, straight from the memory map (pageable: no pinned copy of the weights).
        for (const UploadItem& it : layout_.items)
            check(cudaMemcpy(base + it.offset, it.host, it.bytes, cudaMemcpyHostToDevice), "uploading the weights");
        dev_ = host_->weights();
        size_t i = 0;
        for_each_device_tensor(dev_, c, n_cpu_moe_, [&](const std::string&, auto& field, size_t) {
            field = reinterpret_cast<std::remove_reference_t<decltype(field)>>(base + layout_.items[i++].offset);
        });
        dev_.token_embd.data = nullptr;  // stays on the host
        for (int64_t l = 0; l < n_cpu_moe_; ++l) {  // their MoE blocks run on the CPU
            LayerWeights& L = dev_.layers[size_t(l)];
            L.router.data = L.gate_exps.data = L.up_exps.data = L.down_exps.data = nullptr;
            L.router_b = L.gate_exps_b = L.up_exps_b = L.down_exps_b = nullptr;
        }
        const size_t scratch = device_scratch_bytes(c, DeviceSession::kMaxChunk);
        buf_ = std::make_unique<DeviceBuffers>(c, DeviceSession::kMaxChunk, device_alloc(scratch, "the activations"));
        const RopeTable& rope = host_->rope();
        check(cudaMemcpy(buf_->theta, rope.theta.data(), rope.theta.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
        // A pageable cudaMemcpy may return before its DMA lands, and the model's stream does not
        // wait for the default one: every upload is done before the first forward.
        check(cudaDeviceSynchronize(), "uploading the weights");
    } catch (...) {
        if (buf_) cudaFree(buf_->block);
        cudaFree(arena_);
        cudaStreamDestroy(stream);
        throw;
    }
}

DeviceModel::~DeviceModel() {
    cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
    if (buf_) cudaFree(buf_->block);
    cudaFree(arena_);
    cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void DeviceModel::forward(DeviceKvCache& kv, const int32_t* tokens, int64_t T, int64_t pos0, float* logits,
                          bool all_logits) {
    const ModelConfig& c = config();
    const int64_t H = c.embedding_length, V = c.vocab_size, I = c.expert_feed_forward_length;
    const int64_t nq = c.head_count, nkv = c.head_count_kv, d = c.key_length;
    const int64_t E = c.expert_count, k = c.expert_used_count, P = T * k;
    if (T < 1 || T > DeviceSession::kMaxChunk) throw std::invalid_argument("forward: chunk size out of range");
    if (pos0 < 0 || pos0 + T > kv.n_ctx()) throw std::invalid_argument("forward: context overflow");
    for (int64_t t = 0; t < T; ++t)
        if (tokens[t] < 0 || tokens[t] >= V)
            throw std::out_of_range("token id " + std::to_string(tokens[t]) + " is outside the vocabulary [0, " +
                                    std::to_string(V) + ")");
    std::lock_guard<std::mutex> lock(mutex_);
    const cudaStream_t st = static_cast<cudaStream_t>(stream_);
    DeviceBuffers& b = *buf_;
    Scratch& hs = host_scratch_;

    // Embedding rows decoded on the host (the table stays in RAM), then the residual on the GPU.
    for (int64_t t = 0; t < T; ++t) {
        host_->kernels().decode_row(host_->weights().token_embd, 0, tokens[t], hs.residual.data() + t * H);
        hs.positions[size_t(t)] = pos0 + t;
    }
    check(cudaMemcpyAsync(b.residual, hs.residual.data(), size_t(T * H) * 4, cudaMemcpyHostToDevice, st), "cudaMemcpy");
    check(cudaMemcpyAsync(b.positions, hs.positions.data(), size_t(T) * 8, cudaMemcpyHostToDevice, st), "cudaMemcpy");

    auto matmul_on = [&](const Matrix& W, const float* x, int64_t n, float* y, const float* bias) {
        matmul(matmul_args(W, x, n, y, bias), st);
        weight_bytes_read_ += uint64_t(W.rows) * W.row_bytes;
    };
    auto experts_on = [&](const Matrix& W, const float* x, int64_t ldx, int64_t x_div, float* y, const float* bias) {
        ExpertMatmulArgs a;
        a.W = W;
        a.idx = b.expert_idx;
        a.n_pairs = P;
        a.x = x;
        a.ldx = ldx;
        a.x_div = x_div;
        a.y = y;
        a.ldy = W.rows;
        a.bias = bias;
        expert_matmul(a, st);
        weight_bytes_read_ += uint64_t(P) * uint64_t(W.rows) * W.row_bytes;
    };
    const float scale = 1.0f / std::sqrt(float(d));

    for (int64_t l = 0; l < c.block_count; ++l) {
        const LayerWeights& w = dev_.layers[size_t(l)];
        rmsnorm(b.residual, w.attn_norm, b.normed, T, H, c.rms_norm_eps, st);
        // Attention (Model::attention_block): q/k/v, RoPE on q and k, K/V into the cache, attend.
        matmul_on(w.attn_q, b.normed, T, b.q, w.attn_q_b);
        matmul_on(w.attn_k, b.normed, T, b.k, w.attn_k_b);
        matmul_on(w.attn_v, b.normed, T, b.v, w.attn_v_b);
        rope(b.q, b.positions, T, nq, d, b.theta, host_->rope().concentration, st);
        rope(b.k, b.positions, T, nkv, d, b.theta, host_->rope().concentration, st);
        kv_store(b.k, b.v, b.positions, T, c.kv_width(), kv.capacity(l), kv.type(), kv.k(l), kv.v(l), st);
        AttentionArgs a;
        a.q = b.q;
        a.k = kv.k(l);
        a.v = kv.v(l);
        a.kv_type = kv.type();
        a.positions = b.positions;
        a.sinks = w.attn_sinks;
        a.out = b.attn;
        a.T = T;
        a.n_q = nq;
        a.n_kv = nkv;
        a.d = d;
        a.cap = kv.capacity(l);
        a.window = c.is_sliding(l) ? c.sliding_window : 0;  // even layers see the last W positions
        a.scale = scale;
        attention(a, st);
        matmul_on(w.attn_output, b.attn, T, b.proj, w.attn_output_b);
        add_into(b.residual, b.proj, T * H, st);
        rmsnorm(b.residual, w.post_attention_norm, b.normed, T, H, c.rms_norm_eps, st);
        if (l < n_cpu_moe_) {
            // The CPU backend's MoE block on a host copy of the normed activations.
            check(cudaMemcpyAsync(hs.normed.data(), b.normed, size_t(T * H) * 4, cudaMemcpyDeviceToHost, st), "cudaMemcpy");
            check(cudaStreamSynchronize(st), "the layers before a CPU MoE block");
            host_->moe_block(hs, l, T);
            check(cudaMemcpyAsync(b.proj, hs.proj.data(), size_t(T * H) * 4, cudaMemcpyHostToDevice, st), "cudaMemcpy");
        } else {
            // Model::moe_block on the device: router, top-k, each pair's gate/up, SwiGLU, down, sum.
            matmul_on(w.router, b.normed, T, b.router_logits, w.router_b);
            router_topk(b.router_logits, T, E, k, b.expert_idx, b.expert_weight, st);
            experts_on(w.gate_exps, b.normed, H, k, b.gate, w.gate_exps_b);
            experts_on(w.up_exps, b.normed, H, k, b.up, w.up_exps_b);
            swiglu(b.gate, b.up, b.h, P * I, c.swiglu_alpha, c.swiglu_limit, st);
            experts_on(w.down_exps, b.h, I, 1, b.expert_y, w.down_exps_b);
            moe_combine(b.expert_y, b.expert_weight, T, k, H, b.proj, st);
        }
        add_into(b.residual, b.proj, T * H, st);
    }

    // Final norm and unembedding of the wanted rows, a few rows per pass (the logits buffer).
    const int64_t first = all_logits ? 0 : T - 1;
    for (int64_t r0 = first; r0 < T; r0 += kLogitRowsPerPass) {
        const int64_t n = std::min(kLogitRowsPerPass, T - r0);
        rmsnorm(b.residual + r0 * H, dev_.output_norm, b.normed, n, H, c.rms_norm_eps, st);
        matmul_on(dev_.output, b.normed, n, b.logits, nullptr);
        check(cudaMemcpyAsync(logits + (r0 - first) * V, b.logits, size_t(n * V) * 4, cudaMemcpyDeviceToHost, st),
              "cudaMemcpy");
    }
    check(cudaStreamSynchronize(st), "the forward pass");
}

}  // namespace ossrun::cuda
