"""The C++/OpenMP CPU kernel (``lst_fast._C``, csrc/lst_step_cpu.cpp)."""

from __future__ import annotations

import torch

from lst_fast._extension import cpu_kernels
from lst_fast.kernels import step_args

DTYPES = (torch.float32, torch.float64)


def unavailable_reason(device: torch.device, dtype: torch.dtype | None) -> str:
    if device.type != "cpu":
        return "CPU tensors only"
    if dtype is not None and dtype not in DTYPES:
        return "float32 and float64 only"
    if cpu_kernels() is None:
        return "lst_fast._C was not built (reinstall with a C++ compiler)"
    return ""


def supports(device: torch.device, dtype: torch.dtype | None) -> bool:
    return unavailable_reason(device, dtype) == ""


def lst_step_cpp_(x, grad, tgt, delta, out, n_rows: int, row_len: int, step_size: float,
                  adv_step_size: float) -> None:
    """Launch (see :mod:`lst_fast.kernels` for the contract); releases the GIL while it runs."""
    module = cpu_kernels()
    module.lst_step(step_args(module, x, grad, tgt, delta, out, n_rows, row_len, step_size, adv_step_size))
