"""The paper's Figure 1 and its companion figures for any model and data (``lst-fast examples``, the original
code's ``--examples`` mode; ``lst-fast demo`` is this on the bundled model and photos).

A few images are chosen: per class, the first ``per_class`` images, in a seeded order of the data set, that the
model classifies correctly (the paper's classes by default); or, for data without labels, the named files. Every
ordered pair of them (n(n-1) pairs) runs LST through :func:`lst_fast.traverse_batch`, in batches of at most
``batch_size`` pairs, and the output folder gets:

- ``grid.png``: rows = targets, columns = sources, class names as titles, each LST output captioned with its
  source-class confidence; the diagonal shows the clean image with its class;
- ``results.csv`` / ``results.json``: one row per ordered pair (images, classes, confidences, accepted steps,
  model evaluations, distances to the target; the JSON also holds the confidence along the path);
- ``images/<source>_to_<target>.png``: the LST outputs, named by the images' own names (file stems);
- ``triangle_<source>.png``: the confidence over the triangle of each source and its outputs towards the first
  two other images (three images or more);
- ``interpolation.png``: the confidence along the segments source -> output;
- with ``paths`` (paper schedule only): ``confidence_paths.png`` and ``path_width_<source>_to_<target>.png``.

Random numbers: the pairs run in order (source-major), batch ``b`` with a generator seeded ``seed + b``; so with
``batch_size=1`` pair ``k`` is ``traverse_batch`` on that pair alone with seed ``seed + k``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from matplotlib.figure import Figure
from torchvision.utils import save_image

from lst_fast import TraversalResult, TraversalSettings, data, geometry, metrics, models, plots, traverse_batch
from lst_fast.choices import EXAMPLES_BATCH_SIZE, PAPER_CLASSES
from lst_fast.validation import check_bool, check_number

DEFAULT_BATCH_SIZE = EXAMPLES_BATCH_SIZE  # pairs per LST batch: the paper's batch
SELECTION_BATCH = 32  # images per forward-only model call while choosing images
PATH_POINTS = 20  # the confidence (and path widths) are recorded every iters / PATH_POINTS iterations
CAPTION_CHARS = 22
LEGEND_PAIRS = 20  # line plots name the pairs in a legend up to this many (the paper's five classes)


@dataclass
class Chosen:
    """The images of a run: data set indices, images (N, C, H, W) on the CPU, classes and names."""

    indices: list[int]
    images: torch.Tensor
    labels: list[int]
    names: list[str]  # unique names (file stems), used in file names and legends
    files: list[str]  # where each image comes from
    conf: list[float]  # the model's confidence in its class on the clean image


@dataclass
class ExamplesReport:
    """What :func:`run_examples` computed and wrote. Pair ``k`` goes from image ``sources[k]`` of ``chosen``
    towards image ``targets[k]``; ``result`` (on the CPU) has one row per pair."""

    out_dir: Path
    chosen: Chosen
    class_names: list[str]  # the class name of each chosen image
    sources: torch.Tensor  # (P,)
    targets: torch.Tensor  # (P,)
    result: TraversalResult
    target_conf: torch.Tensor  # (P,) p(output)[class of the target]
    distances: dict[str, torch.Tensor]  # name -> (P,) distance of each output to its target
    interpolation: torch.Tensor  # (P, 11) source-class confidence on the segment source -> output
    triangles: dict[int, tuple[torch.Tensor, int, int]]  # source -> (conf at the triangle grid, pair a, pair b)
    settings: TraversalSettings
    seconds: float  # spent in LST
    title: str
    notes: list[str]
    rows: list[dict] = field(default_factory=list)  # the table: one dict per pair
    files: list[Path] = field(default_factory=list)  # what was written


def ordered_pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and target indices of every ordered pair (i, j), i != j, source-major: n(n-1) pairs.

    Args:
        n: the number of images, at least 2.

    Returns:
        ``(sources, targets)``: two int64 tensors of shape (n(n-1),).
    """
    src, tgt = zip(*[(i, j) for i in range(n) for j in range(n) if i != j])
    return torch.tensor(src), torch.tensor(tgt)


