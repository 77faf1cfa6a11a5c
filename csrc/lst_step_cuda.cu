// The fused Level Set Traversal step on an NVIDIA GPU (algorithm §2.2-2.5); see lst_step.h.
//
// Two launch plans, picked by row length (the same as the Triton kernels in lst_fast/kernels/triton_step.py):
//  * rows of at most kThreads * 32 elements: one thread block per row keeps the row in registers, so every
//    tensor is read and written exactly once. No thread holds more than 16 elements of each tensor: rows over
//    kThreads * 16 elements get blocks of 2 * kThreads threads. (nvcc 13 -Xptxas -v, sm_80/sm_90: 256 threads
//    x 32 elements took 145-218 registers per thread, one block of 8 warps per SM; 512 x 16 takes 64-72 for
//    float/half, two blocks of 16 warps per SM, and 121-124 for double, one block; no spills.)
//  * longer rows: stage 1 reduces blocks of kSplitChunk elements to partial sums (a workspace of doubles the
//    caller allocates), stage 2 adds up its row's partial sums in a fixed order (deterministic, no atomics)
//    and updates the block. The batch is processed in groups of rows (CudaPlan in lst_step.h): stage 2 of a
//    group re-reads x, grad and tgt, from the L2 cache when the group fits there. The grouping is planned once
//    per device and shape (split_plan), so a step makes no device queries after the first.
// Loads are converted to acc_t (float, or double for double inputs); results are stored in the input type.
// Per-row step sizes (StepArgs::row_step_sizes) are read once per block and rounded to acc_t like the scalars.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>

#include "lst_step.h"

namespace lst_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kSplitItems = 16;
constexpr int64_t kSplitChunk = int64_t{kThreads} * kSplitItems;
constexpr int kMaxGridY = 65535;
constexpr int64_t kMaxSplitGroups = 8;  // CudaPlan::kBounded: at most this many launch pairs (per 65,535 rows)

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename acc_t, typename T>
__device__ __forceinline__ acc_t load(const T* p) {
  return static_cast<acc_t>(*p);
}
template <>
__device__ __forceinline__ float load<float, __half>(const __half* p) {
  return __half2float(*p);
}
template <>
__device__ __forceinline__ float load<float, __nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

