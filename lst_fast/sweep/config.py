"""The configuration of a sweep: what is compared before a run may add to an existing sweep folder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from lst_fast.data import parse_data_spec
from lst_fast.models import file_sha256
from lst_fast.traversal import _check_number
from lst_fast.tuning import PRECISIONS

PHASES = ("all", "traverse", "triangles")


@dataclass(frozen=True)
class SweepConfig:
    """Everything that decides a sweep's results (spec section 6; defaults are the paper's ImageNet settings).

    ``num_samples`` images the model classifies correctly with confidence > ``min_conf`` are chosen; data
    without labels (``embedded``, plain folders) take the model's prediction as the label. ``rounds``
    random derangements pair every image with a target per round; every pair runs LST; once all rounds of
    a source are done its triangle statistics are computed (unless ``triangles`` is False).
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
    iters: int = 400
    step_size: float = 1e-2
    pthresh: float = 0.2
    adv_step_size: float = 2e-3
    init_noise: float = 4 / 255
    precision: str = "fp32"  # or "bf16"/"fp16": the model runs under autocast during LST
    min_conf: float = 0.6
    seed: int = 0
    triangles: bool = True
    triangle_grid: int = 10  # the triangle is sampled at steps of 1/triangle_grid (spec: 0, 0.1, ..., 1)
    log_every: int | None = None  # confidence recorded along the path every log_every iterations; None: iters/20
    save_images: bool = False

    def checked(self) -> "SweepConfig":
        """This configuration after checking every field; raises ValueError/TypeError naming the field."""
        for name in ("num_samples", "rounds", "batch_size", "eval_batch_size"):
            _check_number(name, getattr(self, name), minimum=1, integer=True)
        for name in ("iters", "seed"):
            _check_number(name, getattr(self, name), minimum=0, integer=True)
        _check_number("triangle_grid", self.triangle_grid, minimum=1, integer=True)
        for name in ("step_size", "pthresh"):
            _check_number(name, getattr(self, name), minimum=0, strict=True)
        for name in ("adv_step_size", "init_noise"):
            _check_number(name, getattr(self, name), minimum=0)
        min_conf = _check_number("min_conf", self.min_conf, minimum=0)
        if min_conf >= 1:
            raise ValueError(f"min_conf must be in [0, 1), got {min_conf}")
        for name in ("pretrained", "triangles", "save_images"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
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
            _check_number("num_classes", self.num_classes, minimum=2, integer=True)
        if self.image_size is not None:
            _check_number("image_size", self.image_size, minimum=8, integer=True)
        if self.log_every is not None:
            _check_number("log_every", self.log_every, minimum=1, integer=True)
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
        fields = dataclasses.asdict(self)
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
    names = {f.name for f in dataclasses.fields(SweepConfig)}
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
    """Human-readable list of the fields in which two configurations differ."""
    keys = sorted(set(stored) | set(current))
    return [
        f"{k}: {stored.get(k)!r} in the folder, {current.get(k)!r} now" for k in keys if stored.get(k) != current.get(k)
    ]
