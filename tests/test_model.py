"""The whole runtime through its Python API (MODEL.md §7.4 items 2, 3, 5): logits of the tiny
fixtures against OpenAI's float32 golden for every ISA, incremental decode and chunked prefill
against one prefill, long prompts (> Session.kMaxChunk, > the sliding ring) and generated models
of other shapes and matrix types against tests/reference.py, truncate/reset/sessions/threads,
and generate().
"""

from __future__ import annotations

import numpy as np
import ossrun
import pytest
import reference as R
from golden import FIXTURES, TOL, golden_case, load, rel_err
from ossrun._core import ops

ISAS = ops.available_isas()
# Session.kMaxChunk (csrc/session.h) and the sliding ring's extra room (csrc/kv_cache.h):
# a sliding layer holds window − 1 + 256 + 1024 positions.
MAX_CHUNK = 256
RING_EXTRA = MAX_CHUNK + 1024


def agreement(a, b) -> float:
    return float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))


@pytest.fixture(scope="module", params=FIXTURES)
def fx(request, fixtures_dir):
    return golden_case(fixtures_dir, request.param)


@pytest.fixture(scope="module")
def w4(fixtures_dir):
    return fixtures_dir / "tiny-w4" / "tiny.gguf"


@pytest.fixture(scope="module")
def w128(fixtures_dir):
    d = fixtures_dir / "tiny-w128"
    g = np.load(d / "golden.npz")
    return d / "tiny.gguf", g["tokens"], g["logits_ref_fp32"]


# --------------------------------------------------------------------------- golden logits


@pytest.mark.parametrize("isa", ISAS)
def test_f32_logits_match_golden(fx, isa):
    m = load(fx["gguf"], precision="f32", isa=isa)
    assert m.isa == isa
    logits = m.logits(fx["tokens"])
    assert logits.dtype == np.float32 and logits.shape == fx["gold"].shape
    assert rel_err(logits, fx["gold"]) < TOL
    assert agreement(logits, fx["gold"]) == 1.0


@pytest.mark.parametrize("isa", ISAS)
def test_fast_precision_at_least_as_close_as_reference_bf16(fx, isa):
    # Fast modes are judged against the error the reference's own bf16 mode makes (§2.8, §7.4.5).
    logits = load(fx["gguf"], precision="fast", isa=isa).logits(fx["tokens"])
    assert rel_err(logits, fx["gold"]) <= rel_err(fx["bf16"], fx["gold"])
    assert agreement(logits, fx["gold"]) >= agreement(fx["bf16"], fx["gold"])
    assert agreement(logits, fx["gold"]) >= 0.95


def test_block_residuals_match_golden(fx):
    # The residual stream after every attention and MoE half against the reference's own
    # (ref32_attn_L / ref32_mlp_L): this localises a failure to the first step that leaves it.
    g = np.load(fx["dir"] / "golden.npz")
    m = load(fx["gguf"], precision="f32")
    logits, residuals = m.session()._core.prefill_traced(np.asarray(fx["tokens"], np.int32))
    assert rel_err(logits, fx["gold"]) < TOL
    for layer in range(m.config.block_count):
        for half, name in enumerate(("attn", "mlp")):
            ref = g[f"ref32_{name}_{layer}"]
            err = rel_err(residuals[2 * layer + half], ref)
            assert err < TOL, f"layer {layer} {name}: {err:.2e}"


@pytest.mark.parametrize("isa", ISAS)
def test_decode_token_by_token_equals_golden(fx, isa):
    # Prefill one token, then decode one at a time: every step's logits against the golden row.
    s = load(fx["gguf"], precision="f32", isa=isa).session()
    toks = fx["tokens"]
    rows = [s.prefill(toks[:1])] + [s.decode(int(t)) for t in toks[1:]]
    assert s.n_past == len(toks) and s.tokens == toks.tolist()
    assert rel_err(np.stack(rows), fx["gold"]) < TOL


