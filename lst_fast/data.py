"""Images for LST: the photos bundled with scikit-image (offline) and the standard ImageNet preprocessing."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

# Colour photos that ship inside the scikit-image wheel (no download). The first four are the ones the
# spec's section 7 describes.
EMBEDDED_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "hubble_deep_field", "immunohistochemistry")
RESIZE, CROP = 256, 224


def preprocess(image: np.ndarray | torch.Tensor, *, resize: int = RESIZE, crop: int = CROP) -> torch.Tensor:
    """HWC uint8 (or CHW float in [0, 1]) image -> (3, crop, crop) float32 in [0, 1].

    Shorter side resized to ``resize`` (bilinear, antialiased), then a centre crop of ``crop``: the usual
    ImageNet evaluation transform. Greyscale images are repeated to three channels; alpha is dropped.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image must be a uint8 array (H, W[, C]), got dtype {image.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        tensor = tensor.unsqueeze(-1) if tensor.dim() == 2 else tensor
        tensor = tensor.permute(2, 0, 1).float() / 255
    elif isinstance(image, torch.Tensor) and image.is_floating_point() and image.dim() == 3:
        tensor = image.float()
    else:
        raise TypeError("image must be an HWC uint8 numpy array or a CHW float tensor in [0, 1]")
    if tensor.shape[0] == 1:
        tensor = tensor.repeat(3, 1, 1)
    tensor = TF.resize(tensor[:3], [resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(tensor, [crop]).clamp(0, 1).contiguous()


def load_embedded_photos(names: Sequence[str] = EMBEDDED_PHOTOS[:4]) -> tuple[torch.Tensor, list[str]]:
    """The named scikit-image photos as a (N, 3, 224, 224) batch in [0, 1], and their names."""
    import skimage.data

    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in EMBEDDED_PHOTOS]
    if unknown:
        raise ValueError(f"unknown embedded photos {unknown}; choose from {EMBEDDED_PHOTOS}")
    if not names:
        raise ValueError("names must name at least one photo")
    images = torch.stack([preprocess(getattr(skimage.data, n)()) for n in names])
    return images, list(names)
