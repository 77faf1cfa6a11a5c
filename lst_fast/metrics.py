"""Distances between LST outputs and their targets (the paper's Table 1, algorithm §5).

LPIPS needs AlexNet's ImageNet weights, which torchvision normally downloads. Nothing here downloads: the
weights come from a local file (``lpips_weights=``) or torchvision's file in the torch hub cache, and
:func:`lpips_available` / :class:`LPIPSWeightsMissing` let callers leave LPIPS out when they are missing.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from lst_fast.validation import check_images

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"
LPIPS_BATCH = 32  # image pairs per AlexNet call


def l2(outs: torch.Tensor, tgts: torch.Tensor) -> torch.Tensor:
    """Per-pair L2 distance divided by sqrt(D), D = C*H*W (pixels in [0, 1]).

    Args:
        outs, tgts: (P, ...) outputs and their targets, the same shape.

    Returns:
        A (P,) tensor in ``outs``' dtype (computed in float64).
    """
    diff = (outs - tgts).flatten(1).double()
    return (diff.norm(dim=1) / diff.shape[1] ** 0.5).to(outs.dtype)


def linf(outs: torch.Tensor, tgts: torch.Tensor) -> torch.Tensor:
    """Per-pair L-infinity distance.

    Args:
        outs, tgts: (P, ...) outputs and their targets, the same shape.

    Returns:
        A (P,) tensor in the dtype of ``outs - tgts``: the largest absolute pixel difference of each pair.
    """
    return (outs - tgts).flatten(1).abs().amax(dim=1)


def ssim(outs: torch.Tensor, tgts: torch.Tensor) -> torch.Tensor:
    """Per-pair SSIM with data range 1.0 (torchmetrics' definition: 11x11 Gaussian window, sigma 1.5).

    Args:
        outs, tgts: (P, C, H, W) outputs and their targets in [0, 1], the same shape.

    Returns:
        A (P,) tensor, one SSIM per pair (1 for identical images), as torchmetrics computes it.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(outs, tgts, data_range=1.0, reduction="none")


class LPIPSWeightsMissing(FileNotFoundError):
    """LPIPS cannot run offline: the AlexNet backbone weights are not on this machine."""


def alexnet_weights_path(weights: str | Path | None = None) -> Path:
    """The local AlexNet weights for LPIPS: ``weights`` if given, else ``<torch hub dir>/checkpoints/`` +
    :data:`ALEXNET_FILE` (where torchvision keeps its download).

    Returns:
        The path of the weights file, which exists.

    Raises:
        TypeError: ``weights`` is neither None, a str nor a Path.
        LPIPSWeightsMissing: the file (``weights``, or the one in the torch hub cache) does not exist.
    """
    if weights is not None:
        if not isinstance(weights, (str, Path)):
            raise TypeError(f"the LPIPS weights must be a path to AlexNet weights, got {type(weights).__name__}")
        path = Path(weights)
        if not path.is_file():
            raise LPIPSWeightsMissing(f"the LPIPS AlexNet weights file {str(path)!r} does not exist")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    if not path.is_file():
        raise LPIPSWeightsMissing(
            f"LPIPS needs torchvision's AlexNet ImageNet weights, which are not on this machine (looked for "
            f"{path}). Nothing is downloaded at run time: on a machine with network access fetch {ALEXNET_URL} "
            f"and copy it to {path}, or pass lpips_weights=<path of that file>; or leave 'lpips' out of `which`."
        )
    return path


def lpips_available(weights: str | Path | None = None) -> bool:
    """Whether LPIPS can run here (its AlexNet weights are at ``weights`` or in the torch hub cache).

    Returns:
        True if :func:`alexnet_weights_path` finds the weights file, False if it is missing.

    Raises:
        TypeError: ``weights`` is neither None, a str nor a Path.
    """
    try:
        alexnet_weights_path(weights)
    except LPIPSWeightsMissing:
        return False
    return True


def lpips_model(weights: str | Path | None = None, *, pnet_rand: bool = False) -> torch.nn.Module:
    """The ``lpips`` package's LPIPS (AlexNet, v0.1) with its shipped linear layers and a local AlexNet backbone.

    ``pnet_rand=True`` keeps a randomly initialised backbone (meaningless distances; only for exercising the
    code). The backbone is never fetched by lpips/torchvision: the model is built with a random backbone and
    the weights are loaded from :func:`alexnet_weights_path`. Models are cached per weights file.

    Returns:
        The LPIPS module, on the CPU, in eval mode with ``requires_grad`` off; the cached instance is shared
        between calls with the same weights file (``weights`` is not looked at when ``pnet_rand``).

    Raises:
        TypeError: ``pnet_rand`` is not a bool, or ``weights`` is neither None, a str nor a Path.
        LPIPSWeightsMissing: the weights file does not exist.
        ValueError: the file does not hold a state dict of torchvision AlexNet weights.
    """
    if not isinstance(pnet_rand, bool):
        raise TypeError(f"pnet_rand must be a bool, got {pnet_rand!r}")
    return _lpips_model(None if pnet_rand else str(alexnet_weights_path(weights)))


@functools.lru_cache(maxsize=2)
def _lpips_model(path: str | None) -> torch.nn.Module:
    import lpips

    with warnings.catch_warnings():  # lpips asks torchvision for alexnet(pretrained=False), a deprecated spelling
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    if path is not None:
        _load_alexnet_features(model.net, torch.load(path, map_location="cpu", weights_only=True), path)
    return model.eval().requires_grad_(False)


def _load_alexnet_features(net: torch.nn.Module, state: dict, path: str) -> None:
    """Load torchvision AlexNet ``features.<i>.*`` tensors into lpips' slices, whose children are named <i>."""
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict of torchvision AlexNet weights")
    layers = [(name, module) for slice_ in net.children() for name, module in slice_.named_children()]
    for name, module in layers:
        own = module.state_dict()
        found = {key: state.get(f"features.{name}.{key}") for key in own}
        if any(v is None or v.shape != own[key].shape for key, v in found.items()):
            raise ValueError(f"{path} does not hold torchvision AlexNet weights (features.{name} missing or misshaped)")
        module.load_state_dict(found, strict=True)


def lpips(
    outs: torch.Tensor, tgts: torch.Tensor, *, weights: str | Path | None = None, pnet_rand: bool = False
) -> torch.Tensor:
    """Per-pair LPIPS (AlexNet backbone) between images in [0, 1], rescaled to [-1, 1] as LPIPS expects.

    ``weights``: local AlexNet weights (default: the torch hub cache); see :func:`lpips_model`.

    Args:
        outs, tgts: (P, C, H, W) outputs and their targets in [0, 1], the same shape, dtype and device.

    Returns:
        A (P,) tensor in ``outs``' dtype, on its device (AlexNet runs in float32 on ``outs``' device, in calls of
        :data:`LPIPS_BATCH` pairs).

    Raises:
        TypeError: ``outs`` or ``tgts`` is not a floating-point tensor, or as :func:`lpips_model`.
        ValueError: ``outs`` is not (P, C, H, W) with finite values in [0, 1], ``tgts`` is not like ``outs``, or
            as :func:`lpips_model`.
        LPIPSWeightsMissing: as :func:`lpips_model`.
    """
    outs = check_images("outs", outs)
    tgts = check_images("tgts", tgts, like=outs)
    return _lpips(outs, tgts, weights=weights, pnet_rand=pnet_rand)


def _lpips(outs: torch.Tensor, tgts: torch.Tensor, *, weights=None, pnet_rand: bool = False) -> torch.Tensor:
    """:func:`lpips` on images already checked."""
    model = lpips_model(weights, pnet_rand=pnet_rand).to(outs.device)
    with torch.no_grad():
        return torch.cat([
            model(2 * o.float() - 1, 2 * t.float() - 1).flatten()
            for o, t in zip(outs.split(LPIPS_BATCH), tgts.split(LPIPS_BATCH))
        ]).to(outs.dtype)


DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l2": l2, "linf": linf, "ssim": ssim, "lpips": lpips,
}  # every distance, by the name that sweeps, tables and ``which`` use
PIXEL_DISTANCES = ("l2", "linf", "ssim")  # computed from the pixels alone: they run everywhere
LEARNED_DISTANCES = ("lpips",)  # need a network's weights (see alexnet_weights_path)


