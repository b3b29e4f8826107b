// Each CUDA kernel as one call on host memory, for tests (ops.h): check the arguments, copy the
// inputs to the device, launch on the default stream, wait, copy the result back.
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "../csrc/attention_split.h"
#include "../csrc/weight_element.h"
#include "common.cuh"
#include "kernels.cuh"
#include "ops.h"

namespace ossrun::cuda {

namespace {

// A device array that frees itself; never of zero bytes (cudaMalloc(0) gives no pointer).
template <class T>
class DeviceArray {
public:
    explicit DeviceArray(size_t n) : n_(n) {
        check(cudaMalloc(reinterpret_cast<void**>(&p_), std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc");
    }
    DeviceArray(const T* host, size_t n) : DeviceArray(n) {
        if (n) check(cudaMemcpy(p_, host, n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy to the device");
    }
    ~DeviceArray() { cudaFree(p_); }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
    T* get() const { return p_; }
    void copy_to(T* host) const {
        if (n_) check(cudaMemcpy(host, p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy to the host");
    }

private:
    T* p_ = nullptr;
    size_t n_;
};

// Waits for the kernel: a fault inside it surfaces here, named.
void finish(const char* what) { check(cudaDeviceSynchronize(), what); }

void require(bool ok, const char* message) {
    if (!ok) throw std::invalid_argument(message);
}

constexpr int64_t kMaxGridY = 65535;

// The launch arguments of y[n_tok, rows] = x[n_tok, cols] W^T (+ bias), all pointers on the device.
MatmulArgs device_matmul_args(const Matrix& W_host, const uint8_t* w, const float* x, int64_t n_tok,
                              float* y, const float* bias) {
    MatmulArgs a = matmul_args(W_host, x, n_tok, y, bias);
    a.W.data = w;
    return a;
}

// Whether `which` runs the tensor-core GEMM on W for n_tok tokens (and so needs x split).
bool reads_split(const Matrix& W, int64_t n_tok, MatmulKernel which) {
    const bool gemm_runs = which == MatmulKernel::Gemm || (which == MatmulKernel::Auto && n_tok >= kGemmMinTokens);
    return gemm_runs && gemm_mma_can_run(W);
}

// The kernel asked for, or the dispatcher's choice for Auto; x split into `split` first where
// the tensor cores read it (device memory of split_activations_bytes).
void launch_matmul(MatmulArgs a, MatmulKernel which, bool exact, void* split) {
    if (reads_split(a.W, a.n_tok, which))
        a.split = split_activations(a.x, a.ldx, a.n_tok, a.W.cols, exact, split, nullptr);
    if (which == MatmulKernel::Gemv) gemv(a, nullptr);
    else if (which == MatmulKernel::Gemm) gemm(a, nullptr);
    else matmul(a, nullptr);
}

// Median seconds of `reps` timed calls of launch() (CUDA events on the default stream) after two
// warm-ups.
template <class Launch>
double median_seconds(Launch&& launch, int reps) {
    launch();
    launch();
    finish("warm-up");
    cudaEvent_t start, stop;
    check(cudaEventCreate(&start), "cudaEventCreate");
    check(cudaEventCreate(&stop), "cudaEventCreate");
    std::vector<float> ms(static_cast<size_t>(reps));
    for (int i = 0; i < reps; ++i) {
        check(cudaEventRecord(start), "cudaEventRecord");
        launch();
        check(cudaEventRecord(stop), "cudaEventRecord");
        check(cudaEventSynchronize(stop), "timed launch");
        check(cudaEventElapsedTime(&ms[size_t(i)], start, stop), "cudaEventElapsedTime");
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    std::sort(ms.begin(), ms.end());
    return double(ms[size_t(reps / 2)]) * 1e-3;
}

// The launch arguments of attention over device arrays (kernels.cuh AttentionArgs), unsplit.
AttentionArgs device_attention_args(const float* q, const void* k, const void* v, KvType type,
                                    const int64_t* positions, const float* sinks, float* out, int64_t T,
                                    int64_t n_q, int64_t n_kv, int64_t d, int64_t cap, int64_t window, float scale) {
    AttentionArgs a;
    a.q = q;
    a.k = k;
    a.v = v;
    a.kv_type = type;
    a.positions = positions;
    a.sinks = sinks;
    a.out = out;
    a.T = T;
    a.n_q = n_q;
    a.n_kv = n_kv;
    a.d = d;
    a.cap = cap;
    a.window = window;
    a.scale = scale;
    return a;
}

// Flash-decoding's partial results in device memory, set in `a` when n_parts > 1.
struct AttentionParts {
    AttentionParts(AttentionArgs& a, int64_t n_parts)
        : n(n_parts > 1 ? size_t(a.T * a.n_q * n_parts) : 0), acc{n * size_t(a.d)}, maxes{n}, sums{n} {
        if (!n) return;
        a.n_parts = n_parts;
        a.part_acc = acc.get();
        a.part_max = maxes.get();
        a.part_sum = sums.get();
    }
    size_t n;
    DeviceArray<float> acc, maxes, sums;
};

}  // namespace

void matmul_host(const Matrix& W_host, const float* x, int64_t n_tok, const float* bias, float* y,
                 MatmulKernel which, bool exact) {
    require(has_weight_element(W_host.type), "the CUDA matmul takes F32, F16, BF16, Q8_0, MXFP4 or dense quant weights");
    require(W_host.n_mats == 1 && W_host.rows >= 1 && W_host.cols >= 1, "W must be one matrix of rows x cols");
    require(W_host.row_bytes == row_bytes_for(W_host.type, W_host.cols), "W's row bytes do not fit its type and cols");
    require(n_tok >= 1, "x must have at least one token");
    const bool use_gemv = which == MatmulKernel::Gemv || (which == MatmulKernel::Auto && n_tok < kGemmMinTokens);
    require(!use_gemv || n_tok <= kMaxGridY, "gemv takes at most 65535 tokens");
    require(n_tok <= kMaxGridY * 32, "too many tokens for one gemm");
    const int64_t rows = W_host.rows, cols = W_host.cols;
    DeviceArray<uint8_t> w(W_host.data, W_host.total_bytes());
    DeviceArray<float> dx(x, size_t(n_tok * cols)), dy{size_t(n_tok * rows)};
    std::unique_ptr<DeviceArray<float>> db;
    if (bias) db = std::make_unique<DeviceArray<float>>(bias, size_t(rows));
    DeviceArray<uint8_t> split{reads_split(W_host, n_tok, which) ? split_activations_bytes(n_tok, cols) : 0};
    MatmulArgs a = device_matmul_args(W_host, w.get(), dx.get(), n_tok, dy.get(), db ? db->get() : nullptr);
    launch_matmul(a, which, exact, split.get());
    finish("matmul");
    dy.copy_to(y);
}

bool matmul_parts_host(const std::vector<Matrix>& Ws, const float* x, int64_t n_tok,
                       const std::vector<const float*>& biases, const std::vector<float*>& ys) {
    const size_t n = Ws.size();
    require(n >= 1 && n <= size_t(kMaxMatmulParts) && biases.size() == n && ys.size() == n,
            "matmul_parts takes 1 to 3 matrices, a bias (or none) and an output each");
    require(n_tok >= 1 && n_tok <= kMaxGridY, "x must have 1 to 65535 tokens");
    const int64_t cols = Ws[0].cols;
    std::vector<std::unique_ptr<DeviceArray<uint8_t>>> w;
    std::vector<std::unique_ptr<DeviceArray<float>>> b, y;
    for (const Matrix& W : Ws) {
        require(has_weight_element(W.type) && W.n_mats == 1 && W.rows >= 1 && W.cols == cols &&
                    W.row_bytes == row_bytes_for(W.type, W.cols),
                "each W must be one matrix of a CUDA matmul's type, rows x the first one's cols");
    }
    DeviceArray<float> dx(x, size_t(n_tok * cols));
    DeviceArray<uint8_t> split{split_activations_bytes(n_tok, cols)};
    std::vector<MatmulArgs> parts;
    for (size_t i = 0; i < n; ++i) {
        w.push_back(std::make_unique<DeviceArray<uint8_t>>(Ws[i].data, Ws[i].total_bytes()));
        b.push_back(std::make_unique<DeviceArray<float>>(biases[i], biases[i] ? size_t(Ws[i].rows) : 0));
        y.push_back(std::make_unique<DeviceArray<float>>(size_t(n_tok * Ws[i].rows)));
        parts.push_back(device_matmul_args(Ws[i], w.back()->get(), dx.get(), n_tok, y.back()->get(),
                                           biases[i] ? b.back()->get() : nullptr));
    }
    // The split x of a prefill, shared as the forward pass shares it.
    const bool splits = n_tok >= kGemmMinTokens &&
                        std::any_of(Ws.begin(), Ws.end(), [](const Matrix& W) { return gemm_mma_can_run(W); });
    if (splits) {
        const SplitActivations xs = split_activations(dx.get(), cols, n_tok, cols, true, split.get(), nullptr);
        for (MatmulArgs& a : parts) a.split = xs;
    }
    const bool fused = matmul_parts(parts.data(), int(n), nullptr);
    finish("matmul_parts");
    for (size_t i = 0; i < n; ++i) y[i]->copy_to(ys[i]);
    return fused;
}

void expert_matmul_host(const Matrix& W_host, const int32_t* idx, int64_t n_pairs, const float* x, int64_t x_div,
                        const float* bias, float* y, bool grouped, bool exact) {
    require(has_weight_element(W_host.type), "the CUDA expert matmul takes F32, F16, BF16, Q8_0, MXFP4 or dense quant weights");
    require(W_host.n_mats >= 1 && W_host.n_mats <= 1024 && W_host.rows >= 1 && W_host.cols >= 1,
            "W must be a stack of 1 to 1024 experts of rows x cols");
    require(n_pairs >= 1 && n_pairs <= kMaxGridY, "n_pairs must be in [1, 65535]");
    require(x_div >= 1, "x_div must be positive");
    for (int64_t p = 0; p < n_pairs; ++p) require(idx[p] >= 0 && idx[p] < W_host.n_mats, "idx must name experts of W");
    require(!grouped || ((W_host.type == DType::MXFP4 || W_host.type == DType::Q8_0 || W_host.type == DType::F16) &&
                         W_host.cols % kBlockElems == 0),
            "the grouped expert GEMM takes MXFP4, Q8_0 or F16 weights of whole 32-element blocks");
    const int64_t rows = W_host.rows, cols = W_host.cols, E = W_host.n_mats, n_x = (n_pairs + x_div - 1) / x_div;
    DeviceArray<uint8_t> w(W_host.data, W_host.total_bytes());
    DeviceArray<int32_t> didx(idx, size_t(n_pairs));
    DeviceArray<float> dx(x, size_t(n_x * cols)), db(bias, size_t(E * rows)), dy{size_t(n_pairs * rows)};
    ExpertMatmulArgs a;
    a.W = W_host;
    a.W.data = w.get();
    a.idx = didx.get();
    a.n_pairs = n_pairs;
    a.x = dx.get();
    a.ldx = cols;
    a.x_div = x_div;
    a.y = dy.get();
    a.ldy = rows;
    a.bias = db.get();
    if (grouped) {
        const size_t tiles = size_t(expert_tiles_max(n_pairs, E));
        DeviceArray<int32_t> order{size_t(n_pairs)}, tile_expert{tiles}, tile_start{tiles}, tile_count{tiles}, n_tiles{1};
        ExpertGroups g;
        g.order = order.get();
        g.tile_expert = tile_expert.get();
        g.tile_start = tile_start.get();
        g.tile_count = tile_count.get();
        g.n_tiles = n_tiles.get();
        DeviceArray<uint8_t> split{split_activations_bytes(n_x, cols)};
        const SplitActivations xs = split_activations(a.x, a.ldx, n_x, cols, exact, split.get(), nullptr);
        group_by_expert(a.idx, n_pairs, E, g, nullptr);
        expert_gemm(a, g, xs, nullptr);
        finish("expert_gemm");
    } else {
        expert_matmul(a, nullptr);
        finish("expert_matmul");
    }
    dy.copy_to(y);
}

double time_matmul_host(const Matrix& W_host, int64_t n_tok, MatmulKernel which, int reps, bool exact) {
    require(has_weight_element(W_host.type) && W_host.n_mats == 1, "time_matmul takes one matrix of a type the CUDA kernels read");
    require(W_host.row_bytes == row_bytes_for(W_host.type, W_host.cols), "W's row bytes do not fit its type and cols");
    require(n_tok >= 1 && n_tok <= kMaxGridY && reps >= 1 && reps <= 1000, "1 <= n_tok <= 65535, 1 <= reps <= 1000");
    const int64_t rows = W_host.rows, cols = W_host.cols;
    std::vector<float> x(static_cast<size_t>(n_tok * cols));
    for (size_t i = 0; i < x.size(); ++i) x[i] = float(int64_t(i * 2654435761u % 2001) - 1000) * 1e-3f;
    DeviceArray<uint8_t> w(W_host.data, W_host.total_bytes());
    DeviceArray<float> dx(x.data(), x.size()), dy{size_t(n_tok * rows)};
    DeviceArray<uint8_t> split{reads_split(W_host, n_tok, which) ? split_activations_bytes(n_tok, cols) : 0};
    const MatmulArgs a = device_matmul_args(W_host, w.get(), dx.get(), n_tok, dy.get(), nullptr);
    return median_seconds([&] { launch_matmul(a, which, exact, split.get()); }, reps);  // the split is part of the cost
}

double time_attention_host(int64_t T, int64_t n_q, int64_t n_kv, int64_t d, int64_t n_keys, int64_t window,
                           int kv_type, int reps, bool exact) {
    require(T >= 1 && T <= n_keys && T <= kMaxGridY && n_keys <= (int64_t(1) << 24),
            "1 <= T <= min(n_keys, 65535), n_keys <= 2^24");
    require(n_kv >= 1 && n_q >= n_kv && n_q % n_kv == 0 && d >= 1 && d <= kMaxHeadDim,
            "n_q a multiple of n_kv, 1 <= d <= 256");
    require(window >= 0 && kv_type >= 0 && kv_type <= 2 && reps >= 1 && reps <= 1000,
            "window >= 0, kv_type 0..2, 1 <= reps <= 1000");
    // The last T positions of a cache of n_keys, K and V pseudo-random, as a chunk at that depth.
    const KvType type = KvType(kv_type);
    const size_t n_kv_elems = size_t(n_keys * n_kv * d);
    std::vector<float> q(size_t(T * n_q * d));
    for (size_t i = 0; i < q.size(); ++i) q[i] = float(int64_t(i * 2654435761u % 2001) - 1000) * 1e-3f;
    std::vector<int64_t> pos(static_cast<size_t>(T));
    int64_t n_parts = 1;
    for (int64_t t = 0; t < T; ++t) {
        pos[size_t(t)] = n_keys - T + t;
        n_parts = std::max(n_parts, attention_chunks(window ? std::max<int64_t>(0, pos[size_t(t)] - window + 1) : 0,
                                                     pos[size_t(t)]));
    }
    const size_t elem = size_t(kv_type_bytes(type));
    DeviceArray<uint8_t> dk{n_kv_elems * elem}, dv{n_kv_elems * elem};
    kv_fill(dk.get(), int64_t(n_kv_elems), type, 1, nullptr);
    kv_fill(dv.get(), int64_t(n_kv_elems), type, 2, nullptr);
    std::vector<float> sinks(size_t(n_q), 0.0f);
    DeviceArray<float> dq(q.data(), q.size()), dsinks(sinks.data(), sinks.size()), dout{q.size()};
    DeviceArray<int64_t> dpos(pos.data(), pos.size());
    AttentionArgs a = device_attention_args(dq.get(), dk.get(), dv.get(), type, dpos.get(), dsinks.get(), dout.get(),
                                            T, n_q, n_kv, d, n_keys, window, 1.0f / std::sqrt(float(d)));
    a.exact = exact;
    // Split as the device model's decode rows.
    const AttentionParts parts(a, T <= kAttentionSplitMaxRows ? n_parts : 1);
    return median_seconds([&] { attention(a, nullptr); }, reps);
}

void rmsnorm_host(const float* x, const float* g, float* y, int64_t n_rows, int64_t n, float eps) {
    require(n_rows >= 1 && n >= 1, "rmsnorm wants at least one row of at least one element");
    require(n_rows <= int64_t(0x7FFFFFFF), "too many rows");
    DeviceArray<float> dx(x, size_t(n_rows * n)), dg(g, size_t(n)), dy{size_t(n_rows * n)};
    rmsnorm(dx.get(), dg.get(), dy.get(), n_rows, n, eps, nullptr);
    finish("rmsnorm");
    dy.copy_to(y);
}

void rope_host(float* x, const int64_t* positions, int64_t T, int64_t n_heads, int64_t d,
               const float* theta, float concentration) {
    require(T >= 1 && n_heads >= 1 && d >= 2 && d % 2 == 0, "rope wants T, n_heads >= 1 and an even d");
    for (int64_t t = 0; t < T; ++t)
        require(positions[t] >= 0 && positions[t] < (int64_t(1) << 24), "positions must lie in [0, 2^24)");
    DeviceArray<float> dx(x, size_t(T * n_heads * d)), dtheta(theta, size_t(d / 2));
    DeviceArray<int64_t> dpos(positions, size_t(T));
    rope(dx.get(), dpos.get(), T, n_heads, d, dtheta.get(), concentration, nullptr);
    finish("rope");
    dx.copy_to(x);
}

const char* attention_host(const float* q, const float* k, const float* v, const int64_t* positions,
                           const float* sinks, float* out, int64_t T, int64_t n_q, int64_t n_kv, int64_t d,
                           int64_t cap, int64_t window, float scale, int kv_type, bool split, bool exact) {
    require(T >= 1 && T <= kMaxGridY, "attention takes 1 to 65535 query tokens");
    require(kv_type >= 0 && kv_type <= 2, "kv_type must be 0 (f32), 1 (f16) or 2 (bf16)");
    require(n_kv >= 1 && n_q >= n_kv && n_q % n_kv == 0, "n_q must be a multiple of n_kv");
    require(d >= 1 && d <= kMaxHeadDim, "the CUDA attention takes head dimensions up to 256");
    require(cap >= 1 && window >= 0, "cap must be positive and window non-negative");
    int64_t n_parts = 1;  // the most chunks of keys a row has (split)
    for (int64_t t = 0; t < T; ++t) {
        const int64_t p = positions[t];
        require(p >= 0, "positions must be non-negative");
        const int64_t lo = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
        require(p - lo + 1 <= cap, "a query's key range does not fit the cache");
        n_parts = std::max(n_parts, attention_chunks(lo, p));
    }
    // The cache as the device model stores it: float32, or 16-bit elements rounded as the CPU does.
    const size_t n_kv_elems = size_t(cap * n_kv * d);
    const KvType type = KvType(kv_type);
    std::vector<uint16_t> k16, v16;
    if (type != KvType::F32) {
        k16.resize(n_kv_elems);
        v16.resize(n_kv_elems);
        for (size_t i = 0; i < n_kv_elems; ++i) {
            k16[i] = type == KvType::F16 ? float_to_fp16(k[i]) : float_to_bf16(k[i]);
            v16[i] = type == KvType::F16 ? float_to_fp16(v[i]) : float_to_bf16(v[i]);
        }
    }
    DeviceArray<float> dq(q, size_t(T * n_q * d));
    DeviceArray<float> dk(type == KvType::F32 ? k : nullptr, type == KvType::F32 ? n_kv_elems : 0);
    DeviceArray<float> dv(type == KvType::F32 ? v : nullptr, type == KvType::F32 ? n_kv_elems : 0);
    DeviceArray<uint16_t> dk16(k16.data(), k16.size()), dv16(v16.data(), v16.size());
    DeviceArray<float> dsinks(sinks, size_t(n_q)), dout{size_t(T * n_q * d)};
    DeviceArray<int64_t> dpos(positions, size_t(T));
    const void* dk_any = type == KvType::F32 ? static_cast<const void*>(dk.get()) : dk16.get();
    const void* dv_any = type == KvType::F32 ? static_cast<const void*>(dv.get()) : dv16.get();
    AttentionArgs a = device_attention_args(dq.get(), dk_any, dv_any, type, dpos.get(), dsinks.get(), dout.get(), T,
                                            n_q, n_kv, d, cap, window, scale);
    a.exact = exact;
    const AttentionParts parts(a, split ? n_parts : 1);
    attention(a, nullptr);
    finish("attention");
    dout.copy_to(out);
    switch (attention_path(a)) {
        case AttentionPath::kSplit: return "split";
        case AttentionPath::kTensorCores: return "tensor cores";
        case AttentionPath::kTiled: return "tiled";
        default: return "rows";
    }
}

bool expert_gate_up_host(const Matrix& gate_host, const Matrix& up_host, const int32_t* idx, int64_t n_pairs,
                         const float* x, int64_t x_div, const float* gate_bias, const float* up_bias, float alpha,
                         float limit, float* h) {
    for (const Matrix* W : {&gate_host, &up_host})
        require(has_weight_element(W->type) && W->n_mats >= 1 && W->n_mats <= 1024 && W->rows >= 1 && W->cols >= 1,
                "gate and up must be stacks of 1 to 1024 experts of a CUDA matmul's type");
    require(n_pairs >= 1 && n_pairs <= kMaxGridY && x_div >= 1, "n_pairs must be in [1, 65535], x_div positive");
    for (int64_t p = 0; p < n_pairs; ++p) require(idx[p] >= 0 && idx[p] < gate_host.n_mats, "idx must name experts");
    const int64_t rows = gate_host.rows, cols = gate_host.cols, E = gate_host.n_mats, n_x = (n_pairs + x_div - 1) / x_div;
    DeviceArray<uint8_t> wg(gate_host.data, gate_host.total_bytes()), wu(up_host.data, up_host.total_bytes());
    DeviceArray<int32_t> didx(idx, size_t(n_pairs));
    DeviceArray<float> dx(x, size_t(n_x * cols)), dbg(gate_bias, size_t(E * rows)), dh{size_t(n_pairs * rows)};
    DeviceArray<float> dbu(up_bias, size_t(up_host.n_mats * up_host.rows));
    auto args = [&](const Matrix& W, const uint8_t* w, const float* bias) {
        ExpertMatmulArgs a;
        a.W = W;
        a.W.data = w;
        a.idx = didx.get();
        a.n_pairs = n_pairs;
        a.x = dx.get();
        a.ldx = cols;
        a.x_div = x_div;
        a.ldy = W.rows;
        a.bias = bias;
        return a;
    };
    const bool fused = expert_gate_up(args(gate_host, wg.get(), dbg.get()), args(up_host, wu.get(), dbu.get()),
                                      dh.get(), alpha, limit, nullptr);
    finish("expert_gate_up");
    if (fused) dh.copy_to(h);
    return fused;
}

void router_topk_host(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* idx, float* weight) {
    require(T >= 1 && E >= 1 && k >= 1 && k <= E, "router_topk wants T, E >= 1 and 1 <= k <= E");
    DeviceArray<float> dl(logits, size_t(T * E)), dw{size_t(T * k)};
    DeviceArray<int32_t> di{size_t(T * k)};
    router_topk(dl.get(), T, E, k, di.get(), dw.get(), nullptr);
    finish("router_topk");
    di.copy_to(idx);
    dw.copy_to(weight);
}

void swiglu_host(const float* gate, const float* lin, float* h, int64_t n, float alpha, float limit) {
    require(n >= 1, "swiglu wants at least one element");
    DeviceArray<float> dg(gate, size_t(n)), dl(lin, size_t(n)), dh{size_t(n)};
    swiglu(dg.get(), dl.get(), dh.get(), n, alpha, limit, nullptr);
    finish("swiglu");
    dh.copy_to(h);
}

}  // namespace ossrun::cuda
