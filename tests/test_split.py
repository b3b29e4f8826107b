"""Split GGUF (llama.cpp's gguf-split layout): the generator writes shards as gguf-split does,
loading any shard opens all of them and gives exactly the single file's logits, and every broken
set of shards is a ModelError that names the file (and the tensor or key)."""

from __future__ import annotations

import gc
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import ossrun
import pytest
from ossrun import ModelError, layout_writers, model_maker
from ossrun.gguf_split import shard_path

# gpt-oss-120b's layer pattern, expert count and routing (36 layers, 128 experts, top-4,
# window 128) at widths small enough for a test.
SMALL_120B = dict(hidden=32, intermediate=32, heads=4, kv_heads=2, head_dim=16, vocab=300)
MAX_BYTES = 1_000_000  # "1M": 11 shards


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    hp = model_maker.preset("120b", **SMALL_120B)
    single = model_maker.write_model(d / "single.gguf", hp, seed=5, matrix_type="q8_0")
    first = model_maker.write_model(d / "model.gguf", hp, seed=5, matrix_type="q8_0",
                                    split_max_size=MAX_BYTES)
    shards = sorted(d.glob("model-*-of-*.gguf"))
    return single, first, shards


def copy_shards(shards, dest: Path) -> list[Path]:
    return [Path(shutil.copy(s, dest / s.name)) for s in shards]


def patch_key(path: Path, key: str, vtype: int, fmt: str, value) -> None:
    """Overwrite the value of a scalar metadata key in place."""
    data = bytearray(path.read_bytes())
    head = struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype)
    at = data.index(head) + len(head)
    data[at:at + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))


def load_error(path, *needles):
    with pytest.raises(ModelError) as e:
        ossrun.load(path)
    for n in needles:
        assert n in str(e.value), str(e.value)
    return str(e.value)


