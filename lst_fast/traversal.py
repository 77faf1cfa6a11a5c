"""What the reference loop and the fast loop share: argument checks, set-up (spec section 1), the model
guard, and the result type.

Both loops call :func:`prepare` and then run only the valid rows; :func:`TraversalResult` scatters them back
into the full batch so that row ``i`` of every field always belongs to pair ``i``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from dataclasses import dataclass, fields
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

RECORDABLE = ("conf", "images", "widths")
SCHEDULES = ("paper", "adaptive")
VALUE_TOLERANCE = 1e-6  # images may leave [0, 1] by this much (rounding in preprocessing) and are clamped


@dataclass
class TraversalResult:
    """Outcome of a batch of level set traversals; row ``i`` of every tensor belongs to pair ``i``.

    Invalid rows (the model does not predict the given label on the source) keep their source image, get
    ``accepted == 0``, ``final_conf == init_conf`` and NaN in the recorded confidences.
    The ``path_*`` fields are None unless asked for with ``record``; their second axis follows
    ``path_iters`` (the iterations at which the iterate was recorded, before that iteration's step).
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
class Settings:
    """The checked numeric settings of one traversal."""

    step_size: float
    iters: int
    pthresh: float
    adv_step_size: float  # 0 means the correction is off
    init_noise: float
    log_every: int
    record: tuple[str, ...]
    width_distances: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)  # radii of the recorded path widths
    width_num_vecs: int = 256  # random directions per recorded path width
    schedule: str = "paper"  # "paper": iters fixed steps; "adaptive": see lst_fast.fast (iters is the budget)
    step_growth: float = 1.3  # adaptive: the row's step scale is multiplied by this after an accepted step
    step_shrink: float = 0.5  # adaptive: ... and by this after a rejected one (never below the paper's step)
    max_step_scale: float = 10.0  # adaptive: largest step, in multiples of step_size


@dataclass
class Problem:
    """The set-up of spec section 1, for the valid rows only (suffix ``_all`` = the whole batch)."""

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
    generator: torch.Generator | None = None  # start-point noise, then the path widths' random directions


# ---------------------------------------------------------------------------------------------------------
# Argument checks


def _check_number(name: str, value, *, minimum=None, strict=False, integer=False, allow_none=False):
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


def check_images(name: str, images, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """A (B, C, H, W) floating-point batch of finite values in [0, 1] (up to a rounding tolerance)."""
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
    """None, or a (B,) integer tensor / sequence of ints (range checked later against the logits)."""
    if labels is None:
        return None
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


def check_settings(
    *,
    step_size,
    iters,
    pthresh,
    adv_step_size,
    init_noise,
    log_every,
    record,
    width_distances=(0.5, 1, 1.5, 2),
    width_num_vecs=256,
    schedule="paper",
    step_growth=1.3,
    step_shrink=0.5,
    max_step_scale=10.0,
) -> Settings:
    if isinstance(record, str):
        record = (record,)
    record = tuple(record)
    unknown = [r for r in record if r not in RECORDABLE]
    if unknown:
        raise ValueError(f"record may contain {RECORDABLE}, got unknown {unknown}")
    log_every = _check_number("log_every", log_every, minimum=0, integer=True)
    if record and log_every == 0:
        raise ValueError(f"record={record} needs log_every > 0 (how often to record along the path)")
    adv = _check_number("adv_step_size", adv_step_size, minimum=0, allow_none=True)
    width_distances, width_num_vecs = check_width_settings(
        width_distances, width_num_vecs, names=("width_distances", "width_num_vecs")
    )
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if schedule == "adaptive" and record:
        raise ValueError(
            f"record={record} is not available with schedule='adaptive' (rows move at different paces); "
            "record along the path with schedule='paper'"
        )
    step_shrink = _check_number("step_shrink", step_shrink, minimum=0, strict=True)
    if step_shrink > 1:
        raise ValueError(f"step_shrink must be in (0, 1], got {step_shrink!r}")
    return Settings(
        step_size=_check_number("step_size", step_size, minimum=0, strict=True),
        iters=_check_number("iters", iters, minimum=0, integer=True),
        pthresh=_check_number("pthresh", pthresh, minimum=0, strict=True),
        adv_step_size=0.0 if adv is None else adv,
        init_noise=_check_number("init_noise", init_noise, minimum=0),
        log_every=log_every,
        record=record,
        width_distances=width_distances,
        width_num_vecs=width_num_vecs,
        schedule=schedule,
        step_growth=_check_number("step_growth", step_growth, minimum=1),
        step_shrink=step_shrink,
        max_step_scale=_check_number("max_step_scale", max_step_scale, minimum=1),
    )


def check_width_settings(distances, num_vecs, *, names=("distances", "num_vecs")) -> tuple[tuple[float, ...], int]:
    """Path-width radii (a non-empty sequence of reals > 0) and the number of random directions (an int >= 2)."""
    if isinstance(distances, (str, bytes)) or not isinstance(distances, Sequence):
        raise TypeError(f"{names[0]} must be a sequence of radii > 0, got {distances!r}")
    if not distances:
        raise ValueError(f"{names[0]} must name at least one radius")
    radii = tuple(_check_number(f"{names[0]}[{i}]", r, minimum=0, strict=True) for i, r in enumerate(distances))
    return radii, _check_number(names[1], num_vecs, minimum=2, integer=True)


def check_generator(generator, device: torch.device) -> torch.Generator | None:
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if torch.device(generator.device).type != device.type:
        raise ValueError(f"generator is on {generator.device}, expected a generator on {device.type} like srcs")
    return generator


# ---------------------------------------------------------------------------------------------------------
# Model handling


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


def make_forward(model: torch.nn.Module, normalizer) -> Callable[[torch.Tensor], torch.Tensor]:
    if normalizer is not None and not callable(normalizer):
        raise TypeError(f"normalizer must be callable (images in [0, 1] -> model input), got {normalizer!r}")
    if normalizer is None:
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
    """Cross-entropy summed over the batch, so that each row's input gradient is its own (spec 2.1)."""
    return F.cross_entropy(logits, labels, reduction="sum")


# ---------------------------------------------------------------------------------------------------------
# Set-up (spec section 1)


def prepare(
    model, srcs, tgts, labels, target_labels, normalizer, settings: Settings, generator
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
        labels = predicted if labels is None else _in_range("labels", labels, num_classes)
        init_conf = class_conf(logits, labels)
        if target_labels is None and "conf" in settings.record:
            target_labels = checked_logits(forward, tgts.clamp(0, 1)).argmax(1)
        elif target_labels is not None:
            target_labels = _in_range("target_labels", target_labels, num_classes)
    valid = predicted == labels

    # Spec 1.3: exactly one uniform draw of the valid rows' shape, so seeded runs match the original.
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
        generator=generator,
    )


def _in_range(name: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must be class indices in [0, {num_classes}) for this model, "
            f"got values in [{labels.min().item()}, {labels.max().item()}]"
        )
    return labels


# ---------------------------------------------------------------------------------------------------------
# Path recording (spec section 3) and the final result


class PathRecorder:
    """Collects the per-iteration records of the valid rows at iterations 0, k, 2k, ... (k = log_every)."""

    def __init__(self, settings: Settings):
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
            from lst_fast.geometry import widths_along_path  # geometry imports this module

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
    problem: Problem, settings: Settings, x, final_conf, accepted, recorder, *, evaluations=None, final_step_size=None
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