def available_distances(lpips_weights: str | Path | None = None) -> tuple[str, ...]:
    """The distances that can run here: all of :data:`DISTANCES`, without ``"lpips"`` if its weights are missing.

    Returns:
        A tuple of distance names, in the order of :data:`DISTANCES`.

    Raises:
        TypeError: ``lpips_weights`` is neither None, a str nor a Path.
    """
    return tuple(name for name in DISTANCES if name != "lpips" or lpips_available(lpips_weights))


def distances(
    outs: torch.Tensor,
    tgts: torch.Tensor,
    which: Sequence[str] = tuple(DISTANCES),
    *,
    lpips_weights: str | Path | None = None,
) -> dict[str, torch.Tensor]:
    """The named distances between each output and its target.

    ``"lpips"`` needs local AlexNet weights (``lpips_weights`` or the torch hub cache, see
    :func:`alexnet_weights_path`) and raises :class:`LPIPSWeightsMissing` before computing anything when they
    are missing; :func:`available_distances` names what can run here.

    Args:
        outs, tgts: (P, C, H, W) outputs and their targets in [0, 1], the same shape, dtype and device.
        which: names from :data:`DISTANCES` (a single str names one).
        lpips_weights: local AlexNet weights for ``"lpips"``.

    Returns:
        A dict from each name in ``which`` (in that order) to a (P,) tensor of that distance, as :func:`l2`,
        :func:`linf`, :func:`ssim` and :func:`lpips` return it.

    Raises:
        TypeError: ``outs`` or ``tgts`` is not a floating-point tensor, or ``lpips_weights`` is not a path.
        ValueError: ``outs`` is not (P, C, H, W) with finite values in [0, 1], ``tgts`` is not like ``outs``, or
            ``which`` is empty or names an unknown distance.
        LPIPSWeightsMissing: ``"lpips"`` is in ``which`` and its weights file does not exist.
    """
    outs = check_images("outs", outs)
    tgts = check_images("tgts", tgts, like=outs)
    if isinstance(which, str):
        which = (which,)
    unknown = [w for w in which if w not in DISTANCES]
    if unknown or not which:
        raise ValueError(f"which must name some of {list(DISTANCES)}, got {list(which)}")
    if "lpips" in which:
        alexnet_weights_path(lpips_weights)  # fail before any work
    # The images are checked above; LPIPS also needs its weights.
    unchecked = {**DISTANCES, "lpips": functools.partial(_lpips, weights=lpips_weights)}
    return {name: unchecked[name](outs, tgts) for name in which}
