"""Argument checks shared by the whole package: each returns the checked value or raises a TypeError /
ValueError that names the argument and says what was expected.

This module imports nothing from lst_fast, so every layer (kernels, loops, geometry, sweeps) may use it. It imports
torch only in the checks of tensors, so that the command line's parser (whose option checks are these) starts
without it.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

VALUE_TOLERANCE = 1e-6  # images may leave [0, 1] by this much (rounding in preprocessing) and are clamped


def check_number(name: str, value, *, minimum=None, strict=False, integer=False, allow_none=False):
    """A real number (an int if ``integer``; None passes if ``allow_none``), finite, and ``>= minimum`` (or
    ``> minimum`` if ``strict``); returned as float (int)."""
    if value is None and allow_none:
        return None
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an int" if integer else "a real number"
        raise TypeError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")
    if not integer and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return int(value) if integer else float(value)


def check_radii(name: str, distances) -> tuple[float, ...]:
    """A non-empty sequence of radii > 0 (path widths)."""
    if isinstance(distances, (str, bytes)) or not isinstance(distances, Sequence):
        raise TypeError(f"{name} must be a sequence of radii > 0, got {distances!r}")
    if not distances:
        raise ValueError(f"{name} must name at least one radius")
    return tuple(check_number(f"{name}[{i}]", r, minimum=0, strict=True) for i, r in enumerate(distances))


def check_images(name: str, images, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """A (B, C, H, W) floating-point batch of finite values in [0, 1] (up to a rounding tolerance)."""
    import torch

    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor with values in [0, 1], got dtype {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(images.shape)})")
    if like is not None:
        if images.shape != like.shape:
            raise ValueError(f"{name} has shape {tuple(images.shape)}, expected {tuple(like.shape)} like srcs")
        if images.dtype != like.dtype or images.device != like.device:
            raise ValueError(
                f"{name} is {images.dtype} on {images.device}, expected {like.dtype} on {like.device} like srcs"
            )
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = images.min().item(), images.max().item()
    if lo < -VALUE_TOLERANCE or hi > 1 + VALUE_TOLERANCE:
        raise ValueError(f"{name} must have values in [0, 1], got min {lo:.4g} and max {hi:.4g}")
    return images


def check_labels(name: str, labels, batch: int, device: torch.device) -> torch.Tensor | None:
    """None, or a (B,) integer tensor / sequence of ints (range checked later by :func:`check_class_range`)."""
    if labels is None:
        return None
    import torch

    if not isinstance(labels, torch.Tensor):
        if not isinstance(labels, Sequence) or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in labels
        ):
            raise TypeError(f"{name} must be a (B,) integer tensor or a sequence of ints, got {labels!r}")
        labels = torch.tensor(list(labels), dtype=torch.long)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match srcs, got {tuple(labels.shape)}")
    return labels.to(device=device, dtype=torch.long)


def check_class_range(name: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices in [0, num_classes) for a model with ``num_classes`` logits."""
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must be class indices in [0, {num_classes}) for this model, "
            f"got values in [{labels.min().item()}, {labels.max().item()}]"
        )
    return labels


def check_generator(generator, device: torch.device) -> torch.Generator | None:
    """None, or a torch.Generator on the device type of the tensors it draws for."""
    if generator is None:
        return None
    import torch

    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if torch.device(generator.device).type != device.type:
        raise ValueError(f"generator is on {generator.device}, expected a generator on {device.type} like srcs")
    return generator


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value
