"""Figures of a sweep folder (``lst-fast plot``): the plots of :mod:`lst_fast.plots` from what a sweep saved.

- ``confidence_paths.png``: source- and target-class confidence along the first pairs' paths (recorded by the
  sweep); the first pairs are taken from the finished LST units in plan order, as many as asked for;
- ``interpolation.png``: confidence on the segments source -> LST output of those pairs (star-like structure);
- ``triangle_SSSSS.png``: confidence over the triangle (source, output of round 0, output of round 1) of the
  first sources;
- ``path_width_SSSSS_to_TTTTT.png`` (only with ``path_widths``, paper schedule): the path width along the first
  pairs' paths.
  Widths are not stored by a sweep (each recorded point costs ``width_vecs`` x 4 model evaluations), so the
  LST units of those pairs are run again with the same settings and seed, recording them.

The model and data are loaded again from the manifest's configuration. Images are named by their file (or
bundled photo) name and classes by their ImageNet-1k or CIFAR-10 name where known.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from lst_fast import data, geometry, models, plots
from lst_fast.fast import traverse_batch
from lst_fast.schedules import schedule_named
from lst_fast.sweep import schema
from lst_fast.sweep.config import config_from_manifest
from lst_fast.sweep.folder import FINISHED, open_sweep
from lst_fast.sweep.placement import resolve_device, resolve_placement
from lst_fast.sweep.plan import unit_generator
from lst_fast.sweep.runner import load_sweep_model


def plot_sweep(
    out_dir: str | Path,
    figures_dir: str | Path | None = None,
    *,
    pairs: int = 4,
    path_widths: bool = False,
    width_vecs: int = 256,
    checkpoint: str | None = None,
    device: str | None = None,
) -> list[Path]:
    """Write the figures of the sweep in ``out_dir`` to ``figures_dir`` (default ``out_dir/figures``) for its
    first ``pairs`` pairs / sources; returns the files written."""
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise ValueError(f"pairs must be an int >= 1, got {pairs!r}")
    folder = open_sweep(out_dir)
    config = config_from_manifest(folder.manifest, checkpoint=checkpoint)
    figures = Path(figures_dir) if figures_dir is not None else Path(out_dir) / "figures"
    plan, selection = folder.plan, folder.selection

    def unit_tensors(unit):  # None unless the unit is finished (a corrupt one is left out like a missing one)
        verdict = folder.verdict("traverse", unit.name)
        return verdict.tensors if verdict.verdict == FINISHED else None

    shown = _first_pairs(plan.traverse, unit_tensors, pairs)
    if not shown:
        raise ValueError(f"{out_dir} has no finished LST unit yet; nothing to plot")
    k = sum(len(chosen) for _, _, chosen in shown)
    if k < pairs:
        tqdm.write(f"lst-fast plot: note: the sweep has {k} finished pairs, fewer than the {pairs} asked for; "
                   f"plotting {k}", file=sys.stderr)
    device = resolve_device(device, resolve_placement())
    model, normalizer = load_sweep_model(config)
    model, normalizer = model.to(device), normalizer.to(device)
    dataset = data.open_dataset(config.data, image_size=config.image_size)

    def images(positions) -> torch.Tensor:
        return torch.stack([dataset[selection.indices[p]][0] for p in positions]).to(device)

    def name(position: int) -> str:
        return image_name(dataset, selection.indices[position], position)

    def taken(field) -> torch.Tensor:  # the field of the shown pairs, unit after unit
        return torch.cat([field.of(saved)[chosen] for _, saved, chosen in shown])

    sources = [u.sources[i] for u, _, chosen in shown for i in chosen]
    targets = [u.targets[i] for u, _, chosen in shown for i in chosen]
    names = [f"{name(s)} -> {name(t)}" for s, t in zip(sources, targets)]
    labels = taken(schema.LABELS).to(device)
    written = []
    if schema.PATH_CONF.of(shown[0][1]) is not None:
        written.append(plots.confidence_path_plot(
            schema.PATH_ITERS.of(shown[0][1]), taken(schema.PATH_CONF), taken(schema.PATH_TARGET_CONF),
            figures / "confidence_paths.png", labels=names,
        ))
    conf = geometry.interpolation_conf(
        model, images(sources), taken(schema.OUTPUTS).to(device), labels, normalizer=normalizer,
        batch_size=config.eval_batch_size,
    )
    written.append(plots.interpolation_plot(conf, figures / "interpolation.png", labels=names))
    with torch.no_grad():
        classes = class_namer(dataset, model(normalizer(images(sources[:1]))).shape[1])
    written += _triangles(config, plan, unit_tensors, images, model, normalizer, pairs, figures, device, name, classes)
    if path_widths and schedule_named(config.schedule).records:  # e.g. the adaptive schedule records no path
        for unit, saved, chosen in shown:
            written += _path_widths(config, unit, saved, chosen, images, model, normalizer, width_vecs, figures,
                                    device, name)
    return written


def image_name(dataset, index: int, position: int) -> str:
    """The name of data set image ``index`` (the sweep's image ``position``): its file or bundled photo name
    where the data set has one, else ``image POSITION``."""
    if isinstance(dataset, data.EmbeddedPhotos):
        return dataset.names[index]
    if isinstance(dataset, data.ImageFiles):
        return Path(dataset.files[index]).name
    return f"image {position}"


def class_namer(dataset, num_classes: int) -> Callable[[int], str]:
    """Class index -> name: the data set's own class names (CIFAR-10) when the model has as many classes, the
    ImageNet-1k names for a 1000-class model, else ``class N``."""
    own = getattr(dataset, "classes", None)
    if own is not None and len(own) == num_classes:
        return lambda c: own[c]
    if num_classes == 1000:
        return models.class_name
    return lambda c: f"class {c}"


def _triangles(
    config, plan, unit_tensors, images, model, normalizer, count, figures, device, name, classes
) -> list[Path]:
    """Triangles (source, round-0 output, round-1 output) of the first sources whose two rounds are done."""
    if config.rounds < 2:
        return []
    written = []
    for unit in plan.triangles:
        first, second = (unit_tensors(n) for n in unit.needs[:2])
        if first is None or second is None:
            continue
        keep = (schema.VALID.of(first) & schema.VALID.of(second)).nonzero().squeeze(1)[: count - len(written)].tolist()
        if not keep:
            continue
        srcs = images([unit.sources[i] for i in keep])
        out_a, out_b = (schema.OUTPUTS.of(r)[keep].to(device) for r in (first, second))
        source_labels = schema.LABELS.of(first)
        conf = geometry.triangle_confidences(
            model, srcs, out_a, out_b, source_labels[keep].to(device), normalizer=normalizer,
            n=config.triangle_grid, batch_size=config.eval_batch_size,
        )
        for row, i in enumerate(keep):
            source = unit.sources[i]
            written.append(plots.triangle_plot(
                conf[row], torch.stack([srcs[row], out_a[row], out_b[row]]), figures / f"triangle_{source:05d}.png",
                n=config.triangle_grid, corner_labels=("source", "round 0 output", "round 1 output"),
                title=f"Source {name(source)} ({classes(int(source_labels[i]))}): confidence over the triangle",
            ))
        if len(written) >= count:
            break
    return written


def _first_pairs(units, unit_tensors, count: int) -> list[tuple[object, dict, list[int]]]:
    """The first ``count`` pairs of the finished LST units, in plan order: (unit, its tensors, the positions of
    its pairs taken) for each unit that gives some."""
    shown = []
    for unit in units:
        if count <= 0:
            break
        saved = unit_tensors(unit)
        if saved is None:
            continue
        chosen = list(range(min(count, len(unit.sources))))
        shown.append((unit, saved, chosen))
        count -= len(chosen)
    return shown


def _path_widths(config, unit, saved, chosen, images, model, normalizer, width_vecs, figures, device, name) -> list:
    """Runs LST unit ``unit`` again (same settings and seed, so the same path) recording path widths; plots those
    of its pairs ``chosen``."""
    result = traverse_batch(
        model, images(unit.sources), images(unit.targets), schema.LABELS.of(saved).to(device), normalizer=normalizer,
        settings=config.lst_settings(record=("widths",), width_num_vecs=width_vecs), precision=config.precision,
        generator=unit_generator(config.seed, unit.round, unit.batch, device),
    )
    return [
        plots.path_width_plot(
            result.path_widths[i], figures / f"path_width_{unit.sources[i]:05d}_to_{unit.targets[i]:05d}.png",
            iters=result.path_iters,
            title=f"Path width, {name(unit.sources[i])} -> {name(unit.targets[i])} (round {unit.round})",
        )
        for i in chosen
    ]
