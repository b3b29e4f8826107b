// The device model's host side (device_model.h): the upload layout, the weights' one copy to the
// GPU, and the forward: forward_pass (csrc/forward.h) on the CUDA backend (cuda_backend.h), the
// first layers and the MoE blocks of the first n_cpu_moe layers on the CPU backend.
#include "device_model.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <stdexcept>

#include <unistd.h>  // sysconf

#include "../csrc/cpu_backend.h"
#include "../csrc/forward.h"
#include "../csrc/weight_element.h"
#include "cuda_backend.h"
#include "cuda_check.h"
#include "decode_graphs.h"
#include "device_buffers.h"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {

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

}  // namespace

// ---------------------------------------------------------------- layout and sizes

UploadLayout upload_layout(const ModelWeights& host, const ModelConfig& c, int64_t n_cpu_moe, int64_t first_gpu_layer) {
    UploadLayout out;
    ModelWeights w = host;  // for_each_device_tensor may repoint fields; this copy is only read
    for_each_device_tensor(w, c, n_cpu_moe, first_gpu_layer, [&](const std::string& name, auto& field, size_t bytes) {
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

std::string unsupported_device_weight(const ModelWeights& host, const ModelConfig& c, int64_t n_cpu_moe,
                                      int64_t first_gpu_layer) {
    // "" for a matrix the CUDA kernels read: a type they decode, in the GGUF's rows (a CPU repack
    // in 16-row groups is only ever made of matrices the CPU runs; this keeps it so).
    auto problem = [](const Matrix& m) -> std::string {
        if (!has_weight_element(m.type)) return std::string(" is ") + dtype_name(m.type);
        if (m.layout != RowLayout::kRows) return " is repacked in 16-row groups for the CPU's kernels";
        return "";
    };
    if (const std::string why = problem(host.output); !why.empty()) return "output.weight" + why;
    for (size_t l = size_t(first_gpu_layer); l < host.layers.size(); ++l) {
        const LayerWeights& L = host.layers[l];
        const std::string p = "blk." + std::to_string(l) + ".";
        const std::pair<const char*, const Matrix*> dense[] = {
            {"attn_q", &L.attn_q}, {"attn_k", &L.attn_k}, {"attn_v", &L.attn_v}, {"attn_output", &L.attn_output}};
        for (const auto& [name, m] : dense)
            if (const std::string why = problem(*m); !why.empty()) return p + name + ".weight" + why;
        if (int64_t(l) < n_cpu_moe) continue;
        const std::pair<const char*, const Matrix*> moe[] = {
            {"ffn_gate_inp", &L.router}, {"ffn_gate_exps", &L.gate_exps}, {"ffn_up_exps", &L.up_exps},
            {"ffn_down_exps", &L.down_exps}};
        for (const auto& [name, m] : moe)
            if (const std::string why = problem(*m); !why.empty()) return p + name + ".weight" + why;
    }
    (void)c;
    return "";
}

size_t device_scratch_bytes(const ModelConfig& c, int64_t max_chunk, bool experts) {
    return DeviceBuffers(c, max_chunk, experts, nullptr).bytes;
}

std::array<MoeMatrix, 4> moe_matrices(const LayerWeights& L, const ModelConfig& c) {
    const int64_t E = c.expert_count, I = c.expert_feed_forward_length, H = c.embedding_length;
    return {{{&L.router, L.router_b, E},
             {&L.gate_exps, L.gate_exps_b, E * I},
             {&L.up_exps, L.up_exps_b, E * I},
             {&L.down_exps, L.down_exps_b, E * H}}};
}

namespace {
size_t staged_bytes(const MoeMatrix& x) {
    return aligned(x.m->total_bytes()) + (x.bias ? aligned(size_t(x.bias_floats) * 4) : 0);
}
}  // namespace

bool moe_offloadable(const ModelWeights& host, int64_t l, int64_t n_cpu_moe, int64_t first_gpu_layer) {
    if (l < first_gpu_layer || l >= n_cpu_moe || l >= int64_t(host.layers.size())) return false;
    const LayerWeights& L = host.layers[size_t(l)];
    for (const Matrix* m : {&L.router, &L.gate_exps, &L.up_exps, &L.down_exps})
        if (!m->data || !has_weight_element(m->type) || m->layout != RowLayout::kRows) return false;
    return true;
}

size_t offload_stage_bytes(const ModelWeights& host, const ModelConfig& c, int64_t n_cpu_moe, int64_t first_gpu_layer) {
    size_t most = 0;
    for (int64_t l = 0; l < c.block_count; ++l)
        if (moe_offloadable(host, l, n_cpu_moe, first_gpu_layer))
            for (const MoeMatrix& x : moe_matrices(host.layers[size_t(l)], c)) most = std::max(most, staged_bytes(x));
    return most;
}

// ---------------------------------------------------------------- the model

DeviceModel::DeviceModel(std::shared_ptr<Model> host, int64_t n_cpu_moe, int64_t gpu_layers, int64_t offload_min_tokens,
                         int stage_slots)
    : host_(std::move(host)),
      first_gpu_layer_(host_->config().block_count - gpu_layers),
      n_cpu_moe_(std::clamp<int64_t>(std::max(n_cpu_moe, first_gpu_layer_), 0, host_->config().block_count)),
      host_scratch_(host_->config(), DeviceSession::kMaxChunk) {
    const ModelConfig& c = config();
    if (gpu_layers < 1 || gpu_layers > c.block_count)
        throw std::invalid_argument("gpu_layers must be in [1, " + std::to_string(c.block_count) + "]");
    const std::string bad = unsupported_device_weight(host_->weights(), c, n_cpu_moe_, first_gpu_layer_);
    if (!bad.empty())
        throw std::invalid_argument(
            "the CUDA kernels read F32, F16, BF16, Q8_0, MXFP4 and the dense quants Q4_0 .. Q6_K, IQ4_NL in the GGUF's "
            "rows; " + bad);
    if (c.key_length > kMaxHeadDim) throw std::invalid_argument("the CUDA attention takes head dimensions up to 256");
    if (stage_slots < 1 || stage_slots > 2) throw std::invalid_argument("stage_slots must be 1 or 2");
    check(cudaSetDevice(0), "cudaSetDevice");
    cudaStream_t stream;
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    stream_ = stream;
    const char* graphs_env = std::getenv("OSSRUN_CUDA_GRAPHS");
    use_graphs_ = !(graphs_env && std::string(graphs_env) == "0");
    const char* parts_env = std::getenv("OSSRUN_CUDA_PART_TIMES");
    time_parts_ = parts_env && std::string(parts_env) == "1";
    graphs_ = std::make_unique<DecodeGraphs>(stream);
    try {
        layout_ = upload_layout(host_->weights(), c, n_cpu_moe_, first_gpu_layer_);
        arena_ = device_alloc(layout_.total, "the weights");
        uint8_t* base = static_cast<uint8_t*>(arena_);
        // One copy each, straight from the memory map (pageable: no pinned copy of the weights).
        for (const UploadItem& it : layout_.items)
            check(cudaMemcpy(base + it.offset, it.host, it.bytes, cudaMemcpyHostToDevice), "uploading the weights");
        dev_ = host_->weights();
        size_t i = 0;
        for_each_device_tensor(dev_, c, n_cpu_moe_, first_gpu_layer_, [&](const std::string&, auto& field, size_t) {
            field = reinterpret_cast<std::remove_reference_t<decltype(field)>>(base + layout_.items[i++].offset);
        });
        dev_.token_embd.data = nullptr;  // stays on the host
        for (int64_t l = 0; l < first_gpu_layer_; ++l) dev_.layers[size_t(l)] = LayerWeights{};  // on the CPU
        for (int64_t l = first_gpu_layer_; l < n_cpu_moe_; ++l) {  // their MoE blocks run on the CPU
            LayerWeights& L = dev_.layers[size_t(l)];
            L.router.data = L.gate_exps.data = L.up_exps.data = L.down_exps.data = nullptr;
            L.router_b = L.gate_exps_b = L.up_exps_b = L.down_exps_b = nullptr;
        }
        if (offload_min_tokens > 0) {
            for (int64_t l = 0; l < c.block_count; ++l)
                offloadable_.push_back(moe_offloadable(host_->weights(), l, n_cpu_moe_, first_gpu_layer_));
            const size_t slot = offload_stage_bytes(host_->weights(), c, n_cpu_moe_, first_gpu_layer_);
            if (slot) {
                stage_ = device_alloc(slot * size_t(stage_slots), "the staging slots of the offloaded MoE blocks");
                stage_slot_bytes_ = slot;
                stage_slots_ = stage_slots;
                offload_min_tokens_ = offload_min_tokens;
                copy_stream_ = stream_;
                if (stage_slots == 2) {
                    cudaStream_t copies;
                    check(cudaStreamCreateWithFlags(&copies, cudaStreamNonBlocking), "cudaStreamCreate");
                    copy_stream_ = copies;
                    for (int i = 0; i < 2; ++i) {
                        cudaEvent_t staged, released;
                        check(cudaEventCreateWithFlags(&staged, cudaEventDisableTiming), "cudaEventCreate");
                        staged_[size_t(i)] = staged;
                        check(cudaEventCreateWithFlags(&released, cudaEventDisableTiming), "cudaEventCreate");
                        released_[size_t(i)] = released;
                    }
                }
            }
        }
        if (stage_) {
            const char* pin_env = std::getenv("OSSRUN_CUDA_PIN_OFFLOAD");
            if (pin_env && std::string(pin_env) == "1") pin_offload_sources();
        }
        // A MoE block on the GPU, or one that may be offloaded there.
        const bool experts = std::max(first_gpu_layer_, n_cpu_moe_) < c.block_count || stage_;
        const size_t scratch = device_scratch_bytes(c, DeviceSession::kMaxChunk, experts);
        buf_ = std::make_unique<DeviceBuffers>(c, DeviceSession::kMaxChunk, experts,
                                               device_alloc(scratch, "the activations"));
        const RopeTable& rope = host_->rope();
        check(cudaMemcpy(buf_->theta, rope.theta.data(), rope.theta.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
        // A pageable cudaMemcpy may return before its DMA lands, and the model's stream does not
        // wait for the default one: every upload is done before the first forward.
        check(cudaDeviceSynchronize(), "uploading the weights");
    } catch (...) {
        if (buf_) cudaFree(buf_->block);
        free_offload();
        cudaFree(arena_);
        cudaStreamDestroy(stream);
        throw;
    }
}

float* DeviceModel::attention_parts(size_t floats) {
    if (floats > attention_parts_floats_) {
        // The kernels queued before may still read the old buffer.
        check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)), "the forward pass");
        cudaFree(attention_parts_);
        attention_parts_ = nullptr;
        attention_parts_floats_ = 0;
        attention_parts_ = device_alloc(floats * sizeof(float), "attention's partial results");
        attention_parts_floats_ = floats;
        graphs_->clear();  // they read the old buffer
    }
    return static_cast<float*>(attention_parts_);
}

void DeviceModel::set_decode_graphs(bool on) {
    std::lock_guard<std::mutex> lock(mutex_);
    use_graphs_ = on;
    if (!on) graphs_->clear();
}

size_t DeviceModel::decode_graphs_recorded() const { return graphs_->size(); }

void DeviceModel::set_part_timing(bool on) {
    std::lock_guard<std::mutex> lock(mutex_);
    time_parts_ = on;
}

void DeviceModel::reset_gpu_part_seconds() {
    std::lock_guard<std::mutex> lock(mutex_);
    gpu_part_ms_ = {};
}

void* DeviceModel::part_event() noexcept {
    if (!spare_events_.empty()) {
        void* e = spare_events_.back();
        spare_events_.pop_back();
        return e;
    }
    cudaEvent_t e = nullptr;
    if (cudaEventCreate(&e) != cudaSuccess) {
        cudaGetLastError();  // a part goes untimed; leave no error behind
        return nullptr;
    }
    return e;
}

void DeviceModel::harvest_part_times() {
    for (const TimedPart& t : timed_) {
        float ms = 0.0f;
        check(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(t.start), static_cast<cudaEvent_t>(t.end)),
              "timing a part of the forward");
        gpu_part_ms_[size_t(t.part)] += double(ms);
        spare_events_.push_back(t.start);
        spare_events_.push_back(t.end);
    }
    timed_.clear();
}

DeviceModel::~DeviceModel() {
    cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
    for (const TimedPart& t : timed_) spare_events_.insert(spare_events_.end(), {t.start, t.end});
    for (void* e : spare_events_) cudaEventDestroy(static_cast<cudaEvent_t>(e));
    graphs_.reset();
    cudaFree(attention_parts_);
    if (buf_) cudaFree(buf_->block);
    free_offload();
    cudaFree(arena_);
    cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void DeviceModel::pin_offload_sources() {
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    std::vector<std::pair<uintptr_t, uintptr_t>> ranges;  // [lo, hi) rounded out to whole pages
    for (int64_t l = 0; l < config().block_count; ++l) {
        if (!offloadable_[size_t(l)]) continue;
        for (const MoeMatrix& x : moe_matrices(host_->weights().layers[size_t(l)], config())) {
            const uintptr_t at = reinterpret_cast<uintptr_t>(x.m->data);
            ranges.push_back({at / page * page, (at + x.m->total_bytes() + page - 1) / page * page});
        }
    }
    // One registration per run of touching ranges: the runtime refuses overlapping ones.
    std::sort(ranges.begin(), ranges.end());
    std::vector<std::pair<uintptr_t, uintptr_t>> runs;
    for (const auto& r : ranges) {
        if (!runs.empty() && r.first <= runs.back().second) runs.back().second = std::max(runs.back().second, r.second);
        else runs.push_back(r);
    }
    for (const auto& [lo, hi] : runs) {
        void* p = reinterpret_cast<void*>(lo);
        const cudaError_t e = cudaHostRegister(p, hi - lo, cudaHostRegisterReadOnly);
        if (e != cudaSuccess) {
            cudaGetLastError();  // the copies stay pageable; leave no error behind
            pin_error_ = std::string("cudaHostRegister of ") + std::to_string((hi - lo) >> 20) + " MiB failed: " +
                         cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
            unpin_offload_sources();
            return;
        }
        pinned_.push_back(p);
        pinned_bytes_ += hi - lo;
    }
}

void DeviceModel::unpin_offload_sources() noexcept {
    for (void* p : pinned_) cudaHostUnregister(p);
    pinned_.clear();
    pinned_bytes_ = 0;
}

void DeviceModel::free_offload() noexcept {
    if (copy_stream_ && copy_stream_ != stream_) {
        cudaStreamSynchronize(static_cast<cudaStream_t>(copy_stream_));
        cudaStreamDestroy(static_cast<cudaStream_t>(copy_stream_));
    }
    unpin_offload_sources();  // no copy reads them now
    copy_stream_ = nullptr;
    // One staging slot (or none) makes no events; destroying a null one would leave an error
    // behind for the next model's first check.
    for (void* e : staged_)
        if (e) cudaEventDestroy(static_cast<cudaEvent_t>(e));
    for (void* e : released_)
        if (e) cudaEventDestroy(static_cast<cudaEvent_t>(e));
    staged_ = released_ = {};
    cudaFree(stage_);
    stage_ = nullptr;
}

DeviceModel::Staged DeviceModel::stage(const Matrix& m, const float* bias, int64_t bias_floats) {
    // Pageable copies (no pinned copy of the weights): the driver takes the host's bytes before
    // the call returns, so this thread waits for the copy while the model's stream runs the
    // kernels queued before it; from page-locked sources (pin_offload_sources) the copy is queued
    // and returns at once.
    const cudaStream_t st = static_cast<cudaStream_t>(stream_), copies = static_cast<cudaStream_t>(copy_stream_);
    const int slot = next_slot_;
    next_slot_ = (next_slot_ + 1) % stage_slots_;
    const bool own_stream = copies != st;  // else the stream's order does what the events do
    if (own_stream)
        check(cudaStreamWaitEvent(copies, static_cast<cudaEvent_t>(released_[size_t(slot)]), 0),
              "staging an offloaded MoE matrix");
    uint8_t* base = static_cast<uint8_t*>(stage_) + size_t(slot) * stage_slot_bytes_;
    const size_t bytes = m.total_bytes();
    check(cudaMemcpyAsync(base, m.data, bytes, cudaMemcpyHostToDevice, copies), "staging an offloaded MoE matrix");
    Staged out{m, nullptr, slot};
    out.m.data = base;
    if (bias) {
        float* b = reinterpret_cast<float*>(base + aligned(bytes));
        check(cudaMemcpyAsync(b, bias, size_t(bias_floats) * 4, cudaMemcpyHostToDevice, copies), "staging a bias");
        out.bias = b;
    }
    if (own_stream) {
        check(cudaEventRecord(static_cast<cudaEvent_t>(staged_[size_t(slot)]), copies), "staging an offloaded MoE matrix");
        check(cudaStreamWaitEvent(st, static_cast<cudaEvent_t>(staged_[size_t(slot)]), 0), "staging an offloaded MoE matrix");
    }
    offloaded_bytes_ += bytes + (bias ? size_t(bias_floats) * 4 : 0);
    return out;
}

void DeviceModel::release_stage(int slot) noexcept {
    // An error here shows at the forward's next check; a destructor may call this while unwinding.
    if (copy_stream_ != stream_)
        cudaEventRecord(static_cast<cudaEvent_t>(released_[size_t(slot)]), static_cast<cudaStream_t>(stream_));
}

void DeviceModel::forward_batch(const Segment* segs, size_t n_segs) {
    if (n_segs < 1) throw std::invalid_argument("forward: no segments");
    const int64_t V = config().vocab_size;
    Batch batch{segs, n_segs, 0};
    for (size_t i = 0; i < n_segs; ++i) {
        const Segment& g = segs[i];
        if (!g.device_kv || !g.tokens || !g.logits || g.n < 1) throw std::invalid_argument("forward: empty segment");
        if (first_gpu_layer_ > 0 && !g.kv) throw std::invalid_argument("forward: a segment without its CPU layers' cache");
        if (g.pos0 < 0 || g.pos0 + g.n > g.device_kv->n_ctx()) throw std::invalid_argument("forward: context overflow");
        for (size_t j = 0; j < i; ++j)
            if (segs[j].device_kv == g.device_kv) throw std::invalid_argument("forward: two segments share one KV cache");
        for (int64_t t = 0; t < g.n; ++t)
            if (g.tokens[t] < 0 || g.tokens[t] >= V)
                throw std::out_of_range("token id " + std::to_string(g.tokens[t]) + " is outside the vocabulary [0, " +
                                        std::to_string(V) + ")");
        batch.T += g.n;
    }
    if (batch.T > DeviceSession::kMaxChunk) throw std::invalid_argument("forward: chunk size out of range");
    std::lock_guard<std::mutex> lock(mutex_);
    // The first layers wholly on the CPU backend, the others' attention on the GPU; the MoE
    // blocks of the first n_cpu_moe layers on the CPU, over the host model's experts in RAM.
    CudaBackend gpu(*this);
    CpuBackend cpu(*host_, host_scratch_);
    ForwardPlan plan = ForwardPlan::on(gpu, config().block_count);
    // A long enough batch runs the offloadable CPU MoE blocks on the GPU from the staging buffer.
    const bool offload = stage_ && batch.T >= offload_min_tokens_;
    for (int64_t l = 0; l < n_cpu_moe_; ++l)
        if (!(offload && offloadable_[size_t(l)])) plan.layers[size_t(l)].moe = &cpu;
    for (int64_t l = 0; l < first_gpu_layer_; ++l) plan.layers[size_t(l)].attention = &cpu;
    try {
        forward_pass(config(), batch, plan, nullptr);
    } catch (...) {
        graphs_->abort_record();  // a capture the error interrupted
        throw;
    }
}

}  // namespace ossrun::cuda
