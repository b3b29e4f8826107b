// The device model in ossrun._core (compiled into it when the CUDA target is built; csrc/bindings.cpp
// calls bind_device_model): DeviceModel, DeviceSession and DeviceBatch with the methods of Model,
// Session and Batch that ossrun/model.py and batch.py use, plus the host-side layout queries the
// tests check without a GPU. A CUDA failure or out-of-memory raises ossrun.DeviceError.
#include "device_bindings.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "../csrc/session_bindings.h"
#include "cuda_error.h"
#include "device_model.h"
#ifdef OSSRUN_CUDA_EMULATOR
#include "emulator/emulator.h"  // the stream order
#endif

namespace py = pybind11;

namespace ossrun::cuda {

using namespace ossrun::bindings;

namespace {

int64_t n_cpu_moe_arg(const Model& host, int64_t n_cpu_moe) {
    if (n_cpu_moe < 0 || n_cpu_moe > host.config().block_count)
        throw py::value_error("n_cpu_moe must be in [0, " + std::to_string(host.config().block_count) + "]");
    return n_cpu_moe;
}

// gpu_layers (None: all) as the first layer that runs on the GPU.
int64_t first_gpu_layer_arg(const Model& host, const std::optional<int64_t>& gpu_layers) {
    const int64_t L = host.config().block_count;
    if (gpu_layers && (*gpu_layers < 1 || *gpu_layers > L))
        throw py::value_error("gpu_layers must be in [1, " + std::to_string(L) + "]");
    return gpu_layers ? L - *gpu_layers : 0;
}

// {part name: seconds(part)} over csrc/part_timer.h's parts.
template <class Seconds>
py::dict by_part(Seconds seconds) {
    py::dict out;
    for (int p = 0; p < int(Part::kCount); ++p) out[part_name(Part(p))] = seconds(Part(p));
    return out;
}

}  // namespace

void bind_device_model(py::module_& m) {
    py::register_local_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const CudaError& e) {
            const py::object device_error = py::module_::import("ossrun.errors").attr("DeviceError");
            PyErr_SetString(device_error.ptr(), e.what());
        }
    });
#ifdef OSSRUN_CUDA_EMULATOR
    // The emulated core's own emulator (emulator.h): which streams hold their work until needed.
    m.def("set_emulator_stream_order", &emu::set_stream_order, py::arg("spec"));
    m.def("emulator_stream_order", &emu::stream_order);
    m.def("set_emulator_host_register_works", &emu::set_host_register_works, py::arg("works"));
