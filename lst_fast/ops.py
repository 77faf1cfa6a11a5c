"""The fused LST step (spec section 2, steps 2-5) and its backends.

``lst_step_`` is what the fast loop calls every iteration: it writes the candidate into a buffer that the
caller owns and updates the correction buffer in place, so no memory is allocated per iteration.
``lst_step`` is the functional form. ``lst_step_torch_`` is the pure-PyTorch twin that every kernel is
tested against. Backends (``available_backends`` lists those that run here, the default first):

* ``"triton"``: Triton, on GPU (on CPU only under ``TRITON_INTERPRET=1``, for tests);
* ``"cuda"``: CUDA C++ (``lst_fast._C_cuda``, built when nvcc is found at install time);
* ``"cpp"``: C++/OpenMP on CPU (``lst_fast._C``);
* ``"torch"``: the pure-PyTorch twin, any device, dtype and layout.

Both forms are registered as torch ops, ``torch.ops.lst_fast.lst_step_`` (mutates ``delta`` and ``out``)
and ``torch.ops.lst_fast.lst_step`` (functional), with fake implementations, so they work under
``torch.compile`` and CUDA graph capture. Called eagerly, the Python functions below skip the op
dispatcher (measured ~20 us per call on CPU, as much as a whole small GPU step) and run the same code.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Callable, Optional

import torch

from lst_fast.kernels import cpp_step, cuda_step, triton_interpreting
# rows and row_dot stay importable from here (lst_fast.ops.rows, lst_fast.ops.row_dot).
from lst_fast.rows import ROW_ORDERS, orthogonal_component_, row_dot, row_orders, rows  # noqa: F401
from lst_fast.validation import check_number

BACKENDS = ("triton", "cuda", "cpp", "torch")
_log = logging.getLogger("lst_fast")


# ---------------------------------------------------------------------------------------------------------
# Backends


def _triton_step():
    """The Triton backend module, or None when triton cannot be imported."""
    try:
        return importlib.import_module("lst_fast.kernels.triton_step")
    except ImportError:
        return None


def available_backends(device: torch.device | str, dtype: torch.dtype | None = None) -> list[str]:
    """Backends that can run ``lst_step`` on ``device`` (for ``dtype`` if given) here, the default first.

    The order is triton, cuda, cpp, torch. On CPU the Triton interpreter (``TRITON_INTERPRET=1``) is listed
    last: it is for tests, not speed.
    """
    return list(_available(torch.device(device), dtype))


_available_cache: dict[tuple[torch.device, torch.dtype | None], tuple[str, ...]] = {}


def _available(device: torch.device, dtype: torch.dtype | None) -> tuple[str, ...]:
    """Memoised: what is built and which devices exist does not change while the process runs."""
    key = (device, dtype)
    if key not in _available_cache:
        _available_cache[key] = _find_backends(device, dtype)
    return _available_cache[key]


def _find_backends(device: torch.device, dtype: torch.dtype | None) -> tuple[str, ...]:
    reasons = backend_reasons(device, dtype)
    order = ("cuda", "cpp", "torch", "triton") if device.type == "cpu" else BACKENDS  # the interpreter: tests only
    found = tuple(name for name in order if not reasons[name])
    others = "; ".join(f"{name}: {why}" for name, why in reasons.items() if why)
    _log.info("the fused step for %s on %s runs on %r (not available: %s)",
              "any dtype" if dtype is None else dtype, device, found[0], others or "none")
    return found


def backend_reasons(device: torch.device | str, dtype: torch.dtype | None = None) -> dict[str, str]:
    """For every backend, '' when it can run ``lst_step`` on ``device`` (for ``dtype`` if given) here, else why
    not (e.g. the CUDA module was built for a newer driver). The choice is also logged once per device and
    dtype (logger ``lst_fast``, level INFO)."""
    device = torch.device(device)
    return {"triton": _triton_reason(device, dtype), "cuda": cuda_step.unavailable_reason(device, dtype),
            "cpp": cpp_step.unavailable_reason(device, dtype), "torch": ""}


def _triton_reason(device: torch.device, dtype: torch.dtype | None) -> str:
    if device.type == "cpu" and not triton_interpreting():  # without importing triton, which is slow
        return "on CPU only under TRITON_INTERPRET=1 (the interpreter, for tests)"
    if device.type not in ("cpu", "cuda"):
        return "CUDA tensors only"
    triton_step = _triton_step()
    return "triton cannot be imported" if triton_step is None else triton_step.unavailable_reason(device, dtype)


def default_backend(device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    return _available(torch.device(device), dtype)[0]


def _kernel(backend: str) -> Callable:
    if backend == "cpp":
        return cpp_step.lst_step_cpp_
    if backend == "cuda":
        return cuda_step.lst_step_cuda_
    return _triton_step().lst_step_triton_


# ---------------------------------------------------------------------------------------------------------
# The step


def lst_step_torch_(x, grad, tgt, delta, out, *, step_size, adv_step_size) -> None:
    """Pure-PyTorch twin: writes the candidate into ``out`` and updates ``delta`` in place (if not None).

    ``out`` doubles as the scratch buffer for ``v`` and ``v_perp``, so the only allocations are two (B,)
    vectors for the per-row dot products (when all tensors share a memory format).
    ``step_size`` and ``adv_step_size`` are floats, or (B,) tensors of per-row values (the adaptive schedule's
    rows of different step sizes; the compiled kernels take floats only).
    """
    step_size = _as_row_column("step_size", step_size, x)
    adv_step_size = _as_row_column("adv_step_size", adv_step_size, x)
    orthogonal_component_(torch.sub(tgt, x, out=out), grad)  # v_perp of v = tgt - x, in out
    out.mul_(step_size).add_(x)  # x + step_size * v_perp
    if delta is not None and isinstance(adv_step_size, torch.Tensor):
        delta.addcmul_(grad, adv_step_size / 2).clamp_(min=-adv_step_size, max=adv_step_size)
        out.sub_(delta)
    elif delta is not None and adv_step_size > 0:
        delta.add_(grad, alpha=adv_step_size / 2).clamp_(-adv_step_size, adv_step_size)
        out.sub_(delta)
    out.clamp_(0, 1)


def _as_row_column(name: str, value, x: torch.Tensor):
    """A float as it is; a (B,) tensor as a (B, 1, 1, ...) column in x's dtype, to broadcast over each row."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.shape != x.shape[:1]:
        raise ValueError(
            f"{name} must be a float or a ({x.shape[0]},) tensor of per-row values, got shape {tuple(value.shape)}"
        )
    return value.to(dtype=x.dtype, device=x.device).view(-1, *([1] * (x.dim() - 1)))


