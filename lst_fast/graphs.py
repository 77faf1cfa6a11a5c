"""The fast loop with static buffers and no host synchronisation, so that one iteration (forward, backward,
fused step, select) can be captured once as a CUDA graph and replayed.

The eager fast loop (lst_fast.fast) selects by copying only the rejected rows, which needs to know on the
host which rows rejected. Here selection is a masked copy of the candidate into the iterate (a full
pass, cheap on a GPU), so the iteration never leaves the device. With ``capture=False`` the same body runs
eagerly, which is how it is tested on CPU against the reference loop.

Capture runs under a device guard on a stream of the tensors' device: ``torch.cuda.graph`` otherwise
captures on a stream of whichever device was current, the step's kernels run eagerly elsewhere and the graph
is empty (torch only warns), so every replay would silently do nothing. An iteration counter on the device,
incremented at the end of every iteration, makes that an error: capture must leave it unchanged (the work was
recorded, not run) and the run must end with it at ``iters`` (every replay ran the whole iteration).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from lst_fast import ops
from lst_fast.classifier import probabilities
from lst_fast.traversal import PathRecorder
from lst_fast.model_runner import input_grad

WARMUP_ITERS = 3  # eager iterations on a side stream before capture, as CUDA graph capture requires


class StaticIteration:
    """The loop's state in fixed buffers and one iteration that only touches those buffers."""

    def __init__(self, problem, forward, settings, layout, backend):
        self.forward, self.settings, self.backend = forward, settings, backend
        self.labels, self.init_conf = problem.labels, problem.init_conf
        self.x = problem.x0.contiguous(memory_format=layout).clone()
        self.tgt = problem.tgt.contiguous(memory_format=layout)
        self.delta = torch.zeros_like(self.x) if settings.adv_step_size > 0 else None
        # The candidate is a leaf that requires grad, so the backward differentiates w.r.t. a fixed buffer.
        self.cand = torch.empty_like(self.x).requires_grad_(True)
        self.accepted = torch.zeros_like(self.labels)
        self.iterations = torch.zeros((), dtype=torch.int64, device=self.x.device)  # see the module docstring
        with torch.enable_grad():
            probs, grad = self._evaluate(self.x.detach().clone().requires_grad_(True))
        self.probs, self.grad = probs, grad.contiguous(memory_format=layout)

    def _evaluate(self, leaf: torch.Tensor):
        logits = self.forward(leaf)
        grad = input_grad(logits, self.labels, leaf)  # loss-scaled for fp16
        return probabilities(logits), grad

    def step(self) -> None:
        settings = self.settings
        with torch.no_grad():
            ops.lst_step_(
                self.x, self.grad, self.tgt, self.delta, self.cand.detach(),
                step_size=settings.step_size, adv_step_size=settings.adv_step_size, backend=self.backend,
            )
        with torch.enable_grad():
            cand_probs, cand_grad = self._evaluate(self.cand)
        with torch.no_grad():
            cand_conf = cand_probs.gather(1, self.labels.unsqueeze(1)).squeeze(1)
            accept = self.init_conf - cand_conf < settings.pthresh
            rows = accept.view(-1, *([1] * (self.x.dim() - 1)))
            self.x.copy_(torch.where(rows, self.cand.detach(), self.x))
            self.grad.copy_(torch.where(rows, cand_grad, self.grad))
            self.probs.copy_(torch.where(accept.unsqueeze(1), cand_probs, self.probs))
            self.accepted.add_(accept)
            self.iterations.add_(1)  # last, so that a capture that stops early is caught too


def run_static(problem, forward, settings, layout, backend, progress: bool, capture: bool):
    """Run the loop on static buffers; with ``capture`` (CUDA only) iterations are CUDA-graph replays."""
    if not capture:
        return _run(problem, forward, settings, layout, backend, progress, capture=False)
    with torch.cuda.device(problem.x0.device):
        return _run(problem, forward, settings, layout, backend, progress, capture=True)


def _run(problem, forward, settings, layout, backend, progress, capture):
    recorder = PathRecorder(settings)
    state = StaticIteration(problem, forward, settings, layout, backend)
    graph = None
    side_stream = torch.cuda.Stream(device=state.x.device) if capture else None
    for it in tqdm(range(settings.iters), disable=not progress, desc="LST (graph)" if capture else "LST"):
        if recorder.due(it):
            recorder.add(it, state.x, state.probs, problem, forward=forward, grad=state.grad)
        if not capture:
            state.step()
        elif it < WARMUP_ITERS:
            side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side_stream):
                state.step()
            torch.cuda.current_stream().wait_stream(side_stream)
        else:
            if graph is None:
                graph = _capture(state, side_stream, it)
            graph.replay()
    if capture:
        _check_iterations(state, settings.iters, "after the last replay")
    final_conf = state.probs.gather(1, state.labels.unsqueeze(1)).squeeze(1)
    return state.x, final_conf, state.accepted, recorder


def _capture(state: StaticIteration, stream: torch.cuda.Stream, done: int) -> torch.cuda.CUDAGraph:
    """Record one iteration (not run) as a CUDA graph on ``stream``, checking that nothing ran eagerly."""
    graph = torch.cuda.CUDAGraph()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.graph(graph, stream=stream):
        state.step()
    torch.cuda.current_stream().wait_stream(stream)
    _check_iterations(state, done, "after the capture")
    return graph


def _check_iterations(state: StaticIteration, expected: int, when: str) -> None:
    torch.cuda.synchronize(state.x.device)  # work that escaped the capture may run on any stream of the device
    got = int(state.iterations.item())
    if got != expected:
        raise RuntimeError(
            f"lst_fast: CUDA graph capture on {state.x.device} went wrong: {got} iterations ran {when}, expected "
            f"{expected} (the iteration was not recorded on the capture stream, so replays do nothing)"
        )
