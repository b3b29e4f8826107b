// CUDA graphs of the decode step (a few rows a segment, every layer on the GPU): the kernels of
// the layers, from the first norm to the last residual add, recorded once per shape and replayed
// as one launch after that, so a step no longer pays ~15 kernel launches a layer. A graph bakes
// in its kernels' arguments: device pointers (the activation buffers and the weights, fixed for
// the model; each segment's KV cache, named in the key by its id, never reused), the rows per
// segment and the attention parts; the positions are read from the device buffer that begin()
// fills each step. A step of another shape records a graph of its own. The embedding before and the logits after run as
// ordinary launches.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace ossrun::cuda {

class DecodeGraphs {
public:
    using Key = std::vector<int64_t>;

    explicit DecodeGraphs(cudaStream_t stream) : stream_(stream) {}
    ~DecodeGraphs() { clear(); }
    DecodeGraphs(const DecodeGraphs&) = delete;
    DecodeGraphs& operator=(const DecodeGraphs&) = delete;

    // Launches the graph recorded for `key` on the stream: true, with the weight bytes its
    // matmuls read; false when there is none.
    bool replay(const Key& key, uint64_t& weight_bytes);
    // Starts capturing the stream's work (nothing queued from here runs until end_record).
    void begin_record();
    // Ends the capture, keeps it as the graph of `key` and launches it.
    void end_record(const Key& key, uint64_t weight_bytes);
    // Ends a capture that an error interrupted, dropping what it held; nothing when none runs.
    void abort_record() noexcept;
    void clear() noexcept;
    size_t size() const { return graphs_.size(); }

    static constexpr size_t kMaxGraphs = 32;  // then all are dropped and recorded anew

private:
    struct Recorded {
        Key key;
        cudaGraphExec_t exec;
        uint64_t weight_bytes;
    };
    cudaStream_t stream_;
    std::vector<Recorded> graphs_;
    bool recording_ = false;
};

}  // namespace ossrun::cuda