def _run_step(x, grad, tgt, delta, out, step_size: float, adv_step_size: float, backend: str) -> None:
    """Run a checked step (``delta`` None: correction off) on ``backend``."""
    _plan_step(x, grad, tgt, delta, out, step_size, adv_step_size, backend)(x, grad, tgt, delta, out)


def _plan_step(x, grad, tgt, delta, out, step_size, adv_step_size, backend) -> Callable[..., None]:
    """Check the memory layout of a step whose arguments are checked; return ``launch(x, grad, tgt, delta, out)``
    that runs it, valid for any later call with tensors of the same addresses, shapes, strides and dtypes."""
    if x.numel() == 0:
        return _nothing_to_do
    tensors = {"x": x, "grad": grad, "tgt": tgt, "out": out} | ({} if delta is None else {"delta": delta})
    _check_no_overlap(tensors)
    if backend == "torch":
        return functools.partial(_twin_launch, step_size=step_size, adv_step_size=adv_step_size)
    _check_common_row_order(tensors, backend)
    kernel, n_rows, row_len = _kernel(backend), x.shape[0], x.numel() // x.shape[0]

    def launch(x, grad, tgt, delta, out):
        if x.is_cuda and x.device.index != torch.cuda.current_device():
            with torch.cuda.device(x.device):
                kernel(x, grad, tgt, delta, out, n_rows, row_len, step_size, adv_step_size)
        else:
            kernel(x, grad, tgt, delta, out, n_rows, row_len, step_size, adv_step_size)

    return launch


