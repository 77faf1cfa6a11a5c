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

    Takes the same arguments and returns the same type as :func:`lst_fast.traverse_batch`.
    """
    settings = check_settings(settings, **setting_keywords)
    with model_guard(model):
        problem = prepare(model, srcs, tgts, labels, target_labels, normalizer, settings, generator)
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
            v = tgt - x
            grad_v = (grad * v).flatten(1).sum(1)
            grad_grad = (grad * grad).flatten(1).sum(1)
            v_perp = v - grad * (grad_v / grad_grad).view(-1, 1, 1, 1)
            v_perp = torch.where((grad_grad == 0).view(-1, 1, 1, 1), v, v_perp)  # documented deviation
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