def test_shards_are_written_as_gguf_split_does(models):
    single, first, shards = models
    n = len(shards)
    assert n >= 8 and first == shards[0] and first.name == f"model-00001-of-{n:05d}.gguf"
    assert [s.name for s in shards] == [shard_path("model", i, n).name for i in range(n)]
    ref = gguf.GGUFReader(str(single))
    readers = [gguf.GGUFReader(str(s)) for s in shards]
    VT = gguf.GGUFValueType
    for no, r in enumerate(readers):
        # The split keys with gguf-split's value types: u16, u16, i32.
        assert r.fields["split.no"].types == [VT.UINT16] and r.fields["split.no"].contents() == no
        assert r.fields["split.count"].types == [VT.UINT16] and r.fields["split.count"].contents() == n
        assert r.fields["split.tensors.count"].types == [VT.INT32]
        assert r.fields["split.tensors.count"].contents() == len(ref.tensors)
        keys = {k for k in r.fields if not k.startswith("GGUF.")}
        if no == 0:  # all metadata in the first shard, only the split keys in the others
            assert keys == {k for k in ref.fields if not k.startswith("GGUF.")} | {
                "split.no", "split.count", "split.tensors.count"}
        else:
            assert keys == {"split.no", "split.count", "split.tensors.count"}
        data = sum(-(-int(t.n_bytes) // 32) * 32 for t in r.tensors)
        assert 0 < data <= MAX_BYTES
    # Together the shards hold the single file's tensors, in its order, byte for byte.
    split_tensors = [t for r in readers for t in r.tensors]
    assert [t.name for t in split_tensors] == [t.name for t in ref.tensors]
    for a, b in zip(split_tensors, ref.tensors):
        assert a.tensor_type == b.tensor_type and list(a.shape) == list(b.shape)
        assert np.array_equal(np.asarray(a.data).view(np.uint8), np.asarray(b.data).view(np.uint8))


@pytest.mark.parametrize("which", [0, 4, -1])
def test_any_shard_loads_the_whole_model_exactly(models, which):
    single, _, shards = models
    tokens = np.random.default_rng(2).integers(0, SMALL_120B["vocab"], 37)

    def run(model):  # a prefill of all positions, and decode steps after a shorter prefill
        s = model.session()
        s.prefill(tokens[:30])
        return model.logits(tokens), np.stack([s.decode(int(t)) for t in tokens[30:]])

    want = run(ossrun.load(single, precision="f32"))
    m = ossrun.load(shards[which], precision="f32")
    gc.collect()  # the core's views point into every shard's map: the model must keep them open
    assert m._file.paths == shards and m._file.layout.name == "ggml-org"
    assert m.config.block_count == 36 and m.config.expert_count == 128
    got = run(m)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_cli_split_max_size(tmp_path):
    rc = model_maker.main([str(tmp_path / "m.gguf"), "--layers", "3", "--split-max-size", "20K"])
    assert rc == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    n = len(names)
    assert n > 2 and names == [f"m-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    assert ossrun.load(tmp_path / names[-1]).config.block_count == 3


@pytest.mark.parametrize("text,value", [("100M", 100_000_000), ("2G", 2_000_000_000),
                                        ("500K", 500_000), ("4096", 4096)])
def test_parse_size(text, value):
    assert layout_writers.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "0M", "-1G", "2T", "1.5G", "M"])
def test_parse_bad_size(text):
    with pytest.raises(ValueError, match="split size"):
        layout_writers.parse_size(text)


# --------------------------------------------------------------------------- broken shard sets


def test_missing_shard(models, tmp_path):
    shards = copy_shards(models[2], tmp_path)
    shards[5].unlink()
    load_error(shards[0], str(shards[5]), f"shard 6 of {len(shards)} is missing")
    load_error(shards[-1], str(shards[5]), "missing")


def test_truncated_shard(models, tmp_path):
    shards = copy_shards(models[2], tmp_path)
    with open(shards[3], "r+b") as f:
        f.truncate(shards[3].stat().st_size - 1000)
    load_error(shards[0], str(shards[3]), "truncated")


def test_wrong_split_count(models, tmp_path):
    shards = copy_shards(models[2], tmp_path)
    patch_key(shards[2], "split.count", 2, "<H", 99)
    load_error(shards[0], str(shards[2]), "'split.count' = 99")


def test_split_count_disagrees_with_file_name(models, tmp_path):
    shards = copy_shards(models[2], tmp_path)
    patch_key(shards[0], "split.count", 2, "<H", 3)
    load_error(shards[0], str(shards[0]), "'split.count' = 3", f"file name says {len(shards)}")


def test_shards_in_the_wrong_order(models, tmp_path):
    shards = copy_shards(models[2], tmp_path)
    shards[1].rename(tmp_path / "swap")
    shards[2].rename(shards[1])
    (tmp_path / "swap").rename(shards[2])
    load_error(shards[0], str(shards[1]), "'split.no' = 2, expected 1")


def test_wrong_tensor_total(models, tmp_path):
    shards = copy_shards(models[2], tmp_path)
    patch_key(shards[6], "split.tensors.count", 5, "<i", 700)
    load_error(shards[0], str(shards[6]), "'split.tensors.count' = 700")


def test_shard_without_split_keys(models, tmp_path):
    shards = copy_shards(models[2], tmp_path)
    # Shard 2 renamed "split.no" -> "split.nX": it no longer says which shard it is.
    data = shards[1].read_bytes().replace(b"split.no", b"split.nX")
    shards[1].write_bytes(data)
    load_error(shards[0], str(shards[1]), "'split.no' is missing")


def test_shard_not_named_as_a_shard(models, tmp_path):
    shards = copy_shards(models[2], tmp_path)
    lone = shards[0].rename(tmp_path / "model.gguf")
    load_error(lone, str(lone), f"split in {len(shards)}", "-NNNNN-of-MMMMM.gguf")


def test_tensor_in_two_shards(tmp_path, monkeypatch):
    real = layout_writers.shard_plans

    def with_a_duplicate(plans, max_bytes):
        groups = real(plans, max_bytes)
        groups[1].append(groups[0][-1])  # the last tensor of shard 1 again in shard 2
        return groups

    monkeypatch.setattr(layout_writers, "shard_plans", with_a_duplicate)
    first = model_maker.make_model(tmp_path / "dup.gguf", layers=2, split_max_size=40_000)
    plans = model_maker.tensor_plans(model_maker.preset("tiny", layers=2))
    duplicated = real(plans, 40_000)[0][-1].name
    message = load_error(first, f"tensor '{duplicated}' is also in {first}")
    assert message.startswith(str(shard_path(tmp_path / "dup", 1, int(first.name[-10:-5]))))
