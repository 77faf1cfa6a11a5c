"""The fast Level Set Traversal loop: the reference's results at the cost of one forward+backward per step.

Algorithm §2, "Observation": a row that accepts its candidate takes its next gradient at exactly the
point just evaluated, and a row that rejects keeps the gradient it already had. So the loop evaluates each
candidate *with* its backward, keeps the candidate's gradient for accepted rows and the cached one for
rejected rows, and never runs the reference's second forward. The step itself is one fused kernel
(:mod:`lst_fast.ops`).

One driver loop (:func:`run_schedule`) runs every schedule (:mod:`lst_fast.schedules`): the schedule says how
large each row's next step is and which rows are finished; the loop holds the acceptance rule, the selection of
the accepted candidates and the retiring of finished rows, which then leave the model calls. Its iteration runs
on eager buffers (iterate and candidate swap roles) or, for schedules with fixed shapes, on static buffers,
eagerly or replayed as a CUDA graph (:mod:`lst_fast.graphs`).
"""

from __future__ import annotations

import contextlib
import functools

import torch
from tqdm.auto import tqdm

from lst_fast import ops
from lst_fast.classifier import model_guard
from lst_fast.graphs import GraphReplay, StaticBuffers
from lst_fast.model_runner import ModelRunner, RunnerOptions, evaluate
from lst_fast.rows import memory_format_of
from lst_fast.schedules import Schedule, schedule_named, schedule_names
from lst_fast.settings import TraversalSettings, check_settings, with_setting_keywords
from lst_fast.traversal import PathRecorder, Problem, TraversalResult, build_result, prepare
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
        cuda_graphs: capture one iteration as a CUDA graph and replay it (CUDA tensors and schedules with fixed
            shapes only: :func:`lst_fast.schedules.schedule_names` ``(fixed_shapes=True)``, the paper's).
        rows_per_call: rows per forward+backward of the model. ``"auto"``: about four 224x224 images' worth
            for convolutional models on CPU, where larger calls are slower per image, else the whole batch
            (:func:`lst_fast.model_runner.default_rows_per_call`); None: the whole batch; or a positive int. Rows
            are independent (the loss is summed), so this changes results only by float rounding.
        backend: the step kernel (see :func:`lst_fast.ops.available_backends`); default the fastest here.
        schedule: ``"paper"`` (default): ``iters`` steps of ``step_size``, exactly the spec's loop.
            ``"adaptive"``: each row grows its step by ``step_growth`` after an accepted candidate and shrinks
            it by ``step_shrink`` after a rejected one, between ``step_size`` and ``max_step_scale * step_size``,
            with the correction ``adv_step_size`` scaled alike; a row stops once its accepted steps add up to
            the paper's ``iters * step_size`` (or after ``iters`` candidates, the budget) and leaves the model
            calls. The acceptance rule is the spec's. ``record`` is not available with it.
        step_growth, step_shrink, max_step_scale: the adaptive schedule's knobs (>= 1, in (0, 1], >= 1); with
            growth and shrink 1 it is the paper's loop.

    Returns:
        A :class:`lst_fast.traversal.TraversalResult` for the whole batch, row ``i`` for pair ``i``: the outputs
        (``images``), which rows were traversed (``valid``), the source-class confidence before and after
        (``init_conf``, ``final_conf``), accepted steps, model evaluations and the last step size per row, and
        the recorded path where ``record`` asked for it.

    Raises:
        ValueError: a setting or option out of range (named), images of different shapes, a backend that cannot
            run here, ``cuda_graphs`` without CUDA tensors or with a schedule of changing shapes.
        TypeError: an argument of the wrong type (named).
    """
    settings = check_settings(settings, **setting_keywords)
    options = RunnerOptions(normalizer=normalizer, memory_format=memory_format, fold_batchnorm=fold_batchnorm,
                            precision=precision, rows_per_call=rows_per_call)
    check_bool("cuda_graphs", cuda_graphs)
    mode = "graph" if cuda_graphs else "eager"
    _check_mode(mode, settings)
    if cuda_graphs and not (isinstance(srcs, torch.Tensor) and srcs.device.type == "cuda"):
        raise ValueError(f"cuda_graphs=True needs CUDA tensors, got srcs on {getattr(srcs, 'device', None)}")
    with model_guard(model):
        problem = prepare(model, srcs, tgts, labels, target_labels, normalizer, settings, generator)
        step_backend = ops.check_backend(backend, problem.x0.device, problem.x0.dtype)
        runner = ModelRunner(model, options, problem.x0, graph_capture=cuda_graphs)
        rows = runner.rows_per_call
        if cuda_graphs and rows is not None and rows < len(problem.x0):
            raise ValueError(f"cuda_graphs=True runs the whole batch in one call; got rows_per_call={rows_per_call!r}")
        if len(problem.labels) == 0:  # no valid rows: nothing to traverse
            return build_result(problem, settings, problem.x0, problem.init_conf, problem.labels * 0,
                                PathRecorder(settings))
        return run_schedule(problem, runner.forward, settings, runner.layout, step_backend, mode=mode,
                            rows_per_call=rows, progress=progress)


MODES = ("eager", "static", "graph")


def _check_mode(mode: str, settings: TraversalSettings) -> None:
    """Whether the loop can run ``settings.schedule`` in ``mode`` (see :func:`run_schedule`).

    Raises:
        ValueError: an unknown mode, or static buffers for a schedule without fixed shapes.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if mode != "eager" and not schedule_named(settings.schedule).fixed_shapes:
        option = "cuda_graphs=True" if mode == "graph" else f"mode={mode!r}"
        raise ValueError(
            f"{option} runs only the schedules with fixed shapes {list(schedule_names(fixed_shapes=True))} "
            f"(static buffers), got schedule={settings.schedule!r}"
        )


def run_schedule(
    problem: Problem, forward, settings: TraversalSettings, layout: torch.memory_format, backend: str, *,
    mode: str = "eager", rows_per_call: int | None = None, progress: bool = False,
) -> TraversalResult:
    """The fast loop on a prepared problem (at least one valid row) under its schedule (lst_fast.schedules).

    Args:
        problem: from :func:`lst_fast.traversal.prepare`.
        forward: images in [0, 1] -> logits (the tuned model copy, with the normaliser).
        settings: the traversal's settings; ``settings.schedule`` picks the schedule.
        layout: the memory format of the loop's image buffers.
        backend: the step kernel (:func:`lst_fast.ops.available_backends`).
        mode: ``"eager"``: iterate and candidate swap roles, rejected rows are copied, finished rows leave the
            buffers and the model calls. ``"static"``: fixed buffers and masked selection, run eagerly (what
            CUDA graphs capture; any device). ``"graph"``: the static iteration replayed as a CUDA graph
            (CUDA tensors). Static buffers need a schedule with fixed shapes.
        rows_per_call: rows per model call in ``"eager"`` mode (None: the whole batch); static buffers run the
            whole batch in one call.
        progress: show a tqdm progress bar.

    Returns:
        The traversal's result for the whole batch.

    Raises:
        ValueError: an unknown ``mode``, or static buffers for a schedule without fixed shapes.
    """
    _check_mode(mode, settings)
    schedule = schedule_named(settings.schedule)(settings, len(problem.labels), problem.x0.device)
    # CUDA graphs capture under a device guard (see lst_fast.graphs), the buffers' set-up included.
    guard = torch.cuda.device(problem.x0.device) if mode == "graph" else contextlib.nullcontext()
    with guard:
        if mode == "eager":
            evaluate_rows = functools.partial(evaluate, forward, rows_per_call=rows_per_call)
            buffers = _SwapBuffers(problem, evaluate_rows, settings, layout)
        else:
            buffers = StaticBuffers(problem, forward, settings, layout)
        body = functools.partial(_iteration, buffers, schedule, settings, backend)
        iteration = GraphReplay(body, problem.x0.device) if mode == "graph" else body
        desc = f"LST ({schedule.name}{', CUDA graph' if mode == 'graph' else ''})"
        recorder = PathRecorder(settings)
        rows = _drive(problem, forward, settings, schedule, buffers, iteration, recorder, progress, desc)
        if mode == "graph":
            iteration.check(settings.iters)
    x, final_conf, accepted, evaluations, last_step = rows.assemble()
    return build_result(problem, settings, x, final_conf, accepted, recorder, evaluations=evaluations,
                        final_step_size=last_step)


def _drive(problem, forward, settings, schedule, buffers, iteration, recorder, progress, desc) -> "_Finished":
    """The loop: at most ``iters`` iterations of ``iteration`` (the body, or its CUDA-graph replay), recording
    the path where due and retiring the rows the schedule finishes; then the rows still running finish."""
    finished_rows = _Finished(torch.arange(len(problem.labels), device=problem.x0.device))
    candidates = 0
    with tqdm(total=settings.iters, disable=not progress, desc=desc) as bar:
        for it in range(settings.iters):
            if recorder.due(it):
                recorder.add(it, buffers.x, buffers.probs, problem, forward=forward, grad=buffers.grad)
            finished = iteration(it)
            candidates = it + 1
            bar.update()
            if finished is not None and finished.any():
                finished_rows.retire(finished, buffers, schedule, candidates)
                if finished_rows.running == 0:
                    break
    if finished_rows.running:
        finished_rows.retire(None, buffers, schedule, candidates)
    return finished_rows


def _iteration(buffers, schedule: Schedule, settings: TraversalSettings, backend: str, iteration: int):
    """One iteration for every running row: the step, the candidate's evaluation, the spec's acceptance
    rule, the selection and the schedule's bookkeeping. Returns the rows the schedule finished (or None)."""
    with torch.no_grad():
        _scaled_step(buffers.x, buffers.grad, buffers.tgt, buffers.delta, buffers.candidate,
                     schedule.step_scale(), settings, backend)
    cand_probs, cand_grad = buffers.evaluate_candidate(need_grad=schedule.needs_gradient(iteration))
    with torch.no_grad():
        # Algorithm §2.6-2.7: accept if the source-class confidence stays within pthresh of the clean source's.
        cand_conf = cand_probs.gather(1, buffers.labels.unsqueeze(1)).squeeze(1)
        accept = buffers.init_conf - cand_conf < settings.pthresh
        buffers.select(accept, cand_probs, cand_grad)
        buffers.accepted.add_(accept)
        return schedule.update(accept)


class _SwapBuffers:
    """The running rows' state for the eager loop, in buffers allocated once (and again when rows retire):
    the iterate, the candidate (they swap roles), the target, the correction, the softmax and the gradient."""

    def __init__(self, problem: Problem, evaluate, settings: TraversalSettings, layout: torch.memory_format):
        self.evaluate = evaluate
        self.labels, self.init_conf = problem.labels, problem.init_conf
        self.x = problem.x0.contiguous(memory_format=layout)
        self.candidate = torch.empty_like(self.x)
        self.tgt = problem.tgt.contiguous(memory_format=layout)
        self.delta = torch.zeros_like(self.x) if settings.adv_step_size > 0 else None
        self.accepted = torch.zeros_like(self.labels)
        self.probs, self.grad = evaluate(self.x, self.labels, need_grad=settings.iters > 0)

    def evaluate_candidate(self, need_grad: bool):
        return self.evaluate(self.candidate, self.labels, need_grad=need_grad)

    def select(self, accept: torch.Tensor, cand_probs: torch.Tensor, cand_grad: torch.Tensor | None) -> None:
        """Select without a full pass: rejected rows (usually none) copy their current state into the
        candidate's buffers, then iterate and candidate swap roles. Without a candidate gradient (the schedule
        needs none) the rows keep the gradient they had: every row that accepted is then finished."""
        rejected = (~accept).nonzero().squeeze(1)
        if len(rejected):
            self.candidate.index_copy_(0, rejected, self.x.index_select(0, rejected))
            cand_probs.index_copy_(0, rejected, self.probs.index_select(0, rejected))
            if cand_grad is not None:
                cand_grad.index_copy_(0, rejected, self.grad.index_select(0, rejected))
        self.x, self.candidate = self.candidate, self.x
        self.probs = cand_probs
        if cand_grad is not None:
            self.grad = cand_grad

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the running rows at positions ``rows`` (the others are finished), in their order."""
        for name in ("x", "tgt", "delta", "grad", "probs", "labels", "init_conf", "accepted"):
            setattr(self, name, _take_rows(getattr(self, name), rows))
        self.candidate = torch.empty_like(self.x)


def _take_rows(t: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    """Rows ``rows`` of ``t`` in a new tensor of t's memory format (the fused step needs matching layouts)."""
    return None if t is None else t.index_select(0, rows).contiguous(memory_format=memory_format_of(t))


class _Finished:
    """The finished rows' outcomes, collected as rows retire from the loop's buffers, and the valid row held at
    each position of the buffers (``order``)."""

    def __init__(self, order: torch.Tensor):
        self.order = order
        self.parts: list[tuple[torch.Tensor, ...]] = []  # (valid rows, x, conf, accepted, evaluations, last step)

    @property
    def running(self) -> int:
        return len(self.order)

    def retire(self, finished: torch.Tensor | None, buffers, schedule: Schedule, candidates: int) -> None:
        """Record the rows ``finished`` (bool over the running rows; None: all of them) after ``candidates``
        candidates each (every running row has had the same number), and drop them from the buffers and the
        schedule."""
        conf = buffers.probs.gather(1, buffers.labels.unsqueeze(1)).squeeze(1)
        rows = (self.order, buffers.x, conf, buffers.accepted, schedule.last_step_sizes())
        if finished is None:
            self._add(rows, candidates)
            self.order = self.order[:0]
            return
        done, keep = finished.nonzero().squeeze(1), (~finished).nonzero().squeeze(1)
        self._add(tuple(t.index_select(0, done) for t in rows), candidates)
        buffers.keep(keep)
        schedule.keep(keep)
        self.order = self.order[keep]

    def _add(self, rows: tuple[torch.Tensor, ...], candidates: int) -> None:
        order, x, conf, accepted, last_step = rows
        evaluations = torch.full_like(accepted, candidates + 1)  # the start point and every candidate
        self.parts.append((order, x, conf, accepted, evaluations, last_step))

    def assemble(self) -> tuple[torch.Tensor, ...]:
        """(x, final_conf, accepted, evaluations, last step size) of every valid row, in the valid rows' order."""
        if len(self.parts) == 1:  # every row finished in the same iteration: still in the valid rows' order
            return self.parts[0][1:]
        order, *fields = (torch.cat(column) for column in zip(*self.parts))
        return tuple(torch.empty_like(f).index_copy_(0, order, f) for f in fields)


def _scaled_step(x, grad, tgt, delta, out, scale: float | torch.Tensor, settings, backend: str) -> None:
    """The step of algorithm §2.2-2.5 with per-row step sizes ``scale * step_size`` (correction scaled alike),
    ``scale`` a float for every row or a (B,) float64 tensor: one call of the chosen kernel either way. The
    loop's only call of the step kernels."""
    adv_step_size = settings.adv_step_size * scale if settings.adv_step_size > 0 else 0.0  # 0: no correction
    ops.lst_step_(x, grad, tgt, delta, out, step_size=settings.step_size * scale, adv_step_size=adv_step_size,
                  backend=backend)
