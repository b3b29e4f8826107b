// The CUDA device model: a gpt-oss model whose layers run on the GPU, beside the CPU Model it was
// made from (csrc/model.h), which embeds the tokens and runs the MoE blocks of the first
// n_cpu_moe layers on its own weights in RAM (llama.cpp's --n-cpu-moe). Weights are copied once
// from the memory map to one device arena (no pinned copy is kept); each session's KV cache lives
// in device memory. The forward pass is csrc/forward.h's, on the CUDA backend (cuda_backend.h).
// Plain C++ (no CUDA headers): csrc-side code and the bindings include it.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "../csrc/model.h"
#include "../csrc/session.h"

namespace ossrun::cuda {

// ---------------------------------------------------------------- what goes to the device

// Calls f(name, field, bytes) for every tensor a device model copies to the GPU whose layers
// first_gpu_layer .. L - 1 run there, with the MoE blocks of the layers below n_cpu_moe on the
// CPU; in arena order: the output norm and matrix, then per GPU layer its norms, attention weights
// and sinks and, for layers >= n_cpu_moe, its MoE block (router and experts with their biases). `field` is the weight view's pointer (Matrix::data or a const float*),
// which f may repoint. The token embedding stays on the host (one row per token is read).
template <class F>
void for_each_device_tensor(ModelWeights& w, const ModelConfig& c, int64_t n_cpu_moe, int64_t first_gpu_layer, F&& f) {
    const size_t H = size_t(c.embedding_length), E = size_t(c.expert_count);
    const size_t I = size_t(c.expert_feed_forward_length), Q = size_t(c.q_width()), KV = size_t(c.kv_width());
    f(std::string("output_norm.weight"), w.output_norm, 4 * H);
    f(std::string("output.weight"), w.output.data, w.output.total_bytes());
    for (size_t l = size_t(first_gpu_layer); l < w.layers.size(); ++l) {
        LayerWeights& L = w.layers[l];
        const std::string p = "blk." + std::to_string(l) + ".";
        f(p + "attn_norm.weight", L.attn_norm, 4 * H);
        f(p + "attn_q.weight", L.attn_q.data, L.attn_q.total_bytes());
        f(p + "attn_q.bias", L.attn_q_b, 4 * Q);
        f(p + "attn_k.weight", L.attn_k.data, L.attn_k.total_bytes());
        f(p + "attn_k.bias", L.attn_k_b, 4 * KV);
        f(p + "attn_v.weight", L.attn_v.data, L.attn_v.total_bytes());
        f(p + "attn_v.bias", L.attn_v_b, 4 * KV);
        f(p + "attn_output.weight", L.attn_output.data, L.attn_output.total_bytes());
        f(p + "attn_output.bias", L.attn_output_b, 4 * H);
        f(p + "attn_sinks.weight", L.attn_sinks, 4 * size_t(c.head_count));
        f(p + "post_attention_norm.weight", L.post_attention_norm, 4 * H);
        if (int64_t(l) < n_cpu_moe) continue;
        f(p + "ffn_gate_inp.weight", L.router.data, L.router.total_bytes());
        f(p + "ffn_gate_inp.bias", L.router_b, 4 * E);
        f(p + "ffn_gate_exps.weight", L.gate_exps.data, L.gate_exps.total_bytes());
        f(p + "ffn_gate_exps.bias", L.gate_exps_b, 4 * E * I);
        f(p + "ffn_up_exps.weight", L.up_exps.data, L.up_exps.total_bytes());
        f(p + "ffn_up_exps.bias", L.up_exps_b, 4 * E * I);
        f(p + "ffn_down_exps.weight", L.down_exps.data, L.down_exps.total_bytes());
        f(p + "ffn_down_exps.bias", L.down_exps_b, 4 * E * H);
    }
}

struct UploadItem {
    std::string name;
    const uint8_t* host = nullptr;  // in the memory map
    size_t bytes = 0;
    size_t offset = 0;  // in the device arena, a multiple of kDeviceAlign (kernels.cuh)
};

struct UploadLayout {
    std::vector<UploadItem> items;
    size_t total = 0;  // arena bytes
};

// Where each tensor of for_each_device_tensor lies in the arena (host logic, tested without a GPU).
UploadLayout upload_layout(const ModelWeights& host, const ModelConfig& c, int64_t n_cpu_moe, int64_t first_gpu_layer);

// The weight types the CUDA kernels read (csrc/weight_element.h); "" when every matrix the
// device model uploads has one, else a sentence naming the first that does not.
std::string unsupported_device_weight(const ModelWeights& host, const ModelConfig& c, int64_t n_cpu_moe,
                                      int64_t first_gpu_layer);

// Device bytes of one forward's activations for chunks of up to max_chunk tokens, with or without
// MoE blocks on the GPU (placement.py's scratch_bytes bounds it), and of a KV cache
// (placement.py's kv_cache_bytes, summed).
size_t device_scratch_bytes(const ModelConfig& c, int64_t max_chunk, bool experts);
// The matrices of layer L's MoE block in the order a forward reads them (router, gate, up,
// down) with their biases' lengths ([E], [E][I], [E][I], [E][H]).
struct MoeMatrix {
    const Matrix* m;
    const float* bias;
    int64_t bias_floats;
};
enum MoeMatrixIndex { kRouter, kGate, kUp, kDown };
std::array<MoeMatrix, 4> moe_matrices(const LayerWeights& L, const ModelConfig& c);
// Whether layer l's MoE block can be offloaded (DeviceModel's constructor): attention on the GPU,
// the block on the CPU, every matrix of it in the GGUF's rows of a type the kernels read.
bool moe_offloadable(const ModelWeights& host, int64_t l, int64_t n_cpu_moe, int64_t first_gpu_layer);
// One staging slot's bytes for those layers: the largest matrix of their MoE blocks with its
// bias, each 256-aligned (placement.py's stage_slot_bytes); 0 when no layer can be offloaded.
size_t offload_stage_bytes(const ModelWeights& host, const ModelConfig& c, int64_t n_cpu_moe,
                           int64_t first_gpu_layer);
// Rows of logits computed per output matmul when a forward wants every position's logits.
constexpr int64_t kLogitRowsPerPass = 8;

// ---------------------------------------------------------------- the KV cache on the device

// Slots of `layer`: n_ctx on full layers, the sliding ring of csrc/kv_cache.cpp on sliding ones.
int64_t kv_capacity(const ModelConfig& c, int64_t layer, int64_t n_ctx, int64_t max_chunk);
// Of the layers first_gpu_layer .. L - 1, which the device cache holds.
size_t kv_cache_bytes(const ModelConfig& c, int64_t n_ctx, int64_t max_chunk, KvType type, int64_t first_gpu_layer);

// K (after RoPE) and V per layer, each [cap][n_kv][d] of `type` in device memory, and on the host
// which position each slot holds (csrc/kv_cache.h's rules for resuming after a truncation).
class DeviceKvCache {
public:
    // The layers first_gpu_layer .. L - 1 (the others: no slots, their K/V are the CPU's).
    DeviceKvCache(const ModelConfig& c, int64_t n_ctx, int64_t max_chunk, KvType type, int64_t first_gpu_layer);
    ~DeviceKvCache();
    DeviceKvCache(const DeviceKvCache&) = delete;
    DeviceKvCache& operator=(const DeviceKvCache&) = delete;

