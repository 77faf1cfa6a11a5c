"""The fast Level Set Traversal loop: the reference's results at the cost of one forward+backward per step.

Spec section 2, "Observation": a row that accepts its candidate takes its next gradient at exactly the
point just evaluated, and a row that rejects keeps the gradient it already had. So the loop evaluates each
candidate *with* its backward, keeps the candidate's gradient for accepted rows and the cached one for
rejected rows, and never runs the reference's second forward. The step itself is one fused kernel
(:mod:`lst_fast.ops`) writing into buffers allocated once per call.
"""

from __future__ import annotations

import functools

import torch
from tqdm.auto import tqdm

from lst_fast import ops
from lst_fast.graphs import run_static
from lst_fast.tuning import (
    autocast_context,
    input_grad,
    resolve_memory_format,
    resolve_rows_per_call,
    row_slices,
    tuned_model,
    with_autocast,
)
from lst_fast.traversal import (
    PathRecorder,
    TraversalResult,
    build_result,
    check_settings,
    make_forward,
    model_guard,
    prepare,
    probabilities,
)


def traverse_batch(
    model: torch.nn.Module,
    srcs: torch.Tensor,
    tgts: torch.Tensor,
    labels=None,
    *,
    target_labels=None,
    normalizer=None,
    step_size: float = 1e-2,
    iters: int = 400,
    pthresh: float = 0.2,
    adv_step_size: float | None = 2e-3,
    init_noise: float = 4 / 255,
    log_every: int = 0,
    record=(),
    width_distances=(0.5, 1, 1.5, 2),
    width_num_vecs: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = False,
    memory_format: str = "auto",
    fold_batchnorm: bool = True,
    precision: str = "fp32",
    cuda_graphs: bool = False,
    rows_per_call: int | str | None = "auto",
    backend: str | None = None,
) -> TraversalResult:
    """Level set traversal from each source image towards its target image.

    Args:
        model: classifier returning (B, K) logits; run in eval mode with frozen parameters, both restored.
        srcs, tgts: (B, C, H, W) images in [0, 1]; pair ``i`` goes from ``srcs[i]`` towards ``tgts[i]``.
        labels: (B,) source classes; default ``argmax model(srcs)``. Rows the model does not classify as
            their label are invalid and returned unchanged.
        target_labels: (B,) target classes for the recorded target confidence; default ``argmax model(tgts)``.
        normalizer: callable applied to images before the model (e.g. :class:`lst_fast.models.Normalize`).
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
            (:func:`lst_fast.tuning.default_rows_per_call`); None: the whole batch; or a positive int. Rows
            are independent (the loss is summed), so this changes results only by float rounding.
        backend: the step kernel (see :func:`lst_fast.ops.available_backends`); default the fastest here.
    """
    settings = check_settings(
        step_size=step_size, iters=iters, pthresh=pthresh, adv_step_size=adv_step_size,
        init_noise=init_noise, log_every=log_every, record=record,
        width_distances=width_distances, width_num_vecs=width_num_vecs,
    )
    for name, flag in (("fold_batchnorm", fold_batchnorm), ("cuda_graphs", cuda_graphs)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if cuda_graphs and not (isinstance(srcs, torch.Tensor) and srcs.device.type == "cuda"):
        raise ValueError(f"cuda_graphs=True needs CUDA tensors, got srcs on {getattr(srcs, 'device', None)}")
    with model_guard(model):
        layout = resolve_memory_format(memory_format, model)
        problem = prepare(model, srcs, tgts, labels, target_labels, normalizer, settings, generator)
        step_backend = _check_backend(backend, problem.x0)
        rows = resolve_rows_per_call(rows_per_call, problem.x0, model)
        if cuda_graphs and rows is not None and rows < len(problem.x0):
            raise ValueError(f"cuda_graphs=True runs the whole batch in one call; got rows_per_call={rows_per_call!r}")
        autocast = autocast_context(precision, problem.x0.device, cache=not cuda_graphs)
        if len(problem.labels) == 0:  # no valid rows: nothing to traverse
            x, final_conf, accepted, recorder = problem.x0, problem.init_conf, problem.labels * 0, PathRecorder(settings)
        else:
            runner = tuned_model(model, problem.x0[:4], normalizer=normalizer, layout=layout, fold=fold_batchnorm)
            forward = with_autocast(make_forward(runner, normalizer), autocast)
            if cuda_graphs:
                run = functools.partial(run_static, capture=True)
            else:
                run = functools.partial(_run, rows_per_call=rows)
            x, final_conf, accepted, recorder = run(problem, forward, settings, layout, step_backend, progress)
    return build_result(problem, settings, x, final_conf, accepted, recorder)


def _run(problem, forward, settings, layout, backend, progress, rows_per_call=None):
    y, p0 = problem.labels, problem.init_conf
    evaluate = functools.partial(_evaluate, forward, rows_per_call=rows_per_call)
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
            recorder.add(it, x, probs, problem, forward=forward, grad=grad)
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


def _evaluate(forward, x: torch.Tensor, labels: torch.Tensor, *, need_grad: bool, rows_per_call: int | None):
    """Softmax at ``x`` and, if ``need_grad``, the input gradient of the summed cross-entropy (same layout as
    x), in model calls of at most ``rows_per_call`` rows (None: one call)."""
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
    """One model call of :func:`_evaluate`."""
    if not need_grad:
        with torch.no_grad():
            return probabilities(forward(x)), None
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(x_in)
        grad = input_grad(logits, labels, x_in)  # loss-scaled for fp16
    if grad.stride() != x.stride():  # some models hand back another layout; the fused step needs x's
        grad = grad.contiguous(memory_format=_layout_of(x))
    return probabilities(logits), grad


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _check_backend(backend: str | None, x: torch.Tensor) -> str:
    available = ops.available_backends(x.device, x.dtype)
    if backend is None:
        return available[0]
    if backend not in available:
        raise ValueError(f"backend must be one of {available} for {x.dtype} on {x.device}, got {backend!r}")
    return backend
