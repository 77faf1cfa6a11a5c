"""The C++/OpenMP CPU kernel (``lst_fast._C``, csrc/lst_step_cpu.cpp)."""

from __future__ import annotations

import torch

from lst_fast._extension import cpu_kernels
from lst_fast.kernels import step_args

DTYPES = (torch.float32, torch.float64)


def supports(device: torch.device, dtype: torch.dtype | None) -> bool:
    return device.type == "cpu" and (dtype is None or dtype in DTYPES) and cpu_kernels() is not None


def lst_step_cpp_(x, grad, tgt, delta, out, n_rows: int, row_len: int, step_size: float,
                  adv_step_size: float) -> None:
    """Launch (see :mod:`lst_fast.kernels` for the contract); releases the GIL while it runs."""
    module = cpu_kernels()
    module.lst_step(step_args(module, x, grad, tgt, delta, out, n_rows, row_len, step_size, adv_step_size))
