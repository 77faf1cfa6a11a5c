"""Traversal schedules: how large each row's next step is and when a row is finished.

A schedule is the per-row policy of the fast loop (:func:`lst_fast.fast.run_schedule`); that loop owns
everything else: the step kernel, the model calls, the spec's acceptance rule (section 2, steps 6-7), keeping
the accepted candidates, retiring finished rows, recording the path and the result. Every schedule gets the
same budget: at most ``iters`` candidates per row. Two are registered:

- ``paper``: ``iters`` steps of ``step_size`` for every row, exactly the spec's loop;
- ``adaptive``: a row's step grows after an accepted candidate and shrinks after a rejected one, and the row
  stops once its accepted steps add up to the paper's ``iters * step_size``.

The registry (:data:`REGISTRY` and the queries below it) is what the rest of the package asks about
schedules: the ``schedule`` setting's choices, whether a schedule can record the path (``records``) or run as
CUDA graphs (``fixed_shapes``), and which settings are a schedule's own knobs (:func:`knob_owner`).

How to add a schedule:

1. Subclass :class:`Schedule` here: set ``name``, ``knobs`` (the :class:`lst_fast.settings.TraversalSettings`
   fields only it reads), ``records`` and ``fixed_shapes``; implement ``__init__`` (the start state of the
   running rows), :meth:`~Schedule.step_scale`, :meth:`~Schedule.needs_gradient`, :meth:`~Schedule.update`,
   :meth:`~Schedule.last_step_sizes` and :meth:`~Schedule.keep`.
2. Add the class to :data:`REGISTRY`: the ``schedule`` setting accepts its name, and the fast loop, the
   checks of which options combine with it, the sweeps and the benchmarks follow.
3. Add its knobs as fields of ``TraversalSettings`` (``sweep=True`` if sweeps should vary them).
4. Transcribe it in :mod:`lst_fast.reference` (the independent yardstick) and test the fast loop against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

# torch is imported where a schedule makes tensors: the registry (the ``schedule`` setting's choices, which the
# command line's parser reads) needs none.
if TYPE_CHECKING:
    import torch


class Schedule:
    """The per-row state of one schedule for the rows still running, in the fast loop's buffer order.

    Each iteration the loop asks :meth:`step_scale` and :meth:`needs_gradient`, makes and evaluates one
    candidate per running row, decides acceptance, and hands the decision to :meth:`update`, which says which
    rows are finished. Finished rows are reported with :meth:`last_step_sizes` and then dropped with
    :meth:`keep`; the rows still running after ``iters`` candidates finish then.

    Args:
        settings: the traversal's :class:`lst_fast.settings.TraversalSettings`.
        rows: the number of rows at the start.
        device: where the rows' tensors live.
    """

    name: ClassVar[str]
    knobs: ClassVar[tuple[str, ...]] = ()  # settings only this schedule reads
    records: ClassVar[bool] = False  # rows move in lockstep, so the path can be recorded every log_every iterations
    # Every row runs every iteration and no bookkeeping needs the host (update returns None), so one iteration
    # can be captured as a CUDA graph and replayed.
    fixed_shapes: ClassVar[bool] = False

    def __init__(self, settings, rows: int, device: torch.device):
        self.settings = settings

    def step_scale(self) -> float | torch.Tensor:
        """The next candidate's step of each running row in multiples of ``step_size``, the correction's in
        multiples of ``adv_step_size``: one float for every row, or a (rows,) float64 tensor."""
        raise NotImplementedError

    def needs_gradient(self, iteration: int) -> bool:
        """Whether the gradient at this iteration's candidates can be used (False: no accepted candidate
        takes another step, so the model call may skip its backward)."""
        raise NotImplementedError

    def update(self, accept: torch.Tensor) -> torch.Tensor | None:
        """Book this iteration's candidates, ``accept`` (rows,) bool being the acceptance rule's decision.

        Returns:
            (rows,) bool: the rows finished now, or None when no row finishes before the budget.
        """
        raise NotImplementedError

    def last_step_sizes(self) -> torch.Tensor:
        """(rows,) float64 step size of each running row's last candidate."""
        raise NotImplementedError

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the running rows at positions ``rows`` (int64, increasing): the others are finished."""
        raise NotImplementedError


class PaperSchedule(Schedule):
    """The spec's loop: ``iters`` candidates of ``step_size`` (correction ``adv_step_size``) for every row."""

    name = "paper"
    records = True
    fixed_shapes = True

    def __init__(self, settings, rows: int, device: torch.device):
        super().__init__(settings, rows, device)
        self.rows, self.device = rows, device

    def step_scale(self) -> float:
        return 1.0

    def needs_gradient(self, iteration: int) -> bool:
        return iteration < self.settings.iters - 1  # the last candidate only needs its confidence

    def update(self, accept: torch.Tensor) -> None:
        return None

    def last_step_sizes(self) -> torch.Tensor:
        import torch

        return torch.full((self.rows,), self.settings.step_size, dtype=torch.float64, device=self.device)

    def keep(self, rows: torch.Tensor) -> None:
        self.rows = len(rows)


