"""ossrun.device and the device flags: cuda_status() answers on any machine (built or not, with a
driver or not), device="cuda" is a DeviceError saying why (never a silent CPU fall-back), "auto"
takes the CPU and says why, and `ossrun info --device` prints the placement plan."""

from __future__ import annotations

import json

import ossrun
import pytest
from ossrun import cli
from ossrun import device as device_mod
from ossrun.device import CudaStatus, resolve_device, status_from_report
from ossrun.errors import DeviceError

GOOD_DEVICE = {"index": 0, "name": "NVIDIA GeForce RTX 4090", "compute_capability": (8, 9),
               "free_bytes": 22 * 2**30, "total_bytes": 24 * 2**30, "has_kernel_image": True}


# The refusals and CPU choices below are those of a machine where CUDA cannot run (CI, most
# laptops); on a GPU machine the same calls succeed (tests/test_cuda_model.py covers those).
without_gpu = pytest.mark.skipif(ossrun.cuda_status().available,
                                 reason="a usable GPU is here: these check the behaviour without one")


def report(**over):
    r = {"runtime_version": 13000, "driver_version": 13000, "error_code": 0, "error": "",
         "devices": [dict(GOOD_DEVICE)], "architectures": "75-real,86-real,89-real,90-real,120"}
    r.update(over)
    return r


@pytest.mark.parametrize("rep,reason", [
    (None, "built without CUDA"),
    (report(error_code=35, driver_version=0, devices=[]), "no NVIDIA driver"),
    (report(error_code=35, driver_version=12040, devices=[]),
     "supports CUDA 12.4, older than this build's CUDA 13.0"),
    (report(error_code=100, devices=[]), "sees no CUDA device"),
    (report(error_code=999, error="cudaErrorUnknown: unknown error", devices=[]), "cudaErrorUnknown"),
    (report(devices=[dict(GOOD_DEVICE, has_kernel_image=False)], architectures="90"),
     "sm_89, and this build holds code for 90 only: rebuild with -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=89"),
])
def test_status_says_why_cuda_is_unavailable(rep, reason):
    st = status_from_report(rep)
    assert not st.available and reason in st.reason and reason in str(st)
    with pytest.raises(DeviceError, match="device='cuda' cannot be used"):
        resolve_device("cuda", st)
    assert resolve_device("auto", st) == ("cpu", str(st))


def test_status_of_a_usable_device(monkeypatch):
    st = status_from_report(report())
    assert st.available and st.device == "NVIDIA GeForce RTX 4090" and st.compute_capability == (8, 9)
    assert "22.0 GiB free of 24.0 GiB" in str(st) and "sm_89" in str(st)
    # With the device model in the core, both resolve to the GPU (the placement may still refuse).
    monkeypatch.setattr(device_mod, "CUDA_FORWARD", True)
    assert resolve_device("cuda", st) == ("cuda", str(st)) and resolve_device("auto", st) == ("cuda", str(st))
    # A core without it: "cuda" refused, and auto says why it stays on the CPU.
    monkeypatch.setattr(device_mod, "CUDA_FORWARD", False)
    with pytest.raises(DeviceError, match="no CUDA device model"):
        resolve_device("cuda", st)
    device, why = resolve_device("auto", st)
    assert device == "cpu" and "RTX 4090 unused" in why


def test_resolve_device_names():
    assert resolve_device("cpu") == ("cpu", "requested")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("gpu")


def test_cuda_status_answers_here():
    # Whatever this machine is (built with CUDA or not, a GPU or not), an answer, never a crash.
    st = ossrun.cuda_status()
    assert isinstance(st, CudaStatus)
    assert st.available or st.reason
    try:
        from ossrun import _cuda
    except ImportError:
        assert not st.built
    else:
        assert st.built and st.runtime_version >= 12080 and _cuda.status()["architectures"]


@without_gpu
def test_load_with_device_cuda_is_a_clear_error(tiny_gguf):
    with pytest.raises(DeviceError, match="device='cuda' cannot be used"):
        ossrun.load(tiny_gguf, n_ctx=64, device="cuda")


@without_gpu
def test_load_auto_and_cpu_run_on_the_cpu(tiny_gguf):
    m = ossrun.load(tiny_gguf, n_ctx=64, threads=1, device="auto", cpu_moe="all")
    assert m.device == "cpu" and m.device_reason and m.cpu_moe == m.config.block_count
    assert ossrun.load(tiny_gguf, n_ctx=64, threads=1, device="cpu").device_reason == "requested"
    with pytest.raises(ValueError, match="cpu_moe"):
        ossrun.load(tiny_gguf, n_ctx=64, threads=1, cpu_moe=-2)
    with pytest.raises(ValueError, match="gpu_layers"):
        ossrun.load(tiny_gguf, n_ctx=64, threads=1, gpu_layers=10**6)


@without_gpu
def test_cli_run_device_cuda_fails_with_the_reason(tiny_gguf, capsys):
    assert cli.main(["run", str(tiny_gguf), "hi", "--device", "cuda"]) == 1
    assert "device='cuda' cannot be used" in capsys.readouterr().err


def test_cli_device_flags_parse():
    args = cli.build_parser().parse_args(["run", "m.gguf", "hi", "--n-cpu-moe", "3", "--gpu-layers", "5"])
    assert (args.device, args.cpu_moe, args.gpu_layers) == ("auto", 3, 5)
    args = cli.build_parser().parse_args(["chat", "m.gguf", "--cpu-moe", "--device", "cpu"])
    assert (args.device, args.cpu_moe) == ("cpu", "all")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "m.gguf", "hi", "--cpu-moe", "--n-cpu-moe", "2"])


@without_gpu
def test_info_device_prints_the_plan(tiny_gguf, capsys):
    assert cli.main(["info", str(tiny_gguf), "--device", "--vram", "1", "--ctx", "256"]) == 0
    out = capsys.readouterr().out
    assert "--device auto" in out and "placement at --ctx 256, for --vram 1" in out
    assert "all layers on the GPU, all experts on the GPU" in out and "token embedding" in out
    assert cli.main(["info", str(tiny_gguf), "--device", "--vram", "1", "--cpu-moe", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["device"]
    assert d["plan"]["n_cpu_moe"] == d["plan"]["gpu_layers"] > 0
    assert d["auto_device"] == "cpu"


def test_info_device_without_a_gpu_or_vram_plans_the_cpu(tiny_gguf, capsys, monkeypatch):
    monkeypatch.setattr("ossrun.device_cli.cuda_status", lambda: status_from_report(None))
    assert cli.main(["info", str(tiny_gguf), "--device"]) == 0
    out = capsys.readouterr().out
    assert "everything on the CPU (no GPU)" in out and "built without CUDA" in out


def test_info_device_forced_split_that_does_not_fit(tiny_gguf, capsys):
    assert cli.main(["info", str(tiny_gguf), "--device", "--vram", "0.001", "--gpu-layers", "1"]) == 1
    assert "at most 0 layers fit" in capsys.readouterr().err
