"""Distances between LST outputs and their targets (the paper's Table 1, spec section 5)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from lst_fast.traversal import check_images


def l2(outs: torch.Tensor, tgts: torch.Tensor) -> torch.Tensor:
    """Per-pair L2 distance divided by sqrt(D), D = C*H*W (pixels in [0, 1])."""
    diff = (outs - tgts).flatten(1).double()
    return (diff.norm(dim=1) / diff.shape[1] ** 0.5).to(outs.dtype)


def linf(outs: torch.Tensor, tgts: torch.Tensor) -> torch.Tensor:
    """Per-pair L-infinity distance."""
    return (outs - tgts).flatten(1).abs().amax(dim=1)


def ssim(outs: torch.Tensor, tgts: torch.Tensor) -> torch.Tensor:
    """Per-pair SSIM with data range 1.0 (torchmetrics' definition: 11x11 Gaussian window, sigma 1.5)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(outs, tgts, data_range=1.0, reduction="none")


DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"l2": l2, "linf": linf, "ssim": ssim}


def distances(outs: torch.Tensor, tgts: torch.Tensor, which: Sequence[str] = ("l2", "linf", "ssim")) -> dict:
    """The named distances between each output and its target, as a dict of (P,) tensors."""
    outs = check_images("outs", outs)
    tgts = check_images("tgts", tgts, like=outs)
    if isinstance(which, str):
        which = (which,)
    unknown = [w for w in which if w not in DISTANCES]
    if unknown or not which:
        raise ValueError(f"which must name some of {list(DISTANCES)}, got {list(which)}")
    return {name: DISTANCES[name](outs, tgts) for name in which}
