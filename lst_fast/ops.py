"""The fused LST step (spec section 2, steps 2-5) and its backends.

``lst_step_`` is what the fast loop calls every iteration: it writes the candidate into a buffer that the
caller owns and updates the correction buffer in place, so no memory is allocated per iteration.
``lst_step`` is the functional form. ``lst_step_torch_`` is the pure-PyTorch twin that every kernel is
tested against.
"""

from __future__ import annotations

import torch

from lst_fast._extension import cpu_kernels

BACKENDS = ("cpp", "torch")
_KERNEL_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def rows(t: torch.Tensor) -> torch.Tensor:
    """View a (B, C, H, W) tensor as (B, D) rows without copying, for contiguous or channels_last memory."""
    if t.is_contiguous():
        return t.view(t.shape[0], -1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).view(t.shape[0], -1)
    raise ValueError(
        f"expected a contiguous or channels_last tensor, got shape {tuple(t.shape)} with strides {t.stride()}"
    )


def available_backends(device: torch.device | str, dtype: torch.dtype | None = None) -> list[str]:
    """Backends that can run ``lst_step`` on ``device`` (for ``dtype`` if given) here, fastest first."""
    device = torch.device(device)
    found = []
    if device.type == "cpu" and (dtype is None or dtype in _KERNEL_DTYPES) and cpu_kernels() is not None:
        found.append("cpp")
    found.append("torch")
    return found


def default_backend(device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    return available_backends(device, dtype)[0]


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row dot products <a[i], b[i]> of two (B, ...) tensors, without a temporary when layouts match."""
    if a.stride() == b.stride():
        try:
            return torch.linalg.vecdot(rows(a), rows(b))
        except ValueError:
            pass  # rows are not dense: take the general path below
    return (a * b).flatten(1).sum(1)


def lst_step_torch_(x, grad, tgt, delta, out, *, step_size: float, adv_step_size: float) -> None:
    """Pure-PyTorch twin: writes the candidate into ``out`` and updates ``delta`` in place (if not None).

    ``out`` doubles as the scratch buffer for ``v`` and ``v_perp``, so the only allocations are two (B,)
    vectors for the per-row dot products (when all tensors share a memory format).
    """
    v = torch.sub(tgt, x, out=out)  # v = tgt - x
    grad_v = row_dot(grad, v)
    grad_grad = row_dot(grad, grad)
    # v_perp = v - grad * <grad, v> / <grad, grad>; a zero gradient leaves v unchanged (spec deviation).
    nonzero = grad_grad > 0
    coef = torch.where(nonzero, grad_v / torch.where(nonzero, grad_grad, 1), 0)
    v.addcmul_(grad, coef.neg_().view(-1, *([1] * (x.dim() - 1))))
    out.mul_(step_size).add_(x)  # x + step_size * v_perp
    if delta is not None and adv_step_size > 0:
        delta.add_(grad, alpha=adv_step_size / 2).clamp_(-adv_step_size, adv_step_size)
        out.sub_(delta)
    out.clamp_(0, 1)


def _check_step_args(x, grad, tgt, delta, out) -> None:
    named = {"x": x, "grad": grad, "tgt": tgt, "out": out}
    if delta is not None:
        named["delta"] = delta
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != x.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected the shape of x {tuple(x.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, expected the dtype of x ({x.dtype})")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, expected the device of x ({x.device})")
        if t.dim() < 1 or t.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty batch, got shape {tuple(t.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")


def _same_layout(tensors) -> bool:
    strides = {t.stride() for t in tensors}
    return len(strides) == 1


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

    ``delta=None`` or ``adv_step_size == 0`` means the adversarial correction is off.
    """
    _check_step_args(x, grad, tgt, delta, out)
    if adv_step_size < 0 or step_size <= 0:
        raise ValueError(f"need step_size > 0 and adv_step_size >= 0, got {step_size} and {adv_step_size}")
    if delta is not None and adv_step_size == 0:
        delta = None
    backend = backend or default_backend(x.device, x.dtype)
    if backend not in available_backends(x.device, x.dtype):
        raise ValueError(
            f"backend {backend!r} cannot run {x.dtype} on {x.device} here; "
            f"available: {available_backends(x.device, x.dtype)}"
        )
    if backend == "cpp":
        _lst_step_cpp(x, grad, tgt, delta, out, step_size, adv_step_size)
    else:
        lst_step_torch_(x, grad, tgt, delta, out, step_size=step_size, adv_step_size=adv_step_size)


def _lst_step_cpp(x, grad, tgt, delta, out, step_size, adv_step_size) -> None:
    tensors = [x, grad, tgt, out] + ([delta] if delta is not None else [])
    for t in tensors:
        rows(t)  # raises for layouts whose rows are not dense
    if not _same_layout(tensors):
        raise ValueError("backend 'cpp' needs x, grad, tgt, delta and out in the same memory format")
    cpu_kernels().lst_step(
        _KERNEL_DTYPES[x.dtype],
        x.data_ptr(), x.stride(0), grad.data_ptr(), grad.stride(0), tgt.data_ptr(), tgt.stride(0),
        0 if delta is None else delta.data_ptr(), 0 if delta is None else delta.stride(0),
        out.data_ptr(), out.stride(0), x.shape[0], x[0].numel(), float(step_size), float(adv_step_size),
    )


def lst_step(x, grad, tgt, delta, *, step_size: float, adv_step_size: float, backend: str | None = None):
    """Functional LST step: returns ``(candidate, new_delta)`` and leaves the inputs untouched."""
    new_delta = torch.zeros_like(x) if delta is None else delta.clone()
    out = torch.empty_like(x)
    lst_step_(x, grad, tgt, new_delta, out, step_size=step_size, adv_step_size=adv_step_size, backend=backend)
    return out, new_delta
