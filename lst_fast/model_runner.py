"""The model as the fast paths run it: a :class:`ModelRunner`, made from the caller's model and one
:class:`RunnerOptions` (normaliser, memory format, batch-norm folding, precision, rows per call).

- The tuned private copy: the caller's model in the fastest memory format, with eval-mode batch norms folded
  into their convolutions (:mod:`lst_fast.fusion`). It is checked against the original on real inputs before
  use and cached per model until the model's weights change, so a sweep that calls ``traverse_batch`` per batch
  builds it once. The caller's model is never modified.
- Precision: bf16/fp16 run the model under autocast; fp16 scales each row's loss so that its input gradient
  does not underflow (:func:`input_grad`).
- Model calls: rows are split into calls of ``rows_per_call`` (about four 224x224 images for convolutional
  networks on CPU, where larger calls are slower per image).
- :meth:`ModelRunner.evaluate`: softmax and input gradient of the summed cross-entropy, the fast loop's one
  forward+backward per step; :meth:`ModelRunner.confidences`: ``p(points)[labels]`` for a stream of points,
  forward only (the geometry, algorithm §4-§5), packed into calls regardless of which block they belong to
  (:class:`Confidences`), each point built only when its call runs.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lst_fast.choices import PRECISION_NAMES
from lst_fast.classifier import (
    check_normalizer,
    checked_logits,
    input_grad_loss,
    make_forward,
    model_guard,
    probabilities,
)
from lst_fast.fusion import fold_batchnorm
from lst_fast.rows import memory_format_of
from lst_fast.validation import check_bool, check_class_range, check_number

# ---------------------------------------------------------------------------------------------------------
# Memory format

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def check_memory_format(memory_format: str) -> str:
    """``memory_format`` as given if it is ``"auto"`` or a key of ``MEMORY_FORMATS``.

    Raises:
        ValueError: it is not.
    """
    if memory_format != "auto" and memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be 'auto' or one of {list(MEMORY_FORMATS)}, got {memory_format!r}")
    return memory_format


def resolve_memory_format(memory_format: str, model: nn.Module) -> torch.memory_format:
    """``"auto"`` picks channels_last for convolutional networks (faster on CPU and on GPUs for the
    offline EfficientNet and ResNets) and contiguous for models with at most one convolution (ViTs: only
    the patch embedding)."""
    if check_memory_format(memory_format) == "auto":
        return torch.channels_last if is_convolutional(model) else torch.contiguous_format
    return MEMORY_FORMATS[memory_format]


def is_convolutional(model: nn.Module) -> bool:
    """A network with two or more 2-d convolutions (a ViT has one: its patch embedding)."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) >= 2


# ---------------------------------------------------------------------------------------------------------
# The tuned copy, cached


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


# ---------------------------------------------------------------------------------------------------------
# Precision

PRECISIONS = dict(zip(PRECISION_NAMES, (None, torch.bfloat16, torch.float16)))


