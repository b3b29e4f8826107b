// ossrun._cuda: the CUDA build's one pybind11 file (csrc/bindings.cpp stays the CPU core's).
// status() says what CUDA can do here; ops.* run single kernels on host arrays for the tests
// (tests/test_cuda_ops.py), checking every input with a sentence before anything reaches CUDA.
// Built with the static CUDA runtime, so importing it needs no driver and no GPU.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "../csrc/block_values.h"
#include "../csrc/weight_element.h"
#include "ops.h"
#ifdef OSSRUN_CUDA_EMULATOR
#include "emulator/emulator.h"  // the schedule
#endif

namespace py = pybind11;
using namespace ossrun;
using namespace ossrun::cuda;

namespace {

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using RawArray = py::array_t<uint8_t, py::array::c_style>;

// A host matrix view of `raw` (rows x cols of ggml type `type`), checked.
Matrix raw_matrix(const RawArray& raw, int type, int64_t rows, int64_t cols) {
    if (rows < 1 || cols < 1) throw py::value_error("rows and cols must be positive");
    Matrix W;
    W.type = DType(type);
    if (!has_weight_element(W.type))
        throw py::value_error("type " + std::to_string(type) + " is not one the CUDA kernels read "
                              "(F32, F16, BF16, Q8_0, MXFP4 and the dense quants Q4_0 .. Q6_K, IQ4_NL)");
    W.rows = rows;
    W.cols = cols;
    W.row_bytes = row_bytes_for(W.type, cols);
    if (W.row_bytes == 0) throw py::value_error("cols does not fit the type's block shape");
    if (size_t(raw.size()) != W.total_bytes())
        throw py::value_error("raw holds " + std::to_string(raw.size()) + " bytes, the matrix needs " +
                              std::to_string(W.total_bytes()));
    W.data = raw.data();
    return W;
}

MatmulKernel kernel_arg(const std::string& kernel) {
    if (kernel == "auto") return MatmulKernel::Auto;
    if (kernel == "gemv") return MatmulKernel::Gemv;
    if (kernel == "gemm") return MatmulKernel::Gemm;
    throw py::value_error("kernel must be 'auto', 'gemv' or 'gemm'");
}

// precision "f32" (the tensor cores' exact two-half operands) or "fast" (one half).
bool precision_arg(const std::string& precision) {
    if (precision == "f32") return true;
    if (precision == "fast") return false;
    throw py::value_error("precision must be 'f32' or 'fast'");
}

// kv_type "f32", "f16" or "bf16" as KvType's code.
int kv_type_code(const std::string& kv_type) {
    if (kv_type == "f32") return 0;
    if (kv_type == "f16") return 1;
    if (kv_type == "bf16") return 2;
    throw py::value_error("kv_type must be 'f32', 'f16' or 'bf16'");
}

// C++ errors of the ops as Python ones: bad arguments ValueError, CUDA failures CudaError.
template <class F>
void guarded(F&& f) {
    try {
        py::gil_scoped_release release;
        f();
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
}

py::dict status_dict() {
    const Status st = query_status();
    py::list devices;
    for (const DeviceInfo& d : st.devices) {
        py::dict dev;
        dev["index"] = d.index;
        dev["name"] = d.name;
        dev["compute_capability"] = py::make_tuple(d.cc_major, d.cc_minor);
        dev["free_bytes"] = d.free_bytes;
        dev["total_bytes"] = d.total_bytes;
        dev["has_kernel_image"] = d.has_kernel_image;
        devices.append(dev);
    }
    py::dict out;
    out["runtime_version"] = st.runtime_version;
    out["driver_version"] = st.driver_version;
    out["error_code"] = st.error_code;
    out["error"] = st.error;
    out["devices"] = devices;
    out["architectures"] = std::string(built_architectures());
    return out;
}

void bind_ops(py::module_& m) {
    m.def("decode_rows_host", [](RawArray raw, int type, int64_t rows, int64_t cols) {
        // The shared element decoding (csrc/weight_element.h) run on the host: what every CUDA
        // kernel reads, checkable without a GPU against the CPU kernels' decode_rows.
        const Matrix W = raw_matrix(raw, type, rows, cols);
        py::array_t<float> out({rows, cols});
        float* o = out.mutable_data();
        for (int64_t r = 0; r < rows; ++r) {
            const uint8_t* row = W.data + size_t(r) * W.row_bytes;
            for (int64_t c = 0; c < cols; ++c) o[r * cols + c] = weight_element(W.type, row, c);
        }
        return out;
    }, py::arg("raw"), py::arg("type"), py::arg("rows"), py::arg("cols"));
    m.def("decode_blocks_host", [](RawArray raw, int type, int64_t rows, int64_t cols) {
        // The decode GEMVs' quarter-block decoding (csrc/block_values.h) run on the host, each
        // element rebuilt as (value * unit) * scale, the kernels' order of the two products.
        const Matrix W = raw_matrix(raw, type, rows, cols);
        py::array_t<float> out({rows, cols});
        float* o = out.mutable_data();
        const bool known = with_block_format(W.type, cols, [&](auto format) {
            using F = decltype(format);
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t b = 0; b < cols / kBlockElems; ++b) {
                    const uint8_t* block = W.data + size_t(r) * W.row_bytes + size_t(b) * F::kBytes;
                    float* ob = o + r * cols + b * kBlockElems;
                    for (int q = 0; q < kBlockParts; ++q) {
                        float w[kPartElems];
                        const float scale = F::decode_part(block, q, w);
                        for (int i = 0; i < 4; ++i) {
                            ob[F::first(q) + i] = w[i] * F::kUnit * scale;
                            ob[F::second(q) + i] = w[4 + i] * F::kUnit * scale;
                        }
                    }
                }
        });
        if (!known) throw py::value_error("decode_blocks_host takes MXFP4, Q8_0, F16, BF16 or F32 rows of whole 32-element blocks");
        return out;
    }, py::arg("raw"), py::arg("type"), py::arg("rows"), py::arg("cols"));
    m.def("matmul", [](RawArray raw, int type, int64_t rows, int64_t cols, F32Array x,
                       std::optional<F32Array> bias, const std::string& kernel, const std::string& precision) {
        const Matrix W = raw_matrix(raw, type, rows, cols);
        if (x.ndim() != 2 || x.shape(1) != cols || x.shape(0) < 1) throw py::value_error("x must be [T, cols], T >= 1");
        if (bias && (bias->ndim() != 1 || bias->shape(0) != rows)) throw py::value_error("bias must be [rows]");
        const MatmulKernel which = kernel_arg(kernel);
        const bool exact = precision_arg(precision);
        const int64_t T = x.shape(0);
        py::array_t<float> y({T, rows});
        float* yp = y.mutable_data();
        const float* bp = bias ? bias->data() : nullptr;
        guarded([&] { matmul_host(W, x.data(), T, bp, yp, which, exact); });
        return y;
    }, py::arg("raw"), py::arg("type"), py::arg("rows"), py::arg("cols"), py::arg("x"),
       py::arg("bias") = py::none(), py::arg("kernel") = "auto", py::arg("precision") = "f32");
    m.def("matmul_parts", [](std::vector<RawArray> raws, int type, std::vector<int64_t> rows, int64_t cols,
                             F32Array x, std::vector<std::optional<F32Array>> biases) {
        if (raws.size() != rows.size() || biases.size() != rows.size())
            throw py::value_error("raws, rows and biases must be lists of the same length");
        if (x.ndim() != 2 || x.shape(1) != cols || x.shape(0) < 1) throw py::value_error("x must be [T, cols], T >= 1");
        std::vector<Matrix> Ws;
        std::vector<const float*> bs;
        std::vector<py::array_t<float>> ys;
        std::vector<float*> yp;
        const int64_t T = x.shape(0);
        for (size_t i = 0; i < raws.size(); ++i) {
            Ws.push_back(raw_matrix(raws[i], type, rows[i], cols));
            if (biases[i] && (biases[i]->ndim() != 1 || biases[i]->shape(0) != rows[i]))
                throw py::value_error("each bias must be [rows] of its matrix");
            bs.push_back(biases[i] ? biases[i]->data() : nullptr);
            ys.emplace_back(std::vector<py::ssize_t>{T, rows[i]});
            yp.push_back(ys.back().mutable_data());
        }
        bool fused = false;
        guarded([&] { fused = matmul_parts_host(Ws, x.data(), T, bs, yp); });
        return py::make_tuple(ys, fused);
    }, py::arg("raws"), py::arg("type"), py::arg("rows"), py::arg("cols"), py::arg("x"), py::arg("biases"),
       "matmuls of one x (kernels.cuh matmul_parts): ([y per matrix], whether they ran as one launch)");
    m.def("expert_matmul", [](RawArray raw, int type, int64_t n_experts, int64_t rows, int64_t cols,
                              py::array_t<int32_t, py::array::c_style | py::array::forcecast> idx, F32Array x,
                              int64_t x_div, F32Array bias, bool grouped, const std::string& precision) {
        if (n_experts < 1) throw py::value_error("n_experts must be positive");
        Matrix W = raw_matrix(raw, type, n_experts * rows, cols);
        W.rows = rows;
        W.n_mats = n_experts;
        if (idx.ndim() != 1 || idx.shape(0) < 1) throw py::value_error("idx must be [n_pairs], n_pairs >= 1");
        const int64_t n_pairs = idx.shape(0);
        if (x_div < 1) throw py::value_error("x_div must be positive");
        if (x.ndim() != 2 || x.shape(0) != (n_pairs + x_div - 1) / x_div || x.shape(1) != cols)
            throw py::value_error("x must be [ceil(n_pairs / x_div), cols]");
        if (bias.ndim() != 2 || bias.shape(0) != n_experts || bias.shape(1) != rows)
            throw py::value_error("bias must be [n_experts, rows]");
        const bool exact = precision_arg(precision);
        py::array_t<float> y({n_pairs, rows});
        float* yp = y.mutable_data();
        guarded([&] { expert_matmul_host(W, idx.data(), n_pairs, x.data(), x_div, bias.data(), yp, grouped, exact); });
        return y;
    }, py::arg("raw"), py::arg("type"), py::arg("n_experts"), py::arg("rows"), py::arg("cols"), py::arg("idx"),
       py::arg("x"), py::arg("x_div"), py::arg("bias"), py::arg("grouped"), py::arg("precision") = "f32",
       "y[p] = W[idx[p]] · x[p // x_div] + bias[idx[p]]: grouped on the tensor cores, or pair by pair");
    m.def("expert_gate_up", [](RawArray raw_gate, RawArray raw_up, int type, int64_t n_experts, int64_t rows,
                               int64_t cols, py::array_t<int32_t, py::array::c_style | py::array::forcecast> idx,
                               F32Array x, int64_t x_div, F32Array gate_bias, F32Array up_bias, float alpha,
                               float limit) {
        if (n_experts < 1) throw py::value_error("n_experts must be positive");
        Matrix G = raw_matrix(raw_gate, type, n_experts * rows, cols), Up = raw_matrix(raw_up, type, n_experts * rows, cols);
        G.rows = Up.rows = rows;
        G.n_mats = Up.n_mats = n_experts;
        if (idx.ndim() != 1 || idx.shape(0) < 1) throw py::value_error("idx must be [n_pairs], n_pairs >= 1");
        const int64_t n_pairs = idx.shape(0);
        if (x_div < 1) throw py::value_error("x_div must be positive");
        if (x.ndim() != 2 || x.shape(0) != (n_pairs + x_div - 1) / x_div || x.shape(1) != cols)
            throw py::value_error("x must be [ceil(n_pairs / x_div), cols]");
        for (const F32Array* b : {&gate_bias, &up_bias})
            if (b->ndim() != 2 || b->shape(0) != n_experts || b->shape(1) != rows)
                throw py::value_error("each bias must be [n_experts, rows]");
        py::array_t<float> h({n_pairs, rows});
        float* hp = h.mutable_data();
        bool fused = false;
        guarded([&] {
            fused = expert_gate_up_host(G, Up, idx.data(), n_pairs, x.data(), x_div, gate_bias.data(), up_bias.data(),
                                        alpha, limit, hp);
        });
        return py::make_tuple(fused ? py::object(h) : py::object(py::none()), fused);
    }, py::arg("raw_gate"), py::arg("raw_up"), py::arg("type"), py::arg("n_experts"), py::arg("rows"), py::arg("cols"),
       py::arg("idx"), py::arg("x"), py::arg("x_div"), py::arg("gate_bias"), py::arg("up_bias"), py::arg("alpha"),
       py::arg("limit"),
       "(h, True): h[p] = swiglu(gate[idx[p]] · x[p // x_div] + its bias, the same of up) in one launch; "
       "(None, False) where that kernel does not read the weights");
    m.def("time_matmul", [](RawArray raw, int type, int64_t rows, int64_t cols, int64_t n_tok,
                            const std::string& kernel, int reps, const std::string& precision) {
        const Matrix W = raw_matrix(raw, type, rows, cols);
        const MatmulKernel which = kernel_arg(kernel);
        const bool exact = precision_arg(precision);
        double seconds = 0;
        guarded([&] { seconds = time_matmul_host(W, n_tok, which, reps, exact); });
        return seconds;
    }, py::arg("raw"), py::arg("type"), py::arg("rows"), py::arg("cols"), py::arg("n_tok"),
       py::arg("kernel") = "auto", py::arg("reps") = 20, py::arg("precision") = "f32",
       "seconds per call of the matmul kernel (median of reps, CUDA events), for tools/device_check.sh");
    m.def("time_attention", [](int64_t T, int64_t n_q, int64_t n_kv, int64_t d, int64_t n_keys, int64_t window,
                               const std::string& kv_type, int reps, const std::string& precision) {
        const int type = kv_type_code(kv_type);
        const bool exact = precision_arg(precision);
        double seconds = 0;
        guarded([&] { seconds = time_attention_host(T, n_q, n_kv, d, n_keys, window, type, reps, exact); });
        return seconds;
    }, py::arg("T"), py::arg("n_q"), py::arg("n_kv"), py::arg("d"), py::arg("n_keys"), py::arg("window") = 0,
       py::arg("kv_type") = "f16", py::arg("reps") = 20, py::arg("precision") = "f32",
       "seconds per call of the attention kernel, T rows at the last positions of n_keys (tools/cuda_op_rates.py)");
    m.def("rmsnorm", [](F32Array x, F32Array g, float eps) {
        if (x.ndim() != 2 || g.ndim() != 1 || g.shape(0) != x.shape(1))
            throw py::value_error("rmsnorm wants x [T, n] and g [n]");
        py::array_t<float> y({x.shape(0), x.shape(1)});
        float* yp = y.mutable_data();
        guarded([&] { rmsnorm_host(x.data(), g.data(), yp, x.shape(0), x.shape(1), eps); });
        return y;
    }, py::arg("x"), py::arg("g"), py::arg("eps") = 1e-5f);
    m.def("apply_rope", [](F32Array x, I64Array positions, F32Array theta, float concentration) {
        if (x.ndim() != 3 || positions.ndim() != 1 || positions.shape(0) != x.shape(0) ||
            theta.ndim() != 1 || theta.shape(0) * 2 != x.shape(2))
            throw py::value_error("apply_rope wants x [T, heads, d], positions [T], theta [d/2]");
        py::array_t<float> out({x.shape(0), x.shape(1), x.shape(2)});
        std::copy_n(x.data(), x.size(), out.mutable_data());
        float* op = out.mutable_data();
        guarded([&] {
            rope_host(op, positions.data(), x.shape(0), x.shape(1), x.shape(2), theta.data(), concentration);
        });
        return out;
    }, py::arg("x"), py::arg("positions"), py::arg("theta"), py::arg("concentration"));
    m.def("attention", [](F32Array q, F32Array k, F32Array v, I64Array positions, F32Array sinks,
                          int64_t window, float scale, const std::string& kv_type, bool split,
                          const std::string& precision, bool with_kernel) {
        if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3 || positions.ndim() != 1 || sinks.ndim() != 1)
            throw py::value_error("attention wants q [T, n_q, d], k/v [cap, n_kv, d], positions [T], sinks [n_q]");
        const int64_t T = q.shape(0), n_q = q.shape(1), d = q.shape(2);
        const int64_t cap = k.shape(0), n_kv = k.shape(1);
        if (k.shape(2) != d || v.shape(0) != cap || v.shape(1) != n_kv || v.shape(2) != d ||
            positions.shape(0) != T || sinks.shape(0) != n_q)
            throw py::value_error("attention wants q [T, n_q, d], k/v [cap, n_kv, d], positions [T], sinks [n_q]");
        const int type = kv_type_code(kv_type);
        const bool exact = precision_arg(precision);
        py::array_t<float> out({T, n_q, d});
        float* op = out.mutable_data();
        const char* kernel = "";
        guarded([&] {
            kernel = attention_host(q.data(), k.data(), v.data(), positions.data(), sinks.data(), op, T, n_q, n_kv,
                                  d, cap, window, scale, type, split, exact);
        });
        if (!with_kernel) return py::object(out);
        return py::object(py::make_tuple(out, kernel));
    }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("positions"), py::arg("sinks"),
       py::arg("window"), py::arg("scale"), py::arg("kv_type") = "f32", py::arg("split") = false,
       py::arg("precision") = "f32", py::arg("with_kernel") = false,
       "split: flash-decoding, as the device model's decode rows (kernels.cuh n_parts); precision 'f32' or "
       "'fast' (the tensor-core prefill path's halves); with_kernel: also the kernel that ran ('rows', "
       "'split', 'tensor cores' or 'tiled')");
    m.def("router_topk", [](F32Array logits, int64_t k) {
        if (logits.ndim() != 2 || k < 1 || k > logits.shape(1))
            throw py::value_error("router_topk wants logits [T, E] and 1 <= k <= E");
        const int64_t T = logits.shape(0), E = logits.shape(1);
        py::array_t<int32_t> idx({T, k});
        py::array_t<float> w({T, k});
        int32_t* ip = idx.mutable_data();
        float* wp = w.mutable_data();
        guarded([&] { router_topk_host(logits.data(), T, E, k, ip, wp); });
        return py::make_tuple(idx, w);
    }, py::arg("logits"), py::arg("k"));
    m.def("swiglu", [](F32Array gate, F32Array lin, float alpha, float limit) {
        if (gate.ndim() != 1 || lin.ndim() != 1 || gate.size() != lin.size())
            throw py::value_error("swiglu wants gate and lin of one equal 1-D shape");
        py::array_t<float> h(gate.size());
        float* hp = h.mutable_data();
        guarded([&] { swiglu_host(gate.data(), lin.data(), hp, gate.size(), alpha, limit); });
        return h;
    }, py::arg("gate"), py::arg("lin"), py::arg("alpha") = 1.702f, py::arg("limit") = 7.0f);
}

}  // namespace