template <typename T, typename acc_t>
__device__ __forceinline__ T store_as(acc_t v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half store_as<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 store_as<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename acc_t>
__device__ __forceinline__ acc_t clamp(acc_t v, acc_t lo, acc_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

template <typename T>
struct Args {
  const T* x;
  const T* grad;
  const T* tgt;
  T* delta;  // nullptr: correction off
  T* out;
  int64_t sx, sg, st, sd, so;  // row strides in elements
  int64_t row_len;
  double step, adv;
  const double* row_steps;  // nullptr: step in every row
  const double* row_advs;   // nullptr: adv in every row
};

// One row's step sizes in acc_t (a block reads them once per row).
template <typename acc_t>
struct RowSizes {
  acc_t step, half_adv, adv;
};

template <typename T, typename acc_t>
__device__ __forceinline__ RowSizes<acc_t> row_sizes(const Args<T>& a, int64_t row) {
  const double step = a.row_steps == nullptr ? a.step : a.row_steps[row];
  const double adv = a.row_advs == nullptr ? a.adv : a.row_advs[row];
  return {static_cast<acc_t>(step), static_cast<acc_t>(adv / 2), static_cast<acc_t>(adv)};
}

// Sum of (a, b) over a thread block of THREADS threads; the result is valid in every thread.
template <int THREADS, typename acc_t>
__device__ __forceinline__ void block_sum2(acc_t& a, acc_t& b) {
  constexpr int kWarps = THREADS / 32;
  __shared__ acc_t shared[2][kWarps];
  for (int offset = 16; offset > 0; offset /= 2) {
    a += __shfl_xor_sync(0xffffffffu, a, offset);
    b += __shfl_xor_sync(0xffffffffu, b, offset);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    shared[0][warp] = a;
    shared[1][warp] = b;
  }
  __syncthreads();
  a = 0;
  b = 0;
  for (int w = 0; w < kWarps; ++w) {  // fixed order: the same sums in every thread and every run
    a += shared[0][w];
    b += shared[1][w];
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t projection_coef(acc_t grad_v, acc_t grad_grad) {
  return grad_grad > acc_t(0) ? grad_v / grad_grad : acc_t(0);
}

// Elementwise part of the step for element i of a row; updates delta in place when the correction is on.
template <typename T, typename acc_t>
__device__ __forceinline__ void update_element(const Args<T>& a, const RowSizes<acc_t>& s, int64_t row, int64_t i,
                                               acc_t x, acc_t g, acc_t t, acc_t coef) {
  const acc_t v_perp = (t - x) - g * coef;
  acc_t c = x + s.step * v_perp;
  if (a.delta != nullptr) {
    T* d = a.delta + row * a.sd + i;
    const acc_t new_d = clamp(load<acc_t>(d) + s.half_adv * g, -s.adv, s.adv);
    *d = store_as<T>(new_d);
    c -= new_d;
  }
  a.out[row * a.so + i] = store_as<T>(clamp(c, acc_t(0), acc_t(1)));
}

// One block of THREADS threads per row, ITEMS elements per thread held in registers (row_len <= THREADS * ITEMS).
template <typename T, int ITEMS, int THREADS>
__global__ void __launch_bounds__(THREADS) row_step_kernel(Args<T> a) {
  using acc_t = typename Acc<T>::type;
  const int64_t row = blockIdx.x;
  acc_t xs[ITEMS], gs[ITEMS], ts[ITEMS];
  acc_t grad_v = 0, grad_grad = 0;
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int64_t i = int64_t{k} * THREADS + threadIdx.x;
    const bool in = i < a.row_len;
    xs[k] = in ? load<acc_t>(a.x + row * a.sx + i) : acc_t(0);
    gs[k] = in ? load<acc_t>(a.grad + row * a.sg + i) : acc_t(0);
    ts[k] = in ? load<acc_t>(a.tgt + row * a.st + i) : acc_t(0);
    grad_v += gs[k] * (ts[k] - xs[k]);
    grad_grad += gs[k] * gs[k];
  }
  block_sum2<THREADS>(grad_v, grad_grad);
  const acc_t coef = projection_coef(grad_v, grad_grad);
  const RowSizes<acc_t> sizes = row_sizes<T, acc_t>(a, row);
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int64_t i = int64_t{k} * THREADS + threadIdx.x;
    if (i < a.row_len) update_element(a, sizes, row, i, xs[k], gs[k], ts[k], coef);
  }
}

// Split plan, stage 1: partial sums of chunk blockIdx.x of row row0 + blockIdx.y.
template <typename T>
__global__ void __launch_bounds__(kThreads) partial_dots_kernel(Args<T> a, int64_t row0, double* partials,
                                                                int64_t n_chunks) {
  using acc_t = typename Acc<T>::type;
  const int64_t row = row0 + blockIdx.y;
  const int64_t begin = int64_t{blockIdx.x} * kSplitChunk;
  acc_t grad_v = 0, grad_grad = 0;
#pragma unroll
  for (int k = 0; k < kSplitItems; ++k) {
    const int64_t i = begin + int64_t{k} * kThreads + threadIdx.x;
    if (i < a.row_len) {
      const acc_t x = load<acc_t>(a.x + row * a.sx + i), g = load<acc_t>(a.grad + row * a.sg + i),
                  t = load<acc_t>(a.tgt + row * a.st + i);
      grad_v += g * (t - x);
      grad_grad += g * g;
    }
  }
  block_sum2<kThreads>(grad_v, grad_grad);
  if (threadIdx.x == 0) {
    partials[(row * n_chunks + blockIdx.x) * 2] = grad_v;
    partials[(row * n_chunks + blockIdx.x) * 2 + 1] = grad_grad;
  }
}

// Split plan, stage 2: rows of the group in reverse order, so the rows stage 1 read last (still in L2) go first.
template <typename T>
__global__ void __launch_bounds__(kThreads) split_update_kernel(Args<T> a, int64_t row0, int64_t group_rows,
                                                                const double* partials, int64_t n_chunks) {
  using acc_t = typename Acc<T>::type;
  const int64_t row = row0 + group_rows - 1 - blockIdx.y;
  double grad_v = 0, grad_grad = 0;
  for (int64_t c = 0; c < n_chunks; ++c) {  // every thread sums the same values in the same order
    grad_v += partials[(row * n_chunks + c) * 2];
    grad_grad += partials[(row * n_chunks + c) * 2 + 1];
  }
  const acc_t coef = static_cast<acc_t>(projection_coef(grad_v, grad_grad));
  const RowSizes<acc_t> sizes = row_sizes<T, acc_t>(a, row);
  const int64_t begin = int64_t{blockIdx.x} * kSplitChunk;
#pragma unroll
  for (int k = 0; k < kSplitItems; ++k) {
    const int64_t i = begin + int64_t{k} * kThreads + threadIdx.x;
    if (i < a.row_len) {
      update_element(a, sizes, row, i, load<acc_t>(a.x + row * a.sx + i), load<acc_t>(a.grad + row * a.sg + i),
                     load<acc_t>(a.tgt + row * a.st + i), coef);
    }
  }
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("lst_step_cuda: ") + what + ": " + cudaGetErrorString(err));
  }
}

template <typename T, int ITEMS, int THREADS = kThreads>
void launch_rows(const Args<T>& a, int64_t n_rows, cudaStream_t stream) {
  row_step_kernel<T, ITEMS, THREADS><<<static_cast<unsigned>(n_rows), THREADS, 0, stream>>>(a);
}