#endif
    m.attr("HAS_DEVICE_MODEL") = true;
    m.attr("DEVICE_MAX_CHUNK") = DeviceSession::kMaxChunk;  // placement.py's MAX_CHUNK

    m.def("device_upload_layout", [](std::shared_ptr<Model> host, int64_t n_cpu_moe, std::optional<int64_t> gpu_layers) {
        // [(tensor name, arena offset, bytes)] and the arena's size: what DeviceModel uploads.
        const UploadLayout lay = upload_layout(host->weights(), host->config(), n_cpu_moe_arg(*host, n_cpu_moe),
                                               first_gpu_layer_arg(*host, gpu_layers));
        py::list items;
        for (const UploadItem& it : lay.items) items.append(py::make_tuple(it.name, it.offset, it.bytes));
        return py::make_tuple(items, lay.total);
    }, py::arg("host"), py::arg("n_cpu_moe"), py::arg("gpu_layers") = py::none());
    m.def("device_unsupported_weight", [](std::shared_ptr<Model> host, int64_t n_cpu_moe, std::optional<int64_t> gpu_layers) {
        return unsupported_device_weight(host->weights(), host->config(), n_cpu_moe_arg(*host, n_cpu_moe),
                                         first_gpu_layer_arg(*host, gpu_layers));
    }, py::arg("host"), py::arg("n_cpu_moe"), py::arg("gpu_layers") = py::none(),
       "'' when the CUDA kernels read every uploaded matrix's type and layout");
    m.def("device_stage_bytes", [](std::shared_ptr<Model> host, int64_t n_cpu_moe, std::optional<int64_t> gpu_layers) {
        return offload_stage_bytes(host->weights(), host->config(), n_cpu_moe_arg(*host, n_cpu_moe),
                                   first_gpu_layer_arg(*host, gpu_layers));
    }, py::arg("host"), py::arg("n_cpu_moe"), py::arg("gpu_layers") = py::none(),
       "one staging slot of an offloading device model (0: no block to offload)");
    m.def("device_scratch_bytes", [](std::shared_ptr<Model> host, bool experts) {
        return device_scratch_bytes(host->config(), DeviceSession::kMaxChunk, experts);
    }, py::arg("host"), py::arg("experts") = true, "experts: some MoE block on the GPU");
    m.def("device_kv_bytes", [](std::shared_ptr<Model> host, int64_t n_ctx, const std::string& kv_type,
                                std::optional<int64_t> gpu_layers) {
        if (n_ctx < 1) throw py::value_error("n_ctx must be positive");
        return kv_cache_bytes(host->config(), n_ctx, DeviceSession::kMaxChunk, kv_type_arg(kv_type),
                              first_gpu_layer_arg(*host, gpu_layers));
    }, py::arg("host"), py::arg("n_ctx"), py::arg("kv_type"), py::arg("gpu_layers") = py::none());

    py::class_<DeviceModel, std::shared_ptr<DeviceModel>>(m, "DeviceModel")
        .def(py::init([](std::shared_ptr<Model> host, int64_t n_cpu_moe, std::optional<int64_t> gpu_layers,
                         int64_t offload_min_tokens, int stage_slots) {
                 n_cpu_moe_arg(*host, n_cpu_moe);
                 const int64_t n_gpu = host->config().block_count - first_gpu_layer_arg(*host, gpu_layers);
                 if (offload_min_tokens < 0) throw py::value_error("offload_min_tokens must be >= 0 (0: off)");
                 if (stage_slots < 1 || stage_slots > 2) throw py::value_error("stage_slots must be 1 or 2");
                 return released([&] {
                     return std::make_shared<DeviceModel>(std::move(host), n_cpu_moe, n_gpu, offload_min_tokens,
                                                          stage_slots);
                 });
             }),
             py::arg("host"), py::arg("n_cpu_moe"), py::arg("gpu_layers") = py::none(), py::arg("offload_min_tokens") = 0,
             py::arg("stage_slots") = 2)
        .def_property_readonly("offload_min_tokens", &DeviceModel::offload_min_tokens)
        .def_property_readonly("stage_bytes", &DeviceModel::stage_bytes)
        .def_property_readonly("stage_slots", &DeviceModel::stage_slots)
        .def_property_readonly("offloaded_moe_blocks", &DeviceModel::offloaded_moe_blocks)
        .def_property_readonly("offloaded_bytes", &DeviceModel::offloaded_bytes)
        .def_property_readonly("pinned_offload_bytes", &DeviceModel::pinned_offload_bytes)
        .def_property_readonly("pin_error", &DeviceModel::pin_error)
        .def_property_readonly("isa", [](const DeviceModel& d) { return std::string(d.host().kernels().name); })
        .def_property_readonly("threads", [](const DeviceModel& d) { return d.host().threads(); })
        .def_property_readonly("uses_i16", [](const DeviceModel& d) { return d.n_cpu_moe() > 0 && d.host().uses_i16(); })
        .def_property_readonly("n_cpu_moe", &DeviceModel::n_cpu_moe)
        .def_property_readonly("gpu_layers", &DeviceModel::gpu_layers)
        .def_property_readonly("weight_bytes_on_device", &DeviceModel::weight_bytes_on_device)
        .def_property_readonly("weight_bytes_read", &DeviceModel::weight_bytes_read)
        .def_property("decode_graphs", &DeviceModel::decode_graphs, &DeviceModel::set_decode_graphs,
                      "decode steps replay a CUDA graph per shape (cuda/decode_graphs.h)")
        .def_property_readonly("decode_graphs_recorded", &DeviceModel::decode_graphs_recorded)
        .def_property_readonly("part_seconds", [](const DeviceModel& d) {
            // The CPU backend's parts (its layers and MoE blocks); the GPU's are gpu_part_seconds.
            return by_part([&](Part p) { return d.host().part_seconds(p); });
        })
        .def_property("part_timing", &DeviceModel::part_timing, &DeviceModel::set_part_timing,
                      "time each op's launches by part with CUDA events (no decode graphs while on)")
        .def_property_readonly("gpu_part_seconds", [](const DeviceModel& d) {
            // GPU stream seconds per part while part_timing was on (cuda/device_model.h).
            return by_part([&](Part p) { return d.gpu_part_seconds(p); });
        })
        .def("reset_gpu_part_seconds", &DeviceModel::reset_gpu_part_seconds);

    py::class_<DeviceSession> session(m, "DeviceSession");
    session
        .def(py::init([](std::shared_ptr<DeviceModel> model, int64_t n_ctx, const std::string& kv_type) {
                 if (n_ctx < 1) throw py::value_error("n_ctx must be positive");
                 const KvType type = kv_type_arg(kv_type);
                 return translated([&] { return new DeviceSession(std::move(model), n_ctx, type); });
             }),
             py::arg("model"), py::arg("n_ctx"), py::arg("kv_type") = "f32")
        .def("prefill_traced", [](DeviceSession&, const py::handle&) -> py::tuple {
            throw py::value_error("prefill_traced runs on the CPU model only (device='cpu')");
        }, py::arg("ids"))
        .def("commit_kv", [](DeviceSession&) {});  // device memory is allocated whole at creation
    bind_session_common(session);

    // Batch's face over device sessions: one stacked forward a step.
    struct DeviceBatch {
        std::shared_ptr<DeviceModel> model;
        int64_t rows;
    };
    py::class_<DeviceBatch>(m, "DeviceBatch")
        .def(py::init([](std::shared_ptr<DeviceModel> model, int64_t rows) {
                 if (rows < 1 || rows > DeviceSession::kMaxChunk)
                     throw py::value_error("rows must be in [1, " + std::to_string(DeviceSession::kMaxChunk) + "]");
                 return new DeviceBatch{std::move(model), rows};
             }),
             py::arg("model"), py::arg("rows") = DeviceSession::kMaxChunk)
        .def_property_readonly("rows", [](const DeviceBatch& b) { return b.rows; })
        .def("step", [](DeviceBatch& b, const py::list& sessions, const py::list& ids, const py::list& all_logits) {
            // One stacked forward: sessions[i] appends ids[i]; returns each one's logits ([n, V] or [V]).
            const size_t n = sessions.size();
            if (ids.size() != n || all_logits.size() != n)
                throw py::value_error("step wants as many id arrays and all_logits flags as sessions");
            std::vector<IdArray> arrays;
            std::vector<py::array_t<float>> outs;
            std::vector<DeviceSessionStep> steps(n);
            int64_t total = 0;
            for (size_t i = 0; i < n; ++i) {
                DeviceSession* s = sessions[i].cast<DeviceSession*>();
                for (size_t j = 0; j < i; ++j)
                    if (steps[j].session == s) throw py::value_error("step: a session appears twice");
                if (s->model() != b.model) throw py::value_error("step: a session of another model");
                arrays.push_back(ids_arg(ids[i], "ids[" + std::to_string(i) + "]"));
                const bool all = all_logits[i].cast<bool>();
                const int64_t len = arrays.back().shape(0), V = s->vocab_size();
                outs.push_back(all ? py::array_t<float>({len, V}) : py::array_t<float>(V));
                steps[i] = DeviceSessionStep{s, arrays.back().data(), len, outs.back().mutable_data(), all};
                total += len;
            }
            if (total > b.rows)
                throw py::value_error("step: " + std::to_string(total) + " tokens exceed one chunk of " +
                                      std::to_string(b.rows));
            released([&] { DeviceSession::step(steps.data(), n); });
            py::list result;
            for (auto& o : outs) result.append(o);
            return result;
        }, py::arg("sessions"), py::arg("ids"), py::arg("all_logits"));
}

}  // namespace ossrun::cuda
