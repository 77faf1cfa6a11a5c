"""Kernel backends of the fused LST step (see :mod:`lst_fast.ops`, which checks arguments and dispatches).

Every backend module offers ``supports(device, dtype) -> bool`` and a launcher
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


def triton_interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``, read when triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
