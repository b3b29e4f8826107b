// The CPU kernel interface: one table of function pointers per ISA variant (scalar, AVX2,
// AVX-512, NEON), all compiled from the same sources in cpu/kernels/ and chosen at run time.
// Each kernel states its shape contract here; the forward pass only calls through this table.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "weights.h"

namespace ossrun {

// y[t * ldy + r] = W[mat] row r · x[t * ldx .. + cols] (+ bias[r]), for t < n_tok, r0 <= r < r1.
struct MatmulArgs {
    const Matrix* W = nullptr;
    int64_t mat = 0;
    const float* x = nullptr;
    int64_t ldx = 0;
    int64_t n_tok = 0;
    float* y = nullptr;
    int64_t ldy = 0;
    const float* bias = nullptr;  // [rows] or null
    // Optional int16 copy of x (same strides) in blocks of 32 with one float scale per block,
    // x_i16_scale[t * ldx / 32 + b], for the fast precision: a variant with int16 dot products
    // uses it for MXFP4 and Q8_0 weights (exact integers times a scale), ~2^-16 of each block's
    // largest activation is lost.
    const int16_t* x_i16 = nullptr;
    const float* x_i16_scale = nullptr;
};

// Whether the fast precision's matmuls of W read only the int16 copy of x, so callers may leave
// the float rows unset: MXFP4 and Q8_0, whose int16 GEMM gathers panels with 32-bit row offsets.
inline bool matmul_reads_int16_only(const Matrix& W) {
    return (W.type == DType::MXFP4 || W.type == DType::Q8_0) && W.row_bytes * 16 < (size_t(1) << 31);
}

// Element type of a KV cache (kv_type): float32, or 16-bit (IEEE half or bfloat16) stored with
// round-to-nearest-even and widened to float32 in registers by the attention kernels.
enum class KvType : int32_t { F32 = 0, F16 = 1, BF16 = 2 };
inline int64_t kv_type_bytes(KvType t) { return t == KvType::F32 ? 4 : 2; }

// Keys per tile of the attention kernel's online softmax: its scratch is n_heads tiles, however
// long the key range (prefill of a long prompt never holds a row of scores per key). Tiles start
// at multiples of it (absolute positions), so a row's result depends on its own key range alone.
constexpr int64_t kAttentionTile = 256;
// Keys are stored in blocks of kKeyBlock slots, each block transposed: element c of slot s at
// ((s / kKeyBlock) * head_dim + c) * kKeyBlock + s % kKeyBlock. A vector holds consecutive keys of
// one dimension (no horizontal sums, each key load serves every head of the group), and a block
// is one contiguous run of memory (4 KiB for 16-bit keys of 64 dims), so a key range streams.
constexpr int64_t kKeyBlock = 32;
// Slots of key storage for a capacity of cap: whole blocks.
inline int64_t key_block_slots(int64_t cap) { return (cap + kKeyBlock - 1) / kKeyBlock * kKeyBlock; }

// The query heads of one KV head (a GQA group) at n_rows consecutive positions, against keys
// j_lo..j_hi (inclusive, row 0; row r ends at j_hi + r and, with a window, starts no earlier than
// j_hi + r - window + 1) of a KV cache whose slot for position j is j % cap (MODEL.md §2.5). Each
// head's sink joins its softmax denominator only (no value, no 1/sqrt(d)). K and V elements are
// of kv_type; strides count elements. Rows share each tile of keys while it is in cache (prefill).
struct AttentionArgs {
    const float* q = nullptr;      // [n_rows][row_stride]: row r's heads at q + r * row_stride, [n_heads][head_dim]
    const void* k = nullptr;       // key blocks (kKeyBlock above), key_block_slots(cap) slots
    const void* v = nullptr;       // value of slot s at v + s * v_stride, [head_dim]
    int64_t v_stride = 0;
    KvType kv_type = KvType::F32;
    int64_t cap = 0;
    int64_t j_lo = 0, j_hi = -1;
    int64_t n_rows = 1, row_stride = 0, window = 0;
    int64_t n_heads = 1, head_dim = 0;
    const float* sinks = nullptr;  // [n_heads]
    float scale = 0.0f;
    float* scores = nullptr;       // scratch, attention_scratch_floats(n_heads, n_rows)
    float* out = nullptr;          // [n_rows][row_stride] as q
    // Partial mode (one row only: a chunk of a key range split across threads, attention_split.h):
    // when set, the sinks are left out, out gets the unnormalised sum of exp(z - max) * v per head,
    // and part_max / part_sum [n_heads] that max and the sum of exp(z - max) (-inf and 0 for no key).
    float* part_max = nullptr;
    float* part_sum = nullptr;
};
// Score slack each side of a head's tile: scores are computed for whole key vectors.
constexpr int64_t kAttentionScorePad = kKeyBlock;
inline int64_t attention_scratch_floats(int64_t n_heads, int64_t n_rows) {
    return n_heads * (kAttentionTile + 2 * kAttentionScorePad) + 2 * n_heads * n_rows;
}

struct KernelTable {
    const char* name;
    // Dequantize row r of W[mat] exactly to float32: out[cols].
    void (*decode_row)(const Matrix& W, int64_t mat, int64_t r, float* out);
    void (*matmul)(const MatmulArgs& a, int64_t r0, int64_t r1);
    void (*attention)(const AttentionArgs& a);
    // y[i] = g[i] * x[i] / sqrt(mean(x^2) + eps), i < n.
    void (*rmsnorm)(const float* x, const float* g, float* y, int64_t n, float eps);
    // q[i] = round(x[i] / scale[i / 32]) with scale = max|block| / 32767, n a multiple of 32;
    // null when this variant or CPU has no int16 dot products.
    void (*quantize_i16)(const float* x, int64_t n, int16_t* q, float* scale);
    // h[i] = min(g, limit) * sigmoid(alpha * min(g, limit)) * (clamp(l, -limit, limit) + 1) with
    // g = gate[i], l = lin[i], i < n (the experts' SwiGLU, MODEL.md §2.6); each element's result
    // is the same wherever it sits in the array.
    void (*swiglu)(const float* gate, const float* lin, float* h, int64_t n, float alpha, float limit);
    // Whether the fast precision's decode GEMV of this variant reads Q8_0 and MXFP4 rows
    // interleaved 16 at a time (RowLayout::kQ8_0x16, kMxfp4x16: q8_0_interleave.h,
    // mxfp4_interleave.h) natively: where it does, the model repacks its dense Q8_0 matrices and
    // the experts it holds in its own memory at load; elsewhere the layouts are only read row by row.
    bool fast_row_groups;
};

// The variants this build has and this CPU can run, best first.
std::vector<const KernelTable*> available_kernel_tables();
// The variant named `name` ("" or "auto": OSSRUN_ISA if set, else the best); throws
// std::invalid_argument when it is unknown or not runnable here.
const KernelTable* select_kernel_table(const std::string& name);

}  // namespace ossrun