    int64_t n_ctx() const { return n_ctx_; }
    KvType type() const { return type_; }
    // Never the same for two caches of a process (a new cache may reuse a freed one's address):
    // what the decode graphs (decode_graphs.h) key a cache's device buffers by.
    uint64_t id() const { return id_; }
    int64_t capacity(int64_t layer) const { return cap_[size_t(layer)]; }
    void* k(int64_t layer) const { return k_[size_t(layer)]; }
    void* v(int64_t layer) const { return v_[size_t(layer)]; }
    // Positions pos0 .. pos0 + n - 1 of every layer were written.
    void mark_held(int64_t pos0, int64_t n);
    bool can_resume_at(int64_t n) const;
    void clear();
    size_t bytes() const { return bytes_; }
    // Every held slot of positions 0 .. n - 1 filled with pseudo-random keys and values.
    void fill_synthetic(int64_t n);

private:
    ModelConfig config_;
    int64_t n_ctx_;
    KvType type_;
    uint64_t id_;
    static uint64_t next_id();
    size_t bytes_ = 0;
    std::vector<int64_t> cap_;
    std::vector<void*> k_, v_;
    std::vector<std::vector<int64_t>> held_;
};

// ---------------------------------------------------------------- the model

struct DeviceBuffers;  // one chunk's activations on the device (device_model.cpp)
class DecodeGraphs;   // the decode step's CUDA graphs (decode_graphs.h)

class DeviceModel {
public:
    // The last gpu_layers layers (1 .. L) run on the GPU, the first L - gpu_layers wholly on the
    // CPU backend (llama.cpp's -ngl), and the MoE blocks of the first n_cpu_moe layers too
    // (--n-cpu-moe; at least those CPU layers'). Uploads the weights (a CudaError naming the bytes
    // when the device memory is short) and allocates the activations. The device model keeps host.
    // offload_min_tokens > 0: a forward of at least that many rows runs the MoE blocks that sit
    // on the CPU beside attention on the GPU (layers first_gpu_layer .. n_cpu_moe - 1, experts in
    // the GGUF's rows) on the GPU instead, each of their matrices copied from RAM into a staging
    // slot just before its matmul (llama.cpp's op offload, meant for long prompts, where the copy
    // should cost less than the CPU's matmuls; not yet measured on a GPU). stage_slots 2: the
    // slots alternate and the copies run on a stream of their own, so that a matrix's copy runs
    // while the matmul of the one before reads the other slot; 1: each copy waits for the
    // readers of the one before. Decode steps keep those blocks on the CPU.
    DeviceModel(std::shared_ptr<Model> host, int64_t n_cpu_moe, int64_t gpu_layers, int64_t offload_min_tokens = 0,
                int stage_slots = 2);
    ~DeviceModel();
    DeviceModel(const DeviceModel&) = delete;
    DeviceModel& operator=(const DeviceModel&) = delete;

