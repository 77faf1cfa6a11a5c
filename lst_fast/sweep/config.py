"""The configuration of a sweep: what is compared before a run may add to an existing sweep folder.

Every field of :class:`SweepConfig` carries its help text, check and command-line group (:func:`option`);
``lst-fast sweep`` makes one option of each, as it does for the swept :class:`TraversalSettings`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from lst_fast.choices import PRECISION_NAMES
from lst_fast.schedules import schedule_named
from lst_fast.settings import SWEEP_SETTINGS, Choice, Number, TraversalSettings, settings_read_by
from lst_fast.validation import check_bool

PHASES = ("all", "traverse", "triangles")
SWEPT = tuple(f.name for f in SWEEP_SETTINGS)  # the settings of TraversalSettings that a sweep varies
GROUPS = ("model and data", "LST and evaluation settings")  # the command line's groups of SweepConfig options
RECORDING_SCHEDULES = ("paper",)  # the schedules whose sweeps record confidences along the path (log_every)


@dataclass(frozen=True)
class Text:
    """The rule of a non-empty string setting (None passes if ``allow_none``)."""

    allow_none: bool = False

    def __call__(self, name: str, value):
        if value is None and self.allow_none:
            return None
        if not isinstance(value, str) or not value:
            raise TypeError(f"{name} must be a non-empty string, got {value!r}")
        return value


@dataclass(frozen=True)
class Flag:
    """The rule of an on/off setting (the command line offers --NAME and --no-NAME)."""

    def __call__(self, name: str, value):
        return check_bool(name, value)


@dataclass(frozen=True)
class Numbers:
    """The rule of ``count`` numbers given together (None passes), e.g. a per-channel normalisation."""

    count: int
    item: Number = Number()

    def __call__(self, name: str, value):
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != self.count:
            raise ValueError(f"{name} must be {self.count} numbers, got {value!r}")
        return tuple(self.item(f"{name}[{i}]", v) for i, v in enumerate(value))

    def parse(self, name: str, text: str):
        """One of the numbers, from the command line's text."""
        return self.item.parse(name, text)


def _data(name: str, value):
    from lst_fast.data import parse_data_spec  # lazily: lst-fast's parser reads these fields without torch

    parse_data_spec(value)  # raises naming the data spec
    return value


def _existing_file(name: str, value):
    if value is not None and not Path(value).is_file():
        raise FileNotFoundError(f"{name} {value!r} does not exist")
    return value


