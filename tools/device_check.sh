#!/usr/bin/env bash
# The CUDA check for a fresh GPU machine (an H200 lent through the device tool, or any Linux box
# with an NVIDIA GPU, nvcc >= 12.8, Python 3 with numpy, pytest, pybind11, CMake, tiktoken): builds
# this checkout with CUDA for one architecture (nothing from another machine's build), runs the
# CUDA op and device-model tests (required to run, not skip: OSSRUN_REQUIRE_CUDA), compute-
# sanitizer's memcheck and racecheck on a subset, the kernels' rates, and the model bench on a
# 20b-shaped file made there (load, pp512, tg128 with --device cuda, with --n-cpu-moe 12 (offload
# on, and off, and with its sources page-locked), with --gpu-layers 12, and --n-cpu-moe 12 with one
# staging slot), the GPU's time by part, the VRAM of --cpu-moe at 8k.
# Prints a summary; the whole run stays within DEVICE_CHECK_BUDGET seconds (default 470).
#
# Nothing can be fetched on the lent machine, so first, here:  bash tools/device_check_prepare.sh
# (the gguf wheel and the test fixtures into .device_carry/), then run on the device tool:
#     command: bash tools/device_check.sh     carry: [".device_carry"]     timeout_s: 540
#
#   usage: bash tools/device_check.sh [--host]
#     --host  only what needs no GPU, on this machine: the same build, the tests (the GPU ones
#             skip), the bench's command lines on a 2-layer 20b-shaped cut with --device cpu; run
#             it before a GPU session to check the script itself (logs: /tmp/device_check_host).
#   env:   CUDA_ARCH=90  PYTHON=python3  DEVICE_CHECK_BUDGET=470
#          (logs in /tmp/device_check, and as one tarball in $OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
HOST_ONLY=0
[ "${1:-}" = "--host" ] && HOST_ONLY=1
# On the GPU machine (16 cores) the whole run keeps within 470 s; --host on a small shared machine
# gets an hour and four times each step's limit.
BUDGET=${DEVICE_CHECK_BUDGET:-$((HOST_ONLY ? 3600 : 470))}
SCALE=$((HOST_ONLY ? 4 : 1))
ARCH=${CUDA_ARCH:-90}
PY=${PYTHON:-python3}
if ((HOST_ONLY)); then
    LOGDIR=/tmp/device_check_host
    BUILD=$REPO/build/device_check_host
else
    # The device tool brings back at most 8 files from $OUT: the logs go there as one tarball.
    LOGDIR=/tmp/device_check
    BUILD=$REPO/build/device_check
fi
SITE=$BUILD/site
CARRY=$REPO/.device_carry
MODEL=$BUILD/gpt-oss-20b-shaped.gguf
mkdir -p "$LOGDIR" "$BUILD"
SUMMARY=()
FAILED=0

# step NAME SECONDS CMD...: runs CMD with its output in $LOGDIR/NAME.log under a timeout that
# never passes the overall budget; records PASS/FAIL/TIMEOUT and goes on.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - SECONDS))
    if ((left < 10)); then
        SUMMARY+=("SKIP    $name: the ${BUDGET} s budget is spent")
        FAILED=1
        return 0
    fi
    limit=$((limit * SCALE))
    ((limit > left)) && limit=$left
    local t0=$SECONDS rc=0
    echo "== $name (limit ${limit} s)"
    # Through bash -c so that CMD may be one of the functions below (exported with export -f).
    timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >"$LOGDIR/$name.log" 2>&1 || rc=$?
    local took=$((SECONDS - t0))
    if ((rc == 0)); then
        SUMMARY+=("PASS    $name (${took} s)")
    else
        FAILED=1
        if ((rc == 124 || rc == 137)); then
            SUMMARY+=("TIMEOUT $name after ${took} s: $LOGDIR/$name.log")
        else
            SUMMARY+=("FAIL    $name (exit $rc, ${took} s): $LOGDIR/$name.log")
        fi
        tail -n 40 "$LOGDIR/$name.log" | sed "s/^/  [$name] /"
    fi
    return 0
}

environment() {
    nvidia-smi -L || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.free --format=csv || true
    nvcc --version
    "$PY" --version
    "$PY" -c "import numpy, pytest, pybind11; print('numpy', numpy.__version__, 'pytest', pytest.__version__, 'pybind11', pybind11.__version__)"
    cmake --version | head -1
    nproc
}

