"""ossrun.placement: GPU/CPU plans from tensor sizes, the KV cache at n_ctx and a free-VRAM figure,
all on made-up sizes (no GPU needed). Spec: the order that pays most (output, then each layer's
attention + dense weights + KV cache from the last layer down, then experts from the last layer
down), forced splits honoured or refused with what would fit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ossrun.errors import DeviceError
from ossrun.placement import (
    DEFAULT_RESERVE,
    check_split,
    format_plan,
    group_tensor_bytes,
    kv_cache_bytes,
    plan_placement,
    scratch_bytes,
)

MiB = 2**20
GiB = 2**30


def fake_model(L=6, dense=10 * MiB, experts=100 * MiB, output=50 * MiB, embedding=50 * MiB):
    """A config and tensor sizes in the GGUF names: per layer `dense` bytes over its attention
    tensors and `experts` bytes over its three expert tensors."""
    cfg = SimpleNamespace(block_count=L, sliding_window=128, head_count=8, head_count_kv=2,
                          key_length=64, embedding_length=256, expert_feed_forward_length=256,
                          expert_count=8, expert_used_count=2, vocab_size=1000)
    sizes = {"token_embd.weight": embedding, "output_norm.weight": 1024, "output.weight": output - 1024}
    for i in range(L):
        sizes[f"blk.{i}.attn_q.weight"] = dense // 2
        sizes[f"blk.{i}.attn_output.weight"] = dense - dense // 2 - 1024
        sizes[f"blk.{i}.attn_norm.weight"] = 1024
        sizes[f"blk.{i}.ffn_gate_exps.weight"] = experts // 4
        sizes[f"blk.{i}.ffn_up_exps.weight"] = experts // 4
        sizes[f"blk.{i}.ffn_down_exps.weight"] = experts - experts // 2
    return cfg, sizes


def vram_for(cfg, sizes, n_ctx, layers_dense, layers_experts):
    """Free VRAM that holds exactly the output, the last `layers_dense` layers' dense + KV and the
    last `layers_experts` layers' experts (plus the reserve and scratch)."""
    L = cfg.block_count
    g = group_tensor_bytes(sizes, L)
    dense = range(L - layers_dense, L)
    need = g["output"] + sum(g["dense"][i] + kv_cache_bytes(cfg, i, n_ctx) for i in dense)
    need += sum(g["experts"][i] for i in range(L - layers_experts, L))
    return need + DEFAULT_RESERVE + scratch_bytes(cfg, n_ctx)


def devices(plan, kind):
    return [p.device for p in plan.parts if p.kind == kind]


def test_group_tensor_bytes_by_part():
    cfg, sizes = fake_model(L=3)
    g = group_tensor_bytes(sizes, 3)
    assert g["embedding"] == 50 * MiB and g["output"] == 50 * MiB
    assert g["dense"] == [10 * MiB] * 3 and g["experts"] == [100 * MiB] * 3
    with pytest.raises(ValueError, match="layer 7"):
        group_tensor_bytes({"blk.7.attn_q.weight": 1}, 3)


def test_kv_cache_bytes_full_and_sliding_layers():
    cfg, _ = fake_model()
    per_slot = 2 * 2 * 64 * 4  # K and V, n_kv 2, d 64, float32
    assert kv_cache_bytes(cfg, 1, 8192) == 8192 * per_slot  # full layer: every position
    assert kv_cache_bytes(cfg, 0, 8192) == (128 - 1 + 1024 + 1024) * per_slot  # window, chunk, rollback
    assert kv_cache_bytes(cfg, 0, 100) == 100 * per_slot  # never more than n_ctx
    assert kv_cache_bytes(cfg, 1, 8192, "f16") == 8192 * per_slot // 2


