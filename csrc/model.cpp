#include "model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "attention_split.h"
#include "moe_ops.h"
#include "mxfp4_interleave.h"

namespace ossrun {

namespace {
// Matmuls of at most this many tokens stream their weights (the multi-token GEMVs, gemv.cpp).
constexpr int64_t kDecodeMaxTokens = 8;
}  // namespace

Scratch::Scratch(const ModelConfig& c, int64_t chunk) : max_chunk(chunk) {
    const size_t T = size_t(chunk), H = size_t(c.embedding_length), I = size_t(c.expert_feed_forward_length);
    const size_t k = size_t(c.expert_used_count), half = size_t(c.key_length / 2);
    residual.resize(T * H);
    normed.resize(T * H);
    q.resize(T * size_t(c.q_width()));
    this->k.resize(T * size_t(c.kv_width()));
    v.resize(T * size_t(c.kv_width()));
    attn.resize(T * size_t(c.q_width()));
    proj.resize(T * H);
    router_logits.resize(T * size_t(c.expert_count));
    rope_cos.resize(T * half);
    rope_sin.resize(T * half);
    positions.resize(T);
    expert_idx.resize(T * k);
    expert_weight.resize(T * k);
    const size_t E = size_t(c.expert_count), P = T * k;
    expert_count.resize(E);
    expert_offset.resize(E + 1);
    pair_token.resize(P);
    pair_weight.resize(P);
    token_pair.resize(P);
    expert_x.resize(P * H);
    expert_gate.resize(P * I);
    expert_up.resize(P * I);
    expert_h.resize(P * I);
    expert_y.resize(P * H);
    jobs.reserve(2 * E);
    row_segment.resize(T);
}

Model::Model(const ModelConfig& config, ModelWeights weights, const ModelOptions& options)
    : config_(config),
      weights_(std::move(weights)),
      kernels_(select_kernel_table(options.isa)),
      pool_(options.threads),
      rope_(make_rope_table(config)),
      use_i16_(options.precision == "fast" && kernels_->quantize_i16 != nullptr) {
    if (options.precision != "fast" && options.precision != "f32")
        throw std::invalid_argument("precision must be 'fast' or 'f32'");
}

size_t Model::interleave_q8_0(bool release_source_pages) {
    if (!use_i16_ || !kernels_->fast_row_groups) return 0;
    std::lock_guard<std::mutex> lock(forward_mutex_);
    interleaved_.interleave(weights_, pool_, release_source_pages);
    return interleaved_.bytes();
}

size_t Model::interleave_mxfp4_experts_in_place() {
    if (!use_i16_ || !kernels_->fast_row_groups) return 0;
    std::lock_guard<std::mutex> lock(forward_mutex_);
    const size_t n = ossrun::interleave_mxfp4_experts_in_place(weights_, pool_);
    interleaved_mxfp4_bytes_ += n;
    return n;
}

void Model::quantize_i16(Scratch& s, const float* x, int64_t n, int64_t width) {
    if (int64_t(s.x_i16.size()) < n * width) {
        s.x_i16.resize(size_t(n * width));
        s.x_i16_scale.resize(size_t(n * width / kBlockElems));
    }
    int16_t* q = s.x_i16.data();
    float* scale = s.x_i16_scale.data();
    // A decode step's rows (up to 8 sequences x 4 experts) take microseconds: one thread, no
    // hand-off whose wait a busy machine can stretch to a time slice.
    pool_.parallel_for(n, 32, [&](int64_t r0, int64_t r1) {
        kernels_->quantize_i16(x + r0 * width, (r1 - r0) * width, q + r0 * width, scale + r0 * width / kBlockElems);
    });
}

void Model::attach_i16(Scratch& s, const float* x, int64_t T, int64_t width, MatmulArgs& a) {
    // Q8_0 and MXFP4 matmuls always take int16 activations (the float32 MXFP4 GEMV is bound by
    // its instructions on Zen 5, gemv_i16.cpp); the other dense quants only as GEMVs (their
    // GEMMs decode float panels).
    const DType type = a.W->type;
    if (!use_i16_ || !(type == DType::Q8_0 || type == DType::MXFP4 ||
                       (is_dense_quant(type) && T < 4)))
        return;
    quantize_i16(s, x, T, width);
    a.x_i16 = s.x_i16.data();
    a.x_i16_scale = s.x_i16_scale.data();
}

void Model::forward(KvCache& kv, Scratch& s, const int32_t* tokens, int64_t T, int64_t pos0,
                    float* logits, bool all_logits) {
    Segment seg;
    seg.kv = &kv;
    seg.tokens = tokens;
    seg.n = T;
    seg.pos0 = pos0;
    seg.logits = logits;
    seg.all_logits = all_logits;
    forward_batch(&seg, 1, s);
}

void Model::forward_batch(const Segment* segs, size_t n_segs, Scratch& s) {
    if (n_segs < 1) throw std::invalid_argument("forward: no segments");
    int64_t T = 0, n_out = 0;
    for (size_t i = 0; i < n_segs; ++i) {
        const Segment& g = segs[i];
        if (!g.kv || !g.tokens || !g.logits || g.n < 1) throw std::invalid_argument("forward: empty segment");
        if (g.pos0 < 0 || g.pos0 + g.n > g.kv->n_ctx()) throw std::invalid_argument("forward: context overflow");
        for (size_t j = 0; j < i; ++j)
            if (segs[j].kv == g.kv) throw std::invalid_argument("forward: two segments share one KV cache");
        T += g.n;
        n_out += g.all_logits ? g.n : 1;
    }
    if (T > s.max_chunk) throw std::invalid_argument("forward: chunk size out of range");
    std::lock_guard<std::mutex> lock(forward_mutex_);
    struct StopTimer {
        PartTimer& t;
        ~StopTimer() { t.stop(); }
    } stop_timer{part_timer_};
    part_timer_.switch_to(Part::kOther);
    const int64_t H = config_.embedding_length, V = config_.vocab_size;

    for (size_t i = 0, row = 0; i < n_segs; row += size_t(segs[i].n), ++i) {
        embed(s, segs[i].tokens, segs[i].n, int64_t(row));
        for (int64_t t = 0; t < segs[i].n; ++t) {
            s.positions[row + size_t(t)] = segs[i].pos0 + t;
            s.row_segment[row + size_t(t)] = int32_t(i);
        }
    }
    rope_cos_sin(rope_, s.positions.data(), T, s.rope_cos.data(), s.rope_sin.data());

    for (int64_t l = 0; l < config_.block_count; ++l) {
        const LayerWeights& w = weights_.layers[size_t(l)];
        rmsnorm_rows(s.residual.data(), w.attn_norm, s.normed.data(), T);
        part_timer_.switch_to(Part::kAttention);
        attention_block(segs, s, l, T);                     // -> s.proj
        part_timer_.switch_to(Part::kOther);
        add_into(s.residual.data(), s.proj.data(), T * H);  // residual
        trace(s, T);
        rmsnorm_rows(s.residual.data(), w.post_attention_norm, s.normed.data(), T);
        part_timer_.switch_to(Part::kMoeOther);
        moe_block(s, l, T);                                 // -> s.proj
        part_timer_.switch_to(Part::kOther);
        add_into(s.residual.data(), s.proj.data(), T * H);  // residual
        trace(s, T);
    }

    // Final norm and unembedding, only for the positions whose logits are wanted, of all segments
    // in one matmul (the output matrix is the largest dense read of a decode step).
    part_timer_.switch_to(Part::kOutput);
    for (size_t i = 0, row = 0, out = 0; i < n_segs; row += size_t(segs[i].n), ++i) {
        const int64_t first = segs[i].all_logits ? 0 : segs[i].n - 1, count = segs[i].n - first;
        rmsnorm_rows(s.residual.data() + (int64_t(row) + first) * H, weights_.output_norm,
                     s.normed.data() + int64_t(out) * H, count);
        out += size_t(count);
    }
    float* logits = segs[0].logits;
    if (n_segs > 1) {
        if (int64_t(s.logits.size()) < n_out * V) s.logits.resize(size_t(n_out * V));
        logits = s.logits.data();
    }
    MatmulArgs out = matmul_args(weights_.output, 0, s.normed.data(), n_out, logits, nullptr);
    attach_i16(s, s.normed.data(), n_out, config_.embedding_length, out);
    matmuls(&out, 1);
    if (n_segs > 1)
        for (size_t i = 0, o = 0; i < n_segs; ++i) {
            const int64_t count = segs[i].all_logits ? segs[i].n : 1;
            std::copy_n(logits + int64_t(o) * V, count * V, segs[i].logits);
            o += size_t(count);
        }
}

void Model::embed(Scratch& s, const int32_t* tokens, int64_t T, int64_t row0) {
    const int64_t H = config_.embedding_length;
    for (int64_t t = 0; t < T; ++t) {
        if (tokens[t] < 0 || tokens[t] >= config_.vocab_size)
            throw std::out_of_range("token id " + std::to_string(tokens[t]) +
                                    " is outside the vocabulary [0, " +
                                    std::to_string(config_.vocab_size) + ")");
        kernels_->decode_row(weights_.token_embd, 0, tokens[t], s.residual.data() + (row0 + t) * H);
    }
}

void Model::rmsnorm_rows(const float* x, const float* g, float* y, int64_t T) {
    const int64_t H = config_.embedding_length;
    pool_.parallel_for(T, T <= kDecodeMaxTokens ? T : 1, [&](int64_t t0, int64_t t1) {  // decode: one thread
        for (int64_t t = t0; t < t1; ++t)
            kernels_->rmsnorm(x + t * H, g, y + t * H, H, config_.rms_norm_eps);
    });
}

MatmulArgs Model::matmul_args(const Matrix& W, int64_t mat, const float* x, int64_t T, float* y,
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

void Model::matmul(const Matrix& W, int64_t mat, const float* x, int64_t T, float* y,
                   const float* bias) {
    matmuls({matmul_args(W, mat, x, T, y, bias)});
}

void Model::matmuls(const MatmulArgs* jobs, size_t n_jobs) {
    if (n_jobs == 0) return;
    // A matmul's time goes to its own part: experts, the router, the output head, the others.
    const Part caller = part_timer_.current();
    const Part own = jobs[0].W->n_mats > 1    ? Part::kExperts
                     : caller == Part::kMoeOther ? Part::kRouter
                     : caller == Part::kOutput   ? Part::kOutput
                                                 : Part::kDenseMatmul;
    part_timer_.switch_to(own);
    struct Resume {
        PartTimer& t;
        Part p;
        ~Resume() { t.switch_to(p); }
    } resume{part_timer_, caller};
    for (size_t i = 0; i < n_jobs; ++i) weight_bytes_read_ += uint64_t(jobs[i].W->rows) * jobs[i].W->row_bytes;
    // The rows of all jobs form one index space handed out in grains. Prefill is compute-bound:
    // grains of 32 rows (one int16 GEMM panel) keep both threads busy to the end. Decode streams
    // weights from memory: each thread takes one long contiguous run of a job (rows / threads),
    // which its prefetches and the hardware's can follow. A batched decode step of up to 8
    // sequences is decode too: in 32-row grains its 4-token output head took 1.8x the time of
    // one token's (every grain's start unprefetched, the threads' runs interleaved).
    auto grain_of = [&](const MatmulArgs& j) {
        if (j.n_tok > kDecodeMaxTokens) return int64_t(32);
        const int64_t per_thread = (j.W->rows + pool_.size() - 1) / pool_.size();
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
    pool_.parallel_for(total, grains_per_task, [&](int64_t g0, int64_t g1) {
        for (int64_t g = g0; g < g1; ++g) {
            int64_t base = 0;
            for (size_t i = 0; i < n_jobs; ++i) {
                const MatmulArgs& j = jobs[i];
                const int64_t grain = grain_of(j), n = (j.W->rows + grain - 1) / grain;
                if (g < base + n) {
                    const int64_t r0 = (g - base) * grain;
                    kernels_->matmul(j, r0, std::min(j.W->rows, r0 + grain));
                    break;
                }
                base += n;
            }
        }
    });
}

void Model::trace(Scratch& s, int64_t T) {
    if (s.trace) s.trace->insert(s.trace->end(), s.residual.begin(), s.residual.begin() + T * config_.embedding_length);
}

void Model::add_into(float* dst, const float* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

void Model::attention_block(const Segment* segs, Scratch& s, int64_t layer, int64_t T) {
    const LayerWeights& w = weights_.layers[size_t(layer)];
    const int64_t d = config_.key_length, nq = config_.head_count, nkv = config_.head_count_kv;
    const int64_t half = d / 2, group = nq / nkv;

    MatmulArgs qkv[3] = {matmul_args(w.attn_q, 0, s.normed.data(), T, s.q.data(), w.attn_q_b),
                         matmul_args(w.attn_k, 0, s.normed.data(), T, s.k.data(), w.attn_k_b),
                         matmul_args(w.attn_v, 0, s.normed.data(), T, s.v.data(), w.attn_v_b)};
    attach_i16(s, s.normed.data(), T, config_.embedding_length, qkv[0]);
    for (MatmulArgs& a : qkv) a.x_i16 = qkv[0].x_i16, a.x_i16_scale = qkv[0].x_i16_scale;
    matmuls(qkv, 3);

    // RoPE on q and k (not v), then append K/V to each row's cache at its position.
    for (int64_t t = 0; t < T; ++t) {
        const float* c = s.rope_cos.data() + t * half;
        const float* sn = s.rope_sin.data() + t * half;
        apply_rope(s.q.data() + t * nq * d, nq, d, c, sn);
        apply_rope(s.k.data() + t * nkv * d, nkv, d, c, sn);
        segs[s.row_segment[size_t(t)]].kv->store(layer, s.positions[size_t(t)], s.k.data() + t * nkv * d,
                                                 s.v.data() + t * nkv * d);
    }

    // Even layers see the last W positions (the query included), odd layers all of them.
    const int64_t window = config_.is_sliding(layer) ? config_.sliding_window : 0;
    const float scale = 1.0f / std::sqrt(float(d));
    auto args_of = [&](int64_t t, int64_t g) {
        const int64_t p = s.positions[size_t(t)];
        const KvCache& kv = *segs[s.row_segment[size_t(t)]].kv;
        AttentionArgs a;
        a.q = s.q.data() + (t * nq + g * group) * d;
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
        a.scale = scale;
        a.out = s.attn.data() + (t * nq + g * group) * d;
        return a;
    };
    // The group's query heads share every key and value load. Prefill: one task per kv head and
    // block of up to kRowBlock consecutive rows of one segment, which share each tile of keys
    // while it is in cache; the threads take the blocks of one kv head together.
    constexpr int64_t kRowBlock = 16;
    const bool split = T * nkv < kAttentionSplitMaxTasks;
    if (!split) {
        std::vector<int64_t>& starts = s.attn_task_first;  // first row of each block, then T
        starts.clear();
        for (int64_t t = 0; t < T;) {
            starts.push_back(t);
            const int64_t t0 = t;
            while (++t < T && t - t0 < kRowBlock && s.row_segment[size_t(t)] == s.row_segment[size_t(t0)]) {}
        }
        starts.push_back(T);
        const int64_t n_blocks = int64_t(starts.size()) - 1;
        pool_.parallel_for(n_blocks * nkv, 1, [&](int64_t k0, int64_t k1) {
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
                kernels_->attention(a);
            }
        });
    } else {
        // Decode steps have few (token, kv head) rows: each long row is cut into chunks of keys,
        // one task each (flash-decoding, attention_split.h), merged below.
        std::vector<int64_t>& first = s.attn_task_first;  // first task of row i = t * nkv + g
        first.resize(size_t(T * nkv + 1));
        first[0] = 0;
        for (int64_t i = 0; i < T * nkv; ++i) {
            const AttentionArgs a = args_of(i / nkv, i % nkv);
            first[size_t(i + 1)] = first[size_t(i)] + attention_chunks(a.j_lo, a.j_hi);
        }
        const int64_t n_tasks = first[size_t(T * nkv)];
        if (n_tasks > T * nkv) {
            s.attn_part_acc.resize(size_t(n_tasks * group * d));
            s.attn_part_max.resize(size_t(n_tasks * group));
            s.attn_part_sum.resize(size_t(n_tasks * group));
        }
        pool_.parallel_for(n_tasks, 1, [&](int64_t k0, int64_t k1) {
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
                    a.out = s.attn_part_acc.data() + k * group * d;
                    a.part_max = s.attn_part_max.data() + k * group;
                    a.part_sum = s.attn_part_sum.data() + k * group;
                }
                kernels_->attention(a);
            }
        });
        if (n_tasks > T * nkv)
            pool_.parallel_for(T * nkv, 1, [&](int64_t i0, int64_t i1) {
                for (int64_t i = i0; i < i1; ++i) {
                    const int64_t k = first[size_t(i)], parts = first[size_t(i + 1)] - k;
                    if (parts < 2) continue;
                    const AttentionArgs a = args_of(i / nkv, i % nkv);
                    merge_attention_parts(s.attn_part_acc.data() + k * group * d, s.attn_part_max.data() + k * group,
                                          s.attn_part_sum.data() + k * group, parts, group, d, a.sinks, a.out);
                }
            });
    }

    MatmulArgs out = matmul_args(w.attn_output, 0, s.attn.data(), T, s.proj.data(), w.attn_output_b);
    attach_i16(s, s.attn.data(), T, config_.q_width(), out);
    matmuls(&out, 1);
}

void Model::moe_block(Scratch& s, int64_t layer, int64_t T) {
    const LayerWeights& w = weights_.layers[size_t(layer)];
    const int64_t H = config_.embedding_length, I = config_.expert_feed_forward_length;
    const int64_t E = config_.expert_count, k = config_.expert_used_count;

    matmul(w.router, 0, s.normed.data(), T, s.router_logits.data(), w.router_b);
    for (int64_t t = 0; t < T; ++t)
        router_topk(s.router_logits.data() + t * E, E, k, s.expert_idx.data() + t * k,
                    s.expert_weight.data() + t * k);

    // Group the (token, expert) pairs by expert.
    std::fill(s.expert_count.begin(), s.expert_count.end(), 0);
    for (int64_t p = 0; p < T * k; ++p) ++s.expert_count[size_t(s.expert_idx[size_t(p)])];
    s.expert_offset[0] = 0;
    for (int64_t e = 0; e < E; ++e) s.expert_offset[size_t(e + 1)] = s.expert_offset[size_t(e)] + s.expert_count[size_t(e)];
    std::vector<int64_t>& fill = s.expert_count;  // reused as each expert's fill cursor
    for (int64_t e = 0; e < E; ++e) fill[size_t(e)] = s.expert_offset[size_t(e)];
    for (int64_t t = 0; t < T; ++t) {
        int32_t* mine = s.token_pair.data() + t * k;
        for (int64_t j = 0; j < k; ++j) {
            const int64_t p = fill[size_t(s.expert_idx[size_t(t * k + j)])]++;
            s.pair_token[size_t(p)] = int32_t(t);
            s.pair_weight[size_t(p)] = s.expert_weight[size_t(t * k + j)];
            mine[j] = int32_t(p);
        }
        std::sort(mine, mine + k);  // the order the weighted sum below adds them in
    }

    // Each pair's input row, gathered in parallel. The fast precision quantizes each token's row
    // once (not once per routed expert) and gathers the int16 rows; the float rows are only
    // needed by weights whose matmuls read them (matmul_reads_int16_only, kernels.h).
    const bool i16 = use_i16_;
    const int64_t P = T * k, HB = H / kBlockElems;
    // A decode step's gathers, SwiGLU and sums take microseconds: the calling thread alone (a
    // hand-off waits for the second thread, which a busy machine stretches to a time slice).
    const bool decode = T <= kDecodeMaxTokens;
    if (i16) {
        quantize_i16(s, s.normed.data(), T, H);
        if (int64_t(s.expert_x_i16.size()) < P * H) {
            s.expert_x_i16.resize(size_t(P * H));
            s.expert_x_i16_scale.resize(size_t(P * HB));
        }
        pool_.parallel_for(P, decode ? P : 16, [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) {
                const int64_t t = s.pair_token[size_t(p)];
                std::copy_n(s.x_i16.data() + t * H, H, s.expert_x_i16.data() + p * H);
                std::copy_n(s.x_i16_scale.data() + t * HB, HB, s.expert_x_i16_scale.data() + p * HB);
            }
        });
    }
    if (!i16 || !matmul_reads_int16_only(w.gate_exps) || !matmul_reads_int16_only(w.up_exps))
        pool_.parallel_for(P, decode ? P : 16, [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p)
                std::copy_n(s.normed.data() + int64_t(s.pair_token[size_t(p)]) * H, H, s.expert_x.data() + p * H);
        });

    // Every routed expert's gate and up projections in one parallel loop, then SwiGLU, then
    // every down projection in another: real GEMMs over each expert's tokens.
    // The fast precision hands these GEMMs (and the decode GEMVs) int16 activations.
    // One job per routed expert: its pairs' rows of `in` [., in_w] -> the same rows of `out`.
    auto add_expert_jobs = [&](const Matrix& W, const float* bias, const float* in, const int16_t* in_i16,
                               const float* in_i16_scale, int64_t in_w, float* out) {
        for (int64_t e = 0; e < E; ++e) {
            const int64_t p0 = s.expert_offset[size_t(e)], n = s.expert_offset[size_t(e + 1)] - p0;
            if (n == 0) continue;
            MatmulArgs a = matmul_args(W, e, in + p0 * in_w, n, out + p0 * W.rows, bias + e * W.rows);
            if (i16) {
                a.x_i16 = in_i16 + p0 * in_w;
                a.x_i16_scale = in_i16_scale + p0 * in_w / kBlockElems;
            }
            s.jobs.push_back(a);
        }
    };
    s.jobs.clear();
    add_expert_jobs(w.gate_exps, w.gate_exps_b, s.expert_x.data(), s.expert_x_i16.data(),
                    s.expert_x_i16_scale.data(), H, s.expert_gate.data());
    add_expert_jobs(w.up_exps, w.up_exps_b, s.expert_x.data(), s.expert_x_i16.data(),
                    s.expert_x_i16_scale.data(), H, s.expert_up.data());
    matmuls(s.jobs.data(), s.jobs.size());
    pool_.parallel_for(P, decode ? P : 8, [&](int64_t p0, int64_t p1) {
        kernels_->swiglu(s.expert_gate.data() + p0 * I, s.expert_up.data() + p0 * I, s.expert_h.data() + p0 * I,
                         (p1 - p0) * I, config_.swiglu_alpha, config_.swiglu_limit);
    });
    if (i16) quantize_i16(s, s.expert_h.data(), P, I);
    s.jobs.clear();
    add_expert_jobs(w.down_exps, w.down_exps_b, s.expert_h.data(), s.x_i16.data(), s.x_i16_scale.data(), I,
                    s.expert_y.data());
    matmuls(s.jobs.data(), s.jobs.size());

    // Weighted sum, a token per task, its pairs in ascending order; the down bias sits inside it
    // (MODEL.md §2.6 step 6).
    pool_.parallel_for(T, decode ? T : 4, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            float* dst = s.proj.data() + t * H;
            std::fill_n(dst, H, 0.0f);
            for (int64_t j = 0; j < k; ++j) {
                const int64_t p = s.token_pair[size_t(t * k + j)];
                const float* y = s.expert_y.data() + p * H;
                const float wt = s.pair_weight[size_t(p)];
                for (int64_t c = 0; c < H; ++c) dst[c] += wt * y[c];
            }
        }
    });
}

}  // namespace ossrun