// Rows per group of the split plan for rows of `row_bytes` (x, grad and tgt together) on `device`.
int64_t split_group_rows(int device, int64_t row_bytes, int64_t n_rows, CudaPlan plan) {
  int l2_bytes = 0;
  check(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device), "cudaDeviceGetAttribute");
  int64_t rows = std::max<int64_t>(1, int64_t{l2_bytes} / 2 / row_bytes);  // half of L2
  if (plan == CudaPlan::kBounded) rows = std::max(rows, (n_rows + kMaxSplitGroups - 1) / kMaxSplitGroups);
  return std::min<int64_t>({rows, n_rows, kMaxGridY});
}

// split_group_rows, memoised per device, shape and plan: the fast loop steps the same shape every iteration.
int64_t planned_group_rows(int64_t row_bytes, int64_t n_rows, CudaPlan plan) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int64_t, int64_t, CudaPlan>, int64_t> plans;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const auto key = std::make_tuple(device, row_bytes, n_rows, plan);
  const std::lock_guard<std::mutex> lock(mutex);
  auto found = plans.find(key);
  if (found == plans.end()) {
    if (plans.size() >= 256) plans.clear();  // many shapes (a sweep of sizes): start over rather than grow
    found = plans.emplace(key, split_group_rows(device, row_bytes, n_rows, plan)).first;
  }
  return found->second;
}

template <typename T>
void step(const Args<T>& a, int64_t n_rows, double* workspace, CudaPlan plan, cudaStream_t stream) {
  if (n_rows == 0 || a.row_len == 0) return;
  const int64_t n = a.row_len;
  if (n <= kThreads * 4) {
    launch_rows<T, 4>(a, n_rows, stream);
  } else if (n <= kThreads * 8) {
    launch_rows<T, 8>(a, n_rows, stream);
  } else if (n <= kThreads * 16) {
    launch_rows<T, 16>(a, n_rows, stream);
  } else if (n <= kThreads * 32) {
    launch_rows<T, 16, 2 * kThreads>(a, n_rows, stream);
  } else {
    if (workspace == nullptr) throw std::invalid_argument("lst_step_cuda: long rows need a workspace");
    const int64_t n_chunks = (n + kSplitChunk - 1) / kSplitChunk;
    const int64_t group = planned_group_rows(3 * n * static_cast<int64_t>(sizeof(T)), n_rows, plan);
    for (int64_t row0 = 0; row0 < n_rows; row0 += group) {
      const int64_t rows = std::min(group, n_rows - row0);
      const dim3 grid(static_cast<unsigned>(n_chunks), static_cast<unsigned>(rows));
      partial_dots_kernel<T><<<grid, kThreads, 0, stream>>>(a, row0, workspace, n_chunks);
      split_update_kernel<T><<<grid, kThreads, 0, stream>>>(a, row0, rows, workspace, n_chunks);
    }
  }
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace

std::string lst_step_cuda_runtime_error() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  return count > 0 ? "" : "no CUDA device found";
}

int64_t lst_step_cuda_workspace(int64_t n_rows, int64_t row_len) {
  if (row_len <= kThreads * 32) return 0;
  return n_rows * ((row_len + kSplitChunk - 1) / kSplitChunk) * 2;
}

void lst_step_cuda(const StepArgs& s, const CudaLaunch& launch) {
  auto run = [&](auto* type_tag) {
    using T = std::remove_pointer_t<decltype(type_tag)>;
    const Args<T> a{reinterpret_cast<const T*>(s.x.data),
                    reinterpret_cast<const T*>(s.grad.data),
                    reinterpret_cast<const T*>(s.tgt.data),
                    reinterpret_cast<T*>(s.delta.data),
                    reinterpret_cast<T*>(s.out.data),
                    s.x.row_stride,
                    s.grad.row_stride,
                    s.tgt.row_stride,
                    s.delta.row_stride,
                    s.out.row_stride,
                    s.row_len,
                    s.step_size,
                    s.adv_step_size,
                    reinterpret_cast<const double*>(s.row_step_sizes),
                    reinterpret_cast<const double*>(s.row_adv_step_sizes)};
    step<T>(a, s.n_rows, reinterpret_cast<double*>(launch.workspace), launch.plan,
            reinterpret_cast<cudaStream_t>(launch.stream));
  };
  switch (s.dtype) {
    case DType::kFloat32: run(static_cast<float*>(nullptr)); break;
    case DType::kFloat64: run(static_cast<double*>(nullptr)); break;
    case DType::kFloat16: run(static_cast<__half*>(nullptr)); break;
    case DType::kBFloat16: run(static_cast<__nv_bfloat16*>(nullptr)); break;
  }
}

}  // namespace lst_fast
