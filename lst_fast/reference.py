"""The reference Level Set Traversal loop: an eager, readable transcription of the spec (section 2).

Two forwards and a backward per iteration, in exactly the spec's order of operations. It is the yardstick
that every fast path is tested against, so it stays simple rather than fast.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from lst_fast.classifier import class_conf, input_grad_loss, model_guard
from lst_fast.settings import TraversalSettings, check_settings, with_setting_keywords
from lst_fast.traversal import PathRecorder, TraversalResult, build_result, prepare


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
    **setting_keywords,
) -> TraversalResult:
    """Level set traversal from each source towards its target (reference implementation).

    Takes the same arguments and returns the same type as :func:`lst_fast.traverse_batch`: two forwards and a
    backward per iteration and an eager step, line by line as algorithm §1-§3 state them. The adaptive
    schedule runs every row in every iteration and masks the finished ones (the fast path removes them).

    Returns:
        A :class:`lst_fast.traversal.TraversalResult`, as :func:`lst_fast.traverse_batch` returns it.

    Raises:
        ValueError, TypeError: as :func:`lst_fast.traverse_batch` (the same checks).
    """
    settings = check_settings(settings, **setting_keywords)
    with model_guard(model):
        problem = prepare(model, srcs, tgts, labels, target_labels, normalizer, settings, generator)
        if settings.schedule == "adaptive":
            return _traverse_adaptive(problem, settings, progress)
        forward, y, tgt, p0 = problem.forward, problem.labels, problem.tgt, problem.init_conf
        x = problem.x0.clone()
        delta = torch.zeros_like(x)
        accepted = torch.zeros_like(y)
        recorder = PathRecorder(settings)
        a = settings.adv_step_size
        for it in tqdm(range(settings.iters if len(y) else 0), disable=not progress, desc="LST (reference)"):
            # 1. gradient of the summed cross-entropy at x
            x_in = x.clone().requires_grad_(True)
            logits = forward(x_in)
            (grad,) = torch.autograd.grad(input_grad_loss(logits, y), x_in)
            if recorder.due(it):
                recorder.add(it, x, logits.detach().softmax(1), problem, forward=forward, grad=grad)
            # 2-3. orthogonal component of (tgt - x) w.r.t. the gradient
            v_perp = _orthogonal_component(tgt - x, grad)
            # 4. adversarial correction, updated for every row every iteration
            if a > 0:
                delta = torch.clamp(delta + (a / 2) * grad, -a, a)
            # 5. candidate
            cand = torch.clamp(x + settings.step_size * v_perp - delta, 0, 1)
            # 6-7. accept if the source-class confidence stays within pthresh of the clean source's
            with torch.no_grad():
                accept = p0 - class_conf(forward(cand), y) < settings.pthresh
            x = torch.where(accept.view(-1, 1, 1, 1), cand, x)
            accepted += accept
        with torch.no_grad():
            final_conf = class_conf(forward(x), y) if len(y) else p0
    return build_result(problem, settings, x, final_conf, accepted, recorder)


def _orthogonal_component(v: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Algorithm §2.3: ``v - grad * <grad, v> / <grad, grad>`` per row; ``v`` itself where the gradient is exactly zero
    (the documented deviation from the original's NaN)."""
    column = (-1,) + (1,) * (v.dim() - 1)
    grad_v = (grad * v).flatten(1).sum(1)
    grad_grad = (grad * grad).flatten(1).sum(1)
    v_perp = v - grad * (grad_v / grad_grad).view(column)
    return torch.where((grad_grad == 0).view(column), v, v_perp)


def _traverse_adaptive(problem, settings, progress: bool) -> TraversalResult:
    """The adaptive schedule in plain PyTorch (see :func:`lst_fast.traverse_batch`): the spec's iteration
    with per-row step ``scale * step_size`` and correction ``scale * adv_step_size``; ``scale`` grows by
    ``step_growth`` on accept and shrinks by ``step_shrink`` on reject, within [1, max_step_scale]; a row stops
    once its accepted scales add up to ``iters`` or after ``iters`` candidates."""
    forward, y, tgt, p0 = problem.forward, problem.labels, problem.tgt, problem.init_conf
    x = problem.x0.clone()
    delta = torch.zeros_like(x)
    n = len(y)
    running = torch.ones(n, dtype=torch.bool, device=x.device)
    scale = torch.ones(n, dtype=torch.float64, device=x.device)
    steps_done = torch.zeros(n, dtype=torch.float64, device=x.device)  # accepted steps, in units of step_size
    candidates = torch.zeros(n, dtype=torch.long, device=x.device)
    accepted = torch.zeros_like(candidates)
    last_step = torch.zeros(n, dtype=torch.float64, device=x.device)
    column = (-1,) + (1,) * (x.dim() - 1)
    for _ in tqdm(range(settings.iters if n else 0), disable=not progress, desc="LST (reference, adaptive)"):
        if not running.any():
            break
        x_in = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(input_grad_loss(forward(x_in), y), x_in)
        v_perp = _orthogonal_component(tgt - x, grad)
        eta = (settings.step_size * scale).to(x.dtype).view(column)
        a = (settings.adv_step_size * scale).to(x.dtype).view(column)
        if settings.adv_step_size > 0:
            delta = torch.where(running.view(column), torch.clamp(delta + (a / 2) * grad, -a, a), delta)
        cand = torch.clamp(x + eta * v_perp - delta, 0, 1)
        with torch.no_grad():
            accept = (p0 - class_conf(forward(cand), y) < settings.pthresh) & running
        x = torch.where(accept.view(column), cand, x)
        accepted += accept
        candidates += running
        steps_done += torch.where(accept, scale, 0)
        last_step = torch.where(running, settings.step_size * scale, last_step)
        new_scale = torch.where(
            accept, (scale * settings.step_growth).clamp(max=settings.max_step_scale),
            (scale * settings.step_shrink).clamp(min=1.0),
        )
        scale = torch.where(running, new_scale, scale)
        running &= (steps_done < settings.iters) & (candidates < settings.iters)
    with torch.no_grad():
        final_conf = class_conf(forward(x), y) if n else p0
    return build_result(problem, settings, x, final_conf, accepted, PathRecorder(settings),
                        evaluations=candidates + 1, final_step_size=last_step)
