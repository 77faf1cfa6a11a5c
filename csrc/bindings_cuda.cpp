// pybind11 bindings for the CUDA kernels (module lst_fast._C_cuda). Like the CPU module it takes raw device
// pointers, row strides (in elements) and a cudaStream_t as integers, checked on the Python side
// (lst_fast/kernels/cuda_step.py), and does not link against libtorch. The CUDA runtime is linked
// statically, so the module imports on machines without a GPU or driver; calls then fail with a clear error.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "lst_step.h"

namespace py = pybind11;

namespace {

void lst_step(const std::string& dtype, std::uintptr_t x, int64_t x_stride, std::uintptr_t grad,
              int64_t grad_stride, std::uintptr_t tgt, int64_t tgt_stride, std::uintptr_t delta,
              int64_t delta_stride, std::uintptr_t out, int64_t out_stride, int64_t n_rows, int64_t row_len,
              double step_size, double adv_step_size, std::uintptr_t workspace, std::uintptr_t stream) {
  if (n_rows < 0 || row_len < 0) throw std::invalid_argument("n_rows and row_len must be >= 0");
  const lst_fast::DType type = lst_fast::parse_dtype(dtype);
  py::gil_scoped_release release;
  lst_fast::lst_step_cuda(type, reinterpret_cast<const void*>(x), x_stride, reinterpret_cast<const void*>(grad),
                          grad_stride, reinterpret_cast<const void*>(tgt), tgt_stride,
                          reinterpret_cast<void*>(delta), delta_stride, reinterpret_cast<void*>(out), out_stride,
                          {n_rows, row_len}, step_size, adv_step_size, reinterpret_cast<double*>(workspace),
                          reinterpret_cast<void*>(stream));
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "lst_fast CUDA kernels (raw device pointers, statically linked CUDA runtime)";
  m.def("lst_step", &lst_step, py::arg("dtype"), py::arg("x"), py::arg("x_stride"), py::arg("grad"),
        py::arg("grad_stride"), py::arg("tgt"), py::arg("tgt_stride"), py::arg("delta"), py::arg("delta_stride"),
        py::arg("out"), py::arg("out_stride"), py::arg("n_rows"), py::arg("row_len"), py::arg("step_size"),
        py::arg("adv_step_size"), py::arg("workspace"), py::arg("stream"),
        "Fused LST step on the current CUDA device, launched on `stream`. delta == 0: correction off.");
  m.def("workspace_size", &lst_fast::lst_step_cuda_workspace, py::arg("n_rows"), py::arg("row_len"),
        "Number of float64 workspace elements lst_step needs for this shape (0: none).");
  m.def("runtime_error", &lst_fast::lst_step_cuda_runtime_error,
        "'' when the statically linked CUDA runtime finds a device, else the reason it does not.");
}