class AdaptiveSchedule(Schedule):
    """Per-row steps ``scale * step_size`` (correction ``scale * adv_step_size``, so their ratio, which sets how
    far from the target the correction holds the iterate, is the paper's). ``scale`` starts at 1, is multiplied
    by ``step_growth`` after an accepted candidate and by ``step_shrink`` after a rejected one, within
    [1, ``max_step_scale``]; a row is finished once its accepted scales add up to ``iters``."""

    name = "adaptive"
    knobs = ("step_growth", "step_shrink", "max_step_scale")

    def __init__(self, settings, rows: int, device: torch.device):
        import torch

        super().__init__(settings, rows, device)
        self.scale = torch.ones(rows, dtype=torch.float64, device=device)
        self.progress = torch.zeros(rows, dtype=torch.float64, device=device)  # accepted steps, in step_size
        self.last_step = torch.zeros(rows, dtype=torch.float64, device=device)  # 0 until the first candidate

    def step_scale(self) -> torch.Tensor:
        return self.scale

    def needs_gradient(self, iteration: int) -> bool:
        # Rows whose accepted candidate would finish them need no gradient there (nor do rejected ones).
        iters = self.settings.iters
        return not (iteration == iters - 1 or bool((self.progress + self.scale >= iters).all()))

    def update(self, accept: torch.Tensor) -> torch.Tensor:
        import torch

        settings, scale = self.settings, self.scale
        self.last_step = scale * settings.step_size
        self.progress = self.progress + torch.where(accept, scale, 0)
        grown = (scale * settings.step_growth).clamp_(max=settings.max_step_scale)
        self.scale = torch.where(accept, grown, (scale * settings.step_shrink).clamp_(min=1.0))
        return self.progress >= settings.iters

    def last_step_sizes(self) -> torch.Tensor:
        return self.last_step

    def keep(self, rows: torch.Tensor) -> None:
        self.scale, self.progress, self.last_step = self.scale[rows], self.progress[rows], self.last_step[rows]


REGISTRY: dict[str, type[Schedule]] = {s.name: s for s in (PaperSchedule, AdaptiveSchedule)}


def schedule_names(*, records: bool | None = None, fixed_shapes: bool | None = None) -> tuple[str, ...]:
    """The registered schedules' names, in registration order (the first is the default).

    Args:
        records: if given, only the schedules that can (True) or cannot (False) record the path.
        fixed_shapes: if given, only the schedules that can (True) or cannot (False) run as CUDA graphs.

    Returns:
        The names, e.g. ``("paper", "adaptive")``.
    """
    return tuple(
        name for name, schedule in REGISTRY.items()
        if records in (None, schedule.records) and fixed_shapes in (None, schedule.fixed_shapes)
    )


def schedule_named(name: str) -> type[Schedule]:
    """The schedule registered as ``name``.

    Args:
        name: a name in :data:`REGISTRY` (see :func:`schedule_names`).

    Returns:
        The :class:`Schedule` subclass (not an instance).

    Raises:
        ValueError: ``name`` is not a registered schedule.
    """
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"schedule must be one of {list(REGISTRY)}, got {name!r}")
    return REGISTRY[name]


def knob_owner(setting: str) -> str | None:
    """The schedule whose own knob the traversal setting ``setting`` is.

    Args:
        setting: the name of a :class:`lst_fast.settings.TraversalSettings` field.

    Returns:
        The schedule's name, or None for a setting every schedule reads (e.g.
        ``knob_owner("step_growth") == "adaptive"``, ``knob_owner("iters") is None``).
    """
    owners = [name for name, schedule in REGISTRY.items() if setting in schedule.knobs]
    return owners[0] if owners else None