# What tools/device_check_prepare.sh carried: the gguf wheel (the loader's tokenizer and the model
# maker import it) and the fixtures (the golden logits).
carried() {
    if [ -d "$CARRY/whl" ] && ls "$CARRY"/whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$BUILD/wheels" "$CARRY"/whl/*.whl
    fi
    "$PY" -c "import gguf; print('gguf', gguf.__file__)" ||
        { echo "no gguf package: run tools/device_check_prepare.sh here and carry .device_carry"; return 1; }
    [ -d "$OSSRUN_SHARED/spec/fixtures/tiny-w4" ] ||
        { echo "no fixtures at $OSSRUN_SHARED/spec/fixtures: the golden tests would skip"; return 1; }
    ls "$OSSRUN_SHARED/spec/fixtures"
}

# The 20b-shaped file, made while the build runs (one core; ~12 GB, a minute or two).
make_model_file() {
    local layers=()
    ((HOST_ONLY)) && layers=(--layers 2)
    [ -f "$MODEL" ] || "$PY" tools/make_model.py "$MODEL.part" --preset 20b --byte-vocab "${layers[@]}" 2>&1 |
        tr '\r' '\n' | grep -v '% of'
    [ -f "$MODEL.part" ] && mv "$MODEL.part" "$MODEL"
    ls -la "$MODEL"
}

# A plain CMake build (no pip, no network): the extension modules beside a copy of the package.
build() {
    local generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    cmake -S "$REPO" -B "$BUILD/cmake" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DOSSRUN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DOSSRUN_CUDA_EMULATOR=OFF \
        -DPython_EXECUTABLE="$(command -v "$PY")" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)"
    cmake --build "$BUILD/cmake" --parallel "$(nproc)"
    rm -rf "$SITE" && mkdir -p "$SITE"
    cp -r "$REPO/python/ossrun" "$SITE/ossrun"
    cp "$BUILD"/cmake/_core*.so "$BUILD"/cmake/cuda/_cuda*.so "$SITE/ossrun/"
    "$PY" -c "import ossrun._core as c; assert c.HAS_DEVICE_MODEL; print('device model built')"
}

status() {
    "$PY" -c "
import ossrun
st = ossrun.cuda_status()
print(st)
print(repr(st))
raise SystemExit(0 if st.available or $HOST_ONLY else 1)"
}