@pytest.mark.parametrize(
    "chunks",
    [[3], [5], [127, 73], [129], [1, 127, 1], [64, 64, 71, 1]],
    ids=lambda c: "-".join(map(str, c)),
)
def test_chunked_prefill_straddling_the_window(w128, chunks):
    # Chunk borders before, at and after the 128-token window of tiny-w128 (chunk sizes repeat
    # until the 200 tokens are in); each chunk's last logits against the golden row.
    path, toks, gold = w128
    s = load(path, precision="f32").session()
    pos, i = 0, 0
    while pos < len(toks):
        n = min(chunks[i % len(chunks)], len(toks) - pos)
        last = s.prefill(toks[pos : pos + n])
        pos += n
        i += 1
        assert s.n_past == pos
        assert rel_err(last, gold[pos - 1]) < TOL, f"chunk ending at {pos}"


# --------------------------------------------------------------------------- long prompts


@pytest.fixture(scope="module")
def long_w4(w4):
    """1400 tokens on tiny-w4 (window 4): more than Session.kMaxChunk and more than its sliding
    ring (4 − 1 + 1280 = 1283 positions), with the float64 reference's logits."""
    hp, weights = R.load_gguf_weights(w4)
    n_vocab = weights["token_embd.weight"].shape[0]
    toks = np.random.default_rng(7).integers(0, n_vocab, 1400).astype(np.int32)
    return toks, R.forward(hp, weights, toks)


def test_long_prompt_matches_reference(w4, long_w4):
    toks, ref = long_w4
    assert len(toks) > 4 - 1 + RING_EXTRA  # the ring has wrapped by the end
    m = load(w4, precision="f32", n_ctx=1500)
    logits = m.logits(toks)  # chunks of 256 inside
    assert rel_err(logits, ref) < TOL
    # And a session that prefills 1399 tokens then decodes the last one.
    s = m.session()
    s.prefill(toks[:-1])
    assert rel_err(s.decode(int(toks[-1])), ref[-1]) < TOL


def test_truncate_then_prefill_equals_fresh(w128):
    path, toks, gold = w128
    s = load(path, precision="f32").session()
    s.prefill(toks[:150])
    s.truncate(100)
    assert s.n_past == 100 and s.tokens == toks[:100].tolist()
    last = s.prefill(toks[100:])
    assert rel_err(last, gold[-1]) < TOL
    s.truncate(0)
    assert s.n_past == 0
    assert rel_err(s.prefill(toks[:60]), gold[59]) < TOL
    s.truncate(60)  # no-op truncation
    assert rel_err(s.decode(int(toks[60])), gold[60]) < TOL


@pytest.mark.parametrize("keep", [1350, 900, 120, 119, 100, 2], ids=lambda k: f"keep{k}")
def test_truncate_past_the_sliding_ring(w4, long_w4, keep):
    # After 1400 tokens a window-4 ring (1283 slots) holds positions 117..1399. Keeping n
    # tokens needs positions n-3..n-1 there: 1350, 900 and 120 resume from the cache; 119, 100
    # and 2 need keys the ring overwrote, so the session must replay its tokens.
    toks, ref = long_w4
    s = load(w4, precision="f32", n_ctx=1500).session()
    s.prefill(toks)
    s.truncate(keep)
    assert s.n_past == keep and s.tokens == toks[:keep].tolist()
    nxt = min(keep + 40, len(toks))
    assert rel_err(s.prefill(toks[keep:nxt]), ref[nxt - 1]) < TOL
    assert rel_err(s.decode(int(toks[nxt])), ref[nxt]) < TOL


def test_reset_equals_fresh_session(w128):
    path, toks, _ = w128
    m = load(path, precision="f32")
    fresh = m.session().prefill(toks[:50])
    s = m.session()
    s.prefill(toks[100:200])
    s.reset()
    assert s.n_past == 0 and s.tokens == []
    # Same tokens, same chunking, same code: bit-identical.
    assert np.array_equal(s.prefill(toks[:50]), fresh)


def test_sessions_of_one_model_are_independent(w128):
    path, toks, gold = w128
    m = load(path, precision="f32")
    a, b = m.session(), m.session()
    ref = m.session()
    ref.prefill(toks[:20])
    alone = ref.prefill(toks[20:30])  # same chunks as `a` below, so bit-identical
    a.prefill(toks[:20])
    b.prefill(toks[150:200])  # different contents interleaved on the same weights
    last_a = a.prefill(toks[20:30])
    b.decode(int(toks[0]))
    assert np.array_equal(last_a, alone)
    assert rel_err(a.decode(int(toks[30])), gold[30]) < TOL
    assert a.n_past == 31 and b.n_past == 51


