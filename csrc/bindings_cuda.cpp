// pybind11 bindings for the CUDA kernels (module lst_fast._C_cuda). Like the CPU module it takes one StepArgs of
// raw device pointers and row strides (in elements), plus where to launch (workspace and cudaStream_t as
// integers), checked on the Python side (lst_fast/kernels/cuda_step.py), and does not link against libtorch.
// The CUDA runtime is linked statically, so the module imports on machines without a GPU or driver; calls then
// fail with a clear error.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "lst_step.h"
#include "step_args_binding.h"

namespace py = pybind11;

namespace {

lst_fast::CudaPlan parse_plan(const std::string& name) {
  if (name == "bounded") return lst_fast::CudaPlan::kBounded;
  if (name == "l2_groups") return lst_fast::CudaPlan::kL2Groups;
  throw std::invalid_argument("lst_step (CUDA): plan must be 'bounded' or 'l2_groups', got '" + name + "'");
}

void lst_step(const lst_fast::StepArgs& args, std::uintptr_t workspace, std::uintptr_t stream,
              const std::string& plan) {
  const lst_fast::CudaLaunch launch{workspace, stream, parse_plan(plan)};
  py::gil_scoped_release release;
  lst_fast::lst_step_cuda(args, launch);
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "lst_fast CUDA kernels (raw device pointers, statically linked CUDA runtime)";
  lst_fast::bind_step_args(m);
  m.def("lst_step", &lst_step, py::arg("args"), py::arg("workspace"), py::arg("stream"), py::arg("plan") = "bounded",
        "Fused LST step on the current CUDA device, launched on `stream` (a cudaStream_t as an int). `plan` "
        "('bounded' or 'l2_groups') says how long rows are grouped into launches (csrc/lst_step.h).");
  m.def("workspace_size", &lst_fast::lst_step_cuda_workspace, py::arg("n_rows"), py::arg("row_len"),
        "Number of float64 workspace elements lst_step needs for this shape (0: none).");
  m.def("runtime_error", &lst_fast::lst_step_cuda_runtime_error,
        "'' when the statically linked CUDA runtime finds a device, else the reason it does not.");
}
