#include "decode_graphs.h"

#include "cuda_check.h"

namespace ossrun::cuda {

bool DecodeGraphs::replay(const Key& key, uint64_t& weight_bytes) {
    for (const Recorded& r : graphs_)
        if (r.key == key) {
            check(cudaGraphLaunch(r.exec, stream_), "launching the decode step's graph");
            weight_bytes = r.weight_bytes;
            return true;
        }
    return false;
}

void DecodeGraphs::begin_record() {
    if (graphs_.size() >= kMaxGraphs) clear();
    // Thread-local: another thread's unrelated CUDA calls do not break this capture.
    check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "capturing the decode step");
    recording_ = true;
}

void DecodeGraphs::end_record(const Key& key, uint64_t weight_bytes) {
    cudaGraph_t graph = nullptr;
    recording_ = false;
    check(cudaStreamEndCapture(stream_, &graph), "capturing the decode step");
    cudaGraphExec_t exec = nullptr;
    const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    check(made, "instantiating the decode step's graph");
    graphs_.push_back({key, exec, weight_bytes});
    check(cudaGraphLaunch(exec, stream_), "launching the decode step's graph");
}

void DecodeGraphs::abort_record() noexcept {
    if (!recording_) return;
    recording_ = false;
    cudaGraph_t graph = nullptr;
    if (cudaStreamEndCapture(stream_, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
    cudaGetLastError();  // the capture's error is reported by whoever threw
}

void DecodeGraphs::clear() noexcept {
    for (Recorded& r : graphs_) cudaGraphExecDestroy(r.exec);
    graphs_.clear();
}

}  // namespace ossrun::cuda
