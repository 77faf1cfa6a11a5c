"""The fast Level Set Traversal loop: the reference's results at the cost of one forward+backward per step.

Spec section 2, "Observation": a row that accepts its candidate takes its next gradient at exactly the
point just evaluated, and a row that rejects keeps the gradient it already had. So the loop evaluates each
candidate *with* its backward, keeps the candidate's gradient for accepted rows and the cached one for
rejected rows, and never runs the reference's second forward. The step itself is one fused kernel
(:mod:`lst_fast.ops`) writing into buffers allocated once per call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lst_fast import ops
from lst_fast.classifier import model_guard
from lst_fast.graphs import run_static
from lst_fast.model_runner import ModelRunner, RunnerOptions
from lst_fast.rows import memory_format_of
from lst_fast.settings import TraversalSettings, check_settings, with_setting_keywords
from lst_fast.traversal import PathRecorder, TraversalResult, build_result, prepare
from lst_fast.validation import check_bool


@with_setting_keywords
def traverse_batch(
    model: torch.nn.Module,
    srcs: torch.Tensor,
    tgts: torch.Tensor,
    labels=None,
    *,
    settings: TraversalSettings | None = None,
    target_labels=None,
    normalizer=None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    memory_format: str = "auto",
    fold_batchnorm: bool = True,
    precision: str = "fp32",
    cuda_graphs: bool = False,
    rows_per_call: int | str | None = "auto",
    backend: str | None = None,
    **setting_keywords,
) -> TraversalResult:
    """Level set traversal from each source image towards its target image.

    Args:
        model: classifier returning (B, K) logits; run in eval mode with frozen parameters, both restored.
        srcs, tgts: (B, C, H, W) images in [0, 1]; pair ``i`` goes from ``srcs[i]`` towards ``tgts[i]``.
        labels: (B,) source classes; default ``argmax model(srcs)``. Rows the model does not classify as
            their label are invalid and returned unchanged.
        target_labels: (B,) target classes for the recorded target confidence; default ``argmax model(tgts)``.
        normalizer: callable applied to images before the model (e.g. :class:`lst_fast.models.Normalize`).
        settings: a :class:`lst_fast.settings.TraversalSettings`; or give its fields as keywords (not both,
            unless they agree):
        step_size, iters, pthresh, adv_step_size, init_noise: the spec's settings; ``adv_step_size`` None or
            0 turns the adversarial correction off.
        log_every, record: record ``"conf"`` (source/target confidence), ``"images"`` and/or ``"widths"``
            every ``log_every`` iterations, at the iterate before the step.
        width_distances, width_num_vecs: radii and number of random directions of the recorded path widths
            (:func:`lst_fast.geometry.path_width` at the iterate, direction v_perp, threshold ``pthresh``).
        generator: torch.Generator for the start-point noise and then the path widths' random directions
            (the global RNG if None).
        progress: show a tqdm progress bar.
        memory_format: ``"auto"`` (channels_last for convolutional models, where it is faster),
            ``"contiguous"`` or ``"channels_last"``.
        fold_batchnorm: fold eval-mode batch norms into the convolutions before them (faster; changes
            results only by float rounding). Memory format and folding are applied to a private copy of the
            model, cached until its weights change; the caller's model is never modified.
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` to run the model under autocast (the step and
            the images stay in the images' dtype; accept/reject uses the autocast confidences).
        cuda_graphs: capture one iteration as a CUDA graph and replay it (CUDA tensors only).
        rows_per_call: rows per forward+backward of the model. ``"auto"``: about four 224x224 images' worth
            for convolutional models on CPU, where larger calls are slower per image, else the whole batch
            (:func:`lst_fast.model_runner.default_rows_per_call`); None: the whole batch; or a positive int.
            Rows are independent (the loss is summed), so this changes results only by float rounding.
        backend: the step kernel (see :func:`lst_fast.ops.available_backends`); default the fastest here.
        schedule: ``"paper"`` (default): ``iters`` steps of ``step_size``, exactly the spec's loop.
            ``"adaptive"``: each row grows its step by ``step_growth`` after an accepted candidate and shrinks
            it by ``step_shrink`` after a rejected one, between ``step_size`` and ``max_step_scale * step_size``,
            with the correction ``adv_step_size`` scaled alike; a row stops once its accepted steps add up to
            the paper's ``iters * step_size`` (or after ``iters`` candidates, the budget) and leaves the model
            calls. The acceptance rule is the spec's. ``record`` is not available with it.
        step_growth, step_shrink, max_step_scale: the adaptive schedule's knobs (>= 1, in (0, 1], >= 1); with
            growth and shrink 1 it is the paper's loop.
    """
    settings = check_settings(settings, **setting_keywords)
    options = RunnerOptions(normalizer=normalizer, memory_format=memory_format, fold_batchnorm=fold_batchnorm,
                            precision=precision, rows_per_call=rows_per_call)
    check_bool("cuda_graphs", cuda_graphs)
    if cuda_graphs and settings.schedule != "paper":
        raise ValueError(f"cuda_graphs=True runs the paper's schedule only, got schedule={settings.schedule!r}")
    if cuda_graphs and not (isinstance(srcs, torch.Tensor) and srcs.device.type == "cuda"):
        raise ValueError(f"cuda_graphs=True needs CUDA tensors, got srcs on {getattr(srcs, 'device', None)}")
    with model_guard(model):
        problem = prepare(model, srcs, tgts, labels, target_labels, normalizer, settings, generator)
        step_backend = _check_backend(backend, problem.x0)
        runner = ModelRunner(model, options, problem.x0, graph_capture=cuda_graphs)
        rows = runner.rows_per_call
        if cuda_graphs and rows is not None and rows < len(problem.x0):
            raise ValueError(f"cuda_graphs=True runs the whole batch in one call; got rows_per_call={rows_per_call!r}")
        if len(problem.labels) == 0:  # no valid rows: nothing to traverse
            return build_result(problem, settings, problem.x0, problem.init_conf, problem.labels * 0,
                                PathRecorder(settings))
        if settings.schedule == "adaptive":
            x, final_conf, accepted, evaluations, last_step = _run_adaptive(
                problem, runner, settings, step_backend, progress
            )
            return build_result(problem, settings, x, final_conf, accepted, PathRecorder(settings),
                                evaluations=evaluations, final_step_size=last_step)
        if cuda_graphs:
            x, final_conf, accepted, recorder = run_static(
                problem, runner.forward, settings, runner.layout, step_backend, progress, capture=True
            )
        else:
            x, final_conf, accepted, recorder = _run(problem, runner, settings, step_backend, progress)
    return build_result(problem, settings, x, final_conf, accepted, recorder)


def _run(problem, runner, settings, backend, progress):
    y, p0 = problem.labels, problem.init_conf
    evaluate, layout = runner.evaluate, runner.layout
    recorder = PathRecorder(settings)
    accepted = torch.zeros_like(y)

    # Buffers for the whole run: the iterate, the candidate (they swap roles), the target and the correction.
    x = problem.x0.contiguous(memory_format=layout)
    cand = torch.empty_like(x)
    tgt = problem.tgt.contiguous(memory_format=layout)
    delta = torch.zeros_like(x) if settings.adv_step_size > 0 else None

    probs, grad = evaluate(x, y, need_grad=settings.iters > 0)
    for it in tqdm(range(settings.iters), disable=not progress, desc="LST"):
        if recorder.due(it):
            recorder.add(it, x, probs, problem, forward=runner.forward, grad=grad)
        ops.lst_step_(
            x, grad, tgt, delta, cand,
            step_size=settings.step_size, adv_step_size=settings.adv_step_size, backend=backend,
        )
        # The last candidate only needs its confidence; every other one also needs its gradient.
        cand_probs, cand_grad = evaluate(cand, y, need_grad=it < settings.iters - 1)
        accept = p0 - cand_probs.gather(1, y.unsqueeze(1)).squeeze(1) < settings.pthresh
        accepted += accept
        # Select without a full pass: rejected rows (usually none) copy their current state into the
        # candidate's buffers, then iterate and candidate swap roles.
        rejected = (~accept).nonzero().squeeze(1)
        if len(rejected):
            cand.index_copy_(0, rejected, x.index_select(0, rejected))
            cand_probs.index_copy_(0, rejected, probs.index_select(0, rejected))
            if cand_grad is not None:
                cand_grad.index_copy_(0, rejected, grad.index_select(0, rejected))
        x, cand = cand, x
        probs, grad = cand_probs, cand_grad
    final_conf = probs.gather(1, y.unsqueeze(1)).squeeze(1)
    return x, final_conf, accepted, recorder


@dataclass
class _AdaptiveRows:
    """Per-row bookkeeping of the adaptive schedule, for the rows in the loop's buffer order."""

    order: torch.Tensor  # (n,) int64: the valid row held at each buffer position
    scale: torch.Tensor  # (n,) float64: the row's next step, in multiples of step_size
    progress: torch.Tensor  # (n,) float64: accepted steps so far, in multiples of step_size
    candidates: torch.Tensor  # (n,) int64: candidates evaluated
    accepted: torch.Tensor  # (n,) int64
    last_step: torch.Tensor  # (n,) float64: step size of the last candidate
    conf: torch.Tensor  # (n,) source-class confidence at the current iterate

    @classmethod
    def start(cls, n: int, conf: torch.Tensor) -> "_AdaptiveRows":
        reals = functools.partial(torch.zeros, n, dtype=torch.float64, device=conf.device)
        counts = functools.partial(torch.zeros, n, dtype=torch.long, device=conf.device)
        return cls(order=torch.arange(n, device=conf.device), scale=reals() + 1, progress=reals(),
                   candidates=counts(), accepted=counts(), last_step=reals(), conf=conf.clone())

    def update(self, live: int, accept: torch.Tensor, cand_conf: torch.Tensor, settings) -> torch.Tensor:
        """Book one candidate per live row; returns which live rows are finished."""
        scale = self.scale[:live]
        self.last_step[:live] = scale * settings.step_size
        self.candidates[:live] += 1
        self.accepted[:live] += accept
        self.progress[:live] += torch.where(accept, scale, 0)
        self.conf[:live] = torch.where(accept, cand_conf.to(self.conf.dtype), self.conf[:live])
        grown = (scale * settings.step_growth).clamp_(max=settings.max_step_scale)
        self.scale[:live] = torch.where(accept, grown, (scale * settings.step_shrink).clamp_(min=1.0))
        return (self.progress[:live] >= settings.iters) | (self.candidates[:live] >= settings.iters)

    def permute(self, live: int, perm: torch.Tensor) -> None:
        """Reorder the first ``live`` rows by ``perm``."""
        for t in (self.order, self.scale, self.progress, self.candidates, self.accepted, self.last_step, self.conf):
            t[:live] = t[:live][perm]

    def unpermuted(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (in buffer order) in the valid rows' order."""
        return torch.empty_like(t).index_copy_(0, self.order, t)


def _run_adaptive(problem, runner, settings, backend, progress):
    """The adaptive schedule (``schedule="adaptive"``): per-row step sizes, finished rows leave the model calls.

    Rows still running are kept at the front of the buffers (``live`` of them); when rows finish, the first
    ``live`` rows are reordered once so that the running ones come first. Every candidate follows the spec's
    step with the row's step ``scale * step_size`` and correction ``scale * adv_step_size`` (their ratio, which
    sets how far from the target the correction holds the iterate, is the paper's), and the spec's
    acceptance rule. A row is finished when its accepted steps add up to ``iters`` paper steps or after
    ``iters`` candidates.
    """
    y, p0 = problem.labels.clone(), problem.init_conf.clone()
    evaluate, layout = runner.evaluate, runner.layout
    x = problem.x0.contiguous(memory_format=layout)
    cand = torch.empty_like(x)
    tgt = problem.tgt.contiguous(memory_format=layout)
    delta = torch.zeros_like(x) if settings.adv_step_size > 0 else None
    probs, grad = evaluate(x, y, need_grad=settings.iters > 0)
    rows = _AdaptiveRows.start(len(y), probs.gather(1, y.unsqueeze(1)).squeeze(1))
    live = len(y) if settings.iters > 0 else 0
    bar = tqdm(total=settings.iters, disable=not progress, desc="LST (adaptive)")
    for it in range(settings.iters):
        if live == 0:
            break
        bar.update()
        scale = rows.scale[:live]
        _scaled_step(x[:live], grad, tgt[:live], None if delta is None else delta[:live], cand[:live], scale,
                     settings, backend)
        # Rows whose accepted candidate would finish them need no gradient there (nor do rejected ones).
        last = it == settings.iters - 1 or bool((rows.progress[:live] + scale >= settings.iters).all())
        cand_probs, cand_grad = evaluate(cand[:live], y[:live], need_grad=not last)
        cand_conf = cand_probs.gather(1, y[:live].unsqueeze(1)).squeeze(1)
        accept = p0[:live] - cand_conf < settings.pthresh
        finished = rows.update(live, accept, cand_conf, settings)
        rejected = (~accept).nonzero().squeeze(1)
        if len(rejected):
            cand.index_copy_(0, rejected, x.index_select(0, rejected))
            if cand_grad is not None:
                cand_grad.index_copy_(0, rejected, grad.index_select(0, rejected))
        x, cand = cand, x
        if cand_grad is not None:  # else every row that accepted is finished, and the others keep their gradient
            grad = cand_grad
        if finished.any():
            running = live
            live, grad = _retire(finished, live, rows, (x, tgt, delta), (y, p0), grad)
            cand[live:running] = x[live:running]  # the buffers swap roles: both hold the finished rows' outputs
    bar.close()
    evaluations = rows.unpermuted(rows.candidates) + 1  # the start point and every candidate
    return (rows.unpermuted(x), rows.unpermuted(rows.conf), rows.unpermuted(rows.accepted), evaluations,
            rows.unpermuted(rows.last_step))


def _scaled_step(x, grad, tgt, delta, out, scale: torch.Tensor, settings, backend: str) -> None:
    """The spec's step with per-row step sizes ``scale * step_size`` (correction scaled alike): one kernel call
    when every row has the same scale (the usual case), else the PyTorch twin with per-row values."""
    first = scale[0].item()
    if bool((scale == first).all()):
        ops.lst_step_(x, grad, tgt, delta, out, step_size=settings.step_size * first,
                      adv_step_size=settings.adv_step_size * first, backend=backend)
    else:
        ops.lst_step_torch_(x, grad, tgt, delta, out, step_size=scale * settings.step_size,
                            adv_step_size=scale * settings.adv_step_size)


def _retire(finished, live: int, rows: _AdaptiveRows, images, vectors, grad):
    """Move the finished rows behind the running ones (one reordering of the first ``live`` rows of every
    buffer); returns the new number of running rows and their gradient."""
    keep = (~finished).nonzero().squeeze(1)
    perm = torch.cat([keep, finished.nonzero().squeeze(1)])
    for t in images + vectors:
        if t is not None:
            t[:live] = t[:live].index_select(0, perm)
    rows.permute(live, perm)
    if grad is not None:
        grad = grad.index_select(0, keep).contiguous(memory_format=memory_format_of(grad))
    return len(keep), grad


def _check_backend(backend: str | None, x: torch.Tensor) -> str:
    available = ops.available_backends(x.device, x.dtype)
    if backend is None:
        return available[0]
    if backend not in available:
        raise ValueError(f"backend must be one of {available} for {x.dtype} on {x.device}, got {backend!r}")
    return backend
