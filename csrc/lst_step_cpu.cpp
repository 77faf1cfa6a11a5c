#include "lst_step.h"

#include <algorithm>
#include <cmath>
#include <vector>

#ifdef LST_FAST_OPENMP
#include <omp.h>
#endif

namespace lst_fast {
namespace {

// Rows shorter than this are handed out whole to threads; longer rows are split across threads so that a
// batch of one ImageNet image still uses every core.
constexpr int64_t kSmallRow = 1 << 16;

struct Dots {
  double grad_v = 0.0;     // <grad, tgt - x>
  double grad_grad = 0.0;  // <grad, grad>
};

template <typename scalar_t>
inline Dots row_dots(const scalar_t* x, const scalar_t* g, const scalar_t* t, int64_t begin, int64_t end) {
  double gv = 0.0, gg = 0.0;
#pragma omp simd reduction(+ : gv, gg)
  for (int64_t i = begin; i < end; ++i) {
    const double gi = g[i];
    gv += gi * (static_cast<double>(t[i]) - static_cast<double>(x[i]));
    gg += gi * gi;
  }
  return {gv, gg};
}

inline double projection_coef(const Dots& d) { return d.grad_grad > 0.0 ? d.grad_v / d.grad_grad : 0.0; }

// Elementwise part of the step for elements [begin, end) of one row. The arithmetic is done in scalar_t in
// the same order as the PyTorch twin (v - grad * coef, then x + step * v_perp - delta, then clamp).
template <typename scalar_t>
inline void row_update(const scalar_t* x, const scalar_t* g, const scalar_t* t, scalar_t* d, scalar_t* out,
                       int64_t begin, int64_t end, scalar_t coef, scalar_t step, scalar_t half_a, scalar_t a) {
  if (d != nullptr) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t v_perp = (t[i] - x[i]) - g[i] * coef;
      const scalar_t new_d = std::min(std::max(d[i] + half_a * g[i], -a), a);
      d[i] = new_d;
      const scalar_t c = x[i] + step * v_perp - new_d;
      out[i] = std::min(std::max(c, scalar_t(0)), scalar_t(1));
    }
  } else {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t v_perp = (t[i] - x[i]) - g[i] * coef;
      const scalar_t c = x[i] + step * v_perp;
      out[i] = std::min(std::max(c, scalar_t(0)), scalar_t(1));
    }
  }
}

}  // namespace

template <typename scalar_t>
void lst_step_cpu(const scalar_t* x, int64_t x_stride, const scalar_t* grad, int64_t grad_stride,
                  const scalar_t* tgt, int64_t tgt_stride, scalar_t* delta, int64_t delta_stride,
                  scalar_t* out, int64_t out_stride, RowBatch shape, double step_size, double adv_step_size) {
  const int64_t n = shape.row_len;
  const scalar_t step = static_cast<scalar_t>(step_size);
  const scalar_t a = static_cast<scalar_t>(adv_step_size);
  const scalar_t half_a = static_cast<scalar_t>(adv_step_size / 2.0);
  auto row = [](auto* base, int64_t stride, int64_t b) { return base + b * stride; };
  auto delta_row = [&](int64_t b) { return delta == nullptr ? nullptr : delta + b * delta_stride; };

  if (n < kSmallRow) {
    // Whole rows per thread: both passes over a row run back to back, so the second reads from cache.
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < shape.n_rows; ++b) {
      const scalar_t *xb = row(x, x_stride, b), *gb = row(grad, grad_stride, b), *tb = row(tgt, tgt_stride, b);
      const scalar_t coef = static_cast<scalar_t>(projection_coef(row_dots(xb, gb, tb, 0, n)));
      row_update(xb, gb, tb, delta_row(b), row(out, out_stride, b), 0, n, coef, step, half_a, a);
    }
    return;
  }
  // Long rows: one row at a time, each pass split across threads with the same static partition, so each
  // thread's second pass reads the slice its first pass just brought into its cache. Partial sums are added
  // in thread order, so the result does not depend on which thread finishes first.
#ifdef LST_FAST_OPENMP
  std::vector<Dots> partial(static_cast<size_t>(omp_get_max_threads()));
#else
  std::vector<Dots> partial(1);
#endif
  for (int64_t b = 0; b < shape.n_rows; ++b) {
    const scalar_t *xb = row(x, x_stride, b), *gb = row(grad, grad_stride, b), *tb = row(tgt, tgt_stride, b);
    scalar_t* db = delta_row(b);
    scalar_t* ob = row(out, out_stride, b);
#pragma omp parallel
    {
#ifdef LST_FAST_OPENMP
      const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
#else
      const int64_t nt = 1, tid = 0;
#endif
      const int64_t chunk = (n + nt - 1) / nt;
      const int64_t begin = std::min(n, tid * chunk), end = std::min(n, begin + chunk);
      partial[tid] = row_dots(xb, gb, tb, begin, end);
#pragma omp barrier
      Dots total;
      for (int64_t i = 0; i < nt; ++i) {
        total.grad_v += partial[i].grad_v;
        total.grad_grad += partial[i].grad_grad;
      }
      const scalar_t coef = static_cast<scalar_t>(projection_coef(total));
      row_update(xb, gb, tb, db, ob, begin, end, coef, step, half_a, a);
    }
  }
}

template void lst_step_cpu<float>(const float*, int64_t, const float*, int64_t, const float*, int64_t, float*,
                                  int64_t, float*, int64_t, RowBatch, double, double);
template void lst_step_cpu<double>(const double*, int64_t, const double*, int64_t, const double*, int64_t,
                                   double*, int64_t, double*, int64_t, RowBatch, double, double);

}  // namespace lst_fast