def test_sessions_used_from_two_python_threads(w128):
    # The GIL is released during compute, so two threads can drive two sessions of one model at
    # once; their forwards take turns on the model's thread pool and both stay exact.
    import threading

    path, toks, gold = w128
    m = load(path, precision="f32")
    results = {}

    def run(name):
        s = m.session()
        results[name] = np.stack([s.decode(int(t)) for t in toks[:40]])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in range(2):
        assert rel_err(results[name], gold[:40]) < TOL


def test_threads_do_not_change_results(w128):
    # Work is split over matrix rows and (token, head) pairs; no row's arithmetic depends on
    # the split, so the logits are bit-identical, not merely close.
    path, toks, _ = w128
    one = load(path, precision="f32", threads=1)
    two = load(path, precision="f32", threads=2)
    assert one.threads == 1 and two.threads == 2
    assert np.array_equal(one.logits(toks), two.logits(toks))


def test_n_ctx_of_sessions(w4):
    m = load(w4, precision="f32", n_ctx=64)
    assert m.n_ctx == 64 and m.session().n_ctx == 64 and m.session(10).n_ctx == 10


# --------------------------------------------------------------------------- generated models


GENERATED = {
    # name: (model_maker overrides, matrix type, tokens)
    "q8_0_odd_group": ({"heads": 3, "kv_heads": 1, "sliding_window": 8}, "q8_0", 40),
    "f16_d32_3layers": (
        {"layers": 3, "heads": 6, "kv_heads": 2, "head_dim": 32, "sliding_window": 5},
        "f16",
        40,
    ),
    "bf16_wide_experts": (
        {"hidden": 96, "intermediate": 160, "experts": 5, "top_k": 3},
        "bf16",
        30,
    ),
    "f32_topk1": ({"experts": 3, "top_k": 1, "heads": 2, "kv_heads": 2}, "f32", 30),
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    model_maker = pytest.importorskip("ossrun.model_maker")
    out, cache = tmp_path_factory.mktemp("generated"), {}

    def get(name):
        if name not in cache:
            over, mtype, n = GENERATED[name]
            hp = model_maker.preset("tiny", **over)
            path = model_maker.write_model(out / f"{name}.gguf", hp, seed=11, matrix_type=mtype)
            rh, rw = R.load_gguf_weights(path)
            toks = np.random.default_rng(3).integers(0, hp.vocab, n).astype(np.int32)
            cache[name] = (path, toks, R.forward(rh, rw, toks))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(GENERATED))
def test_generated_model_matches_reference(generated, name):
    # Other matrix types (Q8_0 with subnormal scales, F16, BF16, F32), GQA groups of 1, 3 and 3,
    # head_dim 32, three layers (an odd count), 5 MXFP4 blocks per row, top-1 and top-3 routing.
    path, toks, ref = generated(name)
    m = load(path, precision="f32")
    assert rel_err(m.logits(toks), ref) < TOL
    s = m.session()
    s.prefill(toks[:7])
    rows = [s.decode(int(t)) for t in toks[7:]]
    assert rel_err(np.stack(rows), ref[7:]) < TOL


def test_fast_precision_on_q8_0_and_mxfp4_matches_reference(generated):
    # The fast precision gives Q8_0 and MXFP4 matmuls int16 activations (one scale per 32: a
    # rounding error of 2^-16 of each block's max): in prefill (GEMMs, both types) and decode
    # (Q8_0 GEMVs) the logits stay within 1e-3 of the float64 reference, where a wrong block
    # scale or element order would be off by O(1). Measured here: ~1e-5.
    path, toks, ref = generated("q8_0_odd_group")
    m = load(path, precision="fast")
    prefill_err = rel_err(m.logits(toks), ref)
    s = m.session()
    decode_err = rel_err(np.stack([s.decode(int(t)) for t in toks]), ref)
    assert prefill_err < 1e-3 and decode_err < 1e-3
    exact = load(path, precision="f32")
    exact_err = rel_err(exact.logits(toks), ref)
    assert exact_err < TOL
    if m._core.uses_i16:  # the int16 path ran: it must differ from the exact one
        assert prefill_err != exact_err


