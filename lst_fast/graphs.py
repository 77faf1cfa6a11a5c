"""CUDA graphs for the fast loop: the loop's state in static buffers, and a way to run the loop's iteration
as replays of one captured CUDA graph. Only schedules with fixed shapes (every row runs every iteration, no
host-side bookkeeping: :attr:`lst_fast.schedules.Schedule.fixed_shapes`) run this way.

The eager buffers of the fast loop (lst_fast.fast) select by copying only the rejected rows, which needs to
know on the host which rows rejected. Here selection is a masked copy of the candidate into the iterate (a full
pass, cheap on a GPU), so the iteration never leaves the device. Run eagerly (``mode="static"`` of
:func:`lst_fast.fast.run_schedule`), the same iteration is tested on CPU against the reference loop.

Capture runs under a device guard on a stream of the tensors' device: ``torch.cuda.graph`` otherwise
captures on a stream of whichever device was current, the step's kernels run eagerly elsewhere and the graph
is empty (torch only warns), so every replay would silently do nothing. An iteration counter on the device,
incremented at the end of every iteration, makes that an error: capture must leave it unchanged (the work was
recorded, not run) and the run must end with it at ``iters`` (every replay ran the whole iteration).
"""

from __future__ import annotations

from typing import Callable

import torch

from lst_fast.classifier import probabilities
from lst_fast.model_runner import input_grad

WARMUP_ITERS = 3  # eager iterations on a side stream before capture, as CUDA graph capture requires


class StaticBuffers:
    """The loop's state in fixed buffers, with an evaluation and a selection that only touch those buffers.

    The loop's iteration reads ``x``, ``grad``, ``tgt``, ``delta``, ``labels``, ``init_conf``, writes the step
    into ``candidate``, and calls :meth:`evaluate_candidate` and :meth:`select`; ``probs`` and ``accepted``
    are the current softmax and accepted-step counts.
    """

    def __init__(self, problem, forward, settings, layout: torch.memory_format):
        self.forward = forward
        self.labels, self.init_conf = problem.labels, problem.init_conf
        self.x = problem.x0.contiguous(memory_format=layout).clone()
        self.tgt = problem.tgt.contiguous(memory_format=layout)
        self.delta = torch.zeros_like(self.x) if settings.adv_step_size > 0 else None
        # The candidate is a leaf that requires grad, so the backward differentiates w.r.t. a fixed buffer.
        self._leaf = torch.empty_like(self.x).requires_grad_(True)
        self.candidate = self._leaf.detach()  # the same memory, for the step to write into
        self.accepted = torch.zeros_like(self.labels)
        with torch.enable_grad():
            probs, grad = self._evaluate(self.x.detach().clone().requires_grad_(True))
        self.probs, self.grad = probs, grad.contiguous(memory_format=layout)

    def _evaluate(self, leaf: torch.Tensor):
        logits = self.forward(leaf)
        grad = input_grad(logits, self.labels, leaf)  # loss-scaled for fp16
        return probabilities(logits), grad

    def evaluate_candidate(self, need_grad: bool):
        """Softmax and input gradient at the candidate; always with the backward, so that one captured
        iteration serves every replay (``need_grad`` is not used)."""
        with torch.enable_grad():
            return self._evaluate(self._leaf)

    def select(self, accept: torch.Tensor, cand_probs: torch.Tensor, cand_grad: torch.Tensor) -> None:
        """Accepted rows take the candidate, its softmax and its gradient (masked copies, no host sync)."""
        rows = accept.view(-1, *([1] * (self.x.dim() - 1)))
        self.x.copy_(torch.where(rows, self.candidate, self.x))
        self.grad.copy_(torch.where(rows, cand_grad, self.grad))
        self.probs.copy_(torch.where(accept.unsqueeze(1), cand_probs, self.probs))


class GraphReplay:
    """Runs a loop iteration ``body(iteration)`` on static buffers as CUDA-graph replays: the first
    WARMUP_ITERS iterations eagerly on a side stream, then one capture, then a replay per iteration.

    Args:
        body: one iteration of the loop; it must only touch static buffers and never synchronise the host.
        device: the CUDA device of the buffers (run under ``torch.cuda.device(device)``, see the module
            docstring).
    """

    def __init__(self, body: Callable[[int], object], device: torch.device):
        self.body = body
        self.iterations = torch.zeros((), dtype=torch.int64, device=device)  # see the module docstring
        self.stream = torch.cuda.Stream(device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def _counted(self, iteration: int) -> None:
        self.body(iteration)
        self.iterations.add_(1)  # last, so that a capture that stops early is caught too

    def __call__(self, iteration: int) -> None:
        """Run iteration ``iteration`` (0, 1, 2, ... in turn); returns None (no row finishes early)."""
        if iteration < WARMUP_ITERS:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                self._counted(iteration)
            torch.cuda.current_stream().wait_stream(self.stream)
            return None
        if self.graph is None:
            self.graph = _capture(lambda: self._counted(iteration), self.iterations, self.stream, iteration)
        self.graph.replay()
        return None

    def check(self, iterations: int) -> None:
        """After the loop: raises RuntimeError unless every one of ``iterations`` iterations ran in full."""
        _check_iterations(self.iterations, iterations, "after the last replay", self.stream.device)


def _capture(step: Callable[[], object], counter: torch.Tensor, stream: torch.cuda.Stream,
             done: int) -> torch.cuda.CUDAGraph:
    """Record ``step`` (not run) as a CUDA graph on ``stream``, checking with the iteration ``counter`` (``done``
    before the capture) that nothing ran eagerly."""
    graph = torch.cuda.CUDAGraph()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.graph(graph, stream=stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    _check_iterations(counter, done, "after the capture", stream.device)
    return graph


def _check_iterations(counter: torch.Tensor, expected: int, when: str, device: torch.device) -> None:
    torch.cuda.synchronize(device)  # work that escaped the capture may run on any stream of the device
    got = int(counter.item())
    if got != expected:
        raise RuntimeError(
            f"lst_fast: CUDA graph capture on {device} went wrong: {got} iterations ran {when}, expected "
            f"{expected} (the iteration was not recorded on the capture stream, so replays do nothing)"
        )
