"""The sampler (python/ossrun/sampler.py): greedy, temperature, top-k and top-p against direct
computations of the distributions they define, and reproducibility from a seed."""

from __future__ import annotations

import numpy as np
import pytest
from ossrun.sampler import BLOCK, Sampler, top_ids


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def empirical(sampler, logits, n):
    counts = np.bincount([sampler(logits) for _ in range(n)], minlength=logits.size)
    return counts / n


def test_greedy_is_argmax_with_lowest_id_on_ties():
    logits = np.array([0.5, 3.0, -1.0, 3.0], np.float32)
    assert Sampler(temperature=0)(logits) == 1


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_frequencies_follow_the_tempered_softmax(rng, temperature):
    logits = rng.normal(0, 1.5, 12).astype(np.float32)
    want = softmax(logits.astype(np.float64) / temperature)
    got = empirical(Sampler(temperature=temperature, seed=1), logits, 20000)
    # 20000 draws: a frequency's standard error is at most 0.0036; 5 sigma is 0.018.
    assert np.abs(got - want).max() < 0.018


def test_top_k_keeps_only_the_k_largest(rng):
    logits = rng.normal(0, 1, 50).astype(np.float32)
    got = empirical(Sampler(top_k=5, seed=2), logits, 5000)
    top5 = np.argsort(-logits)[:5]
    assert set(np.flatnonzero(got)) <= set(top5.tolist())
    want = np.zeros(50)
    want[top5] = softmax(logits[top5].astype(np.float64))
    assert np.abs(got - want).max() < 0.03


@pytest.mark.parametrize("vocab", [40, 3000])  # inside and beyond the 1024-candidate fast path
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.999])
def test_top_p_keeps_the_smallest_prefix_reaching_p(rng, vocab, top_p):
    logits = rng.normal(0, 0.3 if vocab > 1024 else 2.0, vocab)
    p = softmax(logits)
    order = np.argsort(-p, kind="stable")
    n_keep = int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)
    want = np.zeros(vocab)
    want[order[:n_keep]] = p[order[:n_keep]]
    want /= want.sum()
    got = Sampler(top_p=top_p)._nucleus(p)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("vocab", [16 * BLOCK + 1, 5000])  # the blocked draw; a padded last block
def test_a_large_vocabulary_draws_by_blocks_with_the_same_frequencies(rng, vocab):
    logits = rng.normal(0, 2.5, vocab).astype(np.float32)
    logits[-1] = logits.max() + 1.0  # the padded block carries real mass
    want = softmax(logits.astype(np.float64))
    got = empirical(Sampler(temperature=1.0, seed=4), logits, 20000)
    assert np.abs(got - want).max() < 0.018  # 5 sigma of 20000 draws, as above
    assert set(np.flatnonzero(got)) <= set(np.flatnonzero(want > 0))


def test_top_k_then_top_p(rng):
    logits = rng.normal(0, 1, 3000).astype(np.float32)
    got = empirical(Sampler(top_k=8, top_p=0.5, seed=5), logits, 4000)
    top8 = np.lexsort((np.arange(3000), -logits))[:8]
    p = softmax(logits[top8].astype(np.float64))  # likeliest first
    n_keep = int(np.searchsorted(np.cumsum(p), 0.5) + 1)
    want = np.zeros(3000)
    want[top8[:n_keep]] = p[:n_keep] / p[:n_keep].sum()
    assert set(np.flatnonzero(got)) <= set(top8[:n_keep].tolist())
    assert np.abs(got - want).max() < 0.04


@pytest.mark.parametrize("n", [1, 5, BLOCK, BLOCK + 3, 20 * BLOCK + 7])
@pytest.mark.parametrize("k", [1, 4, 20])
def test_top_ids_match_a_full_sort_with_ties_by_lower_id(rng, n, k):
    k = min(k, n)
    z = rng.integers(-4, 4, n).astype(np.float32)  # many ties
    z[rng.integers(0, n, max(1, n // 10))] = -np.inf  # masked ids
    want = np.lexsort((np.arange(n), -z))[:k]
    assert top_ids(z, k).tolist() == want.tolist()


def test_seed_makes_runs_reproducible(rng):
    logits = rng.normal(0, 1, 1000).astype(np.float32)
    a = [Sampler(temperature=0.8, top_p=0.9, seed=7)(logits) for _ in range(3)]
    s1, s2 = Sampler(temperature=0.8, top_p=0.9, seed=7), Sampler(temperature=0.8, top_p=0.9, seed=7)
    assert [s1(logits) for _ in range(20)] == [s2(logits) for _ in range(20)]
    assert len(set(a)) == 1


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-1), dict(temperature=float("nan")), dict(temperature="hot"), dict(top_p=0),
     dict(top_p=1.5), dict(top_k=-1), dict(top_k=2.5), dict(top_k=True)],
    ids=str,
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        Sampler(**kwargs)
