"""The model evaluator of the geometry (spec sections 4-5): ``p(points)[labels]`` for many points, packed into
model calls of ``batch_size`` points regardless of which pair, triangle or sample they belong to, on the
batch-norm-folded channels_last copy of the model that the fast loop runs (:func:`lst_fast.tuning.tuned_model`).

Each point is built only when its call runs, so memory is bounded by the batch, not by the number of points.
The batch size is chosen for the device, model and image size (:func:`default_batch_size`: about four 224x224
images for convolutional models on CPU, where larger batches are slower per image; else large).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch

from lst_fast.classifier import checked_logits, make_forward, model_guard, probabilities
from lst_fast.tuning import default_rows_per_call, is_convolutional, resolve_memory_format, tuned_model
from lst_fast.validation import check_bool, check_class_range, check_number

# Points per model call when batch_size is None, unless lst_fast.tuning.default_rows_per_call says fewer (CPUs).
DEFAULT_BATCH_SIZE = 128


class Confidences:
    """``p(points)[labels]`` for a stream of ``(points, labels)`` blocks, run through the model in batches of
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


@contextlib.contextmanager
def tuned_evaluator(model, normalizer, probe, batch_size, memory_format, fold) -> Iterator[Confidences]:
    """The caller's model in eval mode (restored after), as the fast loop runs it, behind a chunked evaluator."""
    make_forward(model, normalizer)  # checks the normalizer
    check_bool("fold_batchnorm", fold)
    batch_size = _check_batch_size(batch_size, probe, is_convolutional(model))
    with model_guard(model):
        layout = resolve_memory_format(memory_format, model)
        runner = tuned_model(model, probe[:4], normalizer=normalizer, layout=layout, fold=fold)
        yield Confidences(make_forward(runner, normalizer), batch_size, layout)


def default_batch_size(points: torch.Tensor, convolutional: bool) -> int:
    """Points like ``points`` per model call when ``batch_size`` is None: for a convolutional model on CPU
    about four 224x224 images' worth (:func:`lst_fast.tuning.default_rows_per_call`), else
    ``DEFAULT_BATCH_SIZE``."""
    return default_rows_per_call(points, convolutional) or DEFAULT_BATCH_SIZE


def _check_batch_size(batch_size, points: torch.Tensor, convolutional: bool) -> int:
    if batch_size is None:
        return default_batch_size(points, convolutional)
    return check_number("batch_size", batch_size, minimum=1, integer=True)
