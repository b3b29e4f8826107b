#include "forward.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace ossrun {

namespace {

// Activation `a` from one backend to another, through host memory.
void hand_over(Activation a, Backend& from, Backend& to, int64_t n_floats) {
    if (&from == &to) return;
    if (float* dst = to.host_rows(a)) {
        from.download(a, dst);
    } else if (float* src = from.host_rows(a)) {
        to.upload(a, src);
    } else {
        std::vector<float> staging(static_cast<size_t>(n_floats));
        from.download(a, staging.data());
        to.upload(a, staging.data());
    }
}

void append_residual(Backend& b, int64_t n_floats, std::vector<float>* trace) {
    if (!trace) return;
    const size_t at = trace->size();
    trace->resize(at + size_t(n_floats));
    if (const float* rows = b.host_rows(Activation::kResidual)) std::copy_n(rows, n_floats, trace->data() + at);
    else b.download(Activation::kResidual, trace->data() + at);
}

}  // namespace

ForwardPlan ForwardPlan::on(Backend& b, int64_t n_layers) {
    ForwardPlan p;
    p.layers.assign(size_t(n_layers), LayerPlacement{&b, &b});
    p.output = &b;
    return p;
}

void forward_pass(const ModelConfig& c, const Batch& batch, const ForwardPlan& plan, std::vector<float>* trace) {
    if (int64_t(plan.layers.size()) != c.block_count || !plan.output)
        throw std::logic_error("forward: the plan must place every layer and the output");
    std::vector<Backend*> used{plan.output};
    for (const LayerPlacement& p : plan.layers)
        for (Backend* b : {p.attention, p.moe}) {
            if (!b) throw std::logic_error("forward: a layer part without a backend");
            if (std::find(used.begin(), used.end(), b) == used.end()) used.push_back(b);
        }
    for (Backend* b : used) b->begin(batch);

    const int64_t rows = batch.T * c.embedding_length;
    const float scale = 1.0f / std::sqrt(float(c.key_length));
    const SwigluParams swiglu{c.swiglu_alpha, c.swiglu_limit};
    Backend* stream_at = plan.layers[0].attention;  // where the residual stream is
    stream_at->embed();
    for (int64_t l = 0; l < c.block_count; ++l) {
        Backend& a = *plan.layers[size_t(l)].attention;
        Backend& m = *plan.layers[size_t(l)].moe;
        hand_over(Activation::kResidual, *stream_at, a, rows);
        stream_at = &a;
        // Even (sliding) layers see the last W positions, the query included; odd layers all.
        const AttentionParams attention{c.is_sliding(l) ? c.sliding_window : 0, scale};
        a.norm(l, LayerNorm::kAttention);      // residual -> normed
        a.attention(l, attention);             // normed -> proj
        a.add_residual();                      // residual += proj
        append_residual(a, rows, trace);
        a.norm(l, LayerNorm::kPostAttention);  // residual -> normed
        hand_over(Activation::kNormed, a, m, rows);
        m.moe(l, swiglu);                      // normed -> proj
        hand_over(Activation::kProj, m, a, rows);
        a.add_residual();                      // residual += proj
        append_residual(a, rows, trace);
    }
    hand_over(Activation::kResidual, *stream_at, *plan.output, rows);
    plan.output->logits();
}

}  // namespace ossrun
