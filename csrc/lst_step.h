// The fused Level Set Traversal step (algorithm §2.2-2.5) on raw pointers.
//
// Every tensor is a batch of `n_rows` rows; row b of tensor T starts at T.data + b * T.row_stride elements and
// holds `row_len` elements stored densely. All tensors must store a row's elements in the same order (both
// contiguous or both channels_last), which is all the per-row reductions need: a dot product does not
// care about the order of its terms. For each row:
//   v = tgt - x;  v_perp = v - grad * <grad, v> / <grad, grad>   (v_perp = v if <grad, grad> == 0)
//   delta = clamp(delta + adv_step_size / 2 * grad, -adv_step_size, adv_step_size)
//           (in place; skipped when delta.data == 0, i.e. the correction is off)
//   out   = clamp(x + step_size * v_perp - delta, 0, 1)
// `out` may not alias the inputs. step_size and adv_step_size are one value for every row, or per row (the
// adaptive schedule's rows of different scales): row b then uses element b of a float64 array.
//
// The kernel ABI: one StepArgs (plus CudaLaunch for the GPU) crosses from Python to C++ and CUDA. Python builds
// it in one place, lst_fast/kernels/__init__.py (step_args); csrc/step_args_binding.h binds it for both modules.
#pragma once
#include <cstdint>
#include <string>

namespace lst_fast {

enum class DType { kFloat32, kFloat64, kFloat16, kBFloat16 };

// Parses a dtype name as the Python side spells it ("float32", ...); throws std::invalid_argument otherwise.
DType parse_dtype(const std::string& name);

// One tensor of the step: the address of its first element and the distance between rows, in elements.
struct RowTensor {
  std::uintptr_t data = 0;
  int64_t row_stride = 0;
};

// Everything one step needs. Checked on the Python side (lst_fast/ops.py); the constructors in the bindings
// reject negative sizes.
struct StepArgs {
  DType dtype = DType::kFloat32;
  RowTensor x, grad, tgt;
  RowTensor delta;  // data == 0: the correction is off (delta is neither read nor written)
  RowTensor out;
  int64_t n_rows = 0;
  int64_t row_len = 0;
  double step_size = 0.0;      // every row's step size, unless row_step_sizes is given
  double adv_step_size = 0.0;  // every row's correction size, unless row_adv_step_sizes is given
  // Per-row sizes: the address of n_rows contiguous doubles (in device memory for CUDA), or 0 for the scalar
  // above. float64 whatever the rows' dtype, so the sizes are exact and each kernel rounds them as it rounds
  // the scalars (to the rows' dtype on CPU, to the accumulation type on GPUs).
  std::uintptr_t row_step_sizes = 0;
  std::uintptr_t row_adv_step_sizes = 0;
};

// CPU (C++/OpenMP): float32 and float64 (throws std::invalid_argument for other dtypes); reductions
// accumulate in double.
void lst_step_cpu(const StepArgs& args);

// How the CUDA split plan (rows longer than one block holds) covers the batch:
//  kBounded:  at most kMaxSplitGroups groups of rows (so a bounded number of launches per step), each at least
//             as large as the L2 plan's; the default.
//  kL2Groups: groups small enough that x, grad and tgt of a group fit in half of the L2 cache (the first plan;
//             ImageNet fp32 at batch 256 takes ~40 launches), kept so that the step benchmark can compare.
enum class CudaPlan { kBounded, kL2Groups };

// Where and how a CUDA step runs.
struct CudaLaunch {
  std::uintptr_t workspace = 0;  // device buffer of lst_step_cuda_workspace(n_rows, row_len) doubles (0: none)
  std::uintptr_t stream = 0;     // the cudaStream_t to launch on, of the current device
  CudaPlan plan = CudaPlan::kBounded;
};

// CUDA (lst_step_cuda.cu): all four dtypes, float32 accumulation (double for float64 inputs). Launches on
// `launch.stream` of the current device and does not synchronise.
void lst_step_cuda(const StepArgs& args, const CudaLaunch& launch);
// Doubles of device workspace the step needs for this shape (0: none).
int64_t lst_step_cuda_workspace(int64_t n_rows, int64_t row_len);
// "" when the CUDA runtime linked into the module finds a device, else why not (e.g. the driver is too old).
std::string lst_step_cuda_runtime_error();

}  // namespace lst_fast
