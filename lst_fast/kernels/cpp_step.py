"""The C++/OpenMP CPU kernel (``lst_fast._C``, csrc/lst_step_cpu.cpp)."""

from __future__ import annotations

import torch

from lst_fast._extension import cpu_kernels

DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def supports(device: torch.device, dtype: torch.dtype | None) -> bool:
    return device.type == "cpu" and (dtype is None or dtype in DTYPES) and cpu_kernels() is not None


def lst_step_cpp_(x, grad, tgt, delta, out, n_rows: int, row_len: int, step_size: float,
                  adv_step_size: float) -> None:
    """Launch (see :mod:`lst_fast.kernels` for the contract); releases the GIL while it runs."""
    cpu_kernels().lst_step(
        DTYPES[x.dtype],
        x.data_ptr(), x.stride(0), grad.data_ptr(), grad.stride(0), tgt.data_ptr(), tgt.stride(0),
        0 if delta is None else delta.data_ptr(), 0 if delta is None else delta.stride(0),
        out.data_ptr(), out.stride(0), n_rows, row_len, step_size, adv_step_size,
    )
