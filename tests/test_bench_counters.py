"""What `ossrun bench` divides by (issue 9): the core's count of weight bytes read, which must be
the routed experts and the dense matrices of each decode step, and the machine probes."""

from __future__ import annotations

import json
import subprocess
import sys

import ossrun
import pytest
from ossrun import bench, model_maker
from ossrun._core import ops
from ossrun.gguf_reader import GgufFile


@pytest.fixture(scope="module")
def expert_model(tmp_path_factory):
    hp = model_maker.preset("tiny", layers=3, hidden=128, intermediate=96, experts=16, top_k=4,
                            heads=4, kv_heads=2)
    return model_maker.write_model(tmp_path_factory.mktemp("bench") / "m.gguf", hp, seed=3)


def test_decode_step_reads_routed_experts_and_dense_matrices(expert_model):
    f = GgufFile(expert_model)
    t = f.tensors
    model = ossrun.load(expert_model, n_ctx=64, threads=2)
    c = model.config
    s = model.session()
    s.prefill([5, 6, 7])
    per_layer_dense = sum(t[f"blk.0.{n}.weight"].n_bytes
                          for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_inp"))
    # One token routes to top_k distinct experts per layer; each reads its gate, up and down matrix.
    per_expert = sum(t[f"blk.0.{n}.weight"].n_bytes // c.expert_count
                     for n in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"))
    output = t["output.weight"].n_bytes if "output.weight" in t else t["token_embd.weight"].n_bytes
    expected = c.block_count * (per_layer_dense + c.expert_used_count * per_expert) + output
    for tok in (8, 9):
        before = model._core.weight_bytes_read
        s.prefill([tok])
        assert model._core.weight_bytes_read - before == expected


def test_prefill_macs_count_the_routed_experts():
    hp = model_maker.preset("20b")
    c = type("C", (), dict(embedding_length=hp.hidden, key_length=hp.head_dim, head_count=hp.heads,
                           head_count_kv=hp.kv_heads, expert_count=hp.experts,
                           expert_used_count=hp.top_k, expert_feed_forward_length=hp.intermediate,
                           block_count=hp.layers, sliding_window=hp.sliding_window))
    # gpt-oss-20b: ~3.0 G multiply-adds per token without the output matrix (docs/PERFORMANCE.md).
    assert 2.9e9 < bench._prefill_macs_per_token(c, 1) < 3.1e9


def test_machine_probes_measure_something():
    assert ops.read_bandwidth(1, 64) > 0.1
    gops, instruction = ops.int16_peak(1)
    assert (gops > 1.0) == bool(instruction)
    with pytest.raises(ValueError):
        ops.read_bandwidth(0, 64)


def test_bench_runs_on_a_model_whose_vocabulary_is_small(expert_model):
    """The bench's prompt ids come from the model's own vocabulary (a tiny model's is 256 ids)."""
    ids = bench._tokens(64, 1, 256)
    assert all(0 <= i < 256 for i in ids) and len(set(ids)) > 1
    args = ["bench", str(expert_model), "--prompt", "8", "--gen", "4", "--reps", "1", "--bandwidth", "10",
            "--json"]
    run = subprocess.run([sys.executable, "-m", "ossrun", *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["decode_tok_s"] > 0 and "--no-mmap" not in result["engine"]
    # --no-mmap reaches the ossrun worker, whose engine line says the experts were copied.
    run = subprocess.run([sys.executable, "-m", "ossrun", *args, "--no-mmap"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "experts copied into 2 MiB pages (--no-mmap)" in json.loads(run.stdout)["engine"]


def test_cpu_name_says_the_family_and_model(tmp_path):
    """A VM's model name alone ("AMD EPYC") names no microarchitecture: the bench adds the x86
    family and model of the first processor, and takes the name alone where they are missing."""
    _cpu_name = bench._cpu_name
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 99\nmodel\t\t: 1\n")
    assert _cpu_name(str(info)) == "AMD EPYC (family 25 model 17)"
    info.write_text("processor\t: 0\nmodel name\t: Some ARM core\n")
    assert _cpu_name(str(info)) == "Some ARM core"
    assert _cpu_name(str(tmp_path / "missing")) == ""
