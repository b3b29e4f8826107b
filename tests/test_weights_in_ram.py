"""mmap=False / --no-mmap: the expert weights copied into 2 MiB-page anonymous memory
(ossrun.weights_in_ram) give the same model, bit for bit, from memory outside the file map."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from ossrun import model_maker, weights_in_ram
from ossrun.errors import ModelError
from ossrun.gguf_loader import open_gguf
from ossrun.model import Model


@pytest.fixture(autouse=True)
def gguf_layout(monkeypatch):
    """The copy as such, in the file's layout: the AVX-512 variants also repack it for their decode
    GEMV, which sums in another order (tests/test_mxfp4_interleave.py)."""
    monkeypatch.setenv("OSSRUN_INTERLEAVE_MXFP4", "0")


@pytest.fixture(scope="module")
def experts_gguf(tmp_path_factory) -> Path:
    # Experts of 2.2 MB each (6 tensors, ~13 MB): big enough for 2 MiB pages to show in smaps.
    path = tmp_path_factory.mktemp("ram") / "m.gguf"
    return model_maker.make_model(path, "tiny", seed=3, use_byte_vocab=True, vocab=512, hidden=256,
                                  intermediate=2048, experts=8, heads=4, head_dim=64)


def _span(arr) -> tuple[int, int]:
    return arr.ctypes.data, arr.ctypes.data + arr.nbytes


def _map_span(shard) -> tuple[int, int]:
    base = np.frombuffer(shard._map, dtype=np.uint8, count=1).ctypes.data
    return base, base + shard.size


def _inside(span, outer) -> bool:
    return outer[0] <= span[0] and span[1] <= outer[1]


def test_logits_are_bit_identical_both_ways(experts_gguf, rng):
    ids = rng.integers(0, 512, 9).tolist()
    mapped = Model(experts_gguf, n_ctx=64, threads=2, device="cpu")
    copied = Model(experts_gguf, n_ctx=64, threads=2, device="cpu", mmap=False)
    assert mapped.weights_in_ram is None
    assert copied.weights_in_ram is not None
    assert np.array_equal(mapped.logits(ids), copied.logits(ids))
    s = copied.session()
    first = s.prefill(ids[:5])
    assert np.isfinite(first).all()
    assert np.array_equal(s.decode(ids[5]), mapped.logits(ids[:6])[-1])


def test_expert_views_live_outside_the_file_map(experts_gguf):
    model = Model(experts_gguf, n_ctx=16, threads=1, device="cpu", mmap=False)
    g, ram = model._file, model.weights_in_ram
    file_map = _map_span(g.reader.shards[0])
    copy_span = (ram.address, ram.address + ram.n_bytes + 6 * weights_in_ram.TENSOR_ALIGN)
    experts = [n for n in g.tensors if n.endswith(weights_in_ram.EXPERT_WEIGHTS)]
    assert len(experts) == 3 * model.config.block_count == ram.n_tensors
    assert ram.address % weights_in_ram.HUGE_PAGE == 0
    reference = open_gguf(experts_gguf)
    for name, (arr, _ggml_type, _shape) in g.tensors.items():
        if name in experts:
            assert not _inside(_span(arr), file_map), name
            assert _inside(_span(arr), copy_span), name
            assert not arr.flags.writeable
            assert arr.ctypes.data % 64 == 0
            assert np.array_equal(arr, reference.tensors[name][0]), name
        else:  # everything else (biases, dense Q8_0 matrices) stays in the map
            assert _inside(_span(arr), file_map), name
    assert ram.n_bytes == sum(g.tensors[n][0].nbytes for n in experts)
    assert "expert tensors" in ram.summary()


def _huge_pages_expected() -> bool:
    defrag = Path("/sys/kernel/mm/transparent_hugepage/defrag")
    try:  # direct compaction for madvised regions, so a 2 MiB page is found when one is asked for
        compacts = any(f"[{m}]" in defrag.read_text() for m in ("always", "madvise", "defer+madvise"))
    except OSError:
        compacts = False
    return weights_in_ram.thp_mode() in ("always", "madvise") and compacts


@pytest.mark.skipif(not _huge_pages_expected(), reason="transparent huge pages are off here")
def test_the_copy_is_backed_by_2_mib_pages(experts_gguf):
    model = Model(experts_gguf, n_ctx=16, threads=1, device="cpu", mmap=False)
    ram = model.weights_in_ram
    # The 13 MB copy holds at least some whole, aligned 2 MiB extents.
    assert ram.huge_page_bytes() >= weights_in_ram.HUGE_PAGE


def test_not_enough_memory_names_what_was_needed(experts_gguf, monkeypatch):
    monkeypatch.setattr(weights_in_ram, "mem_available", lambda: 1 << 20)
    with pytest.raises(ModelError, match=r"--no-mmap needs 1[2-4]\.\d MiB .*only 1\.0 MiB is available"):
        Model(experts_gguf, n_ctx=16, threads=1, device="cpu", mmap=False)


def test_thp_never_warns_and_still_copies(experts_gguf, monkeypatch):
    monkeypatch.setattr(weights_in_ram, "thp_mode", lambda: "never")
    with pytest.warns(RuntimeWarning, match="transparent huge pages are never"):
        model = Model(experts_gguf, n_ctx=16, threads=1, device="cpu", mmap=False)
    assert model.weights_in_ram.thp == "never"


def test_thp_mode_and_mem_available_parse(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert weights_in_ram.thp_mode(f) == "madvise"
    assert weights_in_ram.thp_mode(tmp_path / "absent") == "unavailable"
    m = tmp_path / "meminfo"
    m.write_text("MemTotal:       24683652 kB\nMemAvailable:   1000 kB\n")
    assert weights_in_ram.mem_available(m) == 1000 * 1024
    assert weights_in_ram.mem_available(tmp_path / "absent") is None


def test_a_file_truncated_after_opening_is_a_model_error(experts_gguf, tmp_path):
    path = tmp_path / "cut.gguf"
    shutil.copyfile(experts_gguf, path)
    g = open_gguf(path)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(ModelError, match="truncated"):
        weights_in_ram.copy_experts_to_ram(g)


def test_a_truncated_file_is_refused_by_the_loader_first(experts_gguf, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(experts_gguf.read_bytes()[: experts_gguf.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated"):
        Model(path, n_ctx=16, threads=1, device="cpu", mmap=False)


def test_mmap_must_be_a_bool_or_auto(experts_gguf):
    with pytest.raises(ValueError, match="mmap must be True, False or 'auto'"):
        Model(experts_gguf, n_ctx=16, threads=1, device="cpu", mmap="no")


@pytest.mark.parametrize("argv", [["run", "m.gguf", "hi"], ["chat", "m.gguf"], ["serve", "m.gguf"],
                                  ["bench", "m.gguf"]])
def test_no_mmap_flag_on_every_loading_command(argv):
    from ossrun.cli import build_parser
    from ossrun.device_cli import load_options

    parser = build_parser()
    assert parser.parse_args(argv).no_mmap is False
    args = parser.parse_args(argv + ["--no-mmap"])
    assert args.no_mmap is True
    assert load_options(args)["mmap"] is False
    assert load_options(parser.parse_args(argv))["mmap"] is True


def test_auto_copies_when_the_experts_fit_with_room_to_spare(experts_gguf, monkeypatch, rng):
    ids = rng.integers(0, 512, 7).tolist()
    mapped = Model(experts_gguf, n_ctx=32, threads=1, device="cpu")
    assert mapped.mmap_reason.startswith("mmap=True")
    monkeypatch.setattr(weights_in_ram, "mem_available", lambda: 64 << 30)
    auto = Model(experts_gguf, n_ctx=32, threads=1, device="cpu", mmap="auto")
    assert auto.weights_in_ram is not None
    copied = Model(experts_gguf, n_ctx=32, threads=1, device="cpu", mmap=False)
    assert copied.mmap_reason.startswith("mmap=False: ")
    assert auto.mmap_reason.startswith("mmap='auto', the experts' ") and "copied" in auto.mmap_reason
    assert np.array_equal(auto.logits(ids), mapped.logits(ids))


def test_auto_reads_the_map_when_the_copy_would_not_leave_the_headroom(experts_gguf, monkeypatch):
    need = sum(-(-a.nbytes // weights_in_ram.TENSOR_ALIGN) * weights_in_ram.TENSOR_ALIGN
               for _, a, _, _ in weights_in_ram._sources(open_gguf(experts_gguf)))
    # Enough for the experts themselves, not for the 2 GiB to spare beside them.
    monkeypatch.setattr(weights_in_ram, "mem_available", lambda: need + weights_in_ram.AUTO_HEADROOM - 1)
    model = Model(experts_gguf, n_ctx=32, threads=1, device="cpu", mmap="auto")
    assert model.weights_in_ram is None
    assert "read from the file's memory map" in model.mmap_reason
    monkeypatch.setattr(weights_in_ram, "mem_available", lambda: None)
    model = Model(experts_gguf, n_ctx=32, threads=1, device="cpu", mmap="auto")
    assert model.weights_in_ram is None and "MemAvailable" in model.mmap_reason


def test_serve_copies_the_experts_by_default_and_takes_mmap_either_way():
    from ossrun.cli import build_parser
    from ossrun.server import serve_mmap

    parser = build_parser()
    assert serve_mmap(parser.parse_args(["serve", "m.gguf"])) == "auto"
    assert serve_mmap(parser.parse_args(["serve", "m.gguf", "--mmap"])) is True
    assert serve_mmap(parser.parse_args(["serve", "m.gguf", "--no-mmap"])) is False
    with pytest.raises(SystemExit, match="exclude each other"):
        serve_mmap(parser.parse_args(["serve", "m.gguf", "--mmap", "--no-mmap"]))


class _Terminal:
    def __init__(self, tty: bool):
        self.text, self.tty = "", tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_a_long_copy_shows_its_progress_on_a_terminal_only(monkeypatch, tty):
    term = _Terminal(tty)
    monkeypatch.setattr("sys.stderr", term)
    total = 3 << 30
    p = weights_in_ram._Progress(total)
    for _ in range(4):
        p.add(total // 4)
    p.close()
    if tty:
        assert term.text.count("\r") == 4 and " 25% of 3.0 GiB" in term.text
        assert term.text.endswith("100% of 3.0 GiB\n")
    else:
        assert term.text == ""
    small = weights_in_ram._Progress(1 << 20)  # a small copy says nothing
    small.add(1 << 20)
    small.close()
    assert term.text.count("\n") == (1 if tty else 0)