def _nothing_to_do(*tensors) -> None:
    return None


def _twin_launch(x, grad, tgt, delta, out, *, step_size, adv_step_size) -> None:
    lst_step_torch_(x, grad, tgt, delta, out, step_size=step_size, adv_step_size=adv_step_size)


# Steps planned before, by call signature. The fast loop calls lst_step_ with the same few buffers every
# iteration; looking its plan up here skips the argument and layout checks (~20 us of Python per call, as much
# as a whole step on a GPU at CIFAR size).
_planned: dict[tuple, Callable[..., None]] = {}
_MAX_PLANNED = 64


def _call_signature(tensors, step_size, adv_step_size, backend) -> tuple | None:
    """Everything the checks depend on, or None when an argument is not a tensor (the checks will say so)."""
    try:
        described = tuple(
            None if t is None else (t.data_ptr(), t.shape, t.stride(), t.dtype, t.device, type(t)) for t in tensors
        )
    except AttributeError:
        return None
    return described + (step_size, type(step_size), adv_step_size, type(adv_step_size), backend)


def _check_common_row_order(tensors: dict[str, torch.Tensor], backend: str) -> None:
    """The kernels index every tensor as ``data_ptr + row * stride(0) + i``: rows must be dense and store
    their elements in the same order in every tensor."""
    common = set(ROW_ORDERS)
    for name, t in tensors.items():
        orders = row_orders(t)
        if not orders:
            raise ValueError(
                f"backend {backend!r} needs {name} with dense rows (contiguous or channels_last), got strides "
                f"{t.stride()} for shape {tuple(t.shape)}; call .contiguous() first or use backend='torch'"
            )
        common &= orders
    if not common:
        layouts = {name: sorted(row_orders(t)) for name, t in tensors.items()}
        raise ValueError(
            f"backend {backend!r} needs x, grad, tgt, delta and out in one memory format, got {layouts}"
        )


