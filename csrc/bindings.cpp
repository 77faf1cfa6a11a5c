// pybind11 bindings for the CPU kernels. Tensors cross the boundary as raw data pointers plus row strides (in
// elements), checked on the Python side (lst_fast/ops.py), so this module does not link against libtorch.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "lst_step.h"

namespace py = pybind11;

namespace {

template <typename scalar_t>
scalar_t* ptr(std::uintptr_t address) {
  return reinterpret_cast<scalar_t*>(address);
}

template <typename scalar_t>
void step_typed(std::uintptr_t x, int64_t sx, std::uintptr_t g, int64_t sg, std::uintptr_t t, int64_t st,
                std::uintptr_t d, int64_t sd, std::uintptr_t out, int64_t so, int64_t n_rows, int64_t row_len,
                double step_size, double adv_step_size) {
  lst_fast::lst_step_cpu<scalar_t>(ptr<scalar_t>(x), sx, ptr<scalar_t>(g), sg, ptr<scalar_t>(t), st,
                                   ptr<scalar_t>(d), sd, ptr<scalar_t>(out), so, {n_rows, row_len}, step_size,
                                   adv_step_size);
}

void lst_step(const std::string& dtype, std::uintptr_t x, int64_t x_stride, std::uintptr_t grad,
              int64_t grad_stride, std::uintptr_t tgt, int64_t tgt_stride, std::uintptr_t delta,
              int64_t delta_stride, std::uintptr_t out, int64_t out_stride, int64_t n_rows, int64_t row_len,
              double step_size, double adv_step_size) {
  if (n_rows < 0 || row_len < 0) throw std::invalid_argument("n_rows and row_len must be >= 0");
  const lst_fast::DType type = lst_fast::parse_dtype(dtype);
  py::gil_scoped_release release;
  if (type == lst_fast::DType::kFloat32) {
    step_typed<float>(x, x_stride, grad, grad_stride, tgt, tgt_stride, delta, delta_stride, out, out_stride,
                      n_rows, row_len, step_size, adv_step_size);
  } else if (type == lst_fast::DType::kFloat64) {
    step_typed<double>(x, x_stride, grad, grad_stride, tgt, tgt_stride, delta, delta_stride, out, out_stride,
                       n_rows, row_len, step_size, adv_step_size);
  } else {
    throw std::invalid_argument("lst_step (CPU): dtype must be 'float32' or 'float64', got '" + dtype + "'");
  }
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lst_fast CPU kernels (C++/OpenMP, raw pointers)";
  m.def("lst_step", &lst_step, py::arg("dtype"), py::arg("x"), py::arg("x_stride"), py::arg("grad"),
        py::arg("grad_stride"), py::arg("tgt"), py::arg("tgt_stride"), py::arg("delta"), py::arg("delta_stride"),
        py::arg("out"), py::arg("out_stride"), py::arg("n_rows"), py::arg("row_len"), py::arg("step_size"),
        py::arg("adv_step_size"),
        "Fused LST step on CPU. delta == 0 means the adversarial correction is off (delta is not touched).");
#ifdef LST_FAST_OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
}
