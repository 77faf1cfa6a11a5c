"""Kernel backends of the fused LST step (see :mod:`lst_fast.ops`, which checks arguments and dispatches).

Every backend module offers ``unavailable_reason`` ('' when its kernel can run here, else why not, e.g.
the extension was not built; the Triton module's takes the device; which devices and dtypes each backend
takes is declared in its record in ``lst_fast.ops.BACKEND_REGISTRY``) and a launcher
``(x, grad, tgt, delta, out, n_rows, row_len, step_size, adv_step_size)``. The launcher indexes each tensor
``t`` as ``t.data_ptr() + row * t.stride(0) + i`` for ``i < row_len``: the caller guarantees dense rows that
store their elements in one common order (all contiguous or all channels_last), that ``out`` overlaps no
input, and that the current CUDA device is the tensors' device. ``delta`` None means the correction is off.
``step_size`` and ``adv_step_size`` are each a float (every row) or an ``(n_rows,)`` floating-point tensor on
the rows' device (one value per row; the compiled kernels read it as float64, see :func:`row_values`). The
launcher writes the candidate into ``out`` and updates ``delta`` in place.

* :mod:`lst_fast.kernels.cpp_step`: C++/OpenMP on the CPU (``lst_fast._C``);
* :mod:`lst_fast.kernels.cuda_step`: CUDA C++ (``lst_fast._C_cuda``, built when nvcc is found);
* :mod:`lst_fast.kernels.triton_step`: Triton (GPU, or CPU under ``TRITON_INTERPRET=1``); imported lazily,
  since importing triton is slow and ``TRITON_INTERPRET`` must be set before it is.
"""

import os

import torch

DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
               torch.bfloat16: "bfloat16"}


def row_values(size):
    """A step size as the kernels read it: a float as it is, per-row sizes as contiguous float64 (the tensor
    itself when it already is)."""
    return size.to(torch.float64).contiguous() if isinstance(size, torch.Tensor) else float(size)


def step_args(module, x, grad, tgt, delta, out, n_rows: int, row_len: int, step_size, adv_step_size):
    """The compiled kernels' one argument object (``StepArgs`` in csrc/lst_step.h) for a launch of ``module``
    (``lst_fast._C`` or ``lst_fast._C_cuda``): each tensor as (address, row stride), ``delta`` None as (0, 0),
    and each step size a float or per-row values from :func:`row_values`, passed by address (the caller keeps
    them alive until the launch)."""
    step, steps = _scalar_or_address(step_size)
    adv, advs = _scalar_or_address(adv_step_size)
    return module.StepArgs(
        DTYPE_NAMES[x.dtype], (x.data_ptr(), x.stride(0)), (grad.data_ptr(), grad.stride(0)),
        (tgt.data_ptr(), tgt.stride(0)), (0, 0) if delta is None else (delta.data_ptr(), delta.stride(0)),
        (out.data_ptr(), out.stride(0)), n_rows, row_len, step, adv, steps, advs,
    )


def _scalar_or_address(size) -> tuple[float, int]:
    """``(value, 0)`` for a float; ``(0.0, address)`` for per-row float64 values (StepArgs' two forms)."""
    if not isinstance(size, torch.Tensor):
        return size, 0
    if size.dtype != torch.float64 or not size.is_contiguous():
        raise ValueError(f"per-row step sizes must be contiguous float64 (see row_values), got {size.dtype} "
                         f"with strides {size.stride()}")
    return 0.0, size.data_ptr()


def triton_interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``, read when triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
