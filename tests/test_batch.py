"""ossrun.batch: one core forward over several sessions (continuous batching).

Each sequence of a batched step must get the logits it gets when run alone. At f32 precision they
agree to 1e-6 of the largest logit but are not bit-identical: a matmul over the stacked rows takes
the GEMM kernel (tiles of 4 tokens) where a lone decode token takes the GEMV, and the two sum the
products of a row in different orders (float32 rounding, ~1e-7 relative, measured 3e-7).
"""

from __future__ import annotations

import numpy as np
import ossrun
import pytest
from ossrun import ContextOverflowError, model_maker
from ossrun.batch import Batch

VOCAB = 8192
TOL = 1e-6  # of max |logit|, see the module docstring


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = model_maker.make_model(tmp_path_factory.mktemp("batch") / "tiny.gguf", "tiny", seed=3,
                                  vocab=VOCAB, use_byte_vocab=True)
    return ossrun.load(path, n_ctx=1600, precision="f32")


def close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err <= TOL, f"relative error {err:.2e}"


def test_mixed_prefill_and_decode_segments_match_running_alone(model, rng):
    batch = Batch(model)
    prompts = [rng.integers(0, VOCAB, n) for n in (1, 5, 37, 3)]
    seqs = [model.session(512) for _ in prompts]
    refs = [model.session(512) for _ in prompts]
    # Step 1: four prefills of different lengths, two of them wanting every row's logits.
    flags = [False, True, True, False]
    out = batch.step([(s, p, f) for s, p, f in zip(seqs, prompts, flags)])
    for r, p, f, got in zip(refs, prompts, flags, out):
        want = r._prefill(p.astype(np.int32), all_logits=True)
        close(got, want if f else want[-1])
    # Then steps mixing decodes with a new prompt's chunk; one sequence sits some steps out.
    late, late_ref = model.session(512), model.session(512)
    last = {i: int(np.argmax(o if o.ndim == 1 else o[-1])) for i, o in enumerate(out)}
    for step in range(6):
        work, expected = [], []
        for i, (s, r) in enumerate(zip(seqs, refs)):
            if i == 2 and step in (1, 2):
                continue
            work.append((s, [last[i]], False))
            expected.append((i, r, [last[i]]))
        if step == 3:
            chunk = rng.integers(0, VOCAB, 20)
            work.append((late, chunk, False))
            expected.append((None, late_ref, chunk))
        got = batch.step(work)
        for (i, r, ids), logits in zip(expected, got):
            close(logits, r.prefill(ids))
            if i is not None:
                last[i] = int(np.argmax(logits))
    for s, r in zip(seqs + [late], refs + [late_ref]):
        assert s.tokens == r.tokens


def test_sliding_window_ring_wrap(model, rng):
    # Past ~1283 positions the sliding layers' rings (window - 1 + chunk + rollback margin) wrap.
    batch = Batch(model)
    long_ids = rng.integers(0, VOCAB, 1400)
    a, a_ref = model.session(), model.session()
    a.prefill(long_ids)
    a_ref.prefill(long_ids)
    b, b_ref = model.session(), model.session()
    tok = 7
    for _ in range(3):
        chunk = rng.integers(0, VOCAB, 9)
        la, lb = batch.step([(a, [tok], False), (b, chunk, False)])
        close(la, a_ref.decode(tok))
        close(lb, b_ref.prefill(chunk))
        tok = int(np.argmax(la))
    # A truncation back past the ring replays (Session); batched steps stay exact after it.
    a.truncate(100)
    a_ref.truncate(100)
    (la,) = batch.step([(a, [5, 6], True)])
    close(la, a_ref._prefill(np.array([5, 6], np.int32), all_logits=True))


def test_fast_decode_batch_equals_each_sequence_alone(tmp_path_factory, rng):
    """At the fast precision a step of decode tokens takes the int16 GEMVs for every matmul
    (dense, experts with 1..n routed tokens, output head; the float32 router too) up to 8 rows
    on AVX-512 and 3 elsewhere, and those give each token the bits it gets alone
    (tests/test_kernels.py), so each sequence's logits are exactly its own."""
    path = model_maker.make_model(tmp_path_factory.mktemp("fastbatch") / "m.gguf", "tiny", seed=5,
                                  vocab=VOCAB, use_byte_vocab=True, experts=8, top_k=4)
    model = ossrun.load(path, n_ctx=256, precision="fast")
    batch = Batch(model)
    n = 6 if model.isa.startswith("avx512") else 3
    seqs = [model.session() for _ in range(n)]
    refs = [model.session() for _ in range(n)]
    last = []
    for s, r in zip(seqs, refs):
        prompt = rng.integers(0, VOCAB, int(rng.integers(1, 30)))
        s.prefill(prompt)
        last.append(int(np.argmax(r.prefill(prompt))))
    for _ in range(4):
        got = batch.step([(s, [t], False) for s, t in zip(seqs, last)])
        for i, (r, logits) in enumerate(zip(refs, got)):
            assert np.array_equal(logits, r.decode(last[i])), f"sequence {i}"
            last[i] = int(np.argmax(logits))


def test_bad_steps_raise(model, tmp_path):
    batch = Batch(model, rows=8)
    s, t = model.session(16), model.session(16)
    with pytest.raises(ValueError, match="at most 8"):
        batch.step([(s, list(range(5)), False), (t, list(range(4)), False)])
    with pytest.raises(ValueError, match="share one KV cache"):
        batch.step([(s, [1], False), (s, [2], False)])
    with pytest.raises(ValueError, match="at least one token"):
        batch.step([(s, [], False)])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        batch.step([(s, [1], False), (t, [VOCAB], False)])
    assert s.n_past == 0 and t.n_past == 0  # a failed step changes nothing
    s.prefill(list(range(14)))
    with pytest.raises(ContextOverflowError):
        batch.step([(s, [1, 2, 3], False)])
    other = ossrun.load(model.path, n_ctx=16, precision="f32")
    with pytest.raises(ValueError, match="own model"):
        batch.step([(other.session(), [1], False)])
    with pytest.raises(ValueError, match="rows"):
        Batch(model, rows=0)
    assert batch.step([]) == []
