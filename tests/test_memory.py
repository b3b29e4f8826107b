"""Memory honesty (README, issue "core runtime"): weights are served from the GGUF memory map, so
loading touches almost none of them, and a decode step touches only the routed experts."""

from __future__ import annotations

import numpy as np
import ossrun
import psutil
import pytest
from ossrun import model_maker


@pytest.fixture(scope="module")
def expert_heavy_model(tmp_path_factory):
    # ~110 MB of MXFP4 experts (64 per layer, 4 routed), so what is touched is easy to see.
    hp = model_maker.preset("tiny", layers=4, hidden=512, intermediate=512, experts=64, top_k=4,
                            heads=8, kv_heads=2)
    return model_maker.write_model(tmp_path_factory.mktemp("mem") / "experts.gguf", hp, seed=5)


@pytest.fixture(scope="module")
def expert_heavy_split_model(tmp_path_factory):
    """The same model in 40 MB shards, as gguf-split writes them."""
    hp = model_maker.preset("tiny", layers=4, hidden=512, intermediate=512, experts=64, top_k=4,
                            heads=8, kv_heads=2)
    d = tmp_path_factory.mktemp("mem_split")
    model_maker.write_model(d / "experts.gguf", hp, seed=5, split_max_size=40_000_000)
    return sorted(d.glob("experts-*-of-*.gguf"))


def rss() -> int:
    return psutil.Process().memory_info().rss


def test_load_maps_weights_without_reading_them(expert_heavy_model):
    size = expert_heavy_model.stat().st_size
    before = rss()
    model = ossrun.load(expert_heavy_model, n_ctx=256, threads=1)
    grown = rss() - before
    # Loading reads the header and builds the tokenizer; the weights stay unread in the map.
    assert grown < 0.1 * size, f"load grew RSS by {grown / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"

    s = model.session()
    before = rss()
    s.prefill([1, 2])  # two tokens route to at most 8 of 64 experts per layer
    touched = rss() - before
    # Two tokens read the attention matrices, the output matrix and <= 8/64 of the experts: far
    # less than the file. Reading every expert (a copy, or a dense pass) would exceed half of it.
    assert touched < 0.5 * size, f"two tokens touched {touched / 1e6:.0f} MB of {size / 1e6:.0f} MB"
    assert np.isfinite(s.decode(3)).all()


def test_split_model_maps_every_shard_without_reading_it(expert_heavy_split_model):
    """Each shard is mapped as it is (zero-copy): loading from any shard reads none of the
    weights, and two tokens touch no more of the shards than of the single file."""
    shards = expert_heavy_split_model
    assert len(shards) >= 3
    size = sum(p.stat().st_size for p in shards)
    before = rss()
    model = ossrun.load(shards[1], n_ctx=256, threads=1)
    grown = rss() - before
    assert model._file.paths == shards
    assert grown < 0.1 * size, f"load grew RSS by {grown / 1e6:.0f} MB for {size / 1e6:.0f} MB of shards"
    s = model.session()
    before = rss()
    s.prefill([1, 2])
    touched = rss() - before
    assert touched < 0.5 * size, f"two tokens touched {touched / 1e6:.0f} MB of {size / 1e6:.0f} MB"
