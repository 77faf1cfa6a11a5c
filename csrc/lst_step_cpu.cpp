#include <algorithm>
#include <stdexcept>
#include <vector>

#include "lst_step.h"

#ifdef LST_FAST_OPENMP
#include <omp.h>
#endif

namespace lst_fast {
namespace {

// Batches smaller than this (in elements) run on one thread: waking the other threads would cost more than
// the work, and much more when the cores are shared with other processes.
constexpr int64_t kMinParallelElements = 1 << 15;
// Rows at least this long are split across threads when there are too few rows to keep every thread busy
// with whole rows; shorter rows are always handed out whole.
constexpr int64_t kSplitRowLen = 1 << 14;

// Whole rows per thread need no synchronisation between threads (barriers are costly when the cores are
// shared with other processes), so they are used unless the rows divide so unevenly among the threads that
// more than 1/4 of the thread-time would be idle (e.g. 1 or 3 rows on 2 threads).
bool whole_rows_balance(int64_t n_rows, int64_t threads) {
  const int64_t rounds = (n_rows + threads - 1) / threads;
  return 4 * rounds * threads <= 5 * n_rows;
}

struct Dots {
  double grad_v = 0.0;     // <grad, tgt - x>
  double grad_grad = 0.0;  // <grad, grad>
};

// The loops are vectorised for the baseline ISA (no -march=native, so a wheel runs on any x86-64). Measured
// on an AVX-512 machine: builds for SSE2, AVX2 and -march=native run at the same speed, since the kernel is
// bound by memory (or L2) bandwidth, not arithmetic, even with the float -> double conversions.
template <typename scalar_t>
Dots row_dots(const scalar_t* x, const scalar_t* g, const scalar_t* t, int64_t begin, int64_t end) {
  double gv = 0.0, gg = 0.0;
#pragma omp simd reduction(+ : gv, gg)
  for (int64_t i = begin; i < end; ++i) {
    const double gi = g[i];
    gv += gi * (static_cast<double>(t[i]) - static_cast<double>(x[i]));
    gg += gi * gi;
  }
  return {gv, gg};
}

// Elementwise part of the step for elements [begin, end) of one row. The arithmetic is done in scalar_t in
// the same order as the PyTorch twin (v - grad * coef, then x + step * v_perp - delta, then clamp).
template <typename scalar_t>
void row_update(const scalar_t* x, const scalar_t* g, const scalar_t* t, scalar_t* d, scalar_t* out, int64_t begin,
                int64_t end, scalar_t coef, scalar_t step, scalar_t half_a, scalar_t a) {
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

inline double projection_coef(const Dots& d) { return d.grad_grad > 0.0 ? d.grad_v / d.grad_grad : 0.0; }

// One row's step sizes in scalar_t, rounded from double as the PyTorch twin rounds them to the rows' dtype.
template <typename scalar_t>
struct RowSizes {
  scalar_t step, half_a, a;
};

// The step's arguments with typed pointers.
template <typename scalar_t>
struct TypedStep {
  const scalar_t* x;
  int64_t x_stride;
  const scalar_t* grad;
  int64_t grad_stride;
  const scalar_t* tgt;
  int64_t tgt_stride;
  scalar_t* delta;  // nullptr: correction off
  int64_t delta_stride;
  scalar_t* out;
  int64_t out_stride;
  int64_t row_len;
  double step_size, adv_step_size;
  const double* row_step_sizes;      // nullptr: step_size in every row
  const double* row_adv_step_sizes;  // nullptr: adv_step_size in every row

  RowSizes<scalar_t> sizes(int64_t b) const {
    const double step = row_step_sizes == nullptr ? step_size : row_step_sizes[b];
    const double adv = row_adv_step_sizes == nullptr ? adv_step_size : row_adv_step_sizes[b];
    return {static_cast<scalar_t>(step), static_cast<scalar_t>(adv / 2.0), static_cast<scalar_t>(adv)};
  }
  // Both passes over elements [begin, end) of row b, given the row's projection coefficient.
  Dots dots(int64_t b, int64_t begin, int64_t end) const {
    return row_dots(x + b * x_stride, grad + b * grad_stride, tgt + b * tgt_stride, begin, end);
  }
  void update(int64_t b, int64_t begin, int64_t end, double coef) const {
    const RowSizes<scalar_t> s = sizes(b);
    row_update(x + b * x_stride, grad + b * grad_stride, tgt + b * tgt_stride,
               delta == nullptr ? nullptr : delta + b * delta_stride, out + b * out_stride, begin, end,
               static_cast<scalar_t>(coef), s.step, s.half_a, s.a);
  }
};

int max_threads() {
#ifdef LST_FAST_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Whole rows per thread: both passes over a row run back to back on one core, so the second pass reads
// what the first just brought into that core's caches, and threads never wait for each other.
template <typename scalar_t>
void whole_rows(const TypedStep<scalar_t>& args, int64_t n_rows) {
#pragma omp parallel for schedule(static) if (n_rows * args.row_len >= kMinParallelElements)
  for (int64_t b = 0; b < n_rows; ++b) {
    args.update(b, 0, args.row_len, projection_coef(args.dots(b, 0, args.row_len)));
  }
}

// Few long rows: every row is split across all threads with the same static partition in both passes, so
// each thread's second pass reads the slice its own first pass just brought into its cache. One parallel
// region for the whole batch, one barrier per row: the partial sums are double-buffered by row parity, so a
// thread that runs ahead to row b + 1 does not overwrite what a slower thread is still reading for row b.
// Partial sums are added in thread order, so the result does not depend on which thread finishes first.
template <typename scalar_t>
void split_rows(const TypedStep<scalar_t>& args, int64_t n_rows) {
  std::vector<Dots> partials(2 * static_cast<size_t>(max_threads()));
  const int64_t n = args.row_len;
#pragma omp parallel
  {
#ifdef LST_FAST_OPENMP
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
#else
    const int64_t nt = 1, tid = 0;
#endif
    const int64_t chunk = (n + nt - 1) / nt;
    const int64_t begin = std::min(n, tid * chunk), end = std::min(n, begin + chunk);
    for (int64_t b = 0; b < n_rows; ++b) {
      Dots* partial = partials.data() + (b % 2) * nt;
      partial[tid] = args.dots(b, begin, end);
#pragma omp barrier
      Dots total;
      for (int64_t i = 0; i < nt; ++i) {
        total.grad_v += partial[i].grad_v;
        total.grad_grad += partial[i].grad_grad;
      }
      args.update(b, begin, end, projection_coef(total));
    }
  }
}

template <typename scalar_t>
scalar_t* typed(RowTensor t) {
  return reinterpret_cast<scalar_t*>(t.data);
}

template <typename scalar_t>
void step(const StepArgs& s) {
  const TypedStep<scalar_t> args{typed<scalar_t>(s.x),
                                 s.x.row_stride,
                                 typed<scalar_t>(s.grad),
                                 s.grad.row_stride,
                                 typed<scalar_t>(s.tgt),
                                 s.tgt.row_stride,
                                 typed<scalar_t>(s.delta),
                                 s.delta.row_stride,
                                 typed<scalar_t>(s.out),
                                 s.out.row_stride,
                                 s.row_len,
                                 s.step_size,
                                 s.adv_step_size,
                                 reinterpret_cast<const double*>(s.row_step_sizes),
                                 reinterpret_cast<const double*>(s.row_adv_step_sizes)};
  const int64_t threads = max_threads();
  if (threads == 1 || s.row_len < kSplitRowLen || s.n_rows * s.row_len < kMinParallelElements ||
      whole_rows_balance(s.n_rows, threads)) {
    whole_rows(args, s.n_rows);
  } else {
    split_rows(args, s.n_rows);
  }
}

}  // namespace

void lst_step_cpu(const StepArgs& args) {
  switch (args.dtype) {
    case DType::kFloat32: return step<float>(args);
    case DType::kFloat64: return step<double>(args);
    default: throw std::invalid_argument("lst_step (CPU): dtype must be float32 or float64");
  }
}

}  // namespace lst_fast
