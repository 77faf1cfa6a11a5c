"""The model the fast paths actually run: the caller's model in the fastest memory format, with eval-mode
batch norms folded into their convolutions (lst_fast.fusion), as a private copy.

The copy is checked against the original on real inputs before use and cached per model until the
model's weights change, so a sweep that calls ``traverse_batch`` per batch builds it once. The caller's
model is never modified.
"""

from __future__ import annotations

import copy
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from lst_fast.fusion import fold_batchnorm
from lst_fast.classifier import input_grad_loss, make_forward
from lst_fast.validation import check_number

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def resolve_memory_format(memory_format: str, model: nn.Module) -> torch.memory_format:
    """``"auto"`` picks channels_last for convolutional networks (faster on CPU and on GPUs for the
    offline EfficientNet and ResNets) and contiguous for models with at most one convolution (ViTs: only
    the patch embedding)."""
    if memory_format == "auto":
        return torch.channels_last if is_convolutional(model) else torch.contiguous_format
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be 'auto' or one of {list(MEMORY_FORMATS)}, got {memory_format!r}")
    return MEMORY_FORMATS[memory_format]


def is_convolutional(model: nn.Module) -> bool:
    """A network with two or more 2-d convolutions (a ViT has one: its patch embedding)."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) >= 2


class TunedModelCache:
    """Remembers the tuned copy of each model until its weights change (tracked by tensor versions)."""

    def __init__(self):
        self._entries: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()

    @staticmethod
    def _fingerprint(model: nn.Module, key) -> tuple:
        tensors = list(model.parameters()) + list(model.buffers())
        return (key,) + tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def get(self, model: nn.Module, key):
        entry = self._entries.get(model)
        if entry is not None and entry[0] == self._fingerprint(model, key):
            return entry[1]
        return None

    def put(self, model: nn.Module, key, value) -> None:
        self._entries[model] = (self._fingerprint(model, key), value)


_cache = TunedModelCache()


def clear_cache() -> None:
    """Forget every tuned model copy (frees their memory; the next call rebuilds them)."""
    global _cache
    _cache = TunedModelCache()


def tuned_model(
    model: nn.Module,
    examples: torch.Tensor,
    *,
    normalizer=None,
    layout: torch.memory_format = torch.contiguous_format,
    fold: bool = True,
) -> nn.Module:
    """The module to run in place of ``model`` (an eval-mode model whose parameters need no gradient).

    ``examples`` are a few images in [0, 1] of the shape the model will see; they locate the batch norms
    and check the copy. If the copy disagrees with the original beyond float rounding (e.g. a convolution
    output that is used twice), the original model is returned with a warning. Inputs must be passed in
    ``layout`` for the speed-up to apply.
    """
    if layout == torch.contiguous_format and not fold:
        return model
    key = (layout, fold, examples.dtype, examples.device)
    tuned = _cache.get(model, key)
    if tuned is None:
        tuned = _tuned_copy(model, examples, normalizer, layout, fold)
        _cache.put(model, key, tuned)
    return tuned


def _tuned_copy(model, examples, normalizer, layout, fold: bool) -> nn.Module:
    example = examples[:1] if normalizer is None else normalizer(examples[:1])
    tuned = fold_batchnorm(model, example)[0] if fold else copy.deepcopy(model)
    tuned = tuned.to(memory_format=layout).eval().requires_grad_(False)
    with torch.no_grad():
        expected = make_forward(model, normalizer)(examples).softmax(1)
        got = make_forward(tuned, normalizer)(examples.contiguous(memory_format=layout)).softmax(1)
    tolerance = 1e3 * torch.finfo(examples.dtype).eps
    if (got - expected).abs().max().item() > tolerance:
        warnings.warn(
            "lst_fast: the batch-norm-folded copy of this model disagrees with the original "
            f"(max probability difference > {tolerance:.1e}); running the original model instead",
            RuntimeWarning,
            stacklevel=4,
        )
        return model
    return tuned


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(precision: str, device: torch.device, *, cache: bool = True):
    """An autocast context for ``precision`` on ``device``, or None for full precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return None
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"precision={precision!r} needs autocast, which is not available on {device.type}")
    return lambda: torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def with_autocast(forward, autocast):
    """``forward`` run under ``autocast()`` (unchanged if autocast is None)."""
    if autocast is None:
        return forward

    def autocast_forward(x):
        with autocast():
            return forward(x)

    return autocast_forward


