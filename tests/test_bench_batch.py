"""tools/bench_batch.py on the tiny model: it runs, and its weight-byte count per step is what a
batched step must read (the dense weights once, each routed expert once for all its tokens)."""

from __future__ import annotations

from conftest import load_tool


def test_bench_batch_reports_bytes_per_step_and_their_bound(tiny_gguf, capsys):
    args = [str(tiny_gguf), "--sequences", "1", "2", "4", "--repeats", "1", "--steps", "2", "--warmup", "1",
            "--threads", "1"]
    assert load_tool("bench_batch").main(args) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) == 6 and cells[0].isdigit():
            rows[int(cells[0])] = (float(cells[3]), float(cells[4]))  # MB/step, bound
    assert sorted(rows) == [1, 2, 4], out
    mb1, bound1 = rows[1]
    assert mb1 > 0 and bound1 == 1.0
    for n in (2, 4):
        mb, bound = rows[n]
        # More sequences read at least one sequence's weights and at most n copies of them.
        assert mb1 <= mb <= n * mb1 * 1.001, out
        assert 1.0 - 1e-2 <= bound <= n + 1e-2, out


def test_bench_batch_compares_mxfp4_tunings(tiny_gguf, capsys):
    """--mxfp4-tuning l1:1 l2:2: one table per tuning, and this CPU's tuning back afterwards."""
    from ossrun._core import ops

    before = ops.mxfp4_tuning()
    args = [str(tiny_gguf), "--sequences", "1", "2", "--repeats", "1", "--steps", "1", "--warmup", "1",
            "--threads", "1", "--mxfp4-tuning", "l1:1", "l2:2"]
    assert load_tool("bench_batch").main(args) == 0
    out = capsys.readouterr().out
    assert "MXFP4 tuning l1:1 " in out and "MXFP4 tuning l2:2 " in out
    assert out.count("ms per step by part") == 2
    assert ops.mxfp4_tuning() == before