def open_model_and_data(
    model: str,
    data_spec: str,
    *,
    checkpoint: str | None = None,
    num_classes: int | None = None,
    pretrained: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    image_size: int | None = None,
    seed: int = 0,
):
    """The model, its normaliser and the data set named as ``lst-fast sweep`` names them.

    Args:
        model: ``"embedded"``, a timm name or ``"robustbench:[DATASET/[THREAT/]]NAME"``
            (:func:`lst_fast.models.load_model`).
        data_spec: ``"embedded"``, ``"imagenet:DIR"``, ``"cifar10:DIR"`` or ``"folder:DIR"``.
        checkpoint, num_classes, pretrained: as :func:`lst_fast.models.load_model`; a random initialisation
            (``pretrained=False``) is seeded by ``seed``.
        mean, std: the normalisation (both or neither; default the model's own).
        image_size: the crop size (default 224; CIFAR-10: 32).
        seed: seeds a random initialisation.

    Returns:
        ``(model, normalizer, dataset)``.

    Raises:
        ValueError, TypeError, FileNotFoundError, ImportError: a bad name, folder, checkpoint or option.
    """
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together")
    spec = data.parse_data_spec(data_spec)
    dataset = data.open_dataset(spec, image_size=image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net, normalizer = models.load_model(
            model, pretrained=pretrained, checkpoint=checkpoint, num_classes=num_classes,
            normalization=None if mean is None else (tuple(mean), tuple(std)),
            robustbench_dataset="cifar10" if spec.kind == "cifar10" else "imagenet",
        )
    return net, normalizer, dataset


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device.

    Args:
        device: a device or its name; None: CUDA where available, else the CPU.

    Returns:
        The torch.device.

    Raises:
        ValueError: ``device`` is not a torch device, or asks for CUDA where it is not available.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asks for CUDA, which is not available here; use --device cpu")
    return device


# ---------------------------------------------------------------------------------------------------------
# Choosing the images


@torch.no_grad()
def predict(model, normalizer, images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Softmax probabilities of ``images``, in model calls of :data:`SELECTION_BATCH` images in eval mode.

    Args:
        model: the classifier, taking normalised images; its training mode is restored afterwards.
        normalizer: maps [0, 1] images to the model's input space.
        images: (N, C, H, W) images in [0, 1].
        device: where the model runs.

    Returns:
        (N, K) float32 probabilities on the CPU, K the model's classes.
    """
    training = model.training
    model.eval()
    try:
        return torch.cat([
            model(normalizer(chunk.to(device))).float().softmax(1).cpu() for chunk in images.split(SELECTION_BATCH)
        ])
    finally:
        model.train(training)


def _labels_of(dataset) -> list[int]:
    for attribute in ("labels", "targets"):  # lst_fast.data.ImageFiles, torchvision's CIFAR10
        values = getattr(dataset, attribute, None)
        if values is not None:
            return [int(v) for v in values]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def _name_and_file(dataset, index: int) -> tuple[str, str]:
    if isinstance(dataset, data.ImageFiles):
        path = Path(dataset.files[index])
        return path.stem, str(path)
    if isinstance(dataset, data.EmbeddedPhotos):
        return dataset.names[index], f"skimage.data.{dataset.names[index]}"
    return f"image_{index:05d}", f"image {index} of the data set"


def _unique(names: list[str], indices: list[int]) -> list[str]:
    """The names, those that occur more than once suffixed with their data set index."""
    return [f"{n}_{i}" if names.count(n) > 1 else n for n, i in zip(names, indices)]


def _chosen(dataset, indices: list[int], images: torch.Tensor, labels: list[int], conf: list[float]) -> Chosen:
    names, files = zip(*[_name_and_file(dataset, i) for i in indices])
    return Chosen(list(indices), images, list(labels), _unique(list(names), indices), list(files), list(conf))


def class_namer(dataset, num_classes: int) -> Callable[[int], str]:
    """How to name the classes of a model on ``dataset``.

    Args:
        dataset: the data set (see :func:`lst_fast.data.open_dataset`).
        num_classes: the model's number of classes.

    Returns:
        Class index -> name: the data set's own names (CIFAR-10) if it has as many as the model has classes,
        the ImageNet-1k names for a 1000-class model or ImageNet-labelled files, else ``class N``.
    """
    own = getattr(dataset, "classes", None)
    if own is not None and len(own) == num_classes:
        return lambda c: own[c]
    labelled_files = isinstance(dataset, data.ImageFiles) and any(v != data.UNLABELLED for v in dataset.labels)
    if num_classes == 1000 or labelled_files:  # lst_fast.data labels ImageNet folders by ImageNet-1k index
        return models.class_name
    return lambda c: f"class {c}"


def choose_by_class(
    model, normalizer, dataset, classes: Sequence[int], *, per_class: int = 1, seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[Chosen, list[str]]:
    """For each class, the first ``per_class`` images of that class, in a seeded random order of the data set
    (``torch.randperm(len(dataset))`` from a generator seeded ``seed``), that the model classifies correctly.

    Returns:
        The chosen images (class by class, in the order of ``classes``) and notes on the classes with fewer
        than ``per_class`` such images.

    Raises:
        ValueError: the data have no labels, a class is not one of the model's, a class is given twice, or a
            class has no correctly classified image (all such classes are named).
    """
    labels = _labels_of(dataset)
    if all(v == data.UNLABELLED for v in labels):
        raise ValueError(
            "classes: these data have no labels (folder or embedded data): choose the images by name instead "
            "(--images NAME ...)"
        )
    num_classes = predict(model, normalizer, dataset[0][0].unsqueeze(0), device).shape[1]
    _check_classes(classes, num_classes)
    name = class_namer(dataset, num_classes)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    picked, notes, missing = [], [], []
    for c in classes:
        candidates = [i for i in order if labels[i] == c]
        found = _first_correct(model, normalizer, dataset, candidates, c, per_class, device)
        if not found:
            missing.append(f"class {c} ({name(c)}): " + (
                f"none of its {len(candidates)} images is classified correctly" if candidates
                else "no image of it in the data"))
        elif len(found) < per_class:
            notes.append(f"class {c} ({name(c)}): only {len(found)} correctly classified image(s), {per_class} "
                         f"asked for ({len(candidates)} in the data)")
        picked += [(i, c, p) for i, p in found]
    if missing:
        raise ValueError("classes: no correctly classified image for " + "; ".join(missing))
    indices, picked_labels, conf = (list(v) for v in zip(*picked))
    images = torch.stack([dataset[i][0] for i in indices])
    return _chosen(dataset, indices, images, picked_labels, conf), notes


def _check_classes(classes, num_classes: int) -> None:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not classes:
        raise TypeError(f"classes must be a non-empty sequence of class indices, got {classes!r}")
    for c in classes:
        check_number("classes", c, integer=True)
    outside = [c for c in classes if not 0 <= c < num_classes]
    if outside:
        raise ValueError(f"classes: {outside} not among the model's {num_classes} classes (0..{num_classes - 1})")
    twice = sorted({c for c in classes if list(classes).count(c) > 1})
    if twice:
        raise ValueError(f"classes: {twice} given more than once")


def _first_correct(model, normalizer, dataset, candidates, label, count, device) -> list[tuple[int, float]]:
    """The first ``count`` of ``candidates`` that the model classifies as ``label``, with their confidence."""
    found = []
    for start in range(0, len(candidates), SELECTION_BATCH):
        chunk = candidates[start : start + SELECTION_BATCH]
        probs = predict(model, normalizer, torch.stack([dataset[i][0] for i in chunk]), device)
        conf, predicted = probs.max(1)
        found += [(i, p) for i, p, y in zip(chunk, conf.tolist(), predicted.tolist()) if y == label]
        if len(found) >= count:
            return found[:count]
    return found


def choose_by_name(model, normalizer, dataset, names: Sequence[str], *, device: torch.device | str = "cpu") -> Chosen:
    """The named images: a file's name, its stem or the end of its path (``CLASS/NAME.png``); the bundled
    photos' names. Labelled images must be classified correctly; unlabelled ones take the model's prediction.

    Args:
        model: the classifier, taking normalised images.
        normalizer: maps [0, 1] images to the model's input space.
        dataset: the data set to pick from.
        names: the images' names, as above.
        device: where the model runs.

    Returns:
        The :class:`Chosen` images, in the order of ``names``, with their classes (the label, or the prediction
        where unlabelled) and the model's confidence in them.

    Raises:
        TypeError: ``names`` is not a non-empty sequence of names.
        ValueError: a name matches no image or several, is given twice, or names a misclassified image.
    """
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or not names:
        raise TypeError(f"images must be a non-empty sequence of image names, got {names!r}")
    twice = sorted({n for n in names if list(names).count(n) > 1})
    if twice:
        raise ValueError(f"images: {twice} given more than once")
    indices = [_find_image(dataset, n) for n in names]
    items = [dataset[i] for i in indices]
    images = torch.stack([image for image, _ in items])
    conf, predicted = predict(model, normalizer, images, device).max(1)
    wrong = [f"{n} (labelled {y}, predicted {p})" for n, (_, y), p in zip(names, items, predicted.tolist())
             if y not in (data.UNLABELLED, p)]
    if wrong:
        raise ValueError(f"images: the model misclassifies {', '.join(wrong)}; choose correctly classified images")
    return _chosen(dataset, indices, images, predicted.tolist(), conf.tolist())


def _find_image(dataset, name: str) -> int:
    found = [i for i in range(len(dataset)) if _matches(dataset, i, name)]
    if len(found) == 1:
        return found[0]
    if not found:
        known = [_name_and_file(dataset, i)[0] for i in range(min(len(dataset), 5))]
        raise ValueError(f"images: no image named {name!r} in the data (names like {', '.join(known)}, ...)")
    files = [_name_and_file(dataset, i)[1] for i in found[:4]]
    raise ValueError(f"images: {name!r} names {len(found)} images ({', '.join(files)}, ...); give more of its path")


def _matches(dataset, index: int, name: str) -> bool:
    if isinstance(dataset, data.ImageFiles):
        path = Path(dataset.files[index])
        return name in (path.stem, path.name) or path.as_posix().endswith("/" + name.lstrip("/"))
    return _name_and_file(dataset, index)[0] == name


# ---------------------------------------------------------------------------------------------------------
# The run


def run_examples(
    model,
    normalizer,
    dataset,
    out_dir: str | Path,
    *,
    classes: Sequence[int] | None = None,
    per_class: int | None = None,
    images: Sequence[str] | None = None,
    settings: TraversalSettings | None = None,
    precision: str = "fp32",
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    paths: bool = False,
    lpips_weights: str | Path | None = None,
    progress: bool = True,
    title: str | None = None,
) -> ExamplesReport:
    """Choose images, run LST on every ordered pair of them and write the figures and tables into ``out_dir``.

    Args:
        model, normalizer: the classifier (logits) and the map of [0, 1] images to its input.
        dataset: items ``(image, label)`` (:func:`lst_fast.data.open_dataset`).
        out_dir: output folder (created).
        classes: class indices (default :data:`PAPER_CLASSES`), ``per_class`` images each (default 1); see
            :func:`choose_by_class`.
        images: image names instead of classes (data without labels need them); see :func:`choose_by_name`.
        settings: the traversal's settings (default the paper's); the run chooses what is recorded: the
            confidence every iters/20 iterations, and the path widths too with ``paths`` (paper schedule).
        precision: the model's precision during LST (``traverse_batch``'s ``precision``).
        seed: the image order and the start-point noise (batch ``b`` of pairs: seed ``seed + b``).
        device: torch device (default CUDA where available, else the CPU).
        batch_size: pairs per ``traverse_batch`` call.
        paths: also draw the confidence and the path widths along every traversal (paper schedule only: with
            the adaptive one a note says they are left out).
        lpips_weights: local AlexNet weights for LPIPS (default the torch hub cache; without them LPIPS is left
            out with a note).
        progress: show a progress bar per batch.
        title: the grid's title (default: the iterations and schedule).

    Returns:
        The :class:`ExamplesReport` (what was computed, the table rows, notes, the files written).

    Raises:
        ValueError, TypeError: bad options, unknown classes or images, a class without a correctly classified
            image, or fewer than two images; all before any LST run.
    """
    out_dir = _check_out_dir(Path(out_dir))
    if images is not None and not isinstance(images, (str, bytes)):
        _check_two(list(images))  # before any model call
    settings, notes = _recorded_settings(settings, check_bool("paths", paths))
    batch_size = check_number("batch_size", batch_size, minimum=1, integer=True)
    seed = check_number("seed", seed, minimum=0, integer=True)
    device = resolve_device(device)
    model, normalizer = model.to(device), normalizer.to(device)
    chosen, chosen_notes = _choose(model, normalizer, dataset, classes, per_class, images, seed, device)
    notes += chosen_notes
    _check_two(chosen.names)
    sources, targets = ordered_pairs(len(chosen.indices))
    start = time.perf_counter()
    result = _traverse(model, normalizer, chosen, sources, targets, settings, precision, seed, device, batch_size,
                       progress)
    seconds = time.perf_counter() - start
    measured = _measure(model, normalizer, dataset, chosen, sources, targets, result, device, lpips_weights, notes)
    report = ExamplesReport(
        out_dir=out_dir, chosen=chosen, sources=sources, targets=targets, result=result, settings=settings,
        seconds=seconds, notes=notes, **measured,
        title=title or f"Level set traversal, {settings.iters} iterations ({settings.schedule} schedule)",
    )
    report.rows = _rows(report)
    report.files = _write(report, paths and settings.schedule == "paper")
    return report


def _check_two(names: list[str]) -> None:
    if len(names) < 2:
        raise ValueError(f"at least 2 images are needed (every ordered pair of them runs LST), got {names}")


def _check_out_dir(out_dir: Path) -> Path:
    for path in (out_dir, *out_dir.parents):
        if path.exists() and not path.is_dir():
            raise ValueError(f"out must be a folder, but {str(path)!r} is a file; choose another --out")
    return out_dir


def _recorded_settings(settings: TraversalSettings | None, paths: bool) -> tuple[TraversalSettings, list[str]]:
    """The settings with the run's recording: the confidence (and with ``paths`` the widths) along the path."""
    settings = TraversalSettings() if settings is None else settings
    if not isinstance(settings, TraversalSettings):
        raise TypeError(f"settings must be a lst_fast.TraversalSettings, got {type(settings).__name__}")
    if settings.record or settings.log_every:
        raise ValueError("settings: examples choose what is recorded along the path; leave log_every and record "
                         "at their defaults")
    if settings.schedule != "paper":  # rows move at different paces: no common path to record
        left_out = ("the adaptive schedule records no path: the confidence path and the path widths are left out "
                    "(they need --schedule paper)")
        return settings, [left_out] if paths else []
    record = ("conf", "widths") if paths else ("conf",)
    return dataclasses.replace(settings, log_every=max(1, settings.iters // PATH_POINTS), record=record), []


def _choose(model, normalizer, dataset, classes, per_class, images, seed, device) -> tuple[Chosen, list[str]]:
    if images is not None:
        if classes is not None or per_class is not None:
            raise ValueError("images picks the images by name: give classes and per_class only without it")
        return choose_by_name(model, normalizer, dataset, images, device=device), []
    per_class = check_number("per_class", 1 if per_class is None else per_class, minimum=1, integer=True)
    classes = PAPER_CLASSES if classes is None else classes
    return choose_by_class(model, normalizer, dataset, classes, per_class=per_class, seed=seed, device=device)


def _traverse(model, normalizer, chosen, sources, targets, settings, precision, seed, device, batch_size, progress):
    """Every pair through ``traverse_batch``, ``batch_size`` pairs at a time (batch ``b``: seed ``seed + b``)."""
    images = chosen.images.to(device)
    labels = torch.tensor(chosen.labels, device=device)
    results = []
    for b, start in enumerate(range(0, len(sources), batch_size)):
        src, tgt = sources[start : start + batch_size].to(device), targets[start : start + batch_size].to(device)
        results.append(traverse_batch(
            model, images[src], images[tgt], labels[src], target_labels=labels[tgt], normalizer=normalizer,
            settings=settings, precision=precision, progress=progress,
            generator=torch.Generator(device).manual_seed(seed + b),
        ).to("cpu"))
    return concatenate(results)


def concatenate(results: Sequence[TraversalResult]) -> TraversalResult:
    """The rows of several traversal results, in order, as one.

    Args:
        results: one or more :class:`lst_fast.TraversalResult` of the same settings and recording.

    Returns:
        One :class:`lst_fast.TraversalResult`: its per-row tensors concatenated along the rows, its other fields
        (``path_iters`` among them) those of the first result.
    """
    fields = {}
    for f in dataclasses.fields(TraversalResult):
        values = [getattr(r, f.name) for r in results]
        per_row = isinstance(values[0], torch.Tensor) and f.name != "path_iters"
        fields[f.name] = torch.cat(values) if per_row else values[0]
    return TraversalResult(**fields)


def _measure(model, normalizer, dataset, chosen, sources, targets, result, device, lpips_weights, notes) -> dict:
    """The report's measurements of the outputs: class names, target-class confidences, distances to the
    targets, interpolations and triangles (a note is added where LPIPS cannot run)."""
    probs = predict(model, normalizer, result.images, device)
    name = class_namer(dataset, probs.shape[1])
    which = metrics.available_distances(lpips_weights)
    if "lpips" not in which:
        notes.append("LPIPS left out: its AlexNet weights are not on this machine (give their file with "
                     "--lpips-weights)")
    outs, tgts = result.images, chosen.images[targets]
    target_labels = torch.tensor(chosen.labels)[targets]
    interpolation = geometry.interpolation_conf(
        model, chosen.images[sources].to(device), outs.to(device), result.labels.to(device), normalizer=normalizer
    )
    return {
        "class_names": [name(c) for c in chosen.labels],
        "target_conf": probs.gather(1, target_labels.unsqueeze(1)).squeeze(1),
        "distances": metrics.distances(outs, tgts, which=which, lpips_weights=lpips_weights),
        "interpolation": interpolation.cpu(),
        "triangles": _triangles(model, normalizer, chosen, sources, result, device),
    }


def _triangles(model, normalizer, chosen, sources, result, device) -> dict[int, tuple[torch.Tensor, int, int]]:
    """Per source: the confidence over the triangle of it and its outputs towards the first two other images."""
    n = len(chosen.indices)
    if n < 3:
        return {}
    pair_a = [int((sources == s).nonzero()[0, 0]) for s in range(n)]  # pairs are source-major
    pair_b = [k + 1 for k in pair_a]
    conf = geometry.triangle_confidences(
        model, chosen.images.to(device), result.images[pair_a].to(device), result.images[pair_b].to(device),
        result.labels.to(device)[pair_a], normalizer=normalizer,
    ).cpu()
    return {s: (conf[s], pair_a[s], pair_b[s]) for s in range(n)}


# ---------------------------------------------------------------------------------------------------------
# Tables and figures


def _rows(report: ExamplesReport) -> list[dict]:
    r, chosen = report.result, report.chosen
    rows = []
    for k, (s, t) in enumerate(zip(report.sources.tolist(), report.targets.tolist())):
        row = {
            "source": chosen.names[s], "target": chosen.names[t],
            "source_file": chosen.files[s], "target_file": chosen.files[t],
            "label": int(r.labels[k]), "label_name": report.class_names[s],
            "target_label": chosen.labels[t], "target_label_name": report.class_names[t],
            "valid": bool(r.valid[k]), "init_conf": float(r.init_conf[k]), "final_conf": float(r.final_conf[k]),
            "target_conf": float(report.target_conf[k]),
            "accepted": int(r.accepted[k]), "evaluations": int(r.evaluations[k]),
            **{f"{name}_to_target": float(values[k]) for name, values in report.distances.items()},
        }
        if r.path_conf is not None:
            row["conf_path"] = [round(float(v), 5) for v in r.path_conf[k]]
        rows.append(row)
    return rows


def _write(report: ExamplesReport, paths: bool) -> list[Path]:
    out = report.out_dir
    (out / "images").mkdir(parents=True, exist_ok=True)
    written = []
    for k, row in enumerate(report.rows):
        written.append(out / "images" / f"{row['source']}_to_{row['target']}.png")
        save_image(report.result.images[k], written[-1])
    written += _write_tables(report)
    written.append(plots.save_figure(grid_figure(report), out / "grid.png"))
    for source in report.triangles:
        path = out / f"triangle_{report.chosen.names[source]}.png"
        written.append(plots.save_figure(triangle_figure(report, source), path))
    written.append(plots.interpolation_plot(
        report.interpolation, out / "interpolation.png", labels=_pair_names(report)
    ))
    if paths:
        written += _path_figures(report)
    return written


def _write_tables(report: ExamplesReport) -> list[Path]:
    out, s = report.out_dir, report.settings
    chosen = report.chosen
    summary = {
        "iters": s.iters, "schedule": s.schedule, "seconds": round(report.seconds, 2),
        "settings": dataclasses.asdict(s), "notes": report.notes,
        "images": [
            {"name": n, "file": f, "label": c, "label_name": cn, "conf": p}
            for n, f, c, cn, p in zip(chosen.names, chosen.files, chosen.labels, report.class_names, chosen.conf)
        ],
        "pairs": report.rows,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    columns = [c for c in report.rows[0] if c != "conf_path"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(report.rows)
    return [out / "results.json", out / "results.csv"]


def _short(text: str) -> str:
    """The first of a class's names (ImageNet lists synonyms), cut to fit a caption."""
    text = text.split(",")[0]
    return text if len(text) <= CAPTION_CHARS else text[: CAPTION_CHARS - 1] + "…"


def _pair_names(report: ExamplesReport) -> list[str]:
    """Legend entries of the line plots: one per pair, none for more than :data:`LEGEND_PAIRS` pairs."""
    if len(report.rows) > LEGEND_PAIRS:
        return []
    return [f"{row['source']} -> {row['target']}" for row in report.rows]


def grid_figure(report: ExamplesReport) -> Figure:
    """The paper's Figure 1 for ``report``.

    Args:
        report: the result of :func:`run_examples` (n images, every ordered pair).

    Returns:
        The matplotlib Figure: rows = targets, columns = sources (n x n axes), class names as titles, each LST
        output captioned with p(source class); the diagonal shows the clean image with its class.
    """
    chosen, n = report.chosen, len(report.chosen.indices)
    cells = chosen.images.unsqueeze(0).repeat(n, 1, 1, 1, 1)  # cells[t, s]
    captions = [[""] * n for _ in range(n)]
    for s in range(n):
        captions[s][s] = f"clean: {_short(report.class_names[s])}"
    for k, (s, t) in enumerate(zip(report.sources.tolist(), report.targets.tolist())):
        cells[t, s] = report.result.images[k]
        captions[t][s] = f"p(source) = {float(report.result.final_conf[k]):.3f}"
    names = [_short(c) for c in report.class_names]
    return plots.image_grid_figure(
        cells, captions, row_labels=[f"target: {c}" for c in names], col_labels=names, title=report.title,
    )


def triangle_figure(report: ExamplesReport, source: int) -> Figure:
    """The confidence over the triangle of image ``source`` and its outputs towards the first two other images.

    Args:
        report: the result of :func:`run_examples`.
        source: the image's position in ``report.chosen``, a key of ``report.triangles``.

    Returns:
        The matplotlib Figure of :func:`lst_fast.plots.triangle_figure`.
    """
    conf, a, b = report.triangles[source]
    names, r = report.chosen.names, report.result
    corners = torch.stack([report.chosen.images[source], r.images[a], r.images[b]])
    return plots.triangle_figure(
        conf, corners, corner_labels=(names[source], f"to {names[int(report.targets[a])]}",
                                      f"to {names[int(report.targets[b])]}"),
        title=f"{names[source]} ({_short(report.class_names[source])}): confidence over the triangle",
    )


def _path_figures(report: ExamplesReport) -> list[Path]:
    r, out = report.result, report.out_dir
    written = [plots.confidence_path_plot(
        r.path_iters, r.path_conf, r.path_target_conf, out / "confidence_paths.png", labels=_pair_names(report),
    )]
    for k, row in enumerate(report.rows):
        written.append(plots.path_width_plot(
            r.path_widths[k], out / f"path_width_{row['source']}_to_{row['target']}.png", iters=r.path_iters,
            distances=report.settings.width_distances, title=f"Path width, {row['source']} -> {row['target']}",
        ))
    return written
