// pybind11 bindings for the CPU kernels. Tensors cross the boundary as raw data pointers plus row strides (in
// elements) in one StepArgs (csrc/lst_step.h), checked on the Python side (lst_fast/ops.py), so this module does
// not link against libtorch.
#include <pybind11/pybind11.h>

#include "lst_step.h"
#include "step_args_binding.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "lst_fast CPU kernels (C++/OpenMP, raw pointers)";
  lst_fast::bind_step_args(m);
  m.def("lst_step", &lst_fast::lst_step_cpu, py::arg("args"), py::call_guard<py::gil_scoped_release>(),
        "Fused LST step on CPU (float32 or float64).");
#ifdef LST_FAST_OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
}
