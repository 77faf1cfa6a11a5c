"""The configuration of a sweep: what is compared before a run may add to an existing sweep folder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from lst_fast.data import parse_data_spec
from lst_fast.models import file_sha256
from lst_fast.schedules import schedule_named
from lst_fast.settings import SWEEP_SETTINGS, TraversalSettings
from lst_fast.model_runner import PRECISIONS
from lst_fast.validation import check_bool, check_number

PHASES = ("all", "traverse", "triangles")
SWEPT = tuple(f.name for f in SWEEP_SETTINGS)  # the settings of TraversalSettings that a sweep varies


@dataclass(frozen=True, init=False)
class SweepConfig:
    """Everything that decides a sweep's results (spec section 6; defaults are the paper's ImageNet settings).

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

    model: str = "embedded"
    data: str = "embedded"
    checkpoint: str | None = None
    num_classes: int | None = None
    pretrained: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    image_size: int | None = None
    num_samples: int = 1000
    rounds: int = 5
    batch_size: int = 196
    eval_batch_size: int = 128  # images per forward-only model call (image selection, triangle statistics)
    traversal: TraversalSettings = TraversalSettings()
    precision: str = "fp32"  # or "bf16"/"fp16": the model runs under autocast during LST
    min_conf: float = 0.6
    seed: int = 0
    triangles: bool = True
    triangle_grid: int = 10  # the triangle is sampled at steps of 1/triangle_grid (spec: 0, 0.1, ..., 1)
    log_every: int | None = None  # confidence recorded along the path every log_every iterations; None: iters/20
    save_images: bool = False

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
        """This configuration after checking every field; raises ValueError/TypeError naming the field."""
        for name in ("num_samples", "rounds", "batch_size", "eval_batch_size"):
            check_number(name, getattr(self, name), minimum=1, integer=True)
        check_number("seed", self.seed, minimum=0, integer=True)
        check_number("triangle_grid", self.triangle_grid, minimum=1, integer=True)
        min_conf = check_number("min_conf", self.min_conf, minimum=0)
        if min_conf >= 1:
            raise ValueError(f"min_conf must be in [0, 1), got {min_conf}")
        for name in ("pretrained", "triangles", "save_images"):
            check_bool(name, getattr(self, name))
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
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together")
        if self.num_classes is not None:
            check_number("num_classes", self.num_classes, minimum=2, integer=True)
        if self.image_size is not None:
            check_number("image_size", self.image_size, minimum=8, integer=True)
        if self.log_every is not None:
            check_number("log_every", self.log_every, minimum=1, integer=True)
        if not isinstance(self.model, str) or not self.model:
            raise TypeError(f"model must be a non-empty string, got {self.model!r}")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {self.checkpoint!r} does not exist")
        parse_data_spec(self.data)
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
        the start are part of it.
        """
        fields = {}
        for f in dataclasses.fields(self):  # the swept settings in traversal's place, as flat keys
            fields |= {name: getattr(self, name) for name in SWEPT} if f.name == "traversal" else {
                f.name: getattr(self, f.name)}
        fields["data"] = str(parse_data_spec(self.data))
        fields["checkpoint"] = None if self.checkpoint is None else "sha256:" + file_sha256(self.checkpoint)
        fields["mean"], fields["std"] = (list(v) for v in normalization)
        fields["log_every"] = self.path_log_every
        fields["distances"] = list(distances)
        return fields


def config_from_manifest(manifest: dict, *, checkpoint: str | None = None) -> SweepConfig:
    """The :class:`SweepConfig` of a sweep folder's manifest (to reload its model and data).

    The manifest identifies a checkpoint by its SHA-256; its path is taken from ``checkpoint`` or else from where
    the first run found it, and must still hold the same file.
    """
    identity = manifest["config"]
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
    """Human-readable list of the fields in which two configurations differ.

    A swept setting that a stored configuration lacks (its folder was made before the setting existed) counts
    as its default there, so adding a setting to TraversalSettings keeps older sweep folders usable.
    """
    defaults = {name: getattr(TraversalSettings(), name) for name in SWEPT}
    stored = defaults | stored
    keys = sorted(set(stored) | set(current))
    return [
        f"{k}: {stored.get(k)!r} in the folder, {current.get(k)!r} now" for k in keys if stored.get(k) != current.get(k)
    ]
