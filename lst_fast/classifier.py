"""Calling the caller's classifier: the guard that runs it in eval mode with frozen parameters, the forward
with its normaliser, checked logits, probabilities and the loss whose input gradient LST follows.

Used by the loops, the model runner (lst_fast.model_runner) and the sweep's image selection.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def model_guard(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the run; the caller's mode and requires_grad flags come back after.

    Frozen parameters mean that no ``.grad`` is ever written to the model.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    was_training = model.training
    if was_training:
        warnings.warn(
            "model is in train mode; lst_fast runs it in eval mode (batch-norm running statistics, no dropout) "
            "and restores train mode afterwards",
            UserWarning,
            stacklevel=4,
        )
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def check_normalizer(normalizer):
    """``normalizer`` as given if it is None or callable.

    Raises:
        TypeError: it is neither.
    """
    if normalizer is not None and not callable(normalizer):
        raise TypeError(f"normalizer must be callable (images in [0, 1] -> model input), got {normalizer!r}")
    return normalizer


def make_forward(model: torch.nn.Module, normalizer) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` applied after ``normalizer`` (None: the model alone); raises TypeError for another normalizer."""
    if check_normalizer(normalizer) is None:
        return model
    return lambda x: model(normalizer(x))


def checked_logits(forward, x: torch.Tensor) -> torch.Tensor:
    """Logits of a batch, checked to be (B, K) as every classifier must return."""
    logits = forward(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return logits of shape (B, num_classes) = ({x.shape[0]}, K), got {shape}")
    return logits


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax of detached logits, in at least float32 (autocast logits may be bf16/fp16)."""
    logits = logits.detach()
    return logits.softmax(1, dtype=torch.promote_types(logits.dtype, torch.float32))


def class_conf(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``labels`` per row."""
    return F.softmax(logits, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)


def input_grad_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch, so that each row's input gradient is its own (algorithm §2.1)."""
    return F.cross_entropy(logits, labels, reduction="sum")
