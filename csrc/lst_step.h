// The fused Level Set Traversal step (spec section 2, steps 2-5) on raw pointers.
//
// Every tensor is a batch of `n_rows` rows; row b of tensor T starts at T + b * T_row_stride and holds
// `row_len` elements stored densely. All tensors must store a row's elements in the same order (both
// contiguous or both channels_last), which is all the per-row reductions need: a dot product does not
// care about the order of its terms. For each row:
//   v = tgt - x;  v_perp = v - grad * <grad, v> / <grad, grad>   (v_perp = v if <grad, grad> == 0)
//   delta = clamp(delta + adv_step_size / 2 * grad, -adv_step_size, adv_step_size)
//           (in place; skipped when delta == nullptr, i.e. the correction is off)
//   out   = clamp(x + step_size * v_perp - delta, 0, 1)
// `out` may not alias the inputs.
#pragma once
#include <cstdint>
#include <string>

namespace lst_fast {

struct RowBatch {
  int64_t n_rows;
  int64_t row_len;
};

enum class DType { kFloat32, kFloat64, kFloat16, kBFloat16 };

// Parses a dtype name as the Python side spells it ("float32", ...); throws std::invalid_argument otherwise.
DType parse_dtype(const std::string& name);

// CPU (C++/OpenMP): float32 and float64; reductions accumulate in double.
template <typename scalar_t>
void lst_step_cpu(const scalar_t* x, int64_t x_stride, const scalar_t* grad, int64_t grad_stride,
                  const scalar_t* tgt, int64_t tgt_stride, scalar_t* delta, int64_t delta_stride,
                  scalar_t* out, int64_t out_stride, RowBatch shape, double step_size, double adv_step_size);

// CUDA (lst_step_cuda.cu): all four dtypes, float32 accumulation (double for float64 inputs). Launches on
// `stream` (a cudaStream_t) of the current device and does not synchronise. Rows longer than the one-block
// plan need a device workspace of lst_step_cuda_workspace(n_rows, row_len) doubles (0: none needed).
int64_t lst_step_cuda_workspace(int64_t n_rows, int64_t row_len);
// "" when the CUDA runtime linked into the module finds a device, else why not (e.g. the driver is too old).
std::string lst_step_cuda_runtime_error();
void lst_step_cuda(DType dtype, const void* x, int64_t x_stride, const void* grad, int64_t grad_stride,
                   const void* tgt, int64_t tgt_stride, void* delta, int64_t delta_stride, void* out,
                   int64_t out_stride, RowBatch shape, double step_size, double adv_step_size, double* workspace,
                   void* stream);

}  // namespace lst_fast
