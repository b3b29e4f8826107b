// The only file that includes pybind11: checks every input from Python with a sentence naming
// what is wrong, then hands plain pointers to the core. Weights stay in the caller's memory map;
// the Python Model keeps the arrays alive. The GIL is released while the model computes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include "attention_split.h"
#include "cpu/cpu_tuning.h"
#include "cpu_backend.h"
#include "forward.h"
#include "cpu/machine_probe.h"
#include "kernels.h"
#include "model.h"
#include "moe_ops.h"
#include "mxfp4_interleave.h"
#include "numerics.h"
#include "q8_0_interleave.h"
#include "rope.h"
#include "session.h"
#include "session_bindings.h"
#ifdef OSSRUN_HAVE_DEVICE_MODEL
#include "../cuda/device_bindings.h"  // the CUDA device model (cuda/device_model.h)
#endif

namespace py = pybind11;
using namespace ossrun;
using namespace ossrun::bindings;

namespace {

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;

DType checked_dtype(int t, const std::string& what) {
    switch (t) {
        case 0: case 1: case 2: case 3: case 6: case 7: case 8: case 10: case 11: case 12: case 13:
        case 14: case 20: case 30: case 39:
            return DType(t);
    }
    throw py::value_error(what + ": unsupported ggml type " + std::to_string(t));
}

// A tensor from Python: (buffer, ggml type, numpy-order shape).
struct TensorArg {
    const uint8_t* data;
    size_t nbytes;
    DType type;
    std::vector<int64_t> shape;
};

TensorArg tensor_arg(const py::dict& tensors, const std::string& name) {
    if (!tensors.contains(name)) throw py::value_error("missing tensor '" + name + "'");
    auto tup = tensors[py::str(name)].cast<py::tuple>();
    if (tup.size() != 3) throw py::value_error("tensor '" + name + "': expected (array, type, shape)");
    py::buffer_info info = tup[0].cast<py::buffer>().request();
    if (info.ndim > 0) {
        ssize_t expect = info.itemsize;
        for (ssize_t i = info.ndim - 1; i >= 0; --i) {
            if (info.shape[size_t(i)] > 1 && info.strides[size_t(i)] != expect)
                throw py::value_error("tensor '" + name + "' is not contiguous");
            expect *= info.shape[size_t(i)];
        }
    }
    TensorArg t;
    t.data = static_cast<const uint8_t*>(info.ptr);
    t.nbytes = size_t(info.size) * size_t(info.itemsize);
    t.type = checked_dtype(tup[1].cast<int>(), "tensor '" + name + "'");
    t.shape = tup[2].cast<std::vector<int64_t>>();
    return t;
}

std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

// A matrix stack [n_mats, rows, cols] (n_mats = 0 for a plain 2-D matrix).
Matrix matrix_arg(const py::dict& tensors, const std::string& name, int64_t n_mats, int64_t rows,
                  int64_t cols) {
    TensorArg t = tensor_arg(tensors, name);
    std::vector<int64_t> want = n_mats ? std::vector<int64_t>{n_mats, rows, cols}
                                       : std::vector<int64_t>{rows, cols};
    if (t.shape != want)
        throw py::value_error("tensor '" + name + "' has shape " + shape_str(t.shape) +
                              ", expected " + shape_str(want));
    Matrix m;
    m.data = t.data;
    m.type = t.type;
    m.n_mats = n_mats ? n_mats : 1;
    m.rows = rows;
    m.cols = cols;
    m.row_bytes = row_bytes_for(t.type, cols);
    if (m.row_bytes == 0)
        throw py::value_error("tensor '" + name + "': " + std::to_string(cols) +
                              " columns do not fit " + dtype_name(t.type) + " blocks of " +
                              std::to_string(block_shape(t.type).elems));
    if (t.nbytes != m.total_bytes())
        throw py::value_error("tensor '" + name + "' holds " + std::to_string(t.nbytes) +
                              " bytes, expected " + std::to_string(m.total_bytes()));
    return m;
}

const float* f32_arg(const py::dict& tensors, const std::string& name, std::vector<int64_t> want) {
    TensorArg t = tensor_arg(tensors, name);
    if (t.type != DType::F32)
        throw py::value_error("tensor '" + name + "' must be F32, not " + dtype_name(t.type));
    if (t.shape != want)
        throw py::value_error("tensor '" + name + "' has shape " + shape_str(t.shape) +
                              ", expected " + shape_str(want));
    size_t n = 1;
    for (int64_t d : want) n *= size_t(d);
    if (t.nbytes != n * 4)
        throw py::value_error("tensor '" + name + "' holds " + std::to_string(t.nbytes) +
                              " bytes, expected " + std::to_string(n * 4));
    if (reinterpret_cast<uintptr_t>(t.data) % alignof(float))
        throw py::value_error("tensor '" + name + "' is not 4-byte aligned");
    return reinterpret_cast<const float*>(t.data);
}

int64_t positive(const py::dict& cfg, const char* key) {
    if (!cfg.contains(key)) throw py::value_error(std::string("config is missing '") + key + "'");
    const int64_t v = cfg[key].cast<int64_t>();
    if (v <= 0) throw py::value_error(std::string("config '") + key + "' must be positive");
    return v;
}

ModelConfig config_from_dict(const py::dict& cfg) {
    ModelConfig c;
    c.block_count = positive(cfg, "block_count");
    c.embedding_length = positive(cfg, "embedding_length");
    c.expert_feed_forward_length = positive(cfg, "expert_feed_forward_length");
    c.head_count = positive(cfg, "head_count");
    c.head_count_kv = positive(cfg, "head_count_kv");
    c.key_length = positive(cfg, "key_length");
    c.expert_count = positive(cfg, "expert_count");
    c.expert_used_count = positive(cfg, "expert_used_count");
    c.vocab_size = positive(cfg, "vocab_size");
    c.sliding_window = positive(cfg, "sliding_window");
    auto real = [&](const char* key, double dflt) {
        return cfg.contains(key) ? cfg[key].cast<double>() : dflt;
    };
    c.rope_freq_base = real("rope_freq_base", 150000.0);
    c.rope_scaling_factor = real("rope_scaling_factor", 32.0);
    c.rope_original_context = real("rope_original_context", 4096.0);
    c.yarn_beta_fast = real("yarn_beta_fast", 32.0);
    c.yarn_beta_slow = real("yarn_beta_slow", 1.0);
    c.rms_norm_eps = float(real("rms_norm_eps", 1e-5));
    if (c.head_count % c.head_count_kv)
        throw py::value_error("head_count must be a multiple of head_count_kv");
    if (c.key_length % 2) throw py::value_error("key_length must be even");
    if (c.expert_used_count > c.expert_count)
        throw py::value_error("expert_used_count exceeds expert_count");
    if (!(c.rms_norm_eps > 0) || !(c.rope_freq_base > 1) || !(c.rope_scaling_factor >= 1))
        throw py::value_error("config has an invalid eps, rope base or scaling factor");
    return c;
}

ModelWeights weights_from_dict(const ModelConfig& c, const py::dict& t) {
    const int64_t H = c.embedding_length, I = c.expert_feed_forward_length, E = c.expert_count;
    const int64_t V = c.vocab_size, Q = c.q_width(), KV = c.kv_width();
    ModelWeights w;
    w.token_embd = matrix_arg(t, "token_embd.weight", 0, V, H);
    w.output_norm = f32_arg(t, "output_norm.weight", {H});
    w.output = matrix_arg(t, "output.weight", 0, V, H);
    for (int64_t l = 0; l < c.block_count; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        LayerWeights L;
        L.attn_norm = f32_arg(t, p + "attn_norm.weight", {H});
        L.attn_q = matrix_arg(t, p + "attn_q.weight", 0, Q, H);
        L.attn_k = matrix_arg(t, p + "attn_k.weight", 0, KV, H);
        L.attn_v = matrix_arg(t, p + "attn_v.weight", 0, KV, H);
        L.attn_q_b = f32_arg(t, p + "attn_q.bias", {Q});
        L.attn_k_b = f32_arg(t, p + "attn_k.bias", {KV});
        L.attn_v_b = f32_arg(t, p + "attn_v.bias", {KV});
        L.attn_output = matrix_arg(t, p + "attn_output.weight", 0, H, Q);
        L.attn_output_b = f32_arg(t, p + "attn_output.bias", {H});
        L.attn_sinks = f32_arg(t, p + "attn_sinks.weight", {c.head_count});
        L.post_attention_norm = f32_arg(t, p + "post_attention_norm.weight", {H});
        L.router = matrix_arg(t, p + "ffn_gate_inp.weight", 0, E, H);
        L.router_b = f32_arg(t, p + "ffn_gate_inp.bias", {E});
        L.gate_exps = matrix_arg(t, p + "ffn_gate_exps.weight", E, I, H);
        L.up_exps = matrix_arg(t, p + "ffn_up_exps.weight", E, I, H);
        L.down_exps = matrix_arg(t, p + "ffn_down_exps.weight", E, H, I);
        L.gate_exps_b = f32_arg(t, p + "ffn_gate_exps.bias", {E, I});
        L.up_exps_b = f32_arg(t, p + "ffn_up_exps.bias", {E, I});
        L.down_exps_b = f32_arg(t, p + "ffn_down_exps.bias", {E, H});
        w.layers.push_back(L);
    }
    return w;
}

const KernelTable* table_arg(const std::string& isa) {
    try {
        return select_kernel_table(isa);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
}

// A bare matrix over a uint8 buffer, for the op-level tests.
Matrix raw_matrix(const py::array_t<uint8_t, py::array::c_style>& raw, int type, int64_t rows,
                  int64_t cols) {
    Matrix m;
    m.type = checked_dtype(type, "matrix");
    m.rows = rows;
    m.cols = cols;
    m.row_bytes = row_bytes_for(m.type, cols);
    if (rows <= 0 || m.row_bytes == 0) throw py::value_error("bad matrix shape for its type");
    if (size_t(raw.nbytes()) != m.total_bytes())
        throw py::value_error("raw buffer has " + std::to_string(raw.nbytes()) + " bytes, expected " +
                              std::to_string(m.total_bytes()));
    m.data = raw.data();
    return m;
}

// The `layout` argument of the op-level tests: "rows" (GGUF order), "q8_0x16" or "mxfp4x16" (raw
// already interleaved, ops.interleave_q8_0 / ops.interleave_mxfp4).
void set_layout(Matrix& W, const std::string& layout) {
    if (layout == "rows") return;
    if (layout == "q8_0x16") {
        if (!q8_0_interleavable(W)) throw py::value_error("layout q8_0x16 needs a Q8_0 matrix of rows a multiple of 16");
        W.layout = RowLayout::kQ8_0x16;
    } else if (layout == "mxfp4x16") {
        if (!mxfp4_interleavable(W)) throw py::value_error("layout mxfp4x16 needs an MXFP4 matrix of rows a multiple of 16");
        W.layout = RowLayout::kMxfp4x16;
    } else {
        throw py::value_error("layout must be 'rows', 'q8_0x16' or 'mxfp4x16', got '" + layout + "'");
    }
}

void bind_ops(py::module_& m) {
    m.def("forward_placed", [](std::shared_ptr<Model> model, const py::handle& ids, std::vector<int> attention,
                               std::vector<int> moe, int output, const std::string& kv_type) {
        // forward_pass over two CPU backends with their own activations: the hand-overs of a
        // split placement (as the CUDA device model's) checked on any machine. A fresh cache;
        // no other forward of the model may run meanwhile.
        const ModelConfig& c = model->config();
        const IdArray a = ids_arg(ids, "ids");
        const int64_t T = a.shape(0);
        if (T > Session::kMaxChunk) throw py::value_error("at most one chunk of ids");
        const auto bad = [](int b) { return b != 0 && b != 1; };
        if (int64_t(attention.size()) != c.block_count || int64_t(moe.size()) != c.block_count || bad(output))
            throw py::value_error("attention and moe name backend 0 or 1 for each layer, output one of them");
        for (size_t l = 0; l < attention.size(); ++l)
            if (bad(attention[l]) || bad(moe[l])) throw py::value_error("backends are 0 and 1");
        const KvType type = kv_type_arg(kv_type);
        py::array_t<float> logits({T, c.vocab_size});
        float* out = logits.mutable_data();
        released([&] {
            KvCache kv(c, T, Session::kMaxChunk, type);
            Scratch s0(c, T), s1(c, T);
            CpuBackend b0(*model, s0), b1(*model, s1);
            Backend* backends[2] = {&b0, &b1};
            ForwardPlan plan;
            for (size_t l = 0; l < attention.size(); ++l)
                plan.layers.push_back(LayerPlacement{backends[attention[l]], backends[moe[l]]});
            plan.output = backends[output];
            Segment seg;
            seg.kv = &kv;
            seg.tokens = a.data();
            seg.n = T;
            seg.logits = out;
            seg.all_logits = true;
            forward_pass(c, Batch{&seg, 1, T}, plan, nullptr);
        });
        return logits;
    }, py::arg("model"), py::arg("ids"), py::arg("attention"), py::arg("moe"), py::arg("output"),
       py::arg("kv_type") = "f32",
       "Every position's logits of ids from a fresh cache, each layer's attention and MoE block on CPU backend 0 or 1.");
    m.def("interleave_q8_0", [](py::array_t<uint8_t, py::array::c_style> raw, int64_t rows, int64_t cols) {
        Matrix W = raw_matrix(raw, int(DType::Q8_0), rows, cols);
        set_layout(W, "q8_0x16");
        py::array_t<uint8_t> out(raw.size());
        interleave_q8_0_groups(raw.data(), out.mutable_data(), W.row_bytes, 0, rows / kInterleaveRows);
        return out;
    }, py::arg("raw"), py::arg("rows"), py::arg("cols"),
       "Q8_0 rows [rows, cols] (rows a multiple of 16) repacked as the model repacks them (q8_0_interleave.h).");
    m.def("interleave_mxfp4", [](py::array_t<uint8_t, py::array::c_style> raw, int64_t rows, int64_t cols) {
        Matrix W = raw_matrix(raw, int(DType::MXFP4), rows, cols);
        set_layout(W, "mxfp4x16");
        py::array_t<uint8_t> out(raw.size());
        for (int64_t g = 0; g < rows / kInterleaveRows; ++g) {
            const size_t at = size_t(g) * kInterleaveRows * W.row_bytes;
            interleave_mxfp4_group(raw.data() + at, out.mutable_data() + at, W.row_bytes);
        }
        return out;
    }, py::arg("raw"), py::arg("rows"), py::arg("cols"),
       "MXFP4 rows [rows, cols] (rows a multiple of 16) repacked as the model repacks them (mxfp4_interleave.h).");
    m.def("available_isas", [] {
        std::vector<std::string> names;
        for (const KernelTable* t : available_kernel_tables()) names.push_back(t->name);
        return names;
    }, "Kernel variants this build has and this CPU runs, best first.");
    m.def("mxfp4_tuning", [] {
        return std::string(mxfp4_prefetch() == Mxfp4Prefetch::kL1Near ? "l1:" : "l2:") + std::to_string(mxfp4_rows_per_pass());
    }, "The VBMI MXFP4 GEMV's tuning in force (cpu_tuning.h): 'PREFETCH:ROWS', prefetch into l1 (4 KiB ahead) or "
       "l2 (8 KiB ahead), 1 or 2 rows a pass at 2-8 tokens.");
    m.def("set_mxfp4_tuning", [](const std::string& tuning) {
        if (tuning == "auto") {
            set_mxfp4_prefetch(mxfp4_prefetch_for_cpu());
            set_mxfp4_rows_per_pass(mxfp4_rows_per_pass_for_cpu());
            return;
        }
        const bool l1 = tuning.rfind("l1:", 0) == 0, l2 = tuning.rfind("l2:", 0) == 0;
        const std::string rows = tuning.size() > 3 ? tuning.substr(3) : "";
        if (!(l1 || l2) || (rows != "1" && rows != "2"))
            throw py::value_error("an MXFP4 tuning is l1:1, l1:2, l2:1, l2:2 or auto, not '" + tuning + "'");
        set_mxfp4_prefetch(l1 ? Mxfp4Prefetch::kL1Near : Mxfp4Prefetch::kL2Far);
        set_mxfp4_rows_per_pass(rows == "1" ? 1 : 2);
    }, py::arg("tuning"), "Forces the VBMI MXFP4 GEMV's tuning ('PREFETCH:ROWS' as mxfp4_tuning gives it); 'auto' is this CPU's.");
    m.def("read_bandwidth", [](int threads, int64_t mib) {
        if (threads < 1 || mib < 1) throw py::value_error("threads and mib must be positive");
        py::gil_scoped_release release;
        return measure_read_bandwidth(threads, size_t(mib) << 20);
    }, py::arg("threads"), py::arg("mib") = 1024, "GB/s that `threads` threads read from a buffer of `mib` MiB.");
    m.def("int16_peak", [](int threads) {
        if (threads < 1) throw py::value_error("threads must be positive");
        std::string instruction;
        double gops;
        {
            py::gil_scoped_release release;
            gops = measure_int16_peak(threads, &instruction);
        }
        return py::make_tuple(gops, instruction);
    }, py::arg("threads"), "(G int16 ops/s, instruction): the int16 dot-product peak of `threads` threads.");
    m.def("decode_rows", [](py::array_t<uint8_t, py::array::c_style> raw, int type, int64_t rows,
                            int64_t cols, const std::string& isa, const std::string& layout) {
        Matrix W = raw_matrix(raw, type, rows, cols);
        set_layout(W, layout);
        const KernelTable* k = table_arg(isa);
        py::array_t<float> out({rows, cols});
        for (int64_t r = 0; r < rows; ++r) k->decode_row(W, 0, r, out.mutable_data() + r * cols);
        return out;
    }, py::arg("raw"), py::arg("type"), py::arg("rows"), py::arg("cols"), py::arg("isa") = "auto",
       py::arg("layout") = "rows");
    m.def("quantize_i16", [](F32Array x, const std::string& isa) {
        if (x.ndim() != 2 || x.shape(1) % kBlockElems) throw py::value_error("x must be [T, 32 * n]");
        const KernelTable* k = table_arg(isa);
        if (!k->quantize_i16) throw py::value_error(std::string(k->name) + " has no int16 path on this CPU");
        py::array_t<int16_t> q({x.shape(0), x.shape(1)});
        py::array_t<float> scale({x.shape(0), x.shape(1) / kBlockElems});
        k->quantize_i16(x.data(), int64_t(x.size()), q.mutable_data(), scale.mutable_data());
        return py::make_tuple(q, scale);
    }, py::arg("x"), py::arg("isa") = "auto",
       "int16 blocks of 32 and their scales (max|block| / 32767), as the fast precision makes them.");
    m.def("matmul", [](py::array_t<uint8_t, py::array::c_style> raw, int type, int64_t rows,
                       int64_t cols, F32Array x, std::optional<F32Array> bias, const std::string& isa,
                       const std::string& precision, int64_t r0, int64_t r1, const std::string& layout) {
        Matrix W = raw_matrix(raw, type, rows, cols);
        set_layout(W, layout);
        if (r1 < 0) r1 = rows;
        if (r0 < 0 || r0 > r1 || r1 > rows) throw py::value_error("need 0 <= r0 <= r1 <= rows");
        if (x.ndim() != 2 || x.shape(1) != cols) throw py::value_error("x must be [T, cols]");
        if (bias && (bias->ndim() != 1 || bias->shape(0) != rows))
            throw py::value_error("bias must be [rows]");
        if (precision != "f32" && precision != "fast") throw py::value_error("precision must be 'f32' or 'fast'");
        const KernelTable* k = table_arg(isa);
        py::array_t<float> y({int64_t(x.shape(0)), rows});
        std::fill(y.mutable_data(), y.mutable_data() + y.size(), 0.0f);  // rows outside [r0, r1) stay 0
        MatmulArgs a;
        a.W = &W;
        a.x = x.data();
        a.ldx = cols;
        a.n_tok = x.shape(0);
        a.y = y.mutable_data();
        a.ldy = rows;
        a.bias = bias ? bias->data() : nullptr;
        std::vector<int16_t> q;
        std::vector<float> scale;
        if (precision == "fast") {  // as the model does: int16 activations where the variant has them
            if (!k->quantize_i16 || cols % kBlockElems)
                throw py::value_error(std::string(k->name) + " has no int16 path for this matrix");
            q.resize(size_t(x.size()));
            scale.resize(size_t(x.size() / kBlockElems));
            k->quantize_i16(x.data(), int64_t(x.size()), q.data(), scale.data());
            a.x_i16 = q.data();
            a.x_i16_scale = scale.data();
        }
        {
            py::gil_scoped_release release;
            k->matmul(a, r0, r1);
        }
        return y;
    }, py::arg("raw"), py::arg("type"), py::arg("rows"), py::arg("cols"), py::arg("x"),
       py::arg("bias") = py::none(), py::arg("isa") = "auto", py::arg("precision") = "f32",
       py::arg("r0") = 0, py::arg("r1") = -1, py::arg("layout") = "rows");
    m.def("rmsnorm", [](F32Array x, F32Array g, float eps, const std::string& isa) {
        if (x.ndim() != 2 || g.ndim() != 1 || g.shape(0) != x.shape(1))
            throw py::value_error("rmsnorm wants x [T, n] and g [n]");
        const KernelTable* k = table_arg(isa);
        py::array_t<float> y({x.shape(0), x.shape(1)});
        for (ssize_t t = 0; t < x.shape(0); ++t)
            k->rmsnorm(x.data() + t * x.shape(1), g.data(), y.mutable_data() + t * x.shape(1),
                       x.shape(1), eps);
        return y;
    }, py::arg("x"), py::arg("g"), py::arg("eps") = 1e-5f, py::arg("isa") = "auto");
    m.def("attention", [](F32Array q, F32Array k_cache, F32Array v_cache, int64_t j_lo,
                          int64_t j_hi, F32Array sinks, float scale, const std::string& isa,
                          const std::string& kv_type, bool split, int64_t window) {
        // The query heads of one GQA group: q [G, d], sinks [G]; k_cache / v_cache [cap, d]
        // with the slot of position j at j % cap (keys are put in blocks here, as the cache does),
        // stored as kv_type as the cache stores them. split: cut the range into the chunks of
        // flash-decoding (attention_split.h), attend to each as a partial and merge. q [R, G, d]:
        // R rows at consecutive positions in one call (row r's range ends at j_hi + r and, with a
        // window, starts no earlier than j_hi + r - window + 1), as prefill attends.
        const bool rows = q.ndim() == 3;
        if ((q.ndim() != 2 && !rows) || k_cache.ndim() != 2 || v_cache.ndim() != 2 || sinks.ndim() != 1 ||
            sinks.shape(0) != q.shape(q.ndim() - 2) || k_cache.shape(1) != q.shape(q.ndim() - 1) ||
            v_cache.shape(1) != q.shape(q.ndim() - 1) || k_cache.shape(0) != v_cache.shape(0))
            throw py::value_error("attention wants q [G, d] or [R, G, d], k/v [cap, d], sinks [G]");
        const int64_t R = rows ? q.shape(0) : 1, G = q.shape(q.ndim() - 2), d = q.shape(q.ndim() - 1);
        const int64_t cap = k_cache.shape(0);
        if (R < 1 || window < 0 || (split && R > 1)) throw py::value_error("attention: rows >= 1, window >= 0, split for one row");
        if (j_lo < 0 || j_hi < j_lo - 1 || j_hi + R - 1 - j_lo + 1 > cap)
            throw py::value_error("key range does not fit the cache");
        const KernelTable* k = table_arg(isa);
        KvType type;
        try {
            type = parse_kv_type(kv_type);
        } catch (const std::invalid_argument& e) {
            throw py::value_error(e.what());
        }
        const size_t eb = size_t(kv_type_bytes(type));
        // Unused slots of the last key block hold NaN: the kernel computes and drops their scores.
        std::vector<uint8_t> kb(size_t(d * key_block_slots(cap)) * eb, 0xff), v(size_t(d * cap) * eb);
        auto put = [&](std::vector<uint8_t>& dst, size_t i, float x) {
            if (type == KvType::F32) std::memcpy(dst.data() + i * 4, &x, 4);
            else {
                const uint16_t h = type == KvType::F16 ? float_to_fp16(x) : float_to_bf16(x);
                std::memcpy(dst.data() + i * 2, &h, 2);
            }
        };
        for (int64_t s = 0; s < cap; ++s)
            for (int64_t c = 0; c < d; ++c) {
                put(kb, size_t(((s / kKeyBlock) * d + c) * kKeyBlock + s % kKeyBlock), k_cache.data()[s * d + c]);
                put(v, size_t(s * d + c), v_cache.data()[s * d + c]);
            }
        std::vector<float> scores(size_t(attention_scratch_floats(G, R)));
        py::array_t<float> out(rows ? std::vector<ssize_t>{R, G, d} : std::vector<ssize_t>{G, d});
        AttentionArgs a;
        a.q = q.data();
        a.k = kb.data();
        a.v = v.data();
        a.v_stride = d;
        a.kv_type = type;
        a.cap = cap;
        a.j_lo = j_lo;
        a.j_hi = j_hi;
        a.n_rows = R;
        a.row_stride = G * d;
        a.window = window;
        a.n_heads = G;
        a.head_dim = d;
        a.sinks = sinks.data();
        a.scale = scale;
        a.scores = scores.data();
        a.out = out.mutable_data();
        const int64_t parts = split ? attention_chunks(j_lo, j_hi) : 1;
        if (parts < 2) {
            k->attention(a);
            return out;
        }
        std::vector<float> acc(size_t(parts * G * d)), mx(size_t(parts * G)), sm(size_t(parts * G));
        for (int64_t p = 0; p < parts; ++p) {
            AttentionArgs c = a;
            attention_chunk_range(j_lo, j_hi, p, c.j_lo, c.j_hi);
            c.out = acc.data() + p * G * d;
            c.part_max = mx.data() + p * G;
            c.part_sum = sm.data() + p * G;
            k->attention(c);
        }
        merge_attention_parts(acc.data(), mx.data(), sm.data(), parts, G, d, sinks.data(), out.mutable_data());
        return out;
    }, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("j_lo"), py::arg("j_hi"),
       py::arg("sinks"), py::arg("scale"), py::arg("isa") = "auto", py::arg("kv_type") = "f32",
       py::arg("split") = false, py::arg("window") = 0);
    m.def("kv_round", [](F32Array x, const std::string& kv_type) {
        // x rounded to the KV cache's element type as the cache stores it, back in float32.
        const KvType type = [&] {
            try {
                return parse_kv_type(kv_type);
            } catch (const std::invalid_argument& e) {
                throw py::value_error(e.what());
            }
        }();
        py::array_t<float> out(x.size());
        for (ssize_t i = 0; i < x.size(); ++i) {
            const float f = x.data()[i];
            out.mutable_data()[i] = type == KvType::F16    ? fp16_to_float(float_to_fp16(f))
                                    : type == KvType::BF16 ? bf16_to_float(float_to_bf16(f))
                                                           : f;
        }
        return out;
    }, py::arg("x"), py::arg("kv_type"));
    m.def("attention_split_chunk", [] { return kAttentionSplitChunk; });
    m.def("rope_theta", [](const py::dict& cfg) {
        ModelConfig c;
        c.key_length = cfg["key_length"].cast<int64_t>();
        c.rope_freq_base = cfg["rope_freq_base"].cast<double>();
        c.rope_scaling_factor = cfg["rope_scaling_factor"].cast<double>();
        c.rope_original_context = cfg["rope_original_context"].cast<double>();
        c.yarn_beta_fast = cfg.contains("yarn_beta_fast") ? cfg["yarn_beta_fast"].cast<double>() : 32.0;
        c.yarn_beta_slow = cfg.contains("yarn_beta_slow") ? cfg["yarn_beta_slow"].cast<double>() : 1.0;
        RopeTable r;
        try {
            r = make_rope_table(c);
        } catch (const std::invalid_argument& e) {
            throw py::value_error(e.what());
        }
        return py::make_tuple(py::array_t<float>(r.theta.size(), r.theta.data()), r.concentration);
    });
    m.def("apply_rope", [](F32Array x, py::array_t<int64_t> positions, F32Array theta, float concentration) {
        // x [T, n_heads, d] rotated at positions [T] with a given θ table [d/2].
        if (x.ndim() != 3 || positions.ndim() != 1 || positions.shape(0) != x.shape(0) ||
            theta.ndim() != 1 || theta.shape(0) * 2 != x.shape(2))
            throw py::value_error("apply_rope wants x [T, heads, d], positions [T], theta [d/2]");
        RopeTable r;
        r.theta.assign(theta.data(), theta.data() + theta.shape(0));
        r.concentration = concentration;
        const int64_t T = x.shape(0), nh = x.shape(1), d = x.shape(2);
        std::vector<float> c(size_t(T * d / 2)), s(size_t(T * d / 2));
        rope_cos_sin(r, positions.data(), T, c.data(), s.data());
        py::array_t<float> out({T, nh, d});
        std::copy_n(x.data(), T * nh * d, out.mutable_data());
        for (int64_t t = 0; t < T; ++t)
            apply_rope(out.mutable_data() + t * nh * d, nh, d, c.data() + t * d / 2, s.data() + t * d / 2);
        return out;
    });
    m.def("router_topk", [](F32Array logits, int64_t k) {
        if (logits.ndim() != 2 || k < 1 || k > logits.shape(1))
            throw py::value_error("router_topk wants logits [T, E] and 1 <= k <= E");
        const int64_t T = logits.shape(0), E = logits.shape(1);
        py::array_t<int32_t> idx({T, k});
        py::array_t<float> w({T, k});
        for (int64_t t = 0; t < T; ++t)
            router_topk(logits.data() + t * E, E, k, idx.mutable_data() + t * k, w.mutable_data() + t * k);
        return py::make_tuple(idx, w);
    });
    m.def("swiglu", [](F32Array gate, F32Array lin, float alpha, float limit, const std::string& isa) {
        if (gate.size() != lin.size()) throw py::value_error("gate and lin differ in size");
        const KernelTable* k = table_arg(isa);
        py::array_t<float> h(gate.size());
        k->swiglu(gate.data(), lin.data(), h.mutable_data(), gate.size(), alpha, limit);
        return h;
    }, py::arg("gate"), py::arg("lin"), py::arg("alpha") = 1.702f, py::arg("limit") = 7.0f,
       py::arg("isa") = "auto");
}

}  // namespace

// The emulator build (cuda/emulator) is the same module under another name, ossrun._core_emu.
#ifndef OSSRUN_CORE_MODULE
#define OSSRUN_CORE_MODULE _core
#endif

PYBIND11_MODULE(OSSRUN_CORE_MODULE, m) {
    m.doc() = "ossrun's C++ core (internal; use the ossrun package)";

    py::class_<Model, std::shared_ptr<Model>>(m, "Model")
        .def(py::init([](const py::dict& cfg, const py::dict& tensors, int threads, const std::string& isa,
                         const std::string& precision) {
                 if (threads < 1 || threads > 1024) throw py::value_error("threads must be in [1, 1024]");
                 ModelConfig c = config_from_dict(cfg);
                 ModelWeights w = weights_from_dict(c, tensors);
                 ModelOptions o;
                 o.threads = threads;
                 o.isa = isa;
                 o.precision = precision;
                 try {
                     return std::make_shared<Model>(c, std::move(w), o);
                 } catch (const std::invalid_argument& e) {
                     throw py::value_error(e.what());
                 }
             }),
             py::arg("config"), py::arg("tensors"), py::arg("threads") = 1, py::arg("isa") = "auto",
             py::arg("precision") = "fast")
        .def_property_readonly("isa", [](const Model& m) { return std::string(m.kernels().name); })
        .def_property_readonly("uses_i16", &Model::uses_i16)
        .def_property_readonly("weight_bytes_read", &Model::weight_bytes_read)
        .def_property_readonly("part_seconds", [](const Model& m) {
            // Wall seconds per part of the forward since load (part_timer.h), for benchmarks.
            py::dict d;
            for (int p = 0; p < int(Part::kCount); ++p) d[part_name(Part(p))] = m.part_seconds(Part(p));
            return d;
        })
        .def_property_readonly("threads", &Model::threads)
        .def("interleave_q8_0", [](Model& m, bool release_source_pages) {
            return released([&] { return m.interleave_q8_0(release_source_pages); });
        }, py::arg("release_source_pages"),
           "Repack the dense Q8_0 matrices into 16-row groups (fast precision, AVX-512); returns the bytes.")
        .def_property_readonly("interleaved_q8_0_bytes", [](const Model& m) { return m.interleaved_q8_0().bytes(); })
        .def("interleave_mxfp4_experts_in_place", [](Model& m) {
            return released([&] { return m.interleave_mxfp4_experts_in_place(); });
        }, "Repack the MXFP4 experts into 16-row groups, in place (fast precision, AVX-512): those copied "
           "into this process's own memory (weights_in_ram.py), not those in the file's map. Returns the bytes.")
        .def_property_readonly("interleaved_mxfp4_bytes", &Model::interleaved_mxfp4_bytes);

    py::class_<Session> session(m, "Session");
    session
        .def(py::init([](std::shared_ptr<Model> model, int64_t n_ctx, const std::string& kv_type) {
                 if (n_ctx < 1) throw py::value_error("n_ctx must be positive");
                 return new Session(std::move(model), n_ctx, kv_type_arg(kv_type));
             }),
             py::arg("model"), py::arg("n_ctx"), py::arg("kv_type") = "f32")
        .def("prefill_traced", [](Session& s, const py::handle& ids_in) {
            // Debugging aid on a fresh context: logits [n, V] and the residual stream after each
            // half layer [2L, n, H] (attention half, then MoE half).
            const IdArray ids = ids_arg(ids_in, "ids");
            const int64_t n = ids.shape(0), V = s.vocab_size();
            const int64_t L = s.config().block_count, H = s.config().embedding_length;
            py::array_t<float> logits({n, V});
            float* out = logits.mutable_data();
            std::vector<float> res;
            released([&] { res = s.prefill_traced(ids.data(), n, out); });
            py::array_t<float> residuals({2 * L, n, H});
            std::copy(res.begin(), res.end(), residuals.mutable_data());
            return py::make_tuple(logits, residuals);
        }, py::arg("ids"))
        .def("commit_kv", &Session::commit_kv);
    bind_session_common(session);

    // Batched steps over several sessions (continuous batching); owns the activation scratch.
    py::class_<Scratch>(m, "Batch")
        .def(py::init([](std::shared_ptr<Model> model, int64_t rows) {
                 if (rows < 1 || rows > Session::kMaxChunk)
                     throw py::value_error("rows must be in [1, " + std::to_string(Session::kMaxChunk) + "]");
                 return new Scratch(model->config(), rows);
             }),
             py::arg("model"), py::arg("rows") = Session::kMaxChunk)
        .def_property_readonly("rows", [](const Scratch& s) { return s.max_chunk; })
        .def("step", [](Scratch& scratch, const py::list& sessions, const py::list& ids, const py::list& all_logits) {
            // One forward: sessions[i] appends ids[i]; returns each one's logits ([n, V] or [V]).
            const size_t n = sessions.size();
            if (ids.size() != n || all_logits.size() != n)
                throw py::value_error("step wants as many id arrays and all_logits flags as sessions");
            std::vector<IdArray> id_arrays;
            std::vector<py::array_t<float>> outs;
            std::vector<SessionStep> steps(n);
            for (size_t i = 0; i < n; ++i) {
                Session* s = sessions[i].cast<Session*>();
                id_arrays.push_back(ids_arg(ids[i], "ids[" + std::to_string(i) + "]"));
                const auto& a = id_arrays.back();
                const bool all = all_logits[i].cast<bool>();
                const int64_t len = a.shape(0), V = s->vocab_size();
                outs.push_back(all ? py::array_t<float>({len, V}) : py::array_t<float>(V));
                steps[i] = SessionStep{s, a.data(), len, outs.back().mutable_data(), all};
            }
            released([&] { Session::step(steps.data(), n, scratch); });
            py::list result;
            for (auto& o : outs) result.append(o);
            return result;
        }, py::arg("sessions"), py::arg("ids"), py::arg("all_logits"));

    py::module_ ops = m.def_submodule("ops", "single kernels, for tests");
    bind_ops(ops);
#ifdef OSSRUN_HAVE_DEVICE_MODEL
    ossrun::cuda::bind_device_model(m);
#endif
}
