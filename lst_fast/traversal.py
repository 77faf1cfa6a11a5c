"""What the reference loop and the fast loop share: set-up (algorithm §1), path recording (algorithm §3)
and the result type. Argument checks live in :mod:`lst_fast.validation` and :mod:`lst_fast.settings`, the
model handling in :mod:`lst_fast.classifier`.

Both loops call :func:`prepare` and then run only the valid rows; :func:`TraversalResult` scatters them back
into the full batch so that row ``i`` of every field always belongs to pair ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from lst_fast.classifier import checked_logits, class_conf, make_forward
from lst_fast.geometry import widths_along_path
from lst_fast.model_runner import is_convolutional
from lst_fast.settings import TraversalSettings
from lst_fast.validation import check_class_range, check_generator, check_images, check_labels


@dataclass
class TraversalResult:
    """Outcome of a batch of level set traversals; row ``i`` of every tensor belongs to pair ``i``.

    Invalid rows (the model does not predict the given label on the source) keep their source image, get
    ``accepted == 0``, ``final_conf == init_conf`` and NaN in the recorded confidences.
    The ``path_*`` fields are None unless asked for with ``record``; their second axis follows
    ``path_iters`` (the iterations at which the iterate was recorded, before that iteration's step).

    Attributes:
        images: (B, C, H, W) the LST outputs (invalid rows: their source).
        valid: (B,) bool, whether the model predicted ``labels`` on the source, i.e. the row was traversed.
        labels: (B,) int64 source class y.
        init_conf: (B,) ``p(src)[y]`` on the clean source.
        final_conf: (B,) ``p(images)[y]``, the output's source-class confidence.
        accepted: (B,) int64 number of accepted steps.
        iters: the ``iters`` setting of the run.
        evaluations: (B,) int64 model evaluations of the row: its start point and every candidate (``iters + 1``
            under the paper's schedule, fewer under the adaptive one; 0 for invalid rows).
        final_step_size: (B,) float64 step size of the row's last candidate (0 for invalid rows).
        target_labels: (B,) int64 target classes, when confidences are recorded.
        path_iters: (L,) int64 iterations at which the path was recorded.
        path_conf: (B, L) source-class confidence along the path.
        path_target_conf: (B, L) target-class confidence along the path.
        path_images: (B, L, C, H, W) the iterates along the path.
        path_widths: (B, L, len(width_distances) + 1, 2) path widths along the path
            (see :func:`lst_fast.geometry.path_width`).
    """

    images: torch.Tensor  # (B, C, H, W) LST outputs
    valid: torch.Tensor  # (B,) bool
    labels: torch.Tensor  # (B,) int64 source class y
    init_conf: torch.Tensor  # (B,) p(src)[y] on the clean source
    final_conf: torch.Tensor  # (B,) p(images)[y]
    accepted: torch.Tensor  # (B,) int64 number of accepted steps
    iters: int
    # (B,) int64 model evaluations of the row: its start point and every candidate (``iters + 1`` under the
    # paper's schedule, fewer under the adaptive one; 0 for invalid rows)
    evaluations: torch.Tensor | None = None
    final_step_size: torch.Tensor | None = None  # (B,) float64 step size of the row's last candidate (0: invalid)
    target_labels: torch.Tensor | None = None  # (B,) int64, when confidences are recorded
    path_iters: torch.Tensor | None = None  # (L,) int64
    path_conf: torch.Tensor | None = None  # (B, L) source-class confidence along the path
    path_target_conf: torch.Tensor | None = None  # (B, L) target-class confidence along the path
    path_images: torch.Tensor | None = None  # (B, L, C, H, W)
    path_widths: torch.Tensor | None = None  # (B, L, len(width_distances) + 1, 2), see lst_fast.geometry.path_width

    def to(self, device: torch.device | str) -> "TraversalResult":
        """A copy with every tensor moved to ``device``."""
        moved = {
            f.name: (v.to(device) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return TraversalResult(**moved)


@dataclass
class Problem:
    """The set-up of algorithm §1, for the valid rows only (suffix ``_all`` = the whole batch)."""

    forward: Callable[[torch.Tensor], torch.Tensor]  # images in [0, 1] -> logits
    srcs_all: torch.Tensor
    labels_all: torch.Tensor
    valid: torch.Tensor
    init_conf_all: torch.Tensor
    target_labels_all: torch.Tensor | None
    x0: torch.Tensor  # start points of the valid rows
    tgt: torch.Tensor
    labels: torch.Tensor
    target_labels: torch.Tensor | None
    init_conf: torch.Tensor
    convolutional: bool  # the model (lst_fast.model_runner.is_convolutional): sets the path widths' batch size
    generator: torch.Generator | None = None  # start-point noise, then the path widths' random directions


# ---------------------------------------------------------------------------------------------------------
# Set-up (algorithm §1)


def prepare(
    model, srcs, tgts, labels, target_labels, normalizer, settings: TraversalSettings, generator
) -> Problem:
    """Checks the inputs, finds labels and valid rows, and draws the start points of the valid rows."""
    srcs = check_images("srcs", srcs)
    tgts = check_images("tgts", tgts, like=srcs)
    batch = srcs.shape[0]
    labels = check_labels("labels", labels, batch, srcs.device)
    target_labels = check_labels("target_labels", target_labels, batch, srcs.device)
    generator = check_generator(generator, srcs.device)
    forward = make_forward(model, normalizer)

    clean = srcs.clamp(0, 1)
    with torch.no_grad():
        logits = checked_logits(forward, clean)
        num_classes = logits.shape[1]
        predicted = logits.argmax(1)
        labels = predicted if labels is None else check_class_range("labels", labels, num_classes)
        init_conf = class_conf(logits, labels)
        if target_labels is None and "conf" in settings.record:
            target_labels = checked_logits(forward, tgts.clamp(0, 1)).argmax(1)
        elif target_labels is not None:
            target_labels = check_class_range("target_labels", target_labels, num_classes)
    valid = predicted == labels

    # Algorithm §1.3: exactly one uniform draw of the valid rows' shape, so seeded runs match the original.
    valid_srcs = clean[valid]
    noise = torch.rand(valid_srcs.shape, generator=generator, dtype=srcs.dtype, device=srcs.device)
    x0 = (valid_srcs + settings.init_noise * (noise - 0.5)).clamp_(0, 1)
    return Problem(
        forward=forward,
        srcs_all=clean,
        labels_all=labels,
        valid=valid,
        init_conf_all=init_conf,
        target_labels_all=target_labels,
        x0=x0,
        tgt=tgts.clamp(0, 1)[valid],
        labels=labels[valid],
        target_labels=None if target_labels is None else target_labels[valid],
        init_conf=init_conf[valid],
        convolutional=is_convolutional(model),
        generator=generator,
    )


# ---------------------------------------------------------------------------------------------------------
# Path recording (algorithm §3) and the final result


class PathRecorder:
    """Collects the per-iteration records of the valid rows at iterations 0, k, 2k, ... (k = log_every)."""

    def __init__(self, settings: TraversalSettings):
        self.settings = settings
        self.iters: list[int] = []
        self.conf: list[torch.Tensor] = []
        self.target_conf: list[torch.Tensor] = []
        self.images: list[torch.Tensor] = []
        self.widths: list[torch.Tensor] = []

    def due(self, iteration: int) -> bool:
        return bool(self.settings.record) and iteration % self.settings.log_every == 0

    def add(
        self, iteration: int, x: torch.Tensor, probs: torch.Tensor, problem: Problem, *, forward=None, grad=None
    ) -> None:
        """Record the iterate ``x`` with its softmax ``probs``; path widths also need the loop's ``forward`` and
        the gradient ``grad`` at ``x`` (for this iteration's v_perp)."""
        self.iters.append(iteration)
        record = self.settings.record
        if "conf" in record:
            self.conf.append(probs.gather(1, problem.labels.unsqueeze(1)).squeeze(1))
            self.target_conf.append(probs.gather(1, problem.target_labels.unsqueeze(1)).squeeze(1))
        if "images" in record:
            self.images.append(x.detach().contiguous().clone())
        if "widths" in record:
            self.widths.append(widths_along_path(forward, x, grad, problem, self.settings))


def _scatter(valid: torch.Tensor, values: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    out = fill.clone()
    out[valid] = values.to(out.dtype)
    return out


def _scatter_path(valid: torch.Tensor, steps: list[torch.Tensor], fill_value, fill_rows=None):
    """Stack per-iteration records (each for the valid rows) into (B, L, ...) with fill for invalid rows."""
    stacked = torch.stack(steps, dim=1)  # (n_valid, L, ...)
    shape = (valid.shape[0],) + tuple(stacked.shape[1:])
    out = torch.full(shape, fill_value, dtype=stacked.dtype, device=stacked.device)
    if fill_rows is not None:  # images: invalid rows keep their source at every recorded step
        out[~valid] = fill_rows[~valid].unsqueeze(1).to(out.dtype)
    out[valid] = stacked
    return out


def build_result(
    problem: Problem, settings: TraversalSettings, x, final_conf, accepted, recorder, *, evaluations=None,
    final_step_size=None,
) -> TraversalResult:
    """The result for the whole batch. ``evaluations`` and ``final_step_size`` (per valid row) default to the
    paper's schedule: ``iters + 1`` evaluations and ``step_size``."""
    valid = problem.valid
    n_valid = int(valid.sum())
    if evaluations is None:
        evaluations = torch.full((n_valid,), settings.iters + 1, dtype=torch.long, device=valid.device)
    if final_step_size is None:
        final_step_size = torch.full((n_valid,), settings.step_size, dtype=torch.float64, device=valid.device)
    no_rows = torch.zeros(valid.shape, dtype=torch.float64, device=valid.device)
    result = TraversalResult(
        images=_scatter(valid, x.detach(), problem.srcs_all).contiguous(),
        valid=valid,
        labels=problem.labels_all,
        init_conf=problem.init_conf_all,
        final_conf=_scatter(valid, final_conf.detach(), problem.init_conf_all),
        accepted=_scatter(valid, accepted, torch.zeros_like(problem.labels_all)),
        iters=settings.iters,
        evaluations=_scatter(valid, evaluations, torch.zeros_like(problem.labels_all)),
        final_step_size=_scatter(valid, final_step_size, no_rows),
        target_labels=problem.target_labels_all,
    )
    if recorder.iters:
        result.path_iters = torch.tensor(recorder.iters, dtype=torch.long)
        if recorder.conf:
            result.path_conf = _scatter_path(valid, recorder.conf, float("nan"))
            result.path_target_conf = _scatter_path(valid, recorder.target_conf, float("nan"))
        if recorder.images:
            result.path_images = _scatter_path(valid, recorder.images, 0.0, fill_rows=problem.srcs_all)
        if recorder.widths:
            result.path_widths = _scatter_path(valid, recorder.widths, float("nan"))
    return result