def test_everything_fits_on_a_large_gpu():
    cfg, sizes = fake_model()
    plan = plan_placement(cfg, sizes, 4096, 80 * GiB)
    assert plan.gpu_layers == 6 and plan.n_cpu_moe == 0
    assert devices(plan, "experts") == ["cuda"] * 6 and devices(plan, "embedding") == ["cpu"]
    assert plan.cpu_bytes == 50 * MiB  # the embedding only
    assert "all layers on the GPU, all experts on the GPU" in plan.summary()
    assert plan.gpu_bytes == sum(p.bytes for p in plan.parts if p.device == "cuda") + plan.scratch


def test_no_gpu_means_everything_on_the_cpu():
    cfg, sizes = fake_model()
    plan = plan_placement(cfg, sizes, 4096, None)
    assert plan.gpu_bytes == 0 and set(p.device for p in plan.parts) == {"cpu"}
    assert "no GPU" in plan.summary()


@pytest.mark.parametrize("experts_fit", [0, 1, 4, 5])
def test_experts_go_on_from_the_last_layer_down(experts_fit):
    cfg, sizes = fake_model()
    n_ctx = 4096
    free = vram_for(cfg, sizes, n_ctx, 6, experts_fit)
    plan = plan_placement(cfg, sizes, n_ctx, free)
    assert plan.gpu_layers == 6 and plan.n_cpu_moe == 6 - experts_fit
    assert devices(plan, "experts") == ["cpu"] * (6 - experts_fit) + ["cuda"] * experts_fit
    assert plan.gpu_bytes <= free - DEFAULT_RESERVE
    # One byte less and one layer's experts fewer fit.
    if experts_fit:
        assert plan_placement(cfg, sizes, n_ctx, free - 1).n_cpu_moe == 6 - experts_fit + 1


@pytest.mark.parametrize("layers_fit", [1, 3, 5])
def test_dense_layers_first_from_the_last_layer_down(layers_fit):
    cfg, sizes = fake_model()
    free = vram_for(cfg, sizes, 4096, layers_fit, 0)
    plan = plan_placement(cfg, sizes, 4096, free)
    assert plan.gpu_layers == layers_fit
    assert devices(plan, "dense") == ["cpu"] * (6 - layers_fit) + ["cuda"] * layers_fit
    assert devices(plan, "kv_cache") == devices(plan, "dense")
    assert devices(plan, "output") == ["cuda"]
    assert devices(plan, "experts") == ["cpu"] * 6  # no room left for any
    assert plan.n_cpu_moe == 6


def test_context_length_moves_the_split():
    # A longer context takes VRAM from the experts first (the KV cache is placed before them).
    cfg, sizes = fake_model(L=6, experts=10 * MiB)
    free = vram_for(cfg, sizes, 2048, 6, 6)
    assert plan_placement(cfg, sizes, 2048, free).n_cpu_moe == 0
    longer = plan_placement(cfg, sizes, 8192, free)  # 3 full layers x 6 MiB more KV cache
    assert longer.n_cpu_moe == 2 and longer.gpu_layers == 6


def test_too_little_vram_for_anything():
    cfg, sizes = fake_model()
    plan = plan_placement(cfg, sizes, 4096, DEFAULT_RESERVE)
    assert plan.gpu_bytes == 0 and "too little VRAM" in plan.summary()


def test_cpu_moe_all_keeps_every_expert_on_the_cpu():
    cfg, sizes = fake_model()
    plan = plan_placement(cfg, sizes, 4096, 80 * GiB, cpu_moe="all")
    assert plan.n_cpu_moe == 6 and devices(plan, "experts") == ["cpu"] * 6
    assert devices(plan, "dense") == ["cuda"] * 6
    assert "all experts on the CPU" in plan.summary()


def test_forced_n_cpu_moe_is_honoured_or_refused_with_what_fits():
    cfg, sizes = fake_model()
    free = vram_for(cfg, sizes, 4096, 6, 2)
    plan = plan_placement(cfg, sizes, 4096, free, cpu_moe=5)
    assert devices(plan, "experts") == ["cpu"] * 5 + ["cuda"]
    with pytest.raises(DeviceError, match=r"cpu_moe=4 \(--n-cpu-moe 4\)"):
        plan_placement(cfg, sizes, 4096, free, cpu_moe=3)


