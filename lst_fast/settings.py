"""The settings of one traversal, in one frozen, validated dataclass: :class:`TraversalSettings`.

Both loops (:func:`lst_fast.traverse_batch`, :func:`lst_fast.reference.traverse_batch`) take it as
``settings=`` or its fields as keywords; :class:`lst_fast.sweep.SweepConfig` embeds it; ``lst-fast sweep``
makes one command-line option of every field marked ``sweep``. A new setting is one new field here: its
default, help text, check and (if a sweep should vary it) ``sweep=True``.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field, fields

from lst_fast.schedules import schedule_named, schedule_names
from lst_fast.validation import check_number, check_radii

RECORDABLE = ("conf", "images", "widths")
SCHEDULES = schedule_names()  # lst_fast.schedules.REGISTRY: the fast loop's schedules, the default first


@dataclass(frozen=True)
class Number:
    """The rule of a numeric setting (see :func:`lst_fast.validation.check_number`)."""

    minimum: float | None = None
    strict: bool = False
    integer: bool = False
    allow_none: bool = False

    def __call__(self, name: str, value):
        return check_number(
            name, value, minimum=self.minimum, strict=self.strict, integer=self.integer, allow_none=self.allow_none
        )

    def parse(self, name: str, text: str):
        """The checked value of a command-line option's text; ValueError/TypeError naming the setting."""
        try:
            value = (int if self.integer else float)(text)
        except ValueError:
            raise ValueError(f"{name} must be {'an int' if self.integer else 'a number'}, got {text!r}") from None
        return self(name, value)


@dataclass(frozen=True)
class Choice:
    """The rule of a setting that is one of a few strings (the command line offers them as choices)."""

    options: tuple[str, ...]

    def __call__(self, name: str, value):
        if not isinstance(value, str) or value not in self.options:
            raise ValueError(f"{name} must be one of {list(self.options)}, got {value!r}")
        return value

    def parse(self, name: str, text: str):
        return self(name, text)


def check_record(name: str, record) -> tuple[str, ...]:
    """What to record along the path: a subset of RECORDABLE (one name may be given as a string)."""
    record = (record,) if isinstance(record, str) else tuple(record)
    unknown = [r for r in record if r not in RECORDABLE]
    if unknown:
        raise ValueError(f"{name} may contain {RECORDABLE}, got unknown {unknown}")
    return record


def setting(default, help: str, check, *, sweep: bool = False, schedules: tuple[str, ...] = SCHEDULES):
    """A field of :class:`TraversalSettings`: its default, help text (documentation and command line), check
    (``check(name, value)`` returns the normalised value or raises), whether ``lst-fast sweep`` has an
    option for it (``check`` must then be a :class:`Number` or a :class:`Choice`, which can parse text), and the
    schedules that read it (under the others it changes nothing; see :func:`settings_read_by`)."""
    return field(default=default, metadata={"help": help, "check": check, "sweep": sweep, "schedules": schedules})


