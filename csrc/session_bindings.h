// What ossrun._core's two session types share in their Python bindings: Session (CPU,
// csrc/bindings.cpp) and DeviceSession (CUDA, cuda/device_bindings.cpp) face ossrun/model.py and
// batch.py alike, so their common methods are bound by one template here, with the argument checks
// and the translation of the core's exceptions they both need.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "kv_cache.h"

namespace ossrun::bindings {

namespace py = pybind11;

using IdArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// Runs fn, turning the core's std exceptions into the Python exceptions a caller expects.
template <class F>
auto translated(F&& fn) -> decltype(fn()) {
    try {
        return fn();
    } catch (const std::length_error& e) {
        throw py::value_error(e.what());
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    } catch (const std::out_of_range& e) {
        throw py::index_error(e.what());
    }
}

// fn() with the interpreter lock released (the core's compute runs without it), its exceptions
// translated.
template <class F>
auto released(F&& fn) -> decltype(fn()) {
    return translated([&]() -> decltype(fn()) {
        py::gil_scoped_release nogil;
        return fn();
    });
}

inline KvType kv_type_arg(const std::string& name) {
    return translated([&] { return parse_kv_type(name); });
}

inline const char* kv_type_name(KvType t) { return t == KvType::F16 ? "f16" : t == KvType::BF16 ? "bf16" : "f32"; }

// ids as a contiguous int32 array; what = the argument's name in the error.
inline IdArray ids_arg(const py::handle& ids, const std::string& what) {
    IdArray a = IdArray::ensure(ids);
    if (!a || a.ndim() != 1 || a.shape(0) < 1)
        throw py::value_error(what + " must be a non-empty 1-D sequence of token ids");
    return a;
}

// Appends ids to the session; returns the last token's logits [V], or every token's [n, V].
template <class S>
py::array_t<float> prefill_logits(S& s, const IdArray& ids, bool all_logits) {
    const int64_t n = ids.shape(0), V = s.vocab_size();
    py::array_t<float> logits = all_logits ? py::array_t<float>({n, V}) : py::array_t<float>(V);
    float* out = logits.mutable_data();
    released([&] { s.prefill(ids.data(), n, out, all_logits); });
    return logits;
}

// The methods whose code is the same for both session types (their constructors, prefill_traced
// and commit_kv differ).
template <class S>
void bind_session_common(py::class_<S>& c) {
    c.def_property_readonly("kv_type", [](const S& s) { return std::string(kv_type_name(s.kv_type())); })
        .def("prefill", [](S& s, const py::handle& ids, bool all_logits) {
            return prefill_logits(s, ids_arg(ids, "ids"), all_logits);
        }, py::arg("ids"), py::arg("all_logits") = false)
        .def_property_readonly("n_past", &S::n_past)
        .def_property_readonly("n_ctx", &S::n_ctx)
        .def_property_readonly("kv_bytes", &S::kv_bytes)
        .def_property_readonly("tokens", &S::tokens)
        .def("truncate", [](S& s, int64_t n) { released([&] { s.truncate(n); }); })
        .def("truncates_in_place", &S::truncates_in_place)
        .def("reset", &S::reset)
        .def("fill_synthetic", [](S& s, int64_t n) { released([&] { s.fill_synthetic(n); }); });
}

}  // namespace ossrun::bindings