# Waits for the background make_model_file, then the bench runs.
bench_model() {
    while [ -f "$BUILD/make_model.running" ]; do sleep 2; done
    [ -f "$MODEL" ] || { echo "the model file was not made: $LOGDIR/make_model.log"; cat "$LOGDIR/make_model.log"; return 1; }
    local common=(--reps 1)
    if ((HOST_ONLY)); then  # the command lines only, on the CPU
        "$PY" -m ossrun bench "$MODEL" --device cpu --prompt 16 --gen 4 --n-cpu-moe 1 --threads 2 --bandwidth 10 "${common[@]}"
        "$PY" -m ossrun info "$MODEL" --device --vram 8 --n-cpu-moe 1
        return 0
    fi
    "$PY" -m ossrun info "$MODEL" --device --ctx 1024
    echo "-- --device cuda"
    "$PY" -m ossrun bench "$MODEL" --device cuda --prompt 512 --gen 128 --bandwidth 4800 "${common[@]}"
    echo "-- --device cuda, pp2048 (the issue's prefill target)"
    "$PY" -m ossrun bench "$MODEL" --device cuda --prompt 2048 --gen 16 --bandwidth 4800 --json "${common[@]}" |
        tee "$LOGDIR/pp2048.json" | "$PY" -c "$PREFILL_RATE"
    echo "-- --device cuda, OSSRUN_CUDA_GRAPHS=0 (each decode step's kernels launched one by one)"
    OSSRUN_CUDA_GRAPHS=0 "$PY" -m ossrun bench "$MODEL" --device cuda --prompt 16 --gen 64 --bandwidth 4800 "${common[@]}" |
        grep -E "^ossrun|^decode"
    echo "-- GPU time by part (OSSRUN_CUDA_PART_TIMES: events around each op, no graphs)"
    "$PY" -c "$GPU_PARTS" "$MODEL"
    echo "-- VRAM with --cpu-moe at 8k context (the issue's target: <= 3 GB)"
    "$PY" -c "$VRAM_USE" "$MODEL"
    echo "-- --device cuda --n-cpu-moe 12 (prompt chunks of 512 offload the CPU's MoE blocks)"
    "$PY" -m ossrun bench "$MODEL" --device cuda --n-cpu-moe 12 --prompt 512 --gen 128 --bandwidth 4800 "${common[@]}"
    echo "-- --device cuda --n-cpu-moe 12, OSSRUN_CUDA_OFFLOAD_MIN_TOKENS=0 (no offload)"
    OSSRUN_CUDA_OFFLOAD_MIN_TOKENS=0 "$PY" -m ossrun bench "$MODEL" --device cuda --n-cpu-moe 12 --prompt 512 \
        --gen 16 --bandwidth 4800 "${common[@]}"
    echo "-- --device cuda --n-cpu-moe 12, OSSRUN_CUDA_PIN_OFFLOAD=1 (the offload's sources page-locked)"
    OSSRUN_CUDA_PIN_OFFLOAD=1 "$PY" -m ossrun bench "$MODEL" --device cuda --n-cpu-moe 12 --prompt 512 \
        --gen 16 --bandwidth 4800 "${common[@]}"
    echo "-- --device cuda --gpu-layers 12 (the first 12 layers on the CPU)"
    "$PY" -m ossrun bench "$MODEL" --device cuda --gpu-layers 12 --prompt 512 --gen 128 --bandwidth 4800 "${common[@]}"
    # Last: the budget may end it. One staging slot against the two above.
    echo "-- --device cuda --n-cpu-moe 12, OSSRUN_CUDA_STAGE_SLOTS=1 (the offload's copies wait for the matmuls)"
    OSSRUN_CUDA_STAGE_SLOTS=1 "$PY" -m ossrun bench "$MODEL" --device cuda --n-cpu-moe 12 --prompt 512 \
        --gen 16 --bandwidth 4800 "${common[@]}"
}

# Reads the bench's JSON: prefill multiply-adds x2 per token x tok/s against the H200's dense 16-bit
# tensor-core rate (769-798 TFLOP/s for a bf16 product through PyTorch on such machines, by the
# device tool's KINDS.md; 990 on the datasheet), and decode's weight bytes against 4.8 TB/s.
PREFILL_RATE='
import json, sys
r = json.load(sys.stdin)
pp, tg = r["prefill_tok_s"], r["decode_tok_s"]
flops = r["prefill_int16_ops_per_token"] * pp
per_token = r["decode_weight_bytes_per_token"]
print("pp%d %.1f tok/s = %.1f TFLOP/s = %.1f %% of 790" % (r["prompt"], pp, flops / 1e12, flops / 7.9e12))
print("tg%d %.1f tok/s, %.3f GB/token = %.1f %% of 4.8 TB/s" % (r["gen"], tg, per_token / 1e9,
                                                              per_token * tg / 4.8e10))
'
# Where a 512-token prefill's and a decode step's GPU time goes (cuda/device_model.h part_timing),
# in ms, beside the wall time each took.
GPU_PARTS='
import sys, time, ossrun
m = ossrun.load(sys.argv[1], n_ctx=4096, device="cuda")
m._core.part_timing = True
s = m.session()
def timed(work):
    m._core.reset_gpu_part_seconds()
    t = time.perf_counter()
    work()
    return time.perf_counter() - t, dict(m._core.gpu_part_seconds)
v = m.n_vocab
wall_p, pp = timed(lambda: s.prefill([(1000 + i) % v for i in range(512)]))
steps = 32
wall_d, dd = timed(lambda: [s.prefill([(2000 + i) % v]) for i in range(steps)])
print("%-14s %12s %18s" % ("part", "pp512 ms", "decode ms a token"))
for k in pp:
    print("%-14s %12.2f %18.3f" % (k, 1e3 * pp[k], 1e3 * dd[k] / steps))