// The emulator build (cuda/emulator) is the same module under another name, ossrun._cuda_emu.
#ifndef OSSRUN_CUDA_MODULE
#define OSSRUN_CUDA_MODULE _cuda
#endif

PYBIND11_MODULE(OSSRUN_CUDA_MODULE, m) {
    m.doc() = "ossrun's CUDA kernels (internal; see ossrun.cuda_status and tests/test_cuda_ops.py)";
    py::register_exception<CudaError>(m, "CudaError", PyExc_RuntimeError);
    m.def("status", &status_dict, "runtime/driver versions, the CUDA error if any, and each device");
    py::module_ ops = m.def_submodule("ops", "single CUDA kernels on host arrays, for tests");
    bind_ops(ops);
#ifdef OSSRUN_CUDA_EMULATOR
    m.def("set_schedule", &emu::set_schedule, py::arg("spec"),
          "the order a round resumes a block's threads in: forward, reverse or shuffle[:SEED]");
    m.def("schedule", &emu::schedule);
    m.def("set_stream_order", &emu::set_stream_order, py::arg("spec"),
          "which streams hold their work until it is needed: immediate, lazy-even, lazy-odd or lazy-all");
    m.def("stream_order", &emu::stream_order);
    m.def("neighbor_sum_selftest", &emu::neighbor_sum_selftest, py::arg("x"), py::arg("barrier"),
          "y[i] = x[i] + x[i-1] through shared memory, with or without the barrier (a race without)");
#endif
}