def _check_no_overlap(tensors: dict[str, torch.Tensor]) -> None:
    start, end = _byte_span(tensors["out"])
    for name, t in tensors.items():
        if name != "out":
            other_start, other_end = _byte_span(t)
            if start < other_end and other_start < end:
                raise ValueError(f"out must not overlap {name}: the step reads {name} while it writes out")


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def _check_step(x, grad, tgt, delta, out, step_size, adv_step_size, backend) -> tuple[float, float, str]:
    """Argument checks shared by both forms; returns the checked step sizes and the resolved backend."""
    named = {"x": x, "grad": grad, "tgt": tgt} | ({} if delta is None else {"delta": delta})
    named |= {} if out is None else {"out": out}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must have shape (B, ...) with at least one dimension per row, got {tuple(x.shape)}")
    for name, t in named.items():
        if t.shape != x.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected the shape of x {tuple(x.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, expected the dtype of x ({x.dtype})")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, expected the device of x ({x.device})")
    step_size = check_number("step_size", step_size, minimum=0, strict=True)
    adv_step_size = check_number("adv_step_size", adv_step_size, minimum=0)
    available = _available(x.device, x.dtype)
    if backend is None:
        return step_size, adv_step_size, available[0]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    if backend not in available:
        raise ValueError(
            f"backend {backend!r} cannot run {x.dtype} on {x.device} here; available: {list(available)}"
        )
    return step_size, adv_step_size, backend


def lst_step_(
    x: torch.Tensor,
    grad: torch.Tensor,
    tgt: torch.Tensor,
    delta: torch.Tensor | None,
    out: torch.Tensor,
    *,
    step_size: float,
    adv_step_size: float,
    backend: str | None = None,
) -> None:
    """In-place LST step: ``out = clamp(x + step_size * v_perp - delta_new, 0, 1)``, ``delta`` updated.

    ``delta=None`` or ``adv_step_size == 0`` means the adversarial correction is off (``delta`` untouched).
    ``backend`` None picks the fastest available one for x's device and dtype.
    """
    if torch.compiler.is_compiling():
        step_size, adv_step_size, backend = _check_step(x, grad, tgt, delta, out, step_size, adv_step_size, backend)
        delta = None if adv_step_size == 0 else delta
        torch.ops.lst_fast.lst_step_(x, grad, tgt, delta, out, step_size, adv_step_size, backend)
        return
    signature = _call_signature((x, grad, tgt, delta, out), step_size, adv_step_size, backend)
    try:
        launch = _planned.get(signature)
    except TypeError:  # an unhashable setting: the checks below reject it
        signature, launch = None, None
    if launch is None:
        step_size, adv_step_size, backend = _check_step(x, grad, tgt, delta, out, step_size, adv_step_size, backend)
        launch = _plan_step(x, grad, tgt, delta if adv_step_size > 0 else None, out, step_size, adv_step_size, backend)
        if signature is not None:
            if len(_planned) >= _MAX_PLANNED:
                _planned.clear()
            _planned[signature] = launch
    launch(x, grad, tgt, delta if adv_step_size > 0 else None, out)


def lst_step(
    x: torch.Tensor,
    grad: torch.Tensor,
    tgt: torch.Tensor,
    delta: torch.Tensor | None,
    *,
    step_size: float,
    adv_step_size: float,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Functional LST step: returns ``(candidate, new_delta)`` and leaves the inputs untouched.

    ``delta=None`` means a zero correction. With the correction off (``adv_step_size == 0``) ``new_delta`` is
    a copy of ``delta`` (zeros if None).
    """
    step_size, adv_step_size, backend = _check_step(x, grad, tgt, delta, None, step_size, adv_step_size, backend)
    if torch.compiler.is_compiling():
        return torch.ops.lst_fast.lst_step(x, grad, tgt, delta, step_size, adv_step_size, backend)
    return _functional_step(x, grad, tgt, delta, step_size, adv_step_size, backend)


def _functional_step(x, grad, tgt, delta, step_size, adv_step_size, backend):
    new_delta = torch.zeros_like(x) if delta is None else delta.clone()
    out = torch.empty_like(x)
    _run_step(x, grad, tgt, new_delta if adv_step_size > 0 else None, out, step_size, adv_step_size, backend)
    return out, new_delta


# ---------------------------------------------------------------------------------------------------------
# torch.library registration: the same code as opaque ops with fake implementations for tracing.


@torch.library.custom_op("lst_fast::lst_step_", mutates_args=("delta", "out"))
def _lst_step_inplace_op(
    x: torch.Tensor,
    grad: torch.Tensor,
    tgt: torch.Tensor,
    delta: Optional[torch.Tensor],
    out: torch.Tensor,
    step_size: float,
    adv_step_size: float,
    backend: str,
) -> None:
    _run_step(x, grad, tgt, delta, out, step_size, adv_step_size, backend)


@_lst_step_inplace_op.register_fake
def _(x, grad, tgt, delta, out, step_size, adv_step_size, backend) -> None:
    return None


@torch.library.custom_op("lst_fast::lst_step", mutates_args=())
def _lst_step_op(
    x: torch.Tensor,
    grad: torch.Tensor,
    tgt: torch.Tensor,
    delta: Optional[torch.Tensor],
    step_size: float,
    adv_step_size: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _functional_step(x, grad, tgt, delta, step_size, adv_step_size, backend)


@_lst_step_op.register_fake
def _(x, grad, tgt, delta, step_size, adv_step_size, backend):
    return torch.empty_like(x), torch.empty_like(x if delta is None else delta)
