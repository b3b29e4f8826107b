#include "cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "attention_split.h"
#include "moe_ops.h"

namespace ossrun {

namespace {
// Matmuls of at most this many tokens stream their weights (the multi-token GEMVs, gemv.cpp).
constexpr int64_t kDecodeMaxTokens = 8;
}  // namespace

void CpuBackend::begin(const Batch& batch) {
    if (batch.T > s_.max_chunk) throw std::invalid_argument("forward: chunk size out of range");
    batch_ = &batch;
    for (size_t i = 0, row = 0; i < batch.n_segs; row += size_t(batch.segs[i].n), ++i)
        for (int64_t t = 0; t < batch.segs[i].n; ++t) {
            s_.positions[row + size_t(t)] = batch.segs[i].pos0 + t;
            s_.row_segment[row + size_t(t)] = int32_t(i);
        }
    rope_ready_ = false;  // computed by the first attention block (a device model's CPU backend
                          // may run MoE blocks only)
}

void CpuBackend::embed() {
    const int64_t H = m_.config_.embedding_length, V = m_.config_.vocab_size;
    for (size_t i = 0, row = 0; i < batch_->n_segs; row += size_t(batch_->segs[i].n), ++i) {
        const Segment& g = batch_->segs[i];
        for (int64_t t = 0; t < g.n; ++t) {
            if (g.tokens[t] < 0 || g.tokens[t] >= V)
                throw std::out_of_range("token id " + std::to_string(g.tokens[t]) + " is outside the vocabulary [0, " +
                                        std::to_string(V) + ")");
            m_.kernels_->decode_row(m_.weights_.token_embd, 0, g.tokens[t], s_.residual.data() + (int64_t(row) + t) * H);
        }
    }
}

void CpuBackend::norm(int64_t layer, LayerNorm which) {
    const LayerWeights& w = m_.weights_.layers[size_t(layer)];
    rmsnorm_rows(s_.residual.data(), which == LayerNorm::kAttention ? w.attn_norm : w.post_attention_norm,
                 s_.normed.data(), batch_->T);
}

void CpuBackend::add_residual() {
    float* dst = s_.residual.data();
    const float* src = s_.proj.data();
    for (int64_t i = 0, n = batch_->T * m_.config_.embedding_length; i < n; ++i) dst[i] += src[i];
}

void CpuBackend::logits() {
    // Only the positions whose logits are wanted, of all segments in one matmul (the output
    // matrix is the largest dense read of a decode step).
    const Part caller = m_.part_timer_.switch_to(Part::kOutput);
    const int64_t H = m_.config_.embedding_length, V = m_.config_.vocab_size;
    const Segment* segs = batch_->segs;
    const size_t n_segs = batch_->n_segs;
    int64_t n_out = 0;
    for (size_t i = 0, row = 0; i < n_segs; row += size_t(segs[i].n), ++i) {
        const int64_t first = segs[i].all_logits ? 0 : segs[i].n - 1, count = segs[i].n - first;
        rmsnorm_rows(s_.residual.data() + (int64_t(row) + first) * H, m_.weights_.output_norm,
                     s_.normed.data() + n_out * H, count);
        n_out += count;
    }
    float* logits = segs[0].logits;
    if (n_segs > 1) {
        if (int64_t(s_.logits.size()) < n_out * V) s_.logits.resize(size_t(n_out * V));
        logits = s_.logits.data();
    }
    MatmulArgs out = matmul_args(m_.weights_.output, 0, s_.normed.data(), n_out, logits, nullptr);
    attach_i16(s_.normed.data(), n_out, H, out);
    matmuls(&out, 1);
    if (n_segs > 1)
        for (size_t i = 0, o = 0; i < n_segs; ++i) {
            const int64_t count = segs[i].all_logits ? segs[i].n : 1;
            std::copy_n(logits + int64_t(o) * V, count * V, segs[i].logits);
            o += size_t(count);
        }
    m_.part_timer_.switch_to(caller);
}

float* CpuBackend::host_rows(Activation a) {
    switch (a) {
        case Activation::kResidual: return s_.residual.data();
        case Activation::kNormed: return s_.normed.data();
        case Activation::kProj: return s_.proj.data();
    }
    return nullptr;
}

void CpuBackend::download(Activation a, float* host) {
    std::copy_n(host_rows(a), batch_->T * m_.config_.embedding_length, host);
}

void CpuBackend::upload(Activation a, const float* host) {
    std::copy_n(host, batch_->T * m_.config_.embedding_length, host_rows(a));
}

void CpuBackend::quantize_i16(const float* x, int64_t n, int64_t width) {
    if (int64_t(s_.x_i16.size()) < n * width) {
        s_.x_i16.resize(size_t(n * width));
        s_.x_i16_scale.resize(size_t(n * width / kBlockElems));
    }
    int16_t* q = s_.x_i16.data();
    float* scale = s_.x_i16_scale.data();
    // A decode step's rows (up to 8 sequences x 4 experts) take microseconds: one thread, no
    // hand-off whose wait a busy machine can stretch to a time slice.
    m_.pool_.parallel_for(n, 32, [&](int64_t r0, int64_t r1) {
        m_.kernels_->quantize_i16(x + r0 * width, (r1 - r0) * width, q + r0 * width, scale + r0 * width / kBlockElems);
    });
}

void CpuBackend::attach_i16(const float* x, int64_t T, int64_t width, MatmulArgs& a) {
    // Q8_0 and MXFP4 matmuls always take int16 activations (the float32 MXFP4 GEMV is bound by
    // its instructions on Zen 5, gemv_i16.cpp); the other dense quants only as GEMVs (their
    // GEMMs decode float panels).
    const DType type = a.W->type;
    if (!m_.use_i16_ || !(type == DType::Q8_0 || type == DType::MXFP4 ||
                       (is_dense_quant(type) && T < 4)))
        return;
    quantize_i16(x, T, width);
    a.x_i16 = s_.x_i16.data();
    a.x_i16_scale = s_.x_i16_scale.data();
}

void CpuBackend::rmsnorm_rows(const float* x, const float* g, float* y, int64_t T) {
    const int64_t H = m_.config_.embedding_length;
    m_.pool_.parallel_for(T, T <= kDecodeMaxTokens ? T : 1, [&](int64_t t0, int64_t t1) {  // decode: one thread
        for (int64_t t = t0; t < t1; ++t)
            m_.kernels_->rmsnorm(x + t * H, g, y + t * H, H, m_.config_.rms_norm_eps);
    });
}

MatmulArgs CpuBackend::matmul_args(const Matrix& W, int64_t mat, const float* x, int64_t T, float* y,
                              const float* bias) const {
    MatmulArgs a;
    a.W = &W;
    a.mat = mat;
    a.x = x;
    a.ldx = W.cols;
    a.n_tok = T;
    a.y = y;
    a.ldy = W.rows;
    a.bias = bias;
    return a;
}

void CpuBackend::matmuls(const MatmulArgs* jobs, size_t n_jobs) {
    if (n_jobs == 0) return;
    // A matmul's time goes to its own part: experts, the router, the output head, the others.
    const Part caller = m_.part_timer_.current();
    const Part own = jobs[0].W->n_mats > 1    ? Part::kExperts
                     : caller == Part::kMoeOther ? Part::kRouter
                     : caller == Part::kOutput   ? Part::kOutput
                                                 : Part::kDenseMatmul;
    m_.part_timer_.switch_to(own);
    struct Resume {
        PartTimer& t;
        Part p;
        ~Resume() { t.switch_to(p); }
    } resume{m_.part_timer_, caller};
    for (size_t i = 0; i < n_jobs; ++i) m_.weight_bytes_read_ += uint64_t(jobs[i].W->rows) * jobs[i].W->row_bytes;
    // The rows of all jobs form one index space handed out in grains. Prefill is compute-bound:
    // grains of 32 rows (one int16 GEMM panel) keep both threads busy to the end. Decode streams
    // weights from memory: each thread takes one long contiguous run of a job (rows / threads),
    // which its prefetches and the hardware's can follow. A batched decode step of up to 8
    // sequences is decode too: in 32-row grains its 4-token output head took 1.8x the time of
    // one token's (every grain's start unprefetched, the threads' runs interleaved).
    auto grain_of = [&](const MatmulArgs& j) {
        if (j.n_tok > kDecodeMaxTokens) return int64_t(32);
        const int64_t per_thread = (j.W->rows + m_.pool_.size() - 1) / m_.pool_.size();
        return std::max<int64_t>(16, (per_thread + 15) / 16 * 16);
    };
    int64_t total = 0;
    uint64_t work = 0;  // weight bytes times tokens
    for (size_t i = 0; i < n_jobs; ++i) {
        total += (jobs[i].W->rows + grain_of(jobs[i]) - 1) / grain_of(jobs[i]);
        work += uint64_t(jobs[i].W->rows) * jobs[i].W->row_bytes * uint64_t(jobs[i].n_tok);
    }
    // A tiny matmul (the router of a decode step: 32 rows) is done before a second thread would
    // have woken: one thread (under load the hand-off cost a decode step's routers 10 ms).
    const int64_t grains_per_task = work < (uint64_t(4) << 20) ? total : 1;
    m_.pool_.parallel_for(total, grains_per_task, [&](int64_t g0, int64_t g1) {
        for (int64_t g = g0; g < g1; ++g) {
            int64_t base = 0;
            for (size_t i = 0; i < n_jobs; ++i) {
                const MatmulArgs& j = jobs[i];
                const int64_t grain = grain_of(j), n = (j.W->rows + grain - 1) / grain;
                if (g < base + n) {
                    const int64_t r0 = (g - base) * grain;
                    m_.kernels_->matmul(j, r0, std::min(j.W->rows, r0 + grain));
                    break;
                }
                base += n;
            }
        }
    });
}

void CpuBackend::attention(int64_t layer, const AttentionParams& params) {
    const Part caller = m_.part_timer_.switch_to(Part::kAttention);
    const LayerWeights& w = m_.weights_.layers[size_t(layer)];
    const int64_t d = m_.config_.key_length, nq = m_.config_.head_count, nkv = m_.config_.head_count_kv;
    const int64_t half = d / 2, T = batch_->T;
    const Segment* segs = batch_->segs;

    MatmulArgs qkv[3] = {matmul_args(w.attn_q, 0, s_.normed.data(), T, s_.q.data(), w.attn_q_b),
                         matmul_args(w.attn_k, 0, s_.normed.data(), T, s_.k.data(), w.attn_k_b),
                         matmul_args(w.attn_v, 0, s_.normed.data(), T, s_.v.data(), w.attn_v_b)};
    attach_i16(s_.normed.data(), T, m_.config_.embedding_length, qkv[0]);
    for (MatmulArgs& a : qkv) a.x_i16 = qkv[0].x_i16, a.x_i16_scale = qkv[0].x_i16_scale;
    matmuls(qkv, 3);

    // RoPE on q and k (not v), then append K/V to each row's cache at its position.
    if (!rope_ready_) {
        rope_cos_sin(m_.rope_, s_.positions.data(), T, s_.rope_cos.data(), s_.rope_sin.data());
        rope_ready_ = true;
    }
    for (int64_t t = 0; t < T; ++t) {
        KvCache* kv = segs[s_.row_segment[size_t(t)]].kv;
        if (!kv) throw std::logic_error("attention on the CPU: a segment without a CPU KV cache");
        const float* c = s_.rope_cos.data() + t * half;
        const float* sn = s_.rope_sin.data() + t * half;
        apply_rope(s_.q.data() + t * nq * d, nq, d, c, sn);
        apply_rope(s_.k.data() + t * nkv * d, nkv, d, c, sn);
        kv->store(layer, s_.positions[size_t(t)], s_.k.data() + t * nkv * d, s_.v.data() + t * nkv * d);
    }
    attend(layer, params);

    MatmulArgs out = matmul_args(w.attn_output, 0, s_.attn.data(), T, s_.proj.data(), w.attn_output_b);
    attach_i16(s_.attn.data(), T, m_.config_.q_width(), out);
    matmuls(&out, 1);
    m_.part_timer_.switch_to(caller);
}

void CpuBackend::attend(int64_t layer, const AttentionParams& params) {
    const LayerWeights& w = m_.weights_.layers[size_t(layer)];
    const int64_t d = m_.config_.key_length, nq = m_.config_.head_count, nkv = m_.config_.head_count_kv;
    const int64_t group = nq / nkv, T = batch_->T;
    const Segment* segs = batch_->segs;

    const int64_t window = params.window;
    auto args_of = [&](int64_t t, int64_t g) {
        const int64_t p = s_.positions[size_t(t)];
        const KvCache& kv = *segs[s_.row_segment[size_t(t)]].kv;
        AttentionArgs a;
        a.q = s_.q.data() + (t * nq + g * group) * d;
        a.k = kv.k(layer, g);
        a.v = kv.v(layer, g);
        a.v_stride = kv.v_stride();
        a.kv_type = kv.type();
        a.cap = kv.capacity(layer);
        a.j_lo = window ? std::max<int64_t>(0, p - window + 1) : 0;
        a.j_hi = p;
        a.n_heads = group;
        a.head_dim = d;
        a.sinks = w.attn_sinks + g * group;
        a.scale = params.scale;
        a.out = s_.attn.data() + (t * nq + g * group) * d;
        return a;
    };
    // The group's query heads share every key and value load. Prefill: one task per kv head and
    // block of up to kRowBlock consecutive rows of one segment, which share each tile of keys
    // while it is in cache; the threads take the blocks of one kv head together.
    constexpr int64_t kRowBlock = 16;
    const bool split = T * nkv < kAttentionSplitMaxTasks;
    if (!split) {
        std::vector<int64_t>& starts = s_.attn_task_first;  // first row of each block, then T
        starts.clear();
        for (int64_t t = 0; t < T;) {
            starts.push_back(t);
            const int64_t t0 = t;
            while (++t < T && t - t0 < kRowBlock && s_.row_segment[size_t(t)] == s_.row_segment[size_t(t0)]) {}
        }
        starts.push_back(T);
        const int64_t n_blocks = int64_t(starts.size()) - 1;
        m_.pool_.parallel_for(n_blocks * nkv, 1, [&](int64_t k0, int64_t k1) {
            thread_local std::vector<float> scores;
            const size_t need = size_t(attention_scratch_floats(group, kRowBlock));
            if (scores.size() < need) scores.resize(need);
            for (int64_t k = k0; k < k1; ++k) {
                const int64_t g = k / n_blocks, b = k % n_blocks, t0 = starts[size_t(b)];
                AttentionArgs a = args_of(t0, g);
                a.n_rows = starts[size_t(b + 1)] - t0;
                a.row_stride = nq * d;
                a.window = window;
                a.scores = scores.data();
                m_.kernels_->attention(a);
            }
        });
    } else {
        // Decode steps have few (token, kv head) rows: each long row is cut into chunks of keys,
        // one task each (flash-decoding, attention_split.h), merged below.
        std::vector<int64_t>& first = s_.attn_task_first;  // first task of row i = t * nkv + g
        first.resize(size_t(T * nkv + 1));
        first[0] = 0;
        for (int64_t i = 0; i < T * nkv; ++i) {
            const AttentionArgs a = args_of(i / nkv, i % nkv);
            first[size_t(i + 1)] = first[size_t(i)] + attention_chunks(a.j_lo, a.j_hi);
        }
        const int64_t n_tasks = first[size_t(T * nkv)];
        if (n_tasks > T * nkv) {
            s_.attn_part_acc.resize(size_t(n_tasks * group * d));
            s_.attn_part_max.resize(size_t(n_tasks * group));
            s_.attn_part_sum.resize(size_t(n_tasks * group));
        }
        m_.pool_.parallel_for(n_tasks, 1, [&](int64_t k0, int64_t k1) {
            thread_local std::vector<float> scores;
            const size_t need = size_t(attention_scratch_floats(group, 1));
            if (scores.size() < need) scores.resize(need);
            // The row of task k0, then walked forward.
            int64_t i = std::upper_bound(first.begin(), first.end(), k0) - first.begin() - 1;
            for (int64_t k = k0; k < k1; ++k) {
                while (first[size_t(i + 1)] <= k) ++i;
                AttentionArgs a = args_of(i / nkv, i % nkv);
                a.scores = scores.data();
                const int64_t parts = first[size_t(i + 1)] - first[size_t(i)];
                if (parts > 1) {
                    attention_chunk_range(a.j_lo, a.j_hi, k - first[size_t(i)], a.j_lo, a.j_hi);
                    a.out = s_.attn_part_acc.data() + k * group * d;
                    a.part_max = s_.attn_part_max.data() + k * group;
                    a.part_sum = s_.attn_part_sum.data() + k * group;
                }
                m_.kernels_->attention(a);
            }
        });
        if (n_tasks > T * nkv)
            m_.pool_.parallel_for(T * nkv, 1, [&](int64_t i0, int64_t i1) {
                for (int64_t i = i0; i < i1; ++i) {
                    const int64_t k = first[size_t(i)], parts = first[size_t(i + 1)] - k;
                    if (parts < 2) continue;
                    const AttentionArgs a = args_of(i / nkv, i % nkv);
                    merge_attention_parts(s_.attn_part_acc.data() + k * group * d, s_.attn_part_max.data() + k * group,
                                          s_.attn_part_sum.data() + k * group, parts, group, d, a.sinks, a.out);
                }
            });
    }
}

void CpuBackend::moe(int64_t layer, const SwigluParams& params) {
    const Part caller = m_.part_timer_.switch_to(Part::kMoeOther);
    const LayerWeights& w = m_.weights_.layers[size_t(layer)];
    if (!w.router.data) throw std::logic_error("the MoE block of layer " + std::to_string(layer) + " is not on the CPU");
    const int64_t T = batch_->T;
    const int64_t H = m_.config_.embedding_length, I = m_.config_.expert_feed_forward_length;
    const int64_t E = m_.config_.expert_count, k = m_.config_.expert_used_count;

    MatmulArgs router = matmul_args(w.router, 0, s_.normed.data(), T, s_.router_logits.data(), w.router_b);
    matmuls(&router, 1);
    for (int64_t t = 0; t < T; ++t)
        router_topk(s_.router_logits.data() + t * E, E, k, s_.expert_idx.data() + t * k,
                    s_.expert_weight.data() + t * k);

    // Group the (token, expert) pairs by expert.
    std::fill(s_.expert_count.begin(), s_.expert_count.end(), 0);
    for (int64_t p = 0; p < T * k; ++p) ++s_.expert_count[size_t(s_.expert_idx[size_t(p)])];
    s_.expert_offset[0] = 0;
    for (int64_t e = 0; e < E; ++e) s_.expert_offset[size_t(e + 1)] = s_.expert_offset[size_t(e)] + s_.expert_count[size_t(e)];
    std::vector<int64_t>& fill = s_.expert_count;  // reused as each expert's fill cursor
    for (int64_t e = 0; e < E; ++e) fill[size_t(e)] = s_.expert_offset[size_t(e)];
    for (int64_t t = 0; t < T; ++t) {
        int32_t* mine = s_.token_pair.data() + t * k;
        for (int64_t j = 0; j < k; ++j) {
            const int64_t p = fill[size_t(s_.expert_idx[size_t(t * k + j)])]++;
            s_.pair_token[size_t(p)] = int32_t(t);
            s_.pair_weight[size_t(p)] = s_.expert_weight[size_t(t * k + j)];
            mine[j] = int32_t(p);
        }
        std::sort(mine, mine + k);  // the order the weighted sum below adds them in
    }

    // Each pair's input row, gathered in parallel. The fast precision quantizes each token's row
    // once (not once per routed expert) and gathers the int16 rows; the float rows are only
    // needed by weights whose matmuls read them (matmul_reads_int16_only, kernels.h).
    const bool i16 = m_.use_i16_;
    const int64_t P = T * k, HB = H / kBlockElems;
    // A decode step's gathers, SwiGLU and sums take microseconds: the calling thread alone (a
    // hand-off waits for the second thread, which a busy machine stretches to a time slice).
    const bool decode = T <= kDecodeMaxTokens;
    if (i16) {
        quantize_i16(s_.normed.data(), T, H);
        if (int64_t(s_.expert_x_i16.size()) < P * H) {
            s_.expert_x_i16.resize(size_t(P * H));
            s_.expert_x_i16_scale.resize(size_t(P * HB));
        }
        m_.pool_.parallel_for(P, decode ? P : 16, [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) {
                const int64_t t = s_.pair_token[size_t(p)];
                std::copy_n(s_.x_i16.data() + t * H, H, s_.expert_x_i16.data() + p * H);
                std::copy_n(s_.x_i16_scale.data() + t * HB, HB, s_.expert_x_i16_scale.data() + p * HB);
            }
        });
    }
    if (!i16 || !matmul_reads_int16_only(w.gate_exps) || !matmul_reads_int16_only(w.up_exps))
        m_.pool_.parallel_for(P, decode ? P : 16, [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p)
                std::copy_n(s_.normed.data() + int64_t(s_.pair_token[size_t(p)]) * H, H, s_.expert_x.data() + p * H);
        });

    // Every routed expert's gate and up projections in one parallel loop, then SwiGLU, then
    // every down projection in another: real GEMMs over each expert's tokens.
    // The fast precision hands these GEMMs (and the decode GEMVs) int16 activations.
    // One job per routed expert: its pairs' rows of `in` [., in_w] -> the same rows of `out`.
    auto add_expert_jobs = [&](const Matrix& W, const float* bias, const float* in, const int16_t* in_i16,
                               const float* in_i16_scale, int64_t in_w, float* out) {
        for (int64_t e = 0; e < E; ++e) {
            const int64_t p0 = s_.expert_offset[size_t(e)], n = s_.expert_offset[size_t(e + 1)] - p0;
            if (n == 0) continue;
            MatmulArgs a = matmul_args(W, e, in + p0 * in_w, n, out + p0 * W.rows, bias + e * W.rows);
            if (i16) {
                a.x_i16 = in_i16 + p0 * in_w;
                a.x_i16_scale = in_i16_scale + p0 * in_w / kBlockElems;
            }
            s_.jobs.push_back(a);
        }
    };
    s_.jobs.clear();
    add_expert_jobs(w.gate_exps, w.gate_exps_b, s_.expert_x.data(), s_.expert_x_i16.data(),
                    s_.expert_x_i16_scale.data(), H, s_.expert_gate.data());
    add_expert_jobs(w.up_exps, w.up_exps_b, s_.expert_x.data(), s_.expert_x_i16.data(),
                    s_.expert_x_i16_scale.data(), H, s_.expert_up.data());
    matmuls(s_.jobs.data(), s_.jobs.size());
    m_.pool_.parallel_for(P, decode ? P : 8, [&](int64_t p0, int64_t p1) {
        m_.kernels_->swiglu(s_.expert_gate.data() + p0 * I, s_.expert_up.data() + p0 * I, s_.expert_h.data() + p0 * I,
                         (p1 - p0) * I, params.alpha, params.limit);
    });
    if (i16) quantize_i16(s_.expert_h.data(), P, I);
    s_.jobs.clear();
    add_expert_jobs(w.down_exps, w.down_exps_b, s_.expert_h.data(), s_.x_i16.data(), s_.x_i16_scale.data(), I,
                    s_.expert_y.data());
    matmuls(s_.jobs.data(), s_.jobs.size());

    // Weighted sum, a token per task, its pairs in ascending order; the down bias sits inside it
    // (MODEL.md §2.6 step 6).
    m_.pool_.parallel_for(T, decode ? T : 4, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            float* dst = s_.proj.data() + t * H;
            std::fill_n(dst, H, 0.0f);
            for (int64_t j = 0; j < k; ++j) {
                const int64_t p = s_.token_pair[size_t(t * k + j)];
                const float* y = s_.expert_y.data() + p * H;
                const float wt = s_.pair_weight[size_t(p)];
                for (int64_t c = 0; c < H; ++c) dst[c] += wt * y[c];
            }
        }
    });
    m_.part_timer_.switch_to(caller);
}

}  // namespace ossrun
