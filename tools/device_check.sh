#!/usr/bin/env bash
# The CUDA check for a fresh GPU machine (an H200 lent through the device tool, or any Linux box
# with an NVIDIA GPU, nvcc >= 12.8, Python 3 with numpy, pytest, pybind11 and CMake): builds this
# checkout with CUDA for one architecture (nothing from another machine's build), runs the CUDA op
# tests (required to run, not skip), compute-sanitizer's memcheck and racecheck on a subset, the
# kernels' rates, and the model bench once the forward pass runs on CUDA. Prints a summary; the
# whole run stays within DEVICE_CHECK_BUDGET seconds (default 470: under 8 minutes).
#   usage: bash tools/device_check.sh            (logs and summary in $OUT or /tmp/device_check)
#   env:   CUDA_ARCH=90  PYTHON=python3  DEVICE_CHECK_BUDGET=470
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BUDGET=${DEVICE_CHECK_BUDGET:-470}
ARCH=${CUDA_ARCH:-90}
PY=${PYTHON:-python3}
LOGDIR=${OUT:-/tmp/device_check}
BUILD=$REPO/build/device_check
SITE=$BUILD/site
mkdir -p "$LOGDIR"
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

# A plain CMake build (no pip, no network): the extension modules beside a copy of the package.
build() {
    local generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    cmake -S "$REPO" -B "$BUILD/cmake" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DOSSRUN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
        -DPython_EXECUTABLE="$(command -v "$PY")" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)"
    cmake --build "$BUILD/cmake" --parallel "$(nproc)"
    rm -rf "$SITE" && mkdir -p "$SITE"
    cp -r "$REPO/python/ossrun" "$SITE/ossrun"
    cp "$BUILD"/cmake/_core*.so "$BUILD"/cmake/cuda/_cuda*.so "$SITE/ossrun/"
}

status() {
    "$PY" -c "
import ossrun
st = ossrun.cuda_status()
print(st)
print(repr(st))
raise SystemExit(0 if st.available else 1)"
}

bench_model() {
    if ! "$PY" -c "from ossrun.device import CUDA_FORWARD; raise SystemExit(0 if CUDA_FORWARD else 1)"; then
        echo "SKIPPED: the model's forward pass does not run on CUDA yet (ossrun.device.CUDA_FORWARD)"
        return 0
    fi
    "$PY" -c "import gguf" || { echo "no gguf package here: carry its wheel (.library/device/README.md)"; return 1; }
    local model=$BUILD/gpt-oss-20b-shaped.gguf
    [ -f "$model" ] || "$PY" tools/make_model.py "$model" --preset 20b --byte-vocab
    "$PY" -m ossrun bench "$model" --device cuda --reps 1
    "$PY" -m ossrun bench "$model" --device cuda --n-cpu-moe 12 --reps 1
}

SANITIZER_SUBSET="(within_rounding_bound and rows19 and auto and (MXFP4-96 or Q8_0-96 or F16-37))
  or (rmsnorm and 37) or (attention and q8kv2 and 80 and (kv_ring_wrapped or full_causal_decode))
  or router or swiglu or rope_yarn"
SANITIZER_SUBSET=${SANITIZER_SUBSET//$'\n'/ }

export -f environment build status bench_model
export REPO BUILD SITE PY ARCH
export PYTHONPATH=$SITE PYTHONUNBUFFERED=1 OSSRUN_REQUIRE_CUDA=1
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
step environment 60 environment
step build 300 build
if [ -d "$SITE/ossrun" ]; then
    step cuda_status 30 status
    step op_tests 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda_ops.py tests/test_placement.py
    if command -v compute-sanitizer >/dev/null; then
        step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 9 \
            "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda_ops.py -k "$SANITIZER_SUBSET"
        step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 9 \
            "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda_ops.py \
            -k "(attention and q8kv2 and 80 and full_causal_decode) or (rmsnorm and 2880)"
    else
        SUMMARY+=("SKIP    memcheck/racecheck: no compute-sanitizer on PATH")
    fi
    step op_rates 60 "$PY" tools/cuda_op_rates.py
    step bench_model 120 bench_model
fi

{
    echo
    echo "== device_check summary (${SECONDS} s of ${BUDGET}; CUDA arch ${ARCH}; logs in $LOGDIR)"
    printf '%s\n' "${SUMMARY[@]}"
    for f in cuda_status op_tests op_rates bench_model; do
        [ -f "$LOGDIR/$f.log" ] || continue
        echo "-- $f"
        case $f in
            op_tests) tail -n 15 "$LOGDIR/$f.log" ;;
            *) tail -n 12 "$LOGDIR/$f.log" ;;
        esac
    done
} | tee "$LOGDIR/summary.txt"
exit $FAILED
