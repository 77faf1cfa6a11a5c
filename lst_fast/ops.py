"""The fused LST step (algorithm §2.2-2.5) and its backends.

``lst_step_`` is what the fast loop calls every iteration: it writes the candidate into a buffer that the
caller owns and updates the correction buffer in place, so no memory is allocated per iteration.
``lst_step`` is the functional form. ``lst_step_torch_`` is the pure-PyTorch twin that every kernel is
tested against. Step sizes are floats or per-row tensors (the adaptive schedule) on every backend.
Backends, one record each in ``BACKEND_REGISTRY`` (``available_backends`` lists those that run here, the
default first; ``check_backend`` resolves and checks a choice):

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

import importlib
import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from lst_fast.kernels import cpp_step, cuda_step, triton_interpreting

# rows and row_dot stay importable from here (lst_fast.ops.rows, lst_fast.ops.row_dot).
from lst_fast.rows import ROW_ORDERS, orthogonal_component_, row_dot, row_orders, rows  # noqa: F401
from lst_fast.validation import check_number

_log = logging.getLogger("lst_fast")


# ---------------------------------------------------------------------------------------------------------
# Backends: one record each; what runs where, the default choice and the checks are derived from them.


@dataclass(frozen=True)
class BackendInfo:
    """One backend of the fused step. Adding a backend is adding its record to :data:`BACKEND_REGISTRY`.

    Attributes:
        name: what ``backend=`` says.
        priority: without a backend asked for, the available one of highest priority runs.
        devices: the device types it runs on (None: any).
        dtypes: the dtypes it runs (None: any floating-point dtype).
        runtime_reason: ``(device) -> str``, '' when it can run on that (supported) device here, else why not
            (e.g. the extension was not built).
        load_kernel: ``() -> launcher`` (the contract of :mod:`lst_fast.kernels`), called on first use.
        dense_rows: the launcher indexes rows as ``data_ptr + row * stride(0) + i``, so rows must be dense and
            store their elements in one order in every tensor.
        interpreted_on: device types where it runs interpreted (for tests, not speed): listed last there.
    """

    name: str
    priority: int
    devices: tuple[str, ...] | None
    dtypes: tuple[torch.dtype, ...] | None
    runtime_reason: Callable[[torch.device], str]
    load_kernel: Callable[[], Callable]
    dense_rows: bool = True
    interpreted_on: tuple[str, ...] = ()

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype | None) -> str:
        """'' when it can run ``dtype`` (None: some dtype) on ``device`` here, else why not."""
        if self.devices is not None and device.type not in self.devices:
            return f"{' or '.join(d.upper() for d in self.devices)} tensors only"
        if dtype is not None and self.dtypes is not None and dtype not in self.dtypes:
            return f"{_listing([str(d).removeprefix('torch.') for d in self.dtypes])} only"
        return self.runtime_reason(device)


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _triton_step():
    """The Triton backend module, or None when triton cannot be imported."""
    try:
        return importlib.import_module("lst_fast.kernels.triton_step")
    except ImportError:
        return None


def _triton_reason(device: torch.device) -> str:
    if device.type == "cpu" and not triton_interpreting():  # without importing triton, which is slow
        return "on CPU only under TRITON_INTERPRET=1 (the interpreter, for tests)"
    triton_step = _triton_step()
    return "triton cannot be imported" if triton_step is None else triton_step.unavailable_reason(device)


def _twin_kernel(x, grad, tgt, delta, out, n_rows: int, row_len: int, step_size, adv_step_size) -> None:
    """The PyTorch twin behind the launcher contract of :mod:`lst_fast.kernels` (any layout)."""
    lst_step_torch_(x, grad, tgt, delta, out, step_size=step_size, adv_step_size=adv_step_size)


_HALF = (torch.float16, torch.bfloat16)
BACKEND_REGISTRY: tuple[BackendInfo, ...] = (
    BackendInfo(name="triton", priority=3, devices=("cuda", "cpu"), dtypes=(torch.float32, *_HALF),
                runtime_reason=_triton_reason, load_kernel=lambda: _triton_step().lst_step_triton_,
                interpreted_on=("cpu",)),
    BackendInfo(name="cuda", priority=2, devices=("cuda",), dtypes=(torch.float32, torch.float64, *_HALF),
                runtime_reason=lambda device: cuda_step.unavailable_reason(),
                load_kernel=lambda: cuda_step.lst_step_cuda_),
    BackendInfo(name="cpp", priority=1, devices=("cpu",), dtypes=(torch.float32, torch.float64),
                runtime_reason=lambda device: cpp_step.unavailable_reason(),
                load_kernel=lambda: cpp_step.lst_step_cpp_),
    BackendInfo(name="torch", priority=0, devices=None, dtypes=None, runtime_reason=lambda device: "",
                load_kernel=lambda: _twin_kernel, dense_rows=False),
)
BACKENDS = tuple(info.name for info in BACKEND_REGISTRY)


def backend_info(name: str) -> BackendInfo | None:
    """The record of backend ``name`` in :data:`BACKEND_REGISTRY`.

    Args:
        name: a backend's name, e.g. ``"cpp"``.

    Returns:
        Its :class:`BackendInfo`, or None if there is none of that name.
    """
    return next((info for info in BACKEND_REGISTRY if info.name == name), None)


def available_backends(device: torch.device | str, dtype: torch.dtype | None = None) -> list[str]:
    """Backends that can run ``lst_step`` on ``device`` (for ``dtype`` if given) here, the default first.

    Args:
        device: where the tensors are.
        dtype: their dtype (None: backends that run some dtype there).

    Returns:
        Names by priority (on GPUs triton, cuda, torch; on CPU cpp, torch, and last the Triton interpreter
        under ``TRITON_INTERPRET=1``: it is for tests, not speed).
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
    ranked = sorted(BACKEND_REGISTRY, key=lambda info: (device.type in info.interpreted_on, -info.priority))
    found = tuple(info.name for info in ranked if not reasons[info.name])
    others = "; ".join(f"{name}: {why}" for name, why in reasons.items() if why)
    _log.info("the fused step for %s on %s runs on %r (not available: %s)",
              "any dtype" if dtype is None else dtype, device, found[0], others or "none")
    return found