@dataclass(frozen=True, kw_only=True)
class TraversalSettings:
    """The settings of a traversal (algorithm §1-§3), checked on construction.

    Defaults are the paper's. ``adv_step_size`` None or 0 turns the adversarial correction off (stored as 0.0).
    """

    iters: int = setting(400, "LST iterations", Number(minimum=0, integer=True), sweep=True)
    step_size: float = setting(1e-2, "LST step size", Number(minimum=0, strict=True), sweep=True)
    pthresh: float = setting(
        0.2, "largest allowed drop of source confidence", Number(minimum=0, strict=True), sweep=True
    )
    adv_step_size: float = setting(
        2e-3, "adversarial correction step (0: off)", Number(minimum=0, allow_none=True), sweep=True
    )
    init_noise: float = setting(4 / 255, "start-point noise width (default: 4/255)", Number(minimum=0), sweep=True)
    log_every: int = setting(0, "record every log_every iterations (0: never)", Number(minimum=0, integer=True))
    record: tuple[str, ...] = setting((), f"what to record along the path, of {RECORDABLE}", check_record)
    width_distances: tuple[float, ...] = setting(
        (0.5, 1.0, 1.5, 2.0), "radii of the recorded path widths", check_radii
    )
    width_num_vecs: int = setting(256, "random directions per recorded path width", Number(minimum=2, integer=True))
    schedule: str = setting(
        SCHEDULES[0],
        "'paper': iters steps of step_size (the spec's loop); 'adaptive': per-row steps that grow while "
        "candidates are accepted, each row stopping after iters paper steps' worth (iters is then the budget)",
        Choice(SCHEDULES),
        sweep=True,
    )
    step_growth: float = setting(
        1.3, "adaptive schedule: step scale factor after an accepted candidate (>= 1)", Number(minimum=1), sweep=True,
        schedules=("adaptive",),
    )
    step_shrink: float = setting(
        0.5, "adaptive schedule: step scale factor after a rejected candidate (in (0, 1])",
        Number(minimum=0, strict=True), sweep=True, schedules=("adaptive",),
    )
    max_step_scale: float = setting(
        10.0, "adaptive schedule: largest step, in multiples of step_size (>= 1)", Number(minimum=1), sweep=True,
        schedules=("adaptive",),
    )

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))
        if self.adv_step_size is None:
            object.__setattr__(self, "adv_step_size", 0.0)
        if self.record and self.log_every == 0:
            raise ValueError(f"record={self.record} needs log_every > 0 (how often to record along the path)")
        if self.step_shrink > 1:
            raise ValueError(f"step_shrink must be in (0, 1], got {self.step_shrink!r}")
        if self.record and not schedule_named(self.schedule).records:
            raise ValueError(
                f"record={self.record} is not available with schedule={self.schedule!r} (rows move at different "
                f"paces); record along the path with schedule={' or '.join(map(repr, schedule_names(records=True)))}"
            )


SETTING_NAMES = tuple(f.name for f in fields(TraversalSettings))
SWEEP_SETTINGS = tuple(f for f in fields(TraversalSettings) if f.metadata["sweep"])  # lst-fast sweep's options


def settings_read_by(schedule: str) -> tuple[str, ...]:
    """The names of the settings that ``schedule`` (one of :data:`SCHEDULES`) reads; the others change nothing
    under it."""
    Choice(SCHEDULES)("schedule", schedule)
    return tuple(f.name for f in fields(TraversalSettings) if schedule in f.metadata["schedules"])


def check_settings(settings: TraversalSettings | None = None, /, **keywords) -> TraversalSettings:
    """The settings of one traversal, given as a :class:`TraversalSettings` or as keywords (its fields).

    Both at once are accepted only where they agree; a keyword that disagrees with ``settings`` is an error.
    """
    unknown = [name for name in keywords if name not in SETTING_NAMES]
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; the traversal settings are {list(SETTING_NAMES)}")
    if settings is None:
        return TraversalSettings(**keywords)
    if not isinstance(settings, TraversalSettings):
        raise TypeError(
            f"settings must be a lst_fast.settings.TraversalSettings or None, got {type(settings).__name__}"
        )
    merged = dataclasses.replace(settings, **keywords)
    conflicts = [f"{k}={keywords[k]!r} but settings.{k}={getattr(settings, k)!r}"
                 for k in keywords if getattr(merged, k) != getattr(settings, k)]
    if conflicts:
        raise ValueError(
            f"settings and keyword arguments disagree: {'; '.join(conflicts)}. Pass each setting once, e.g. "
            "settings=dataclasses.replace(settings, ...)"
        )
    return settings


def with_setting_keywords(function):
    """Shows the :class:`TraversalSettings` fields, with their defaults, as keyword-only parameters of
    ``function`` (which receives them as ``**setting_keywords``) in ``help()`` and ``inspect.signature``."""
    signature = inspect.signature(function)
    kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
             for f in fields(TraversalSettings)]
    function.__signature__ = signature.replace(parameters=kept + added)
    return function
