"""Kernel backends of the fused LST step (see :mod:`lst_fast.ops`, which checks arguments and dispatches).

Every backend module offers ``unavailable_reason(device, dtype) -> str`` ('' when it runs ``dtype`` on
``device`` here, else why not; ``dtype`` None: any dtype), ``supports(device, dtype) -> bool`` and a launcher
``(x, grad, tgt, delta, out, n_rows, row_len, step_size, adv_step_size)``. The launcher indexes each tensor
``t`` as ``t.data_ptr() + row * t.stride(0) + i`` for ``i < row_len``: the caller guarantees dense rows that
store their elements in one common order (all contiguous or all channels_last), that ``out`` overlaps no input,
and that the current CUDA device is the tensors' device. ``delta`` None means the correction is off. The
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


def step_args(module, x, grad, tgt, delta, out, n_rows: int, row_len: int, step_size: float,
              adv_step_size: float):
    """The compiled kernels' one argument object (``StepArgs`` in csrc/lst_step.h) for a launch of ``module``
    (``lst_fast._C`` or ``lst_fast._C_cuda``): each tensor as (address, row stride), ``delta`` None as (0, 0)."""
    return module.StepArgs(
        DTYPE_NAMES[x.dtype], (x.data_ptr(), x.stride(0)), (grad.data_ptr(), grad.stride(0)),
        (tgt.data_ptr(), tgt.stride(0)), (0, 0) if delta is None else (delta.data_ptr(), delta.stride(0)),
        (out.data_ptr(), out.stride(0)), n_rows, row_len, step_size, adv_step_size,
    )


def triton_interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``, read when triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
