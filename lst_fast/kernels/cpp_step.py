"""The C++/OpenMP CPU kernel (``lst_fast._C``, csrc/lst_step_cpu.cpp): float32 and float64 on CPU tensors."""

from __future__ import annotations

from lst_fast._extension import cpu_kernels
from lst_fast.kernels import row_values, step_args


def unavailable_reason() -> str:
    """'' when the extension is built, else why it cannot run."""
    return "" if cpu_kernels() is not None else "lst_fast._C was not built (reinstall with a C++ compiler)"


def lst_step_cpp_(x, grad, tgt, delta, out, n_rows: int, row_len: int, step_size, adv_step_size) -> None:
    """Launch (see :mod:`lst_fast.kernels` for the contract); releases the GIL while it runs."""
    module = cpu_kernels()
    step_size, adv_step_size = row_values(step_size), row_values(adv_step_size)
    module.lst_step(step_args(module, x, grad, tgt, delta, out, n_rows, row_len, step_size, adv_step_size))
