"""The step's inputs and its eager transcription, shared by the tests (tests/test_ops.py) and the benchmarks
(bench/), so that what is tested and what is timed are the same tensors and the same chain of operations.
"""

from __future__ import annotations

import torch

ADV_STEP_SIZE = 2e-3  # the paper's adversarial step size


def eager_step(x, grad, tgt, delta, step_size: float, adv_step_size: float):
    """The spec's step (section 2, steps 2-5) as a chain of eager PyTorch operations in the inputs' dtype,
    fresh tensors at every operation, written independently of lst_fast.ops: ``(candidate, new_delta)``.

    ``delta=None`` means a zero correction; with the correction off (``adv_step_size == 0``) delta is neither
    used nor changed. A row with a zero gradient steps along ``tgt - x`` itself.
    """
    delta = torch.zeros_like(x) if delta is None else delta
    v = tgt - x
    grad_v = (grad * v).flatten(1).sum(1)
    grad_grad = (grad * grad).flatten(1).sum(1)
    coef = torch.where(grad_grad > 0, grad_v / torch.where(grad_grad > 0, grad_grad, 1.0), 0.0)
    v_perp = v - grad * coef.view(-1, *[1] * (x.dim() - 1))
    if adv_step_size == 0:
        return torch.clamp(x + step_size * v_perp, 0, 1), delta
    delta = torch.clamp(delta + adv_step_size / 2 * grad, -adv_step_size, adv_step_size)
    return torch.clamp(x + step_size * v_perp - delta, 0, 1), delta


def expected_step(x, grad, tgt, delta, step_size, adv_step_size):
    """:func:`eager_step` in float64: the expectation every backend is tested against."""
    x, grad, tgt = (t.double() for t in (x, grad, tgt))
    return eager_step(x, grad, tgt, None if delta is None else delta.double(), step_size, adv_step_size)


def make_inputs(shape, *, dtype=torch.float32, device="cpu", channels_last=False, seed=0,
                adv_step_size: float = ADV_STEP_SIZE):
    """Random x, grad, tgt, delta with a zero-gradient row and a correction that often saturates. Pixels where
    x and tgt are both 0 (or both 1) and delta is +adv_step_size (-adv_step_size) push candidates below 0
    (above 1)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    tgt = torch.rand(shape, generator=gen, dtype=torch.float64)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    delta = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * adv_step_size
    for start, value in ((0, 0.0), (3, 1.0)):
        x.view(-1)[start::7] = value
        tgt.view(-1)[start::7] = value
        delta.view(-1)[start::7] = adv_step_size if value == 0 else -adv_step_size
    if shape[0] > 1:
        grad[1] = 0.0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return [t.to(device=device, dtype=dtype).contiguous(memory_format=memory_format) for t in (x, grad, tgt, delta)]
