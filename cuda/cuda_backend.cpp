#include "cuda_backend.h"

#include <algorithm>
#include <array>
#include <optional>
#include <stdexcept>
#include <string>

#include "../csrc/attention_split.h"
#include "cuda_check.h"
#include "decode_graphs.h"
#include "device_buffers.h"
#include "kernels.cuh"

namespace ossrun::cuda {

namespace {
cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// The 2048-key parts (csrc/attention_split.h) that a decode segment's rows attend over in pieces
// under `window` (0: all keys): 1 when no row spans more than one.
int64_t attention_parts_of(const Segment& g, int64_t window) {
    int64_t parts = 1;
    for (int64_t p = g.pos0; p < g.pos0 + g.n; ++p)
        parts = std::max(parts, attention_chunks(window ? std::max<int64_t>(0, p - window + 1) : 0, p));
    return parts;
}

// The routed pairs' matmul of W over x on the device (kernels.cuh ExpertMatmulArgs).
ExpertMatmulArgs expert_args(const Matrix& W, const int32_t* idx, int64_t n_pairs, const float* x, int64_t ldx,
                             int64_t x_div, float* y, const float* bias) {
    ExpertMatmulArgs a;
    a.W = W;
    a.idx = idx;
    a.n_pairs = n_pairs;
    a.x = x;
    a.ldx = ldx;
    a.x_div = x_div;
    a.y = y;
    a.ldy = W.rows;
    a.bias = bias;
    return a;
}
}  // namespace

// The launches queued while it lives, charged to part p when the model times its parts
// (DeviceModel::part_timing): an event on the model's stream at each end.
class CudaBackend::PartScope {
public:
    PartScope(DeviceModel& m, Part p) : m_(m), part_(p) {
        if (!m_.time_parts_ || !(start_ = m_.part_event())) return;
        check(cudaEventRecord(static_cast<cudaEvent_t>(start_), as_stream(m_.stream_)), "timing a part of the forward");
    }
    ~PartScope() {
        if (!start_) return;
        void* end = m_.part_event();
        // An error here shows at the forward's next check; a destructor may run while unwinding.
        if (end && cudaEventRecord(static_cast<cudaEvent_t>(end), as_stream(m_.stream_)) == cudaSuccess)
            m_.timed_.push_back({part_, start_, end});
        else
            for (void* e : {start_, end})
                if (e) m_.spare_events_.push_back(e);
    }
    PartScope(const PartScope&) = delete;
    PartScope& operator=(const PartScope&) = delete;

private:
    DeviceModel& m_;
    Part part_;
    void* start_ = nullptr;
};

const LayerWeights& CudaBackend::on_gpu(int64_t layer) const {
    const LayerWeights& w = m_.dev_.layers[size_t(layer)];
    if (!w.attn_norm) throw std::logic_error("layer " + std::to_string(layer) + " is not on the GPU");
    return w;
}

void CudaBackend::begin(const Batch& batch) {
    if (batch.T < 1 || batch.T > DeviceSession::kMaxChunk) throw std::invalid_argument("forward: chunk size out of range");
    if (!m_.timed_.empty()) {  // a forward that threw left its parts' events
        check(cudaStreamSynchronize(as_stream(m_.stream_)), "the forward pass");
        m_.harvest_part_times();
    }
    batch_ = &batch;
    std::vector<int64_t>& pos = m_.host_positions_;
    pos.resize(size_t(batch.T));
    for (size_t i = 0, row = 0; i < batch.n_segs; row += size_t(batch.segs[i].n), ++i)
        for (int64_t t = 0; t < batch.segs[i].n; ++t) pos[row + size_t(t)] = batch.segs[i].pos0 + t;
    // Pageable memory: the copy has read `pos` when it returns.
    check(cudaMemcpyAsync(m_.buf_->positions, pos.data(), size_t(batch.T) * 8, cudaMemcpyHostToDevice, as_stream(m_.stream_)),
          "cudaMemcpy");
    plan_decode_graph();
}

void CudaBackend::plan_decode_graph() {
    graph_key_.clear();
    if (!m_.use_graphs_ || m_.first_gpu_layer_ > 0 || m_.n_cpu_moe_ > 0) return;  // hand-overs to the CPU
    if (m_.time_parts_) return;  // each op's launches timed on their own
    const ModelConfig& c = m_.config();
    const int64_t windows[2] = {0, c.sliding_window};
    size_t parts_floats = 0;
    std::vector<int64_t> key{batch_->T, int64_t(batch_->n_segs)};
    for (size_t i = 0; i < batch_->n_segs; ++i) {
        const Segment& g = batch_->segs[i];
        if (g.n > kAttentionSplitMaxRows) return;  // prefill: launches are few beside its work
        key.insert(key.end(), {g.n, int64_t(g.device_kv->id()), g.device_kv->n_ctx(), int64_t(g.device_kv->type())});
        for (int64_t w : windows) {
            const int64_t parts = attention_parts_of(g, w);
            key.push_back(parts);
            if (parts > 1) parts_floats = std::max(parts_floats, size_t(g.n * c.head_count * parts * (c.key_length + 2)));
        }
    }
    // Grown now, not while recording (an allocation inside a capture is refused; growing drops
    // the graphs that read the old buffer).
    if (parts_floats) m_.attention_parts(parts_floats);
    graph_key_ = std::move(key);
}

bool CudaBackend::layers_replayed() {
    if (layers_started_) return replayed_;
    layers_started_ = true;
    if (graph_key_.empty()) return false;
    uint64_t bytes = 0;
    if (m_.graphs_->replay(graph_key_, bytes)) {
        m_.weight_bytes_read_ += bytes;
        replayed_ = true;
    } else {
        m_.graphs_->begin_record();
        recording_ = true;
        bytes_before_record_ = m_.weight_bytes_read_;
    }
    return replayed_;
}

void CudaBackend::embed() {
    // The table stays in RAM: its rows are decoded on the host, then the residual is uploaded.
    const Model& host = *m_.host_;
    const int64_t H = host.config().embedding_length;
    std::vector<float>& rows = m_.embed_rows_;
    rows.resize(size_t(batch_->T * H));
    const PartScope timed(m_, Part::kOther);
    for (size_t i = 0, row = 0; i < batch_->n_segs; row += size_t(batch_->segs[i].n), ++i)
        for (int64_t t = 0; t < batch_->segs[i].n; ++t)
            host.kernels().decode_row(host.weights().token_embd, 0, batch_->segs[i].tokens[t],
                                      rows.data() + (int64_t(row) + t) * H);
    upload(Activation::kResidual, rows.data());
}

void CudaBackend::norm(int64_t layer, LayerNorm which) {
    if (layers_replayed()) return;
    const LayerWeights& w = on_gpu(layer);
    const ModelConfig& c = m_.config();
    const PartScope timed(m_, Part::kOther);
    rmsnorm(m_.buf_->residual, which == LayerNorm::kAttention ? w.attn_norm : w.post_attention_norm, m_.buf_->normed,
            batch_->T, c.embedding_length, c.rms_norm_eps, as_stream(m_.stream_));
}

void CudaBackend::attention(int64_t layer, const AttentionParams& params) {
    if (layers_replayed()) return;
    const ModelConfig& c = m_.config();
    const LayerWeights& w = on_gpu(layer);
    DeviceBuffers& b = *m_.buf_;
    const cudaStream_t st = as_stream(m_.stream_);
    const int64_t T = batch_->T, nq = c.head_count, nkv = c.head_count_kv, d = c.key_length;
    const float concentration = m_.host_->rope().concentration;
    {
        const PartScope timed(m_, Part::kDenseMatmul);
        const SplitActivations normed = split(b.normed, T, {&w.attn_q, &w.attn_k, &w.attn_v});
        matmuls(b.normed, normed, T,
                {{&w.attn_q, b.q, w.attn_q_b}, {&w.attn_k, b.k, w.attn_k_b}, {&w.attn_v, b.v, w.attn_v_b}});
    }
    std::optional<PartScope> timed(std::in_place, m_, Part::kAttention);
    rope(b.q, b.positions, T, nq, d, b.theta, concentration, st);
    rope(b.k, b.positions, T, nkv, d, b.theta, concentration, st);
    // Each segment's rows into its own cache, then attend over it.
    for (size_t i = 0, row = 0; i < batch_->n_segs; row += size_t(batch_->segs[i].n), ++i) {
        const Segment& g = batch_->segs[i];
        DeviceKvCache* kv = g.device_kv;
        if (!kv) throw std::logic_error("attention on the GPU: a segment without a device KV cache");
        const int64_t r0 = int64_t(row);
        kv_store(b.k + r0 * c.kv_width(), b.v + r0 * c.kv_width(), b.positions + r0, g.n, c.kv_width(),
                 kv->capacity(layer), kv->type(), kv->k(layer), kv->v(layer), st);
        AttentionArgs a;
        a.q = b.q + r0 * nq * d;
        a.k = kv->k(layer);
        a.v = kv->v(layer);
        a.kv_type = kv->type();
        a.positions = b.positions + r0;
        a.sinks = w.attn_sinks;
        a.out = b.attn + r0 * nq * d;
        a.T = g.n;
        a.n_q = nq;
        a.n_kv = nkv;
        a.d = d;
        a.cap = kv->capacity(layer);
        a.window = params.window;
        a.scale = params.scale;
        a.exact = !m_.host_->fast_precision();
        if (g.n <= kAttentionSplitMaxRows) {  // decode: flash-decoding over long key ranges
            const int64_t parts = attention_parts_of(g, params.window);
            if (parts > 1) {
                const size_t n = size_t(g.n * nq * parts);
                float* base = m_.attention_parts(n * size_t(d + 2));
                a.n_parts = parts;
                a.part_acc = base;
                a.part_max = base + n * size_t(d);
                a.part_sum = a.part_max + n;
            }
        }
        ossrun::cuda::attention(a, st);
    }
    timed.emplace(m_, Part::kDenseMatmul);
    matmul(w.attn_output, b.attn, split(b.attn, T, {&w.attn_output}), T, b.proj, w.attn_output_b);
}

void CudaBackend::moe(int64_t layer, const SwigluParams& params) {
    if (layers_replayed()) return;
    const ModelConfig& c = m_.config();
    const LayerWeights& dev = m_.dev_.layers[size_t(layer)];
    // An offloaded block (device_model.h) reads each matrix from a staging slot, copied there from
    // the host model's just before its matmul; the others their copies in the arena.
    const bool staged = !dev.router.data;
    if (staged && !(m_.stage_ && m_.offloadable_[size_t(layer)]))
        throw std::logic_error("the MoE block of layer " + std::to_string(layer) + " is not on the GPU");
    // The block's matrices (moe_matrices' order): the host's to stage, or their arena copies.
    const std::array<MoeMatrix, 4> source =
        moe_matrices(staged ? m_.host_->weights().layers[size_t(layer)] : dev, c);
    // Matrix i and its bias on the device for one matmul: a staged copy's slot is released when
    // the matmul is queued, at the end of the scope that holds it.
    struct Weights {
        DeviceModel& model;
        DeviceModel::Staged w;
        ~Weights() {
            if (w.slot >= 0) model.release_stage(w.slot);
        }
    };
    auto weights = [&](MoeMatrixIndex i) {
        const MoeMatrix& x = source[i];
        return Weights{m_, staged ? m_.stage(*x.m, x.bias, x.bias_floats) : DeviceModel::Staged{*x.m, x.bias, -1}};
    };
    if (staged) ++m_.offloaded_moe_blocks_;
    DeviceBuffers& b = *m_.buf_;
    const cudaStream_t st = as_stream(m_.stream_);
    const int64_t T = batch_->T, H = c.embedding_length, I = c.expert_feed_forward_length;
    const int64_t E = c.expert_count, k = c.expert_used_count;
    // A staged copy has its host matrix's type and shape, so the source tells the split.
    std::optional<PartScope> timed(std::in_place, m_, Part::kRouter);
    const SplitActivations normed = split(b.normed, T, {source[kRouter].m, source[kGate].m, source[kUp].m});
    {
        const Weights router = weights(kRouter);
        matmul(router.w.m, b.normed, normed, T, b.router_logits, router.w.bias);
    }
    timed.emplace(m_, Part::kMoeOther);
    router_topk(b.router_logits, T, E, k, b.expert_idx, b.expert_weight, st);
    // Prefill: the pairs sorted by expert once, for the three grouped GEMMs; decode: pair by pair.
    const bool grouped = T >= kGemmMinTokens;
    if (grouped) group_by_expert(b.expert_idx, T * k, E, b.expert_groups, st);
    timed.emplace(m_, Part::kExperts);
    // Decode from the arena: the gate and up rows and their SwiGLU in one launch where it reads them.
    const bool fused = !grouped && !staged &&
                       expert_gate_up(expert_args(*source[kGate].m, b.expert_idx, T * k, b.normed, H, k, b.gate,
                                                  source[kGate].bias),
                                      expert_args(*source[kUp].m, b.expert_idx, T * k, b.normed, H, k, b.up,
                                                  source[kUp].bias),
                                      b.h, params.alpha, params.limit, st);
    if (fused) {
        m_.weight_bytes_read_ += uint64_t(T * k) * (uint64_t(source[kGate].m->rows) * source[kGate].m->row_bytes +
                                                    uint64_t(source[kUp].m->rows) * source[kUp].m->row_bytes);
    } else {
        {
            const Weights gate = weights(kGate);
            experts(gate.w.m, b.normed, normed, H, k, b.gate, gate.w.bias, grouped);
        }
        {
            const Weights up = weights(kUp);
            experts(up.w.m, b.normed, normed, H, k, b.up, up.w.bias, grouped);
        }
        timed.emplace(m_, Part::kMoeOther);
        swiglu(b.gate, b.up, b.h, T * k * I, params.alpha, params.limit, st);
        timed.emplace(m_, Part::kExperts);
    }
    {
        const Weights down = weights(kDown);
        experts(down.w.m, b.h, split(b.h, T * k, {source[kDown].m}), I, 1, b.expert_y, down.w.bias, grouped);
    }
    timed.emplace(m_, Part::kMoeOther);
    moe_combine(b.expert_y, b.expert_weight, T, k, H, b.proj, st);
}

void CudaBackend::add_residual() {
    if (layers_replayed()) return;
    const PartScope timed(m_, Part::kOther);
    add_into(m_.buf_->residual, m_.buf_->proj, batch_->T * m_.config().embedding_length, as_stream(m_.stream_));
}

void CudaBackend::logits() {
    // The final norm and unembedding of each segment's wanted rows, a few rows per pass (the
    // logits buffer), each pass's logits copied to the segment's host buffer.
    const ModelConfig& c = m_.config();
    DeviceBuffers& b = *m_.buf_;
    const cudaStream_t st = as_stream(m_.stream_);
    const int64_t H = c.embedding_length, V = c.vocab_size;
    if (recording_) {  // the layers' kernels were captured, not run: run them now as the graph
        recording_ = false;
        m_.graphs_->end_record(graph_key_, m_.weight_bytes_read_ - bytes_before_record_);
    }
    std::optional<PartScope> timed(std::in_place, m_, Part::kOutput);
    for (size_t i = 0, row = 0; i < batch_->n_segs; row += size_t(batch_->segs[i].n), ++i) {
        const Segment& g = batch_->segs[i];
        const int64_t first = g.all_logits ? 0 : g.n - 1;
        for (int64_t r0 = first; r0 < g.n; r0 += kLogitRowsPerPass) {
            const int64_t n = std::min(kLogitRowsPerPass, g.n - r0);
            rmsnorm(b.residual + (int64_t(row) + r0) * H, m_.dev_.output_norm, b.normed, n, H, c.rms_norm_eps, st);
            matmul(m_.dev_.output, b.normed, split(b.normed, n, {&m_.dev_.output}), n, b.logits, nullptr);
            check(cudaMemcpyAsync(g.logits + (r0 - first) * V, b.logits, size_t(n * V) * 4, cudaMemcpyDeviceToHost, st),
                  "cudaMemcpy");
        }
    }
    timed.reset();
    check(cudaStreamSynchronize(st), "the forward pass");
    if (!m_.timed_.empty()) m_.harvest_part_times();
}

float* CudaBackend::rows(Activation a) const {
    switch (a) {
        case Activation::kResidual: return m_.buf_->residual;
        case Activation::kNormed: return m_.buf_->normed;
        case Activation::kProj: return m_.buf_->proj;
    }
    return nullptr;
}

void CudaBackend::download(Activation a, float* host) {
    const cudaStream_t st = as_stream(m_.stream_);
    check(cudaMemcpyAsync(host, rows(a), size_t(batch_->T * m_.config().embedding_length) * 4, cudaMemcpyDeviceToHost, st),
          "cudaMemcpy");
    check(cudaStreamSynchronize(st), "the GPU's part of the forward before a hand-over to the CPU");
    if (!m_.timed_.empty()) m_.harvest_part_times();
}

void CudaBackend::upload(Activation a, const float* host) {
    check(cudaMemcpyAsync(rows(a), host, size_t(batch_->T * m_.config().embedding_length) * 4, cudaMemcpyHostToDevice,
                          as_stream(m_.stream_)),
          "cudaMemcpy");
}

SplitActivations CudaBackend::split(const float* x, int64_t n, std::initializer_list<const Matrix*> readers) {
    if (n < kGemmMinTokens || readers.size() == 0) return {};
    const int64_t cols = (*readers.begin())->cols;
    bool tensor_cores = false;
    for (const Matrix* W : readers) {
        if (W->cols != cols) throw std::logic_error("split: the matrices reading x differ in their columns");
        tensor_cores = tensor_cores || gemm_mma_can_run(*W);
    }
    if (!tensor_cores) return {};
    return split_activations(x, cols, n, cols, !m_.host_->fast_precision(), m_.buf_->split, as_stream(m_.stream_));
}

void CudaBackend::matmul(const Matrix& W, const float* x, const SplitActivations& xs, int64_t n, float* y,
                         const float* bias) {
    MatmulArgs a = matmul_args(W, x, n, y, bias);
    a.split = xs;
    ossrun::cuda::matmul(a, as_stream(m_.stream_));
    m_.weight_bytes_read_ += uint64_t(W.rows) * W.row_bytes;
}

void CudaBackend::matmuls(const float* x, const SplitActivations& xs, int64_t n,
                          std::initializer_list<MatmulOutput> outputs) {
    std::array<MatmulArgs, kMaxMatmulParts> parts;
    if (outputs.size() > parts.size()) throw std::logic_error("matmuls: more outputs than matmul_parts takes");
    int i = 0;
    for (const MatmulOutput& o : outputs) {
        parts[size_t(i)] = matmul_args(*o.W, x, n, o.y, o.bias);
        parts[size_t(i++)].split = xs;
        m_.weight_bytes_read_ += uint64_t(o.W->rows) * o.W->row_bytes;
    }
    matmul_parts(parts.data(), i, as_stream(m_.stream_));
}

void CudaBackend::experts(const Matrix& W, const float* x, const SplitActivations& xs, int64_t ldx, int64_t x_div,
                          float* y, const float* bias, bool grouped) {
    const ExpertMatmulArgs a =
        expert_args(W, m_.buf_->expert_idx, batch_->T * m_.config().expert_used_count, x, ldx, x_div, y, bias);
    if (grouped && gemm_mma_can_run(W))
        expert_gemm(a, m_.buf_->expert_groups, xs, as_stream(m_.stream_));
    else
        expert_matmul(a, as_stream(m_.stream_));
    m_.weight_bytes_read_ += uint64_t(a.n_pairs) * uint64_t(W.rows) * W.row_bytes;
}

}  // namespace ossrun::cuda
