"""A batch as rows: which element orders a (B, ...) tensor's rows are dense in, (B, D) views of them, per-row
dot products, the per-row orthogonal component built on them, and a 4-d tensor's memory format. Helpers on
sizes and strides, used every step by the fused step (:mod:`lst_fast.ops`), the loops and the geometry."""

from __future__ import annotations

import math

import torch

# Element orders of a row, as the dims of a (B, ...) tensor from the innermost (fastest) outwards.
ROW_ORDERS = ("contiguous", "channels_last")


def row_orders(t: torch.Tensor) -> set[str]:
    """Element orders (of ROW_ORDERS) in which every row ``t[i]`` is stored densely; dim 0 may have any
    stride (e.g. every other row of a batch). Pure Python on sizes and strides: this runs every step."""
    shape, stride, dim = t.shape, t.stride(), t.dim()
    found = set()
    if _dense(shape, stride, range(dim - 1, 0, -1)):
        found.add("contiguous")
    if dim == 4 and _dense(shape, stride, (1, 3, 2)):
        found.add("channels_last")
    return found


def _dense(shape, stride, dims_inner_first) -> bool:
    expected = 1
    for d in dims_inner_first:
        if shape[d] != 1 and stride[d] != expected:
            return False
        expected *= shape[d]
    return True


def rows(t: torch.Tensor, order: str | None = None) -> torch.Tensor:
    """View a (B, ...) tensor as (B, D) rows without copying, with elements in ``order`` (default: the order
    the tensor is dense in, contiguous first)."""
    orders = row_orders(t)
    if order is None:
        order = "contiguous" if "contiguous" in orders else next(iter(orders), None)
    if order not in orders:
        raise ValueError(
            "expected a tensor whose rows are dense in contiguous or channels_last order, got shape "
            f"{tuple(t.shape)} with strides {t.stride()}"
        )
    if order == "channels_last":
        t = t.permute(0, 2, 3, 1)
    return t.as_strided((t.shape[0], math.prod(t.shape[1:])), (t.stride(0), 1))


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row dot products <a[i], b[i]> of two (B, ...) tensors, without a temporary when layouts match."""
    common = row_orders(a) & row_orders(b)
    if common:
        order = "contiguous" if "contiguous" in common else "channels_last"
        return torch.linalg.vecdot(rows(a, order), rows(b, order))
    return (a * b).flatten(1).sum(1)


def orthogonal_component_(v: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Algorithm §2.3 in place: ``v - grad <grad, v> / <grad, grad>`` per row, written into ``v``; rows whose gradient
    is exactly zero keep ``v`` (the documented deviation from the original's NaN). The PyTorch form of the
    projection in the fused step (its twin, :func:`lst_fast.ops.lst_step_torch_`) and of the geometry's
    directions; the only temporaries are (B,) vectors.

    Args:
        v: (B, ...) directions, overwritten.
        grad: (B, ...) gradients, like ``v``.

    Returns:
        ``v``.
    """
    grad_v = row_dot(grad, v)
    grad_grad = row_dot(grad, grad)
    nonzero = grad_grad > 0
    coef = torch.where(nonzero, grad_v / torch.where(nonzero, grad_grad, 1), 0)
    return v.addcmul_(grad, coef.neg_().view(-1, *([1] * (v.dim() - 1))))


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-d tensor stored that way (and not also contiguous), else contiguous_format."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
