// The fused Level Set Traversal step on the CPU (spec section 2, steps 2-5).
//
// Every tensor is a batch of `n_rows` rows; row b of tensor T starts at T + b * T_row_stride and holds
// `row_len` elements stored densely. All tensors must store a row's elements in the same order (both
// contiguous or both channels_last), which is all the per-row reductions need: a dot product does not
// care about the order of its terms.
#pragma once
#include <cstdint>

namespace lst_fast {

struct RowBatch {
  int64_t n_rows;
  int64_t row_len;
};

// For each row:  v = tgt - x;  v_perp = v - grad * <grad, v> / <grad, grad>  (v_perp = v if <grad, grad> == 0)
//   delta = clamp(delta + adv_step_size / 2 * grad, -adv_step_size, adv_step_size)   (in place; skipped if delta == nullptr)
//   out   = clamp(x + step_size * v_perp - delta, 0, 1)
// Reductions accumulate in double. `out` may not alias the inputs.
template <typename scalar_t>
void lst_step_cpu(const scalar_t* x, int64_t x_stride, const scalar_t* grad, int64_t grad_stride,
                  const scalar_t* tgt, int64_t tgt_stride, scalar_t* delta, int64_t delta_stride,
                  scalar_t* out, int64_t out_stride, RowBatch shape, double step_size, double adv_step_size);

}  // namespace lst_fast
