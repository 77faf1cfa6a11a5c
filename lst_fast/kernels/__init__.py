"""Kernel backends of the fused LST step (see :mod:`lst_fast.ops`, which checks arguments and dispatches).

Every backend module offers ``supports(device, dtype) -> bool`` and a launcher that takes (B, D) row views
with dense rows in one common element order, ``delta`` None when the correction is off, and writes the
candidate into ``out``:

* :mod:`lst_fast.kernels.cpp_step`: C++/OpenMP on the CPU (``lst_fast._C``);
* :mod:`lst_fast.kernels.cuda_step`: CUDA C++ (``lst_fast._C_cuda``, built when nvcc is found);
* :mod:`lst_fast.kernels.triton_step`: Triton (GPU, or CPU under ``TRITON_INTERPRET=1``); imported lazily,
  since importing triton is slow and ``TRITON_INTERPRET`` must be set before it is.
"""

import os


def triton_interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``, read when triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
