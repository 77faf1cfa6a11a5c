"""The CUDA C++ kernel (``lst_fast._C_cuda``, csrc/lst_step_cuda.cu), built when CMake finds nvcc.

The module takes raw device pointers and the current torch stream as integers and does not link libtorch;
its CUDA runtime is linked statically, so it imports anywhere and :func:`unavailable_reason` says why it
cannot run (no module built, no GPU, a driver older than the runtime it was built with).
"""

from __future__ import annotations

import functools

import torch

DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
          torch.bfloat16: "bfloat16"}


@functools.cache
def _module():
    try:
        from lst_fast import _C_cuda  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _C_cuda


@functools.cache
def unavailable_reason() -> str:
    """'' when the CUDA kernels can run here, else why not."""
    if _module() is None:
        return "lst_fast._C_cuda was not built (no nvcc when the package was installed, or LST_FAST_CUDA=OFF)"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return _module().runtime_error()


def supports(device: torch.device, dtype: torch.dtype | None) -> bool:
    return device.type == "cuda" and (dtype is None or dtype in DTYPES) and unavailable_reason() == ""


def lst_step_cuda_(x, grad, tgt, delta, out, n_rows: int, row_len: int, step_size: float,
                   adv_step_size: float) -> None:
    """Launch (see :mod:`lst_fast.kernels` for the contract) on the current stream of the current device."""
    module = _module()
    workspace_len = module.workspace_size(n_rows, row_len)
    workspace = torch.empty(workspace_len, dtype=torch.float64, device=x.device) if workspace_len else None
    module.lst_step(
        DTYPES[x.dtype],
        x.data_ptr(), x.stride(0), grad.data_ptr(), grad.stride(0), tgt.data_ptr(), tgt.stride(0),
        0 if delta is None else delta.data_ptr(), 0 if delta is None else delta.stride(0),
        out.data_ptr(), out.stride(0), n_rows, row_len, step_size, adv_step_size,
        0 if workspace is None else workspace.data_ptr(), torch.cuda.current_stream().cuda_stream,
    )