def backend_reasons(device: torch.device | str, dtype: torch.dtype | None = None) -> dict[str, str]:
    """Why each backend can or cannot run ``lst_step`` here.

    Args:
        device: where the tensors are.
        dtype: their dtype (None: any).

    Returns:
        For every backend, '' when it can run on ``device`` (for ``dtype`` if given) here, else why not (e.g.
        the CUDA module was built for a newer driver). The choice is also logged once per device and dtype
        (logger ``lst_fast``, level INFO) by :func:`available_backends`.
    """
    device = torch.device(device)
    return {info.name: info.unavailable_reason(device, dtype) for info in BACKEND_REGISTRY}


def default_backend(device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The backend ``lst_step`` runs on ``device`` (for ``dtype``) when none is asked for: the fastest here.

    Args:
        device: where the tensors are.
        dtype: their dtype (None: any).

    Returns:
        The backend's name, the first of :func:`available_backends`.
    """
    return _available(torch.device(device), dtype)[0]


def check_backend(backend: str | None, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The backend to run on ``device`` (for ``dtype``): ``backend`` if it can run there, the default if None.

    Args:
        backend: a name from :data:`BACKENDS`, or None for the fastest available.
        device: where the tensors are.
        dtype: their dtype (None: any).

    Returns:
        The backend's name.

    Raises:
        ValueError: ``backend`` is not a backend's name, or cannot run there (the message says why and which
            ones can).
    """
    device = torch.device(device)
    available = _available(device, dtype)
    if backend is None:
        return available[0]
    info = backend_info(backend) if isinstance(backend, str) else None
    if info is None:
        names = tuple(record.name for record in BACKEND_REGISTRY)
        raise ValueError(f"backend must be None or one of {names}, got {backend!r}")
    if backend not in available:
        what = f"{dtype} on {device}" if dtype is not None else f"on {device}"
        why = info.unavailable_reason(device, dtype)
        raise ValueError(f"backend {backend!r} cannot run {what} here ({why}); backend must be one of "
                         f"{list(available)} there, or None for the fastest")
    return backend


# ---------------------------------------------------------------------------------------------------------
# The step


def lst_step_torch_(x, grad, tgt, delta, out, *, step_size, adv_step_size) -> None:
    """Pure-PyTorch twin: writes the candidate into ``out`` and updates ``delta`` in place (if not None).

    ``out`` doubles as the scratch buffer for ``v`` and ``v_perp``, so the only allocations are two (B,)
    vectors for the per-row dot products (when all tensors share a memory format).
    ``step_size`` and ``adv_step_size`` are floats, or (B,) tensors of per-row values (the adaptive schedule's
    rows of different step sizes), rounded to x's dtype. Per-row correction sizes turn the correction on in
    every row (each row's delta is clamped to its own bound); a float turns it on when > 0.
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


def _correction_on(adv_step_size) -> bool:
    """Whether a checked correction size turns the correction on: per-row sizes always, a float when > 0."""
    return isinstance(adv_step_size, torch.Tensor) or adv_step_size > 0


def _run_step(x, grad, tgt, delta, out, step_size, adv_step_size, backend: str) -> None:
    """Run a checked step on ``backend`` (``delta`` is left alone when the correction is off)."""
    delta = delta if _correction_on(adv_step_size) else None
    _plan_step(x, grad, tgt, delta, out, backend)(x, grad, tgt, delta, out, step_size, adv_step_size)


def _plan_step(x, grad, tgt, delta, out, backend: str) -> Callable[..., None]:
    """Check the memory layout of a step whose arguments are checked; return
    ``launch(x, grad, tgt, delta, out, step_size, adv_step_size)`` that runs it, valid for any later call with
    tensors of the same addresses, shapes, strides and dtypes (``delta`` None: correction off)."""
    if x.numel() == 0:
        return _nothing_to_do
    tensors = {"x": x, "grad": grad, "tgt": tgt, "out": out} | ({} if delta is None else {"delta": delta})
    _check_no_overlap(tensors)
    info = backend_info(backend)
    if info.dense_rows:
        _check_common_row_order(tensors, backend)
    kernel, n_rows, row_len = info.load_kernel(), x.shape[0], x.numel() // x.shape[0]

    def launch(x, grad, tgt, delta, out, step_size, adv_step_size):
        if x.is_cuda and x.device.index != torch.cuda.current_device():
            with torch.cuda.device(x.device):
                kernel(x, grad, tgt, delta, out, n_rows, row_len, step_size, adv_step_size)
        else:
            kernel(x, grad, tgt, delta, out, n_rows, row_len, step_size, adv_step_size)

    return launch


def _nothing_to_do(*arguments) -> None:
    return None


# Steps planned before, by call signature. The fast loop calls lst_step_ with the same few buffers every
# iteration; looking its plan up here skips the argument and layout checks (~20 us of Python per call, as much
# as a whole step on a GPU at CIFAR size).
_planned: dict[tuple, Callable[..., None]] = {}
_MAX_PLANNED = 64


def _call_signature(tensors, step_size, adv_step_size, backend) -> tuple | None:
    """Everything the checks depend on, or None when an argument is not a tensor (the checks will say so).
    Per-row step sizes count by their metadata, not their address or values: the fast loop computes new ones
    every iteration."""
    try:
        described = tuple(
            None if t is None else (t.data_ptr(), t.shape, t.stride(), t.dtype, t.device, type(t)) for t in tensors
        )
    except AttributeError:
        return None
    return described + (_size_signature(step_size), _size_signature(adv_step_size), backend)


def _size_signature(size) -> tuple:
    if isinstance(size, torch.Tensor):
        return "per-row", size.shape, size.dtype, size.device, type(size)
    return size, type(size)


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


# Argument checks. Those of the tensors' metadata use torch._check_*, so that the fake implementations of the
# torch ops (FakeTensor, export, torch.compile) raise the same errors as eager calls; the memory layout
# (addresses, overlap) is checked when a step runs.


def _check_tensors(x, grad, tgt, delta, out) -> None:
    """x, grad, tgt, delta (None: no correction) and out (None: allocated) as one batch of rows."""
    named = {"x": x, "grad": grad, "tgt": tgt} | ({} if delta is None else {"delta": delta})
    named |= {} if out is None else {"out": out}
    # The messages' lambdas run at once, inside their iteration (torch._check calls them only on failure): B023.
    for name, t in named.items():
        torch._check_type(isinstance(t, torch.Tensor),
                          lambda: f"{name} must be a torch.Tensor, got {type(t).__name__}")  # noqa: B023
    torch._check_type(x.is_floating_point(), lambda: f"x must be a floating-point tensor, got {x.dtype}")
    torch._check_value(x.dim() >= 2, lambda: (
        f"x must have shape (B, ...) with at least one dimension per row, got {tuple(x.shape)}"))
    for name, t in named.items():
        torch._check_value(t.shape == x.shape, lambda: (
            f"{name} has shape {tuple(t.shape)}, expected the shape of x {tuple(x.shape)}"))  # noqa: B023
        torch._check_type(t.dtype == x.dtype, lambda: (
            f"{name} has dtype {t.dtype}, expected the dtype of x ({x.dtype})"))  # noqa: B023
        torch._check_value(t.device == x.device, lambda: (
            f"{name} is on {t.device}, expected the device of x ({x.device})"))  # noqa: B023


def _check_row_sizes(name: str, sizes: torch.Tensor, x: torch.Tensor, *, alternative: str) -> torch.Tensor:
    """Per-row step sizes: a floating-point (B,) tensor on x's device. Their values are not checked: that would
    synchronise a GPU at every step."""
    expected = f"{name} must be {alternative} or a ({x.shape[0]},) tensor of per-row values"
    torch._check_type(sizes.is_floating_point(), lambda: f"{expected}, got dtype {sizes.dtype}")
    torch._check_value(sizes.shape == x.shape[:1], lambda: f"{expected}, got shape {tuple(sizes.shape)}")
    torch._check_value(sizes.device == x.device,
                       lambda: f"{name} is on {sizes.device}, expected the device of x ({x.device})")
    return sizes


def _check_size(name: str, size, x: torch.Tensor, *, strict: bool):
    """A step size: a real number (> 0 if ``strict``, else >= 0) or per-row values."""
    if isinstance(size, torch.Tensor):
        return _check_row_sizes(name, size, x, alternative="a float")
    return check_number(name, size, minimum=0, strict=strict)


def _check_step(x, grad, tgt, delta, out, step_size, adv_step_size, backend) -> tuple:
    """Argument checks shared by both forms; returns the checked step sizes and the resolved backend."""
    _check_tensors(x, grad, tgt, delta, out)
    step_size = _check_size("step_size", step_size, x, strict=True)
    adv_step_size = _check_size("adv_step_size", adv_step_size, x, strict=False)
    return step_size, adv_step_size, check_backend(backend, x.device, x.dtype)


def lst_step_(
    x: torch.Tensor,
    grad: torch.Tensor,
    tgt: torch.Tensor,
    delta: torch.Tensor | None,
    out: torch.Tensor,
    *,
    step_size: float | torch.Tensor,
    adv_step_size: float | torch.Tensor,
    backend: str | None = None,
) -> None:
    """In-place LST step: ``out = clamp(x + step_size * v_perp - delta_new, 0, 1)``, ``delta`` updated.

    Per-row sizes (the adaptive schedule) run on every backend, e.g.
    ``lst_step_(x, grad, tgt, delta, out, step_size=scale * eta, adv_step_size=scale * a, backend=backend)``
    with a float64 ``scale`` of shape (B,) on x's device: one launch, no host synchronisation. The kernels read
    per-row sizes as float64 (another floating dtype is converted, a copy of B values) and round them as they
    round a float; the sizes' values are not checked (that would synchronise a GPU at every step).

    Args:
        x: the iterates, (B, ...) floating point.
        grad: the gradient at x, like x.
        tgt: the target images, like x.
        delta: the adversarial correction, like x, updated in place; None: no correction.
        out: where the candidate goes, like x; it must not overlap the inputs.
        step_size: a float > 0 for every row, or a (B,) floating-point tensor of per-row sizes on x's device.
        adv_step_size: a float >= 0 (0: the correction is off and ``delta`` untouched), or a (B,) tensor of
            per-row correction sizes (the correction is on in every row, each row clamped to its own size).
        backend: one of :data:`BACKENDS` that runs here (:func:`available_backends`); None: the fastest.

    Raises:
        TypeError, ValueError: an argument of the wrong type, shape, dtype, device or layout; the message
            names it (e.g. ``step_size must be a float or a (B,) tensor of per-row values``).
    """
    if torch.compiler.is_compiling():  # the op's fake implementation checks the tensors while it is traced
        step, adv, steps, advs = _op_sizes(step_size, adv_step_size)
        delta = delta if _correction_on(adv_step_size) else None
        torch.ops.lst_fast.lst_step_(x, grad, tgt, delta, out, step, adv, backend, steps, advs)
        return
    signature = _call_signature((x, grad, tgt, delta, out), step_size, adv_step_size, backend)
    try:
        launch = _planned.get(signature)
    except TypeError:  # an unhashable setting: the checks below reject it
        signature, launch = None, None
    if launch is None:
        step_size, adv_step_size, backend = _check_step(x, grad, tgt, delta, out, step_size, adv_step_size, backend)
        launch = _plan_step(x, grad, tgt, delta if _correction_on(adv_step_size) else None, out, backend)
        if signature is not None:
            if len(_planned) >= _MAX_PLANNED:
                _planned.clear()
            _planned[signature] = launch
    launch(x, grad, tgt, delta if _correction_on(adv_step_size) else None, out, step_size, adv_step_size)


def lst_step(
    x: torch.Tensor,
    grad: torch.Tensor,
    tgt: torch.Tensor,
    delta: torch.Tensor | None,
    *,
    step_size: float | torch.Tensor,
    adv_step_size: float | torch.Tensor,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Functional LST step: leaves the inputs untouched.

    ``delta=None`` means a zero correction. The arguments are those of :func:`lst_step_` (per-row sizes too),
    less ``out``.

    Returns:
        ``(candidate, new_delta)``, new tensors like ``x``. With the correction off (``adv_step_size == 0``)
        ``new_delta`` is a copy of ``delta`` (zeros if None).

    Raises:
        TypeError, ValueError: an argument of the wrong type, shape, dtype, device or layout, or a backend that
            cannot run here; the message names it (as :func:`lst_step_`).
    """
    if torch.compiler.is_compiling():  # the op's fake implementation checks the tensors while it is traced
        step, adv, steps, advs = _op_sizes(step_size, adv_step_size)
        return torch.ops.lst_fast.lst_step(x, grad, tgt, delta, step, adv, backend, steps, advs)
    step_size, adv_step_size, backend = _check_step(x, grad, tgt, delta, None, step_size, adv_step_size, backend)
    return _functional_step(x, grad, tgt, delta, step_size, adv_step_size, backend)


def _functional_step(x, grad, tgt, delta, step_size, adv_step_size, backend):
    new_delta = torch.zeros_like(x) if delta is None else delta.clone()
    out = torch.empty_like(x)
    _run_step(x, grad, tgt, new_delta, out, step_size, adv_step_size, backend)
    return out, new_delta


# ---------------------------------------------------------------------------------------------------------
# torch.library registration: the same code as opaque ops with fake implementations for tracing, which check
# the arguments as the eager calls do (so that torch.compile, export and direct calls of torch.ops.lst_fast.*
# see the same errors). A float cannot be a tensor in an op's schema, so per-row sizes are separate optional
# arguments that replace the floats (which must then be 0).


def _op_sizes(step_size, adv_step_size) -> tuple:
    """The ops' ``(step_size, adv_step_size, row_step_sizes, row_adv_step_sizes)`` for the sizes of a call of
    lst_step_ / lst_step: floats are checked here, per-row tensors by the op."""
    (step, steps), (adv, advs) = _op_size("step_size", step_size, True), _op_size("adv_step_size", adv_step_size, False)
    return step, adv, steps, advs


def _op_size(name: str, size, strict: bool) -> tuple:
    if isinstance(size, torch.Tensor):
        return 0.0, size
    return check_number(name, size, minimum=0, strict=strict), None


def _check_op(x, grad, tgt, delta, out, step_size, adv_step_size, backend, row_step_sizes, row_adv_step_sizes):
    """The checks of :func:`_check_step` on the ops' arguments; returns the sizes and the backend."""
    _check_tensors(x, grad, tgt, delta, out)
    step = _check_op_size("step_size", step_size, "row_step_sizes", row_step_sizes, x, strict=True)
    adv = _check_op_size("adv_step_size", adv_step_size, "row_adv_step_sizes", row_adv_step_sizes, x, strict=False)
    return step, adv, check_backend(backend, x.device, x.dtype)


def _check_op_size(name: str, size, per_row_name: str, per_row, x: torch.Tensor, *, strict: bool):
    if per_row is None:
        return check_number(name, size, minimum=0, strict=strict)
    torch._check_value(size == 0, lambda: (
        f"{name} must be 0 when {per_row_name} is given (the per-row values replace it), got {size!r}"))
    return _check_row_sizes(per_row_name, per_row, x, alternative="None")


@torch.library.custom_op("lst_fast::lst_step_", mutates_args=("delta", "out"))
def _lst_step_inplace_op(
    x: torch.Tensor,
    grad: torch.Tensor,
    tgt: torch.Tensor,
    delta: Optional[torch.Tensor],
    out: torch.Tensor,
    step_size: float,
    adv_step_size: float,
    backend: Optional[str],
    row_step_sizes: Optional[torch.Tensor] = None,
    row_adv_step_sizes: Optional[torch.Tensor] = None,
) -> None:
    step, adv, backend = _check_op(x, grad, tgt, delta, out, step_size, adv_step_size, backend, row_step_sizes,
                                   row_adv_step_sizes)
    _run_step(x, grad, tgt, delta, out, step, adv, backend)


@_lst_step_inplace_op.register_fake
def _(x, grad, tgt, delta, out, step_size, adv_step_size, backend, row_step_sizes=None,
      row_adv_step_sizes=None) -> None:
    _check_op(x, grad, tgt, delta, out, step_size, adv_step_size, backend, row_step_sizes, row_adv_step_sizes)


@torch.library.custom_op("lst_fast::lst_step", mutates_args=())
def _lst_step_op(
    x: torch.Tensor,
    grad: torch.Tensor,
    tgt: torch.Tensor,
    delta: Optional[torch.Tensor],
    step_size: float,
    adv_step_size: float,
    backend: Optional[str],
    row_step_sizes: Optional[torch.Tensor] = None,
    row_adv_step_sizes: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    step, adv, backend = _check_op(x, grad, tgt, delta, None, step_size, adv_step_size, backend, row_step_sizes,
                                   row_adv_step_sizes)
    return _functional_step(x, grad, tgt, delta, step, adv, backend)


@_lst_step_op.register_fake
def _(x, grad, tgt, delta, step_size, adv_step_size, backend, row_step_sizes=None, row_adv_step_sizes=None):
    _check_op(x, grad, tgt, delta, None, step_size, adv_step_size, backend, row_step_sizes, row_adv_step_sizes)
    return torch.empty_like(x), torch.empty_like(x if delta is None else delta)