def option(default, help: str, check, *, group: str, required: bool = False, metavar=None):
    """A field of :class:`SweepConfig`: its default, help text, check (``check(name, value)`` returns the value or
    raises naming the field; a :class:`~lst_fast.settings.Number` or :class:`~lst_fast.settings.Choice` also parses
    the command line's text), its group of ``lst-fast sweep`` options, whether the command line requires it, and
    the metavar of its option."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    metadata = {"help": help, "check": check, "group": group, "required": required, "metavar": metavar}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, init=False)
class SweepConfig:
    """Everything that decides a sweep's results (algorithm §6; defaults are the paper's ImageNet settings).

    ``num_samples`` images the model classifies correctly with confidence > ``min_conf`` are chosen; data
    without labels (``embedded``, plain folders) take the model's prediction as the label. ``rounds``
    random derangements pair every image with a target per round; every pair runs LST with the settings
    ``traversal`` (a :class:`lst_fast.settings.TraversalSettings`); once all rounds of a source are done its
    triangle statistics are computed (unless ``triangles`` is False).

    The settings a sweep varies (those marked ``sweep``: ``iters``, ``step_size``, ...) are also keywords and
    attributes of their own: ``SweepConfig(iters=100)`` is ``SweepConfig(traversal=TraversalSettings(iters=100))``,
    and given together with ``traversal`` such a keyword replaces that field of it (as ``dataclasses.replace``
    does). The sweep chooses what is recorded along the path (see :meth:`lst_settings`).
    """

    model: str = option(
        "embedded", "'embedded' (offline EfficientNet-Lite0), a timm model name, or "
        "'robustbench:[DATASET/[THREAT/]]NAME' (needs the robustbench package)", Text(), group=GROUPS[0],
        required=True,
    )
    data: str = option(
        "embedded", "'embedded' (bundled photos), 'imagenet:DIR' (class folders named by WordNet id, or the flat "
        "ILSVRC2012 validation images), 'cifar10:DIR' (test split of the python version), 'folder:DIR' (any "
        "images, no labels: the model's prediction is their label), or DIR alone: its kind is detected from what "
        "it holds and said on stderr. Images of any pixel mode are read (16-bit scaled by 1/65535); files that "
        "cannot be read are skipped and listed", _data, group=GROUPS[0], required=True,
    )
    checkpoint: str | None = option(
        None, "local state dict (.pth/.pt/.safetensors) for the timm architecture --model", _existing_file,
        group=GROUPS[0],
    )
    num_classes: int | None = option(
        None, "classes of the checkpoint's head (timm models)", Number(minimum=2, integer=True, allow_none=True),
        group=GROUPS[0],
    )
    pretrained: bool = option(
        True, "timm pretrained weights (downloaded by timm on first use); --no-pretrained: random init", Flag(),
        group=GROUPS[0],
    )
    mean: tuple[float, ...] | None = option(
        None, "normalisation mean (default: the model's pretrained_cfg)", Numbers(3), group=GROUPS[0],
        metavar=("R", "G", "B"),
    )
    std: tuple[float, ...] | None = option(
        None, "normalisation std (default: the model's pretrained_cfg)", Numbers(3, Number(minimum=0, strict=True)),
        group=GROUPS[0], metavar=("R", "G", "B"),
    )
    image_size: int | None = option(
        None, "input size: resize to size*256/224, centre crop size (default 224; CIFAR-10: 32)",
        Number(minimum=8, integer=True, allow_none=True), group=GROUPS[0],
    )
    num_samples: int = option(1000, "images in the sweep", Number(minimum=1, integer=True), group=GROUPS[1])
    rounds: int = option(5, "random derangements (pairs per image)", Number(minimum=1, integer=True), group=GROUPS[1])
    batch_size: int = option(
        196, "pairs per LST batch = sources per work unit", Number(minimum=1, integer=True), group=GROUPS[1]
    )
    eval_batch_size: int = option(
        128, "images per forward-only model call (image selection, target confidences, triangle statistics)",
        Number(minimum=1, integer=True), group=GROUPS[1],
    )
    traversal: TraversalSettings = field(  # its swept settings are options of their own
        default=TraversalSettings(), metadata={"help": "the traversal's settings", "group": GROUPS[1]}
    )
    precision: str = option(
        "fp32", "model precision during LST (bf16/fp16: autocast; the images stay fp32)", Choice(PRECISION_NAMES),
        group=GROUPS[1],
    )
    min_conf: float = option(
        0.6, "keep only images classified with confidence above this (0: any correct image)", Number(minimum=0),
        group=GROUPS[1],
    )
    seed: int = option(
        0, "sweep seed: image order, derangements and every unit's noise derive from it",
        Number(minimum=0, integer=True), group=GROUPS[1],
    )
    triangles: bool = option(
        True, "the triangle statistics (Table 2); --no-triangles skips them", Flag(), group=GROUPS[1]
    )
    triangle_grid: int = option(
        10, "the triangles are sampled at steps of 1/N (the spec: 0, 0.1, ..., 1)", Number(minimum=1, integer=True),
        group=GROUPS[1], metavar="N",
    )
    log_every: int | None = option(
        None, "record confidences along the path every N iterations (paper schedule; default: iters/20)",
        Number(minimum=1, integer=True, allow_none=True), group=GROUPS[1], metavar="N",
    )
    save_images: bool = option(
        False, "also write every LST output as PNG under OUT/images", Flag(), group=GROUPS[1]
    )

    def __init__(self, **values):
        swept = {name: values.pop(name) for name in SWEPT if name in values}
        traversal = values.pop("traversal", TraversalSettings())
        if not isinstance(traversal, TraversalSettings):
            raise TypeError(f"traversal must be a lst_fast.settings.TraversalSettings, got {type(traversal).__name__}")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"SweepConfig got unexpected keyword argument(s) {unknown}")
        fixed = [f.name for f in dataclasses.fields(TraversalSettings) if f.name not in SWEPT]
        chosen = [name for name in fixed if getattr(traversal, name) != getattr(TraversalSettings(), name)]
        if chosen:
            raise ValueError(
                f"a sweep chooses {chosen} itself (see SweepConfig.lst_settings); leave them at their defaults"
            )
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, values.get(f.name, f.default))
        object.__setattr__(self, "traversal", dataclasses.replace(traversal, **swept))

    def __getattr__(self, name: str):
        """The swept settings read as attributes: ``config.iters`` is ``config.traversal.iters``."""
        if name in SWEPT and "traversal" in self.__dict__:
            return getattr(self.__dict__["traversal"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def lst_settings(self, **recording) -> TraversalSettings:
        """The settings of the sweep's traversals: ``traversal``, recording the source- and target-class
        confidence every :attr:`path_log_every` iterations (the paper's schedule only); ``recording`` replaces that
        (e.g. ``record=("widths",)`` for ``lst-fast plot``). Runs with ``precision`` on the fast path."""
        if not schedule_named(self.traversal.schedule).records:  # e.g. adaptive: the rows have no common path
            return dataclasses.replace(self.traversal, **recording)
        recorded = {"log_every": self.path_log_every, "record": ("conf",)} | recording
        return dataclasses.replace(self.traversal, **recorded)

    def checked(self) -> "SweepConfig":
        """This configuration after checking every field.

        Raises:
            ValueError, TypeError, FileNotFoundError: naming the field and what was expected.
        """
        for f in dataclasses.fields(self):
            if "check" in f.metadata:
                f.metadata["check"](f.name, getattr(self, f.name))
        if self.min_conf >= 1:
            raise ValueError(f"min_conf must be in [0, 1), got {self.min_conf}")
        if self.triangles and self.rounds < 2:
            raise ValueError(
                f"rounds must be >= 2 for the triangle statistics (one triangle per pair of rounds), got "
                f"{self.rounds}; use more rounds or turn the triangles off"
            )
        if self.num_samples < 2 or self.num_samples <= self.rounds:
            raise ValueError(
                f"num_samples must be >= 2 and > rounds (every source needs a different target in each round), "
                f"got num_samples={self.num_samples}, rounds={self.rounds}"
            )
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together")
        return self

    @property
    def path_log_every(self) -> int:
        return self.log_every or max(1, self.iters // 20)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        return None if self.mean is None else (tuple(self.mean), tuple(self.std))

    def identity(self, *, normalization, distances) -> dict:
        """The dict stored in the manifest and compared on every later run.

        Paths are made absolute and the checkpoint is identified by its content (SHA-256), so the same sweep
        can be continued from another working folder; the effective normalisation and the distances chosen at
        the start are part of it. Settings that change nothing under the sweep's schedule are left out (the
        adaptive schedule's knobs under the paper's, the path's ``log_every`` under the adaptive one), so they
        never keep a run from adding to the folder.
        """
        from lst_fast.data import parse_data_spec
        from lst_fast.models import file_sha256

        used = _used_by(self.schedule)
        fields = {}
        for f in dataclasses.fields(self):  # the swept settings in traversal's place, as flat keys
            if f.name == "traversal":
                fields |= {name: getattr(self, name) for name in SWEPT if name in used}
            elif f.name in used or f.name not in _SCHEDULED:
                fields[f.name] = getattr(self, f.name)
        fields["data"] = str(parse_data_spec(self.data))
        fields["checkpoint"] = None if self.checkpoint is None else "sha256:" + file_sha256(self.checkpoint)
        fields["mean"], fields["std"] = (list(v) for v in normalization)
        if "log_every" in fields:
            fields["log_every"] = self.path_log_every
        fields["distances"] = list(distances)
        return fields


def config_options() -> tuple[dataclasses.Field, ...]:
    """The fields of :class:`SweepConfig` that ``lst-fast sweep`` has options for (all of them; ``traversal``
    stands for the options of its swept settings), in the order of the class."""
    return tuple(f for f in dataclasses.fields(SweepConfig) if "group" in f.metadata)


_SCHEDULED = set(SWEPT) | {"log_every"}  # the identity's keys that only some schedules read


def _used_by(schedule: str) -> set[str]:
    """The identity's keys of :data:`_SCHEDULED` that a sweep of ``schedule`` reads."""
    swept = set(settings_read_by(schedule)) & set(SWEPT)  # (TraversalSettings.log_every is not the sweep's)
    return swept | ({"log_every"} if schedule in RECORDING_SCHEDULES else set())


def comparable(identity: dict) -> dict:
    """A stored or current identity as it is compared: the swept settings its schedule reads, at their defaults
    where it lacks them (its folder was made before the setting existed), and none that its schedule ignores
    (folders made before schedule-specific settings were left out of the identity hold them all)."""
    schedule = identity.get("schedule", "paper")
    used = _used_by(schedule)
    defaults = {name: getattr(TraversalSettings(), name) for name in SWEPT if name in used}
    return {k: v for k, v in (defaults | identity).items() if k not in _SCHEDULED or k in used}


def config_from_manifest(manifest: dict, *, checkpoint: str | None = None) -> SweepConfig:
    """The :class:`SweepConfig` of a sweep folder's manifest (to reload its model and data).

    The manifest identifies a checkpoint by its SHA-256; its path is taken from ``checkpoint`` or else from where
    the first run found it, and must still hold the same file.

    Raises:
        FileNotFoundError: the checkpoint is not where it is looked for.
    """
    from lst_fast.models import file_sha256

    identity = comparable(manifest["config"])
    names = {f.name for f in dataclasses.fields(SweepConfig)} | set(SWEPT)
    fields = {k: v for k, v in identity.items() if k in names}
    fields["mean"], fields["std"] = tuple(identity["mean"]), tuple(identity["std"])
    if identity["checkpoint"] is not None:
        path = checkpoint or manifest.get("created_by", {}).get("checkpoint")
        if path is None or not Path(path).is_file() or "sha256:" + file_sha256(path) != identity["checkpoint"]:
            raise FileNotFoundError(
                f"the sweep's checkpoint ({identity['checkpoint']}) is not at {path!r}; pass its path as checkpoint"
            )
        fields["checkpoint"] = str(path)
    return SweepConfig(**fields)


def differences(stored: dict, current: dict) -> list[str]:
    """Human-readable list of the fields in which two configurations differ, compared as :func:`comparable`
    makes them: adding a setting to TraversalSettings keeps older sweep folders usable, and settings that the
    schedule ignores are never a difference."""
    stored, current = comparable(stored), comparable(current)
    keys = sorted(set(stored) | set(current))
    return [
        f"{k}: {_shown(stored, k)} in the folder, {_shown(current, k)} now" for k in keys
        if stored.get(k) != current.get(k)
    ]


def _shown(identity: dict, key: str) -> str:
    return repr(identity[key]) if key in identity else "not used"
