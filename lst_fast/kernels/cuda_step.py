"""The CUDA C++ kernel (``lst_fast._C_cuda``, csrc/lst_step_cuda.cu), built when CMake finds nvcc: float32,
float64, float16 and bfloat16 on CUDA tensors.

The module takes raw device pointers and the current torch stream as integers and does not link libtorch;
its CUDA runtime is linked statically, so it imports anywhere and :func:`unavailable_reason` says why it
cannot run (no module built, no GPU, a driver older than the runtime it was built with).

Rows longer than one thread block holds are stepped in groups of rows (``PLANS``, csrc/lst_step.h):
``"bounded"`` (the default) makes at most 16 launches per step, ``"l2_groups"`` (the first plan) sizes the
groups to half of the L2 cache. ``LST_FAST_CUDA_PLAN`` (read at import) or :func:`set_plan` picks one;
bench/bench_step.py times both.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from lst_fast.kernels import row_values, step_args

PLANS = ("bounded", "l2_groups")


def _plan_from_env() -> str:
    plan = os.environ.get("LST_FAST_CUDA_PLAN", PLANS[0])
    if plan not in PLANS:
        raise ValueError(f"LST_FAST_CUDA_PLAN must be one of {PLANS}, got {plan!r}")
    return plan


_plan = _plan_from_env()


def set_plan(plan: str) -> str:
    """Use launch plan ``plan`` (one of PLANS) from the next step on; returns the previous one."""
    global _plan
    if plan not in PLANS:
        raise ValueError(f"plan must be one of {PLANS}, got {plan!r}")
    previous, _plan = _plan, plan
    return previous


@functools.cache
def _module():
    try:
        from lst_fast import _C_cuda  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _C_cuda


@functools.cache
def unavailable_reason() -> str:
    """'' when the CUDA kernels can run here, else why not (not built, no GPU, a driver too old)."""
    if _module() is None:
        return "lst_fast._C_cuda was not built (no nvcc when the package was installed, or LST_FAST_CUDA=OFF)"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    reason = _module().runtime_error()
    if reason:  # torch sees a GPU that the module's own runtime cannot use: say so, once
        reason = (f"the CUDA 13 runtime linked into lst_fast._C_cuda cannot use the GPU ({reason}); it needs an "
                  "NVIDIA driver for CUDA 13 or newer (see the README)")
        warnings.warn(f"lst_fast: {reason}; the step runs on another backend", RuntimeWarning, stacklevel=2)
    return reason


def lst_step_cuda_(x, grad, tgt, delta, out, n_rows: int, row_len: int, step_size, adv_step_size) -> None:
    """Launch (see :mod:`lst_fast.kernels` for the contract) on the current stream of the current device."""
    module = _module()
    workspace_len = module.workspace_size(n_rows, row_len)
    workspace = torch.empty(workspace_len, dtype=torch.float64, device=x.device) if workspace_len else None
    step_size, adv_step_size = row_values(step_size), row_values(adv_step_size)
    module.lst_step(
        step_args(module, x, grad, tgt, delta, out, n_rows, row_len, step_size, adv_step_size),
        0 if workspace is None else workspace.data_ptr(), torch.cuda.current_stream().cuda_stream, _plan,
    )