print("%-14s %12.2f %18.3f" % ("sum", 1e3 * sum(pp.values()), 1e3 * sum(dd.values()) / steps))
print("%-14s %12.2f %18.3f" % ("wall", 1e3 * wall_p, 1e3 * wall_d / steps))
'
# The device memory a --cpu-moe model takes at 8k context after a 512-token prefill, from the
# driver's free count (the CUDA context itself is taken before the first reading).
VRAM_USE='
import sys, ossrun
free0 = ossrun.cuda_status().free_bytes
m = ossrun.load(sys.argv[1], n_ctx=8192, device="cuda", cpu_moe="all")
s = m.session()
s.prefill(list(range(1000, 1512)))
free1 = ossrun.cuda_status().free_bytes
print(f"--cpu-moe, 8k context: {(free0 - free1) / 2**30:.2f} GiB of device memory "
      f"({(free0 - free1) / 1e9:.2f} GB) past the CUDA context; {m.device_reason}")
'
SANITIZER_SUBSET="(within_rounding_bound and rows19 and auto and (MXFP4-96 or Q8_0-96 or F16-37))
  or (rmsnorm and 37) or (attention and q8kv2 and 80 and (kv_ring_wrapped or full_causal_decode))
  or router or swiglu or rope_yarn or (expert_matmul_pairs_and_grouped and 200 and (MXFP4-96 or Q8_0-96))
  or (tensor_core_gemm_fast and unit)"
SANITIZER_SUBSET=${SANITIZER_SUBSET//$'\n'/ }

export -f environment carried make_model_file build status bench_model
export REPO BUILD SITE PY ARCH CARRY MODEL LOGDIR HOST_ONLY PREFILL_RATE VRAM_USE GPU_PARTS
export OSSRUN_SHARED=${OSSRUN_SHARED:-$CARRY/shared}
[ -d "$OSSRUN_SHARED" ] || OSSRUN_SHARED=$REPO/../shared
export PYTHONPATH=$SITE:$BUILD/wheels PYTHONUNBUFFERED=1
((HOST_ONLY)) || export OSSRUN_REQUIRE_CUDA=1
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
step environment 60 environment
step carried 30 carried
# The model file in the background (bench_model waits for it); its log is make_model.log.
touch "$BUILD/make_model.running"
( timeout $((300 * SCALE)) bash -c make_model_file >"$LOGDIR/make_model.log" 2>&1; rm -f "$BUILD/make_model.running" ) &
step build 300 build
if [ -d "$SITE/ossrun" ]; then
    step cuda_status 30 status
    step gpu_tests 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda_ops.py tests/test_cuda_model.py \
        tests/test_placement.py tests/test_device.py
    # The numbers first, then the sanitizers.
    ((HOST_ONLY)) || step op_rates 60 "$PY" tools/cuda_op_rates.py
    step bench_model 300 bench_model
    if ((!HOST_ONLY)) && command -v compute-sanitizer >/dev/null; then
        step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 9 \
            "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda_ops.py -k "$SANITIZER_SUBSET"
        step memcheck_model 60 compute-sanitizer --tool memcheck --error-exitcode 9 \
            "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda_model.py \
            -k "(golden and tiny-w4) or (hybrid and tiny-w4-1) or (first_layers and tiny-w4) or stacked or dense_quant_model"
        step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 9 \
            "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda_ops.py \
            -k "(attention and q8kv2 and 80 and full_causal_decode) or (rmsnorm and 2880) or (expert_matmul_pairs_and_grouped and MXFP4-96-200-4)"
    elif ((!HOST_ONLY)); then
        SUMMARY+=("SKIP    memcheck/racecheck: no compute-sanitizer on PATH")
    fi
fi
wait

{
    echo
    echo "== device_check summary (${SECONDS} s of ${BUDGET}; CUDA arch ${ARCH}; logs in $LOGDIR)"
    printf '%s\n' "${SUMMARY[@]}"
    for f in cuda_status gpu_tests op_rates make_model bench_model; do
        [ -f "$LOGDIR/$f.log" ] || continue
        echo "-- $f"
        case $f in
            gpu_tests) tail -n 15 "$LOGDIR/$f.log" ;;
            bench_model) tail -n 60 "$LOGDIR/$f.log" ;;
            *) tail -n 12 "$LOGDIR/$f.log" ;;
        esac
    done
} | tee "$LOGDIR/summary.txt"
[ -n "${OUT:-}" ] && tar czf "$OUT/device_check_logs.tgz" -C "$LOGDIR" .
exit $FAILED