    const ModelConfig& config() const { return host_->config(); }
    Model& host() const { return *host_; }
    int64_t n_cpu_moe() const { return n_cpu_moe_; }
    int64_t gpu_layers() const { return config().block_count - first_gpu_layer_; }
    int64_t first_gpu_layer() const { return first_gpu_layer_; }
    size_t weight_bytes_on_device() const { return layout_.total; }
    const UploadLayout& layout() const { return layout_; }
    // Weight bytes read by the GPU's matmuls since load (each routed pair's expert counted, which
    // is each expert once for a decode step) plus the CPU backend's.
    uint64_t weight_bytes_read() const { return weight_bytes_read_ + host_->weight_bytes_read(); }

    // As Model::forward_batch, on the device: several sequences' rows stacked (at most kMaxChunk
    // in all), each segment with its own device_kv (and kv, for the layers on the CPU); every
    // matmul and expert reads its weights once for all. Logits go to host memory.
    void forward_batch(const Segment* segs, size_t n_segs);

    int64_t offload_min_tokens() const { return offload_min_tokens_; }  // 0 without a staging buffer
    size_t stage_bytes() const { return stage_slot_bytes_ * size_t(stage_slots_); }  // every slot
    int stage_slots() const { return stage_slots_; }
    // OSSRUN_CUDA_PIN_OFFLOAD=1: the host bytes the offload copies (the matrices of the blocks it
    // may stage, where they lie: the memory map or the experts' copy in RAM) are page-locked in
    // place (cudaHostRegister, read-only; no second copy), so that their copies go by DMA at the
    // bus's rate, not through the driver's pageable staging, and this thread does not wait for
    // them. It locks those pages in RAM: opt-in. Best effort: on a failure none stay locked,
    // pin_error() says why and the copies stay pageable.
    size_t pinned_offload_bytes() const { return pinned_bytes_; }
    const std::string& pin_error() const { return pin_error_; }
    // MoE blocks run on the GPU from the staging buffer, and the bytes copied into it, since load.
    uint64_t offloaded_moe_blocks() const { return offloaded_moe_blocks_; }
    uint64_t offloaded_bytes() const { return offloaded_bytes_; }

    // Decode steps with every layer on the GPU replay a CUDA graph per shape (decode_graphs.h);
    // on by default, off with OSSRUN_CUDA_GRAPHS=0 or here (tests compare both).
    bool decode_graphs() const { return use_graphs_; }
    void set_decode_graphs(bool on);
    size_t decode_graphs_recorded() const;

    // GPU time per part of the forward (csrc/part_timer.h's parts) since load or the last reset,
    // measured when part timing is on (OSSRUN_CUDA_PART_TIMES=1 at load, or set_part_timing): each
    // op's launches are bracketed by two CUDA events on the model's stream, read at the forward's
    // end, and decode steps do not replay graphs (their kernels are launched one by one, so a
    // part's time includes the gaps between its launches). Read between forwards.
    bool part_timing() const { return time_parts_; }
    void set_part_timing(bool on);
    double gpu_part_seconds(Part p) const { return gpu_part_ms_[size_t(p)] * 1e-3; }
    void reset_gpu_part_seconds();

private:
    friend class CudaBackend;  // the ops of a forward on this model's arena, buffers and stream

