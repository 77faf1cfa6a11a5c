// The Python class of lst_fast::StepArgs, bound the same way in both extension modules (lst_fast._C and
// lst_fast._C_cuda). Each module gets its own local copy of the class (py::module_local), so the two modules
// import independently; lst_fast/kernels/__init__.py (step_args) builds the one of the module it calls.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "lst_step.h"

namespace lst_fast {

// A tensor as Python passes it: (data_ptr(), stride(0)).
using TensorRef = std::pair<std::uintptr_t, int64_t>;

inline StepArgs make_step_args(const std::string& dtype, TensorRef x, TensorRef grad, TensorRef tgt,
                               TensorRef delta, TensorRef out, int64_t n_rows, int64_t row_len, double step_size,
                               double adv_step_size, std::uintptr_t row_step_sizes,
                               std::uintptr_t row_adv_step_sizes) {
  if (n_rows < 0 || row_len < 0) throw std::invalid_argument("StepArgs: n_rows and row_len must be >= 0");
  const auto row_tensor = [](TensorRef t) { return RowTensor{t.first, t.second}; };
  return StepArgs{parse_dtype(dtype), row_tensor(x), row_tensor(grad), row_tensor(tgt), row_tensor(delta),
                  row_tensor(out),    n_rows,        row_len,          step_size,        adv_step_size,
                  row_step_sizes,     row_adv_step_sizes};
}

inline void bind_step_args(pybind11::module_& m) {
  namespace py = pybind11;
  py::class_<StepArgs>(m, "StepArgs", py::module_local(),
                       "Arguments of one fused step: tensors as (data_ptr, row stride in elements); delta (0, 0) "
                       "turns the correction off; row_step_sizes / row_adv_step_sizes: the data_ptr of n_rows "
                       "contiguous float64 per-row sizes, or 0 for step_size / adv_step_size in every row.")
      .def(py::init(&make_step_args), py::arg("dtype"), py::arg("x"), py::arg("grad"), py::arg("tgt"),
           py::arg("delta"), py::arg("out"), py::arg("n_rows"), py::arg("row_len"), py::arg("step_size"),
           py::arg("adv_step_size"), py::arg("row_step_sizes") = 0, py::arg("row_adv_step_sizes") = 0)
      .def_readonly("n_rows", &StepArgs::n_rows)
      .def_readonly("row_len", &StepArgs::row_len)
      .def_readonly("step_size", &StepArgs::step_size)
      .def_readonly("adv_step_size", &StepArgs::adv_step_size)
      .def_readonly("row_step_sizes", &StepArgs::row_step_sizes)
      .def_readonly("row_adv_step_sizes", &StepArgs::row_adv_step_sizes);
}

}  // namespace lst_fast
