#!/usr/bin/env bash
# GPU check of lst_fast: builds the kernels, runs the kernel tests on the GPU (no Triton interpreter) and the
# step benchmark, and writes everything under one folder. Meant for a machine with an NVIDIA GPU, for example
# the device tool:  run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# Usage: bash bench/gpu_check.sh [OUT_DIR]        (default: $OUT, else bench/results/gpu_check)
#
# Assumes (and checks in the "info" step): an NVIDIA GPU and driver, python3 with torch (CUDA build) and
# triton, nvcc on PATH or in /usr/local/cuda/bin, a C++ compiler, Python headers, and no network. Missing Python build/test
# tools (cmake, ninja, pybind11, pytest, tqdm, matplotlib) are installed offline from a wheelhouse,
# $LST_FAST_WHEELHOUSE (default .whl/ in the repo, git-ignored), filled beforehand on a machine with PyPI:
#     pip download -d .whl cmake ninja pybind11 pytest tqdm matplotlib
# The package is built in place with CMake (no pip install, no scikit-build-core needed) into lst_fast/,
# and the repo is put on PYTHONPATH.
#
# Output (kept to 5 files, so that the device tool's 8-file limit leaves room for more steps):
#   summary.txt    one line per step: name, exit code, seconds; the benchmark table at the end
#   gpu_check.log  the full output of every step
#   step_cuda.csv/.json/.png   bench/bench_step.py results (the plot only if matplotlib is importable)
# Budget: under 8 minutes in all (the step limits below add up to 465 s; expected ~4 minutes on an H200).
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
  local need=() mod
  command -v cmake >/dev/null || "$PY" -c "import cmake" 2>/dev/null || need+=(cmake)
  for mod in pybind11 pytest tqdm matplotlib; do
    "$PY" -c "import $mod" 2>/dev/null || need+=("$mod")
  done
  [ ${#need[@]} -eq 0 ] && { echo "all present"; return 0; }
  echo "installing from $WHEELHOUSE: ${need[*]}"
  [ -d "$WHEELHOUSE" ] || { echo "no wheelhouse at $WHEELHOUSE"; return 1; }
  for mod in "${need[@]}"; do  # one at a time: a missing optional wheel (matplotlib) must not block the rest
    "$PY" -m pip install --no-index --find-links "$WHEELHOUSE" -q "$mod" || echo "could not install $mod"
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
  "$PY" "$REPO/bench/bench_step.py" --device cuda --out "$OUT_DIR"
}

step info 15 info
step deps 30 deps
step build 120 build
step tests 120 kernel_tests
step bench 180 step_bench
[ -f "$OUT_DIR/step_cuda.json" ] && "$PY" "$REPO/bench/bench_step.py" --plot-only "$OUT_DIR/step_cuda.json" >>"$SUMMARY" 2>&1
echo "results in $OUT_DIR" | tee -a "$SUMMARY"