def input_grad(logits: torch.Tensor, labels: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """The gradient of ``input_grad_loss(logits, labels)`` with respect to ``leaf``.

    float16 logits (``precision="fp16"``) mean a float16 backward through the model, where the loss gradient
    of a confident row (softmax - one-hot, entries ~1 - p) underflows to zero, leaving ``v_perp = v`` and the
    correction frozen. So each row's loss is scaled by a power of two that brings its largest logit gradient
    to about 1 (computed on the device, no host synchronisation: CUDA graphs capture it) and the row's input
    gradient is unscaled, exactly, in the input's precision.
    """
    if logits.dtype != torch.float16:
        (grad,) = torch.autograd.grad(input_grad_loss(logits, labels), leaf)
        return grad
    scale = _row_loss_scale(logits.detach(), labels)
    loss = (F.cross_entropy(logits.float(), labels, reduction="none") * scale).sum()  # scaled before float16
    (grad,) = torch.autograd.grad(loss, leaf)
    return grad / scale.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1)))


def _row_loss_scale(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """2^k per row with 2^k * max|softmax - one-hot| in (1/2, 1]. That maximum is 1 - p_label, computed as the
    sum of the other probabilities (no cancellation when p_label is close to 1)."""
    others = logits.float().softmax(1).scatter(1, labels.unsqueeze(1), 0.0).sum(1)
    others = others.clamp(min=2.0**-100)  # every other probability 0: no gradient to save
    return torch.exp2(torch.floor(-torch.log2(others)))


# How many input values one model call should take on a CPU. Measured on 2 cores on 2026-11-29 at commit
# 23c5b39 with a one-off script (forward+backward, ms per 224x224 image in calls of 2/4/8/16 images): EfficientNet-Lite0 30/28/34/33, resnet50 121/104/149/158,
# convnext_tiny 125/120/126/153, deit_small 143/120/134/120, resnet18 51/47/44/42, vit_tiny 53/49/45/43.
# For the convolutional models four images per call is the best or close to it (larger
# calls' activations fall out of the caches); forward-only calls behave alike (EfficientNet-Lite0: 11.1 ms per
# image at 4, 18.2 at 32). The transformers gain nothing from it (in the LST loop at batch 8, vit_tiny ran
# 12% slower in calls of 4), nor do accelerators: they get the whole batch in one call.
CPU_VALUES_PER_CALL = 4 * 3 * 224 * 224


def default_rows_per_call(x: torch.Tensor, convolutional: bool) -> int | None:
    """Rows of a batch like ``x`` per model call: about four 224x224 images' worth for a convolutional model
    (:func:`is_convolutional`) on CPU, all of them (None) otherwise."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise TypeError(f"x must be a batch tensor, got {type(x).__name__}")
    if x.device.type != "cpu" or not convolutional:
        return None
    return max(1, CPU_VALUES_PER_CALL // max(1, x.shape[1:].numel()))


def row_slices(rows: int, rows_per_call: int | None) -> list[slice]:
    """The fewest model calls of at most ``rows_per_call`` rows (None: one call), as even as possible:
    6 rows at 4 per call run as 3 + 3, not 4 + 2."""
    rows = check_number("rows", rows, minimum=0, integer=True)
    check_number("rows_per_call", rows_per_call, minimum=1, integer=True, allow_none=True)
    calls = 1 if rows_per_call is None else max(1, -(-rows // rows_per_call))
    bounds = [rows * k // calls for k in range(calls + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


def resolve_rows_per_call(rows_per_call, x: torch.Tensor, model: nn.Module) -> int | None:
    """``"auto"`` -> :func:`default_rows_per_call` for ``model``; None (one call) and positive ints as given."""
    if rows_per_call == "auto":
        return default_rows_per_call(x, is_convolutional(model))
    if rows_per_call is None:
        return None
    if isinstance(rows_per_call, bool) or not isinstance(rows_per_call, int) or rows_per_call < 1:
        raise ValueError(f"rows_per_call must be 'auto', None or a positive int, got {rows_per_call!r}")
    return rows_per_call