@pytest.mark.parametrize("expert_type", ["Q8_0", "F16", "BF16", "F32"])
def test_experts_in_dense_types_match_reference(w4, tmp_path, expert_type):
    # The loader accepts expert stacks in every matrix type (gguf_loader.EXPERT_TYPES), not only
    # MXFP4: the fixture's experts re-encoded, against the reference run on the new file.
    import gguf_factory as G

    names = {f"blk.{n}.ffn_{p}_exps.weight" for n in range(2) for p in ("gate", "up", "down")}
    path = G.retype_matrices(w4, tmp_path / "experts.gguf", getattr(G, expert_type), names)
    hp, weights = R.load_gguf_weights(path)
    toks = np.random.default_rng(5).integers(0, 256, 24).astype(np.int32)
    assert (
        rel_err(ossrun.load(path, precision="f32").logits(toks), R.forward(hp, weights, toks)) < TOL
    )


# --------------------------------------------------------------------------- generate()


def test_generate_greedy_equals_argmax_of_steps(w128):
    path, toks, _ = w128
    m = load(path, precision="f32")
    out = list(m.generate(toks[:20], max_tokens=12, temperature=0))
    assert len(out) == 12
    s = m.session()
    logits, want = s.prefill(toks[:20]), []
    for _ in range(12):
        want.append(int(np.argmax(logits)))
        logits = s.decode(want[-1])
    assert out == want


def test_generate_seeded_sampling_is_reproducible(w128):
    path, toks, _ = w128
    m = load(path, precision="f32")

    def run(seed):
        return list(m.generate(toks[:10], max_tokens=20, temperature=3.0, seed=seed))

    assert run(5) == run(5)
    assert run(5) != run(6)  # 20 draws from a flattened distribution: equal by chance ~never
    top1 = list(m.generate(toks[:10], max_tokens=8, temperature=2.0, top_k=1, seed=1))
    assert top1 == list(m.generate(toks[:10], max_tokens=8, temperature=0))  # top-k 1 is greedy


def test_generate_stops_after_a_stop_token(w128):
    path, toks, _ = w128
    m = load(path, precision="f32")
    greedy = list(m.generate(toks[:20], max_tokens=12, temperature=0))
    k = next(i for i in range(1, len(greedy)) if greedy[i] not in greedy[:i])
    out = list(m.generate(toks[:20], max_tokens=12, temperature=0, stop=[greedy[k]]))
    assert out == greedy[: k + 1]  # the stop token is yielded, nothing after it
    assert list(m.generate(toks[:20], max_tokens=0, temperature=0)) == []


def test_generate_appends_to_a_given_session(w128):
    path, toks, _ = w128
    m = load(path, precision="f32")
    s = m.session()
    s.prefill(toks[:15])
    out = list(m.generate(toks[15:20], max_tokens=4, temperature=0, session=s))
    assert out == list(m.generate(toks[:20], max_tokens=4, temperature=0))
    assert s.tokens[:20] == toks[:20].tolist() and s.n_past == 23  # the last token is not fed back


# --------------------------------------------------------------------------- config


def test_config_fields(fx):
    c, cfg = load(fx["gguf"], precision="f32").config, fx["config"]
    assert (c.block_count, c.embedding_length, c.expert_feed_forward_length) == (
        cfg["num_hidden_layers"],
        cfg["hidden_size"],
        cfg["intermediate_size"],
    )
    assert (c.head_count, c.head_count_kv, c.key_length, c.value_length) == (
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["head_dim"],
        cfg["head_dim"],
    )
    assert (c.expert_count, c.expert_used_count, c.sliding_window) == (
        cfg["num_experts"],
        cfg["experts_per_token"],
        cfg["sliding_window"],
    )
    assert (c.rope_freq_base, c.rope_scaling_factor, c.rope_original_context) == (
        cfg["rope_theta"],
        cfg["rope_scaling_factor"],
        cfg["initial_context_length"],
    )
    assert (c.yarn_beta_fast, c.yarn_beta_slow) == (cfg["rope_ntk_beta"], cfg["rope_ntk_alpha"])
    assert c.vocab_size == cfg["vocab_size"] and c.context_length == 131072
    assert c.rope_scaling_type == "yarn" and c.rms_norm_eps == pytest.approx(1e-5, rel=1e-6)
    m = load(fx["gguf"], precision="f32")
    assert m.n_vocab == cfg["vocab_size"] and m.tokenizer is None and m.isa in ISAS
    assert c.to_dict()["block_count"] == cfg["num_hidden_layers"]