def test_forced_gpu_layers():
    cfg, sizes = fake_model()
    plan = plan_placement(cfg, sizes, 4096, 80 * GiB, gpu_layers=2)
    assert devices(plan, "dense") == ["cpu"] * 4 + ["cuda"] * 2
    # Experts only go where their layer's attention is (no extra crossings): layers 4 and 5.
    assert devices(plan, "experts") == ["cpu"] * 4 + ["cuda"] * 2 and plan.n_cpu_moe == 4
    assert plan_placement(cfg, sizes, 4096, 80 * GiB, gpu_layers=0).gpu_bytes == 0
    free = vram_for(cfg, sizes, 4096, 3, 0)
    with pytest.raises(DeviceError, match="at most 3 layers fit"):
        plan_placement(cfg, sizes, 4096, free, gpu_layers=4)


@pytest.mark.parametrize("kwargs,match", [
    ({"gpu_layers": 7}, "gpu_layers"), ({"gpu_layers": -1}, "gpu_layers"), ({"cpu_moe": "some"}, "cpu_moe"),
    ({"cpu_moe": 1.5}, "cpu_moe"), ({"gpu_layers": True}, "gpu_layers")])
def test_bad_split_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_split(6, **kwargs)
    assert check_split(6, None, "all") == (None, 6)


def test_format_plan_names_every_part():
    cfg, sizes = fake_model()
    plan = plan_placement(cfg, sizes, 4096, vram_for(cfg, sizes, 4096, 6, 2))
    text = "\n".join(format_plan(plan))
    for want in ("--n-cpu-moe 4", "experts of layers 4..5", "experts of layers 0..3",
                 "KV cache of layers 0..5", "token embedding", "VRAM free"):
        assert want in text
    d = plan.to_dict()
    assert d["n_cpu_moe"] == 4 and len(d["parts"]) == 2 + 3 * 6


def test_20b_shaped_sizes_with_all_experts_on_the_cpu_fit_in_3_gb():
    # The target: 20b at 8k context with --n-cpu-moe all needs at most 3 GB of VRAM. Sizes
    # of gpt-oss-20b as GGUF stores it (Q8_0 dense weights, MXFP4 experts, F32 norms and biases).
    H, I, E, L, V, nq, nkv, d = 2880, 2880, 32, 24, 201088, 64, 8, 64
    cfg = SimpleNamespace(block_count=L, sliding_window=128, head_count=nq, head_count_kv=nkv,
                          key_length=d, embedding_length=H, expert_feed_forward_length=I,
                          expert_count=E, expert_used_count=4, vocab_size=V)
    q8 = lambda rows, cols: rows * cols // 32 * 34  # noqa: E731
    mx = lambda rows, cols: rows * cols // 32 * 17  # noqa: E731
    sizes = {"token_embd.weight": q8(V, H), "output.weight": q8(V, H), "output_norm.weight": 4 * H}
    for i in range(L):
        p = f"blk.{i}."
        sizes |= {p + "attn_q.weight": q8(nq * d, H), p + "attn_k.weight": q8(nkv * d, H),
                  p + "attn_v.weight": q8(nkv * d, H), p + "attn_output.weight": q8(H, nq * d),
                  p + "ffn_gate_inp.weight": 4 * E * H, p + "attn_sinks.weight": 4 * nq,
                  p + "ffn_gate_exps.weight": E * mx(I, H), p + "ffn_up_exps.weight": E * mx(I, H),
                  p + "ffn_down_exps.weight": E * mx(H, I)}
    plan = plan_placement(cfg, sizes, 8192, 24 * GiB, cpu_moe="all")
    assert plan.gpu_layers == L and plan.gpu_bytes <= 3 * 10**9
    assert plan_placement(cfg, sizes, 8192, 24 * GiB).n_cpu_moe == 0  # a 24 GB card holds it all