def check_precision(precision: str) -> str:
    """``precision`` as given if it is a key of ``PRECISIONS``.

    Raises:
        ValueError: it is not.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def autocast_context(precision: str, device: torch.device, *, cache: bool = True):
    """An autocast context for ``precision`` on ``device``, or None for full precision."""
    dtype = PRECISIONS[check_precision(precision)]
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


# ---------------------------------------------------------------------------------------------------------
# Rows per model call

# How many input values one model call should take on a CPU. Measured on 2 cores on 2026-11-29 at commit
# 23c5b39 with a one-off script (forward+backward, ms per 224x224 image in calls of 2/4/8/16 images):
# EfficientNet-Lite0 30/28/34/33, resnet50 121/104/149/158, convnext_tiny 125/120/126/153,
# deit_small 143/120/134/120, resnet18 51/47/44/42, vit_tiny 53/49/45/43.
# For the convolutional models four images per call is the best or close to it (larger
# calls' activations fall out of the caches); forward-only calls behave alike (EfficientNet-Lite0: 11.1 ms per
# image at 4, 18.2 at 32). The transformers gain nothing from it (in the LST loop at batch 8, vit_tiny ran
# 12% slower in calls of 4), nor do accelerators: they get the whole batch in one call.
CPU_VALUES_PER_CALL = 4 * 3 * 224 * 224

# Points per forward-only call where rows per call is None (a stream of points has no "whole batch").
DEFAULT_BATCH_SIZE = 128


def default_rows_per_call(x: torch.Tensor, convolutional: bool) -> int | None:
    """Rows of a batch like ``x`` per model call: about four 224x224 images' worth for a convolutional model
    (:func:`is_convolutional`) on CPU, all of them (None) otherwise."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise TypeError(f"x must be a batch tensor, got {type(x).__name__}")
    if x.device.type != "cpu" or not convolutional:
        return None
    return max(1, CPU_VALUES_PER_CALL // max(1, x.shape[1:].numel()))


def default_batch_size(points: torch.Tensor, convolutional: bool) -> int:
    """Points like ``points`` per forward-only call by default: for a convolutional model on CPU about four
    224x224 images' worth (:func:`default_rows_per_call`), else ``DEFAULT_BATCH_SIZE``."""
    return default_rows_per_call(points, convolutional) or DEFAULT_BATCH_SIZE


def row_slices(rows: int, rows_per_call: int | None) -> list[slice]:
    """The fewest model calls of at most ``rows_per_call`` rows (None: one call), as even as possible:
    6 rows at 4 per call run as 3 + 3, not 4 + 2."""
    rows = check_number("rows", rows, minimum=0, integer=True)
    check_number("rows_per_call", rows_per_call, minimum=1, integer=True, allow_none=True)
    calls = 1 if rows_per_call is None else max(1, -(-rows // rows_per_call))
    bounds = [rows * k // calls for k in range(calls + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


def check_rows_per_call(rows_per_call):
    """``rows_per_call`` as given if it is ``"auto"``, None or a positive int.

    Raises:
        ValueError: it is not.
    """
    if rows_per_call == "auto" or rows_per_call is None:
        return rows_per_call
    if isinstance(rows_per_call, bool) or not isinstance(rows_per_call, int) or rows_per_call < 1:
        raise ValueError(f"rows_per_call must be 'auto', None or a positive int, got {rows_per_call!r}")
    return rows_per_call


# ---------------------------------------------------------------------------------------------------------
# Forward-only evaluation of a stream of points


class Confidences:
    """``p(points)[labels]`` for a stream of ``(points, labels)`` blocks, run through ``forward`` in batches of
    ``batch_size`` points that may span several blocks, passed in ``layout``. Returns one (M,) tensor per
    block, in order."""

    def __init__(self, forward, batch_size: int, layout: torch.memory_format = torch.contiguous_format):
        self.forward = forward
        self.batch_size = batch_size
        self.layout = layout

    def __call__(self, blocks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        results, queue, queued = [], [], 0
        for points, labels in blocks:
            out = torch.empty(len(points), dtype=points.dtype, device=points.device)
            results.append(out)
            queue.append((points, labels, out))
            queued += len(points)
            while queued >= self.batch_size:
                queued -= self._run_batch(queue)
        while queue:
            queued -= self._run_batch(queue)
        return results

    def _run_batch(self, queue: list) -> int:
        """Evaluate up to ``batch_size`` points from the front of the queue; returns how many."""
        taken, pieces = 0, []
        while queue and taken < self.batch_size:
            points, labels, out = queue[0]
            k = min(len(points), self.batch_size - taken)
            pieces.append((points[:k], labels[:k], out[:k]))
            if k == len(points):
                queue.pop(0)
            else:
                queue[0] = (points[k:], labels[k:], out[k:])
            taken += k
        points = torch.cat([p for p, _, _ in pieces]) if len(pieces) > 1 else pieces[0][0]
        points = points.contiguous(memory_format=self.layout)
        labels = torch.cat([y for _, y, _ in pieces]) if len(pieces) > 1 else pieces[0][1]
        with torch.no_grad():
            logits = checked_logits(self.forward, points)
            labels = check_class_range("labels", labels, logits.shape[1])
            conf = probabilities(logits).gather(1, labels.unsqueeze(1)).squeeze(1)
        for piece, values in zip(pieces, conf.split([len(p) for p, _, _ in pieces])):
            piece[2].copy_(values)
        return taken


# ---------------------------------------------------------------------------------------------------------
# The runner


@dataclass(frozen=True)
class RunnerOptions:
    """How the fast paths run the caller's model; every field is checked on construction.

    Attributes:
        normalizer: callable applied to images in [0, 1] before the model, or None.
        memory_format: ``"auto"`` (channels_last for convolutional models, where it is faster),
            ``"contiguous"`` or ``"channels_last"``.
        fold_batchnorm: fold eval-mode batch norms into the convolutions before them (faster; changes results
            only by float rounding).
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` to run the model under autocast.
        rows_per_call: rows per model call. ``"auto"``: :func:`default_rows_per_call` (about four 224x224
            images' worth for convolutional models on CPU); None: a whole batch per forward+backward, and
            ``DEFAULT_BATCH_SIZE`` points per forward-only call; or a positive int.

    Raises:
        TypeError: ``normalizer`` is not callable or ``fold_batchnorm`` is not a bool.
        ValueError: ``memory_format``, ``precision`` or ``rows_per_call`` is none of the values above.
    """

    normalizer: Callable[[torch.Tensor], torch.Tensor] | None = None
    memory_format: str = "auto"
    fold_batchnorm: bool = True
    precision: str = "fp32"
    rows_per_call: int | str | None = "auto"

    def __post_init__(self):
        check_normalizer(self.normalizer)
        check_memory_format(self.memory_format)
        check_bool("fold_batchnorm", self.fold_batchnorm)
        check_precision(self.precision)
        check_rows_per_call(self.rows_per_call)


class ModelRunner:
    """The caller's model run as ``options`` say, for batches like ``examples``.

    Construction resolves the options (memory format, rows per call, autocast); the tuned copy of the model
    (:func:`tuned_model`) is made on first use, from the first four examples, and cached per model. The model
    must be in eval mode with frozen parameters (:func:`lst_fast.classifier.model_guard`, or
    :func:`guarded_runner`) whenever the runner is used.

    Args:
        model: the caller's classifier, returning (B, K) logits.
        options: a :class:`RunnerOptions`.
        examples: (B, C, H, W) images in [0, 1] of the shape and device the runner will see.
        graph_capture: the forward will be captured in a CUDA graph, so autocast keeps no cast-weight cache.

    Attributes:
        options: the options.
        layout: the memory format inputs are passed in (:func:`resolve_memory_format`).
        rows_per_call: rows per forward+backward of :meth:`evaluate` (None: the whole batch in one call).
        batch_size: points per forward-only call of :meth:`confidences`.

    Raises:
        TypeError: ``options`` is not a RunnerOptions.
        ValueError: ``options.precision`` needs autocast, which ``examples``' device lacks.
    """

    def __init__(self, model: nn.Module, options: RunnerOptions, examples: torch.Tensor, *, graph_capture=False):
        if not isinstance(options, RunnerOptions):
            raise TypeError(f"options must be a RunnerOptions, got {type(options).__name__}")
        self.options = options
        convolutional = is_convolutional(model)
        self.layout = resolve_memory_format(options.memory_format, model)
        if options.rows_per_call == "auto":
            self.rows_per_call = default_rows_per_call(examples, convolutional)
        else:
            self.rows_per_call = options.rows_per_call
        self.batch_size = self.rows_per_call or DEFAULT_BATCH_SIZE
        self._autocast = autocast_context(options.precision, examples.device, cache=not graph_capture)
        self._model, self._examples = model, examples[:4]

    @functools.cached_property
    def module(self) -> nn.Module:
        """The module run in place of the model: its tuned copy, or the model itself where no tuning applies
        or the copy disagreed with it."""
        options = self.options
        return tuned_model(
            self._model, self._examples, normalizer=options.normalizer, layout=self.layout, fold=options.fold_batchnorm
        )

    @functools.cached_property
    def forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Images in [0, 1] (in ``layout``) -> logits: the normaliser and :attr:`module`, under autocast for
        bf16/fp16."""
        return with_autocast(make_forward(self.module, self.options.normalizer), self._autocast)

    def evaluate(self, x: torch.Tensor, labels: torch.Tensor, *, need_grad: bool):
        """Softmax at ``x`` and, if ``need_grad``, the input gradient of the summed cross-entropy.

        Args:
            x: (B, C, H, W) images in ``layout``.
            labels: (B,) classes of the loss.
            need_grad: also run the backward.

        Returns:
            ``(probs, grad)``: the (B, K) softmax (at least float32) and the gradient in x's shape and layout
            (None without ``need_grad``), in model calls of at most ``rows_per_call`` rows (loss-scaled for
            fp16, :func:`input_grad`).
        """
        return evaluate(self.forward, x, labels, need_grad=need_grad, rows_per_call=self.rows_per_call)

    def confidences(self, blocks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """``p(points)[labels]`` for each ``(points, labels)`` block, forward only (:class:`Confidences`).

        Args:
            blocks: (M, C, H, W) points in [0, 1] with their (M,) classes; a generator is consumed as the model
                calls need points, so memory is bounded by ``batch_size``, not by the number of points.

        Returns:
            One (M,) tensor per block, in order, in the points' dtype.

        Raises:
            ValueError: the model's logits are not (M, K) or a label is not in [0, K).
        """
        return Confidences(self.forward, self.batch_size, self.layout)(blocks)


def evaluate(forward, x: torch.Tensor, labels: torch.Tensor, *, need_grad: bool, rows_per_call: int | None):
    """Softmax at ``x`` and, if ``need_grad``, the input gradient of the summed cross-entropy through
    ``forward`` (images -> logits), in model calls of at most ``rows_per_call`` rows (None: one call).

    Returns:
        ``(probs, grad)`` as :meth:`ModelRunner.evaluate` describes.
    """
    calls = row_slices(len(x), rows_per_call)
    if len(calls) == 1:
        return _evaluate_call(forward, x, labels, need_grad=need_grad)
    probs, grad = [], torch.empty_like(x) if need_grad else None
    for rows in calls:
        rows_probs, rows_grad = _evaluate_call(forward, x[rows], labels[rows], need_grad=need_grad)
        probs.append(rows_probs)
        if need_grad:
            grad[rows].copy_(rows_grad)
    return torch.cat(probs), grad


def _evaluate_call(forward, x: torch.Tensor, labels: torch.Tensor, *, need_grad: bool):
    """One model call of :func:`evaluate`."""
    if not need_grad:
        with torch.no_grad():
            return probabilities(forward(x)), None
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(x_in)
        grad = input_grad(logits, labels, x_in)  # loss-scaled for fp16
    if grad.stride() != x.stride():  # some models hand back another layout; the fused step needs x's
        grad = grad.contiguous(memory_format=memory_format_of(x))
    return probabilities(logits), grad


@contextlib.contextmanager
def guarded_runner(model: nn.Module, options: RunnerOptions, examples: torch.Tensor) -> Iterator[ModelRunner]:
    """A :class:`ModelRunner` for the ``with`` block, the caller's model in eval mode with frozen parameters
    (its mode and flags restored after).

    Raises:
        TypeError: ``model`` is not a torch.nn.Module or ``options`` not a RunnerOptions.
    """
    with model_guard(model):
        yield ModelRunner(model, options, examples)