    std::shared_ptr<Model> host_;
    int64_t first_gpu_layer_;
    int64_t n_cpu_moe_;
    UploadLayout layout_;
    ModelWeights dev_;         // views of the arena (layers >= n_cpu_moe have their MoE weights)
    void* arena_ = nullptr;    // device memory of every uploaded tensor
    void* stream_ = nullptr;   // cudaStream_t
    std::unique_ptr<DeviceBuffers> buf_;
    Scratch host_scratch_;     // the CPU backend's, for its MoE blocks
    std::vector<float> embed_rows_;         // the embedding rows before their upload
    // Flash-decoding's partial results, grown to the longest context a decode row has needed.
    float* attention_parts(size_t floats);
    void* attention_parts_ = nullptr;
    size_t attention_parts_floats_ = 0;
    std::vector<int64_t> host_positions_;  // the rows' positions before theirs
    std::unique_ptr<DecodeGraphs> graphs_;
    bool use_graphs_ = true;
    std::mutex mutex_;         // one forward at a time
    uint64_t weight_bytes_read_ = 0;
    // The offload (see the constructor): which layers' MoE blocks may be staged, the slots (one
    // allocation), the copies' stream (cudaStream_t; the model's with one slot) and each slot's
    // events (cudaEvent_t): its copy done, its last reader queued.
    int64_t offload_min_tokens_ = 0;
    std::vector<bool> offloadable_;
    void* stage_ = nullptr;
    size_t stage_slot_bytes_ = 0;
    int stage_slots_ = 0, next_slot_ = 0;
    void* copy_stream_ = nullptr;
    std::array<void*, 2> staged_{}, released_{};
    uint64_t offloaded_moe_blocks_ = 0, offloaded_bytes_ = 0;
    std::vector<void*> pinned_;  // the page-locked ranges' starts (cudaHostUnregister takes them)
    size_t pinned_bytes_ = 0;
    std::string pin_error_;
    void pin_offload_sources();
    void unpin_offload_sources() noexcept;
    // Part timing (see part_timing()): the event pairs recorded this forward, and spare events
    // (cudaEvent_t) to reuse.
    bool time_parts_ = false;
    std::array<double, size_t(Part::kCount)> gpu_part_ms_{};
    struct TimedPart {
        Part part;
        void* start;
        void* end;
    };
    std::vector<TimedPart> timed_;
    std::vector<void*> spare_events_;
    void* part_event() noexcept;  // a spare event or a new one; null if none can be made
    // After the stream is synchronized: the recorded pairs' times into gpu_part_ms_.
    void harvest_part_times();
    // A host matrix staged for one matmul: its device views and the slot it holds.
    struct Staged {
        Matrix m;
        const float* bias;
        int slot;
    };
    // Host matrix m and its bias (bias_floats, or null) copied into the next slot once the
    // kernels that read that slot before are done; the model's stream waits for the copy.
    Staged stage(const Matrix& m, const float* bias, int64_t bias_floats);
    // The slot's readers are queued on the model's stream: the next copy into it waits for them.
    void release_stage(int slot) noexcept;
    void free_offload() noexcept;
};

// ---------------------------------------------------------------- a conversation

class DeviceSession;

// One session's part of a batched step (csrc/session.h).
using DeviceSessionStep = StepOf<DeviceSession>;

// Session (csrc/session.h) over a DeviceModel: the same prefill / truncate / reset contract.
class DeviceSession {
public:
    // Tokens per prefill chunk: 4x the CPU session's, so that a chunk's routed pairs fill the
    // grouped expert GEMM's 64-row tiles (20b: ~128 pairs an expert, where 256 tokens gave ~32)
    // and every weight is streamed from device memory once per 1024 tokens rather than per 256.
    static constexpr int64_t kMaxChunk = 1024;

    DeviceSession(std::shared_ptr<DeviceModel> model, int64_t n_ctx, KvType kv_type);

    const std::shared_ptr<DeviceModel>& model() const { return model_; }
    int64_t n_past() const { return int64_t(tokens_.size()); }
    int64_t n_ctx() const { return kv_.n_ctx(); }
    const std::vector<int32_t>& tokens() const { return tokens_; }
    size_t kv_bytes() const { return kv_.bytes() + (host_kv_ ? host_kv_->bytes() : 0); }
    KvType kv_type() const { return kv_.type(); }
    int64_t vocab_size() const { return model_->config().vocab_size; }
    void prefill(const int32_t* ids, int64_t n, float* logits, bool all_logits);
    void truncate(int64_t n);
    bool truncates_in_place(int64_t n) const { return n == 0 || (n <= n_past() && can_resume_at(n)); }
    void reset();
    void fill_synthetic(int64_t n);
    // One forward over several sessions of one model (continuous batching), each appending its
    // ids, at most kMaxChunk tokens in all (Session::step).
    static void step(const DeviceSessionStep* steps, size_t n_steps);

private:
    bool can_resume_at(int64_t n) const { return kv_.can_resume_at(n) && (!host_kv_ || host_kv_->can_resume_at(n)); }
    Segment segment(const int32_t* ids, int64_t n, float* logits, bool all_logits);

    std::shared_ptr<DeviceModel> model_;
    DeviceKvCache kv_;
    std::unique_ptr<KvCache> host_kv_;  // the layers that run on the CPU, when there are any
    std::vector<int32_t> tokens_;
};

}  // namespace ossrun::cuda