def test_scratch_holds_flash_decodings_parts_at_long_contexts():
    # Key ranges of one 2048-key part need none; beyond, SPLIT_ROWS rows x heads x parts x (d + 2)
    # floats (cuda/device_model.h attention_parts, grown to what a decode row needs).
    from ossrun.placement import SPLIT_CHUNK, SPLIT_ROWS

    cfg, _ = fake_model()
    base = scratch_bytes(cfg)
    assert scratch_bytes(cfg, SPLIT_CHUNK) == base
    for n_ctx, parts in ((SPLIT_CHUNK + 1, 2), (131072, 64)):
        want = 4 * SPLIT_ROWS * cfg.head_count * parts * (cfg.key_length + 2)
        assert scratch_bytes(cfg, n_ctx) - base == want


def test_offload_stages_the_largest_matrix_of_the_cpus_moe_blocks():
    cfg, sizes = fake_model()
    plan = plan_placement(cfg, sizes, 4096, 80 * GiB, cpu_moe=2, offload=512)
    # Two slots of ffn_down_exps, the largest, so that one's copy overlaps the other's matmul.
    assert plan.stage == 2 * 50 * MiB and plan.stage_slots == 2 and plan.offload_min_tokens == 512
    assert plan.gpu_bytes == plan.bytes_on("cuda") + plan.scratch + plan.stage
    assert "prompt chunks of >= 512 tokens" in plan.summary()
    assert plan_placement(cfg, sizes, 4096, 80 * GiB, cpu_moe=2, offload=0).stage == 0
    assert plan_placement(cfg, sizes, 4096, 80 * GiB, offload=512).stage == 0  # no block left on the CPU
    # Layers wholly on the CPU are not offloaded: with gpu_layers=2 only layers 4 and 5 are.
    sizes["blk.5.ffn_down_exps.weight"] = 70 * MiB
    split = plan_placement(cfg, sizes, 4096, 80 * GiB, gpu_layers=2, cpu_moe="all", offload=512)
    assert split.stage == 2 * 70 * MiB
    sizes["blk.5.ffn_down_exps.weight"] = 50 * MiB
    # Room for one slot and not two: one, and the plan says so; for none: no offload, and why.
    tight = vram_for(cfg, sizes, 4096, 6, 0)
    for extra, slots in ((2 * 50 * MiB, 2), (2 * 50 * MiB - 1, 1), (50 * MiB, 1), (50 * MiB - 1, 0)):
        plan = plan_placement(cfg, sizes, 4096, tight + extra, cpu_moe="all", offload=512)
        assert (plan.stage_slots, plan.stage) == (slots, slots * 50 * MiB), extra
        assert plan.offload_min_tokens == (512 if slots else 0)
        assert plan.gpu_bytes <= tight + extra - DEFAULT_RESERVE
        if slots == 1:
            assert "one offload staging slot" in plan.notes[0]
        if slots == 0:
            assert "staging slot" in plan.notes[-1]
    # One slot asked for (OSSRUN_CUDA_STAGE_SLOTS=1): one, wherever two would fit.
    plan = plan_placement(cfg, sizes, 4096, 80 * GiB, cpu_moe="all", offload=512, stage_slots=1)
    assert (plan.stage_slots, plan.stage, plan.notes) == (1, 50 * MiB, [])
    with pytest.raises(ValueError, match="stage_slots"):
        plan_placement(cfg, sizes, 4096, 80 * GiB, cpu_moe="all", offload=512, stage_slots=3)


def test_the_staging_slots_setting_is_checked(monkeypatch):
    from ossrun.placement import offload_stage_slots

    assert offload_stage_slots() == 2
    monkeypatch.setenv("OSSRUN_CUDA_STAGE_SLOTS", "1")
    assert offload_stage_slots() == 1
    monkeypatch.setenv("OSSRUN_CUDA_STAGE_SLOTS", "two")
    with pytest.raises(ValueError, match="OSSRUN_CUDA_STAGE_SLOTS"):
        offload_stage_slots()
