"""Running a sweep (algorithm §6) into a folder, resumably and in shares across processes.

Phase 1 (traverse): one unit per round x batch of sources: LST towards the round's targets, then the
distances of every pair. Phase 2 (triangles): one unit per batch of sources, once every round of that batch is
finished (possibly by other processes, whose files are waited for): the triangle statistics of every pair of
rounds. A process only ever computes the units it owns (see :mod:`lst_fast.sweep.placement`) and skips those
already finished, so re-running the same command resumes a sweep.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torchvision.utils import save_image
from tqdm.auto import tqdm

import lst_fast
from lst_fast import data, metrics, models, ops
from lst_fast.fast import traverse_batch
from lst_fast.sweep import evaluation, provenance, schema
from lst_fast.sweep.config import PHASES, SweepConfig, differences
from lst_fast.sweep.folder import CORRUPT, FINISHED, SweepFolder
from lst_fast.sweep.placement import Placement, parse_shard, resolve_device, resolve_placement
from lst_fast.sweep.plan import TraverseUnit, TriangleUnit, unit_generator
from lst_fast.sweep.selection import Selection, select_images
from lst_fast.sweep.store import CorruptUnit, SweepStore, config_id


@dataclass
class PhaseCount:
    """What one process did in one phase."""

    computed: int = 0
    skipped: int = 0  # already finished
    redone: list[str] = field(default_factory=list)  # corrupt files that were computed again
    items: int = 0  # pairs (traverse) or sources (triangles) computed
    seconds: float = 0.0


@dataclass
class SweepReport:
    out_dir: Path
    placement: Placement
    traverse: PhaseCount
    triangles: PhaseCount
    waiting: list[str]  # own triangle units left undone: their traversal units were not all there in time
    finished: dict[str, tuple[int, int]]  # whole sweep: (finished, total) unit files per kind
    note: str | None  # e.g. why LPIPS is left out

    def summary(self) -> str:
        t, g = self.traverse, self.triangles
        rate = t.items / t.seconds if t.seconds > 0 else 0.0
        parts = [
            f"[{self.placement.label}] LST: {t.computed} units ({t.items} pairs, {rate:.2f} pairs/s), "
            f"{t.skipped} already done, {len(t.redone)} corrupt redone",
            f"triangles: {g.computed} units ({g.items} sources), {g.skipped} already done",
        ]
        if self.waiting:
            parts.append(f"{len(self.waiting)} triangle units still waiting for other processes")
        done = ", ".join(f"{kind} {a}/{b}" for kind, (a, b) in self.finished.items())
        note = f" Note: {self.note}" if self.note else ""
        return "; ".join(parts) + f". Sweep {self.out_dir}: {done} units finished.{note}"


@dataclass(frozen=True)
class Process:
    """This process: its share of the sweep, where and how it computes, and the provenance it records. None of it
    is part of the sweep's identity."""

    placement: Placement
    device: torch.device
    workers: int  # data loading processes
    progress: bool
    cuda_graphs: bool
    environment: dict  # the provenance every unit of this process records (lst_fast.sweep.provenance)


@dataclass(frozen=True)
class Inputs:
    """The sweep's model and data, loaded by this process."""

    dataset: torch.utils.data.Dataset
    model: torch.nn.Module
    normalizer: torch.nn.Module


@dataclass(frozen=True)
class Distances:
    """The distances every traversal unit computes, and where LPIPS finds its weights."""

    names: tuple[str, ...]
    lpips_weights: str | None


@dataclass(frozen=True)
class _Sweep:
    """Everything the phases share: what is computed (config), where it goes (folder: manifest, selection, plan,
    units), by whom (process), from what (inputs) and how it is measured (distances)."""

    config: SweepConfig
    folder: SweepFolder
    process: Process
    inputs: Inputs
    distances: Distances

    @property
    def selection(self) -> Selection:
        return self.folder.selection

    def labels(self, positions) -> torch.Tensor:
        return torch.tensor([self.selection.labels[p] for p in positions], dtype=torch.long)

    def dataset_indices(self, positions) -> list[int]:
        return [self.selection.indices[p] for p in positions]

    @cached_property
    def image_stems(self) -> list[str]:
        """The names of the selected images in file names (``save_images``), by selection position."""
        return image_stems(self.inputs.dataset, self.selection.indices)


def image_stems(dataset, indices: list[int]) -> list[str]:
    """Names for the files of data set images ``indices`` (a sweep's selection, by position): the file stem or
    bundled photo name where the data set has one, else the position as ``PPPPP``; a name that several of the
    images share gets their position appended (``img_00003``), so the names are unique.

    Args:
        dataset: the sweep's data set.
        indices: data set indices of the images, in selection order.

    Returns:
        One name per image, in the order of ``indices``.
    """
    if isinstance(dataset, data.ImageFiles):
        names = [Path(dataset.files[i]).stem for i in indices]
    elif isinstance(dataset, data.EmbeddedPhotos):
        names = [dataset.names[i] for i in indices]
    else:
        return [f"{p:05d}" for p in range(len(indices))]
    counts = Counter(names)
    return [f"{n}_{p:05d}" if counts[n] > 1 else n for p, n in enumerate(names)]


def run_sweep(
    config: SweepConfig,
    out_dir: str | Path,
    *,
    device: str | None = None,
    workers: int = 2,
    shard: str | tuple[int, int] | None = None,
    phase: str = "all",
    wait: float = 3600.0,
    poll: float = 2.0,
    progress: bool = True,
    lpips_weights: str | Path | None = None,
    cuda_graphs: bool = False,
    strict_images: bool = False,
) -> SweepReport:
    """Run (or resume) this process's share of a sweep into ``out_dir``.

    Args:
        config: the sweep's settings; an existing ``out_dir`` must have been started with the same ones.
        device: torch device; default ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
        workers: data loading processes (0: load in this process).
        shard: ``"I/N"`` or (I, N): do share I of N (combined with torchrun's ranks if present).
        phase: ``"all"``, ``"traverse"`` (LST units only) or ``"triangles"`` (triangle units only).
        wait: seconds the triangle phase waits for traversal units of other processes before giving up
            (what is left is listed in the report and done by a later run).
        poll: seconds between looks at the folder while waiting.
        lpips_weights: local AlexNet weights for LPIPS (default: torch's hub cache); without them a new sweep
            leaves LPIPS out (noted in the manifest and the tables).
        cuda_graphs: run LST as replayed CUDA graphs (CUDA devices only; see :func:`lst_fast.traverse_batch`).
        strict_images: stop at the first image file that cannot be read (:class:`lst_fast.data.UnreadableImage`)
            instead of skipping it; skipped files are listed in the folder's ``selection.json``.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    if not wait >= 0 or not poll > 0:
        raise ValueError(f"wait must be >= 0 and poll > 0 seconds, got wait={wait!r}, poll={poll!r}")
    for name, flag in (("cuda_graphs", cuda_graphs), ("strict_images", strict_images)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    sweep, note = _open(
        config, Path(out_dir), device, workers, shard, progress, lpips_weights, cuda_graphs, strict_images
    )
    traverse = _traverse_phase(sweep) if phase in ("all", "traverse") else PhaseCount()
    triangles, waiting = PhaseCount(), []
    if config.triangles and phase in ("all", "triangles"):
        triangles, waiting = _triangle_phase(sweep, wait, poll)
    return SweepReport(
        out_dir=sweep.folder.root, placement=sweep.process.placement, traverse=traverse, triangles=triangles,
        waiting=waiting, finished=_finished(sweep.folder), note=note,
    )


# ---------------------------------------------------------------------------------------------------------
# Set-up: every check happens here, before any unit is computed


def _open(config, out_dir, device, workers, shard, progress, lpips_weights, cuda_graphs, strict_images):
    config = config.checked()
    _check_out_dir(out_dir)
    placement = resolve_placement(parse_shard(shard) if isinstance(shard, str) else shard)
    device = resolve_device(device, placement)
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs needs a CUDA device, got {device}")
    store = SweepStore(out_dir)
    stored = store.read_json(store.manifest_path)
    dataset = data.open_dataset(config.data, image_size=config.image_size)
    if len(dataset) < 2:
        raise ValueError(f"data {config.data!r} holds {len(dataset)} image(s); a sweep needs at least 2")
    model, normalizer = load_sweep_model(config)
    inputs = Inputs(dataset, model.to(device), normalizer.to(device))
    distances, note = _distances(stored, lpips_weights)
    identity = config.identity(
        normalization=(inputs.normalizer.mean.flatten().tolist(), inputs.normalizer.std.flatten().tolist()),
        distances=distances,
    )
    if stored is not None:
        _same_config(stored, identity, out_dir)
    selection = _selection(store, config, inputs, device, workers, strict_images)
    manifest = store.write_json_once(store.manifest_path, {
        "config_id": config_id(identity),
        "seed": config.seed,
        "config": identity,
        "note": note,
        "created_by": {
            "lst_fast": lst_fast.__version__, "torch": torch.__version__, "device": device.type,
            "command": sys.argv,
            "checkpoint": None if config.checkpoint is None else str(Path(config.checkpoint).resolve()),
        },
    })
    _same_config(manifest, identity, out_dir)
    process = Process(
        placement=placement, device=device, workers=workers, progress=progress, cuda_graphs=cuda_graphs,
        environment=provenance.environment(
            device, precision=config.precision, backend=ops.default_backend(device, torch.float32),
            schedule=config.schedule, process=placement.label,
        ),
    )
    sweep = _Sweep(
        config=config, folder=SweepFolder(store, manifest, selection), process=process, inputs=inputs,
        distances=Distances(tuple(distances), None if lpips_weights is None else str(lpips_weights)),
    )
    return sweep, note


def _check_out_dir(out_dir: Path) -> None:
    """The output folder must be a folder, or not exist yet below folders."""
    for path in (out_dir, *out_dir.parents):
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"out must be a sweep folder (new or existing), but {str(path)!r} is a file; choose another --out"
            )


def load_sweep_model(config: SweepConfig):
    """The model, with any random initialisation (``--no-pretrained``) seeded by the sweep seed so that every
    process of the sweep gets the same weights."""
    kind = data.parse_data_spec(config.data).kind
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return models.load_model(
            config.model, pretrained=config.pretrained, checkpoint=config.checkpoint, num_classes=config.num_classes,
            normalization=config.normalization(), robustbench_dataset="cifar10" if kind == "cifar10" else "imagenet",
        )


def _distances(stored: dict | None, lpips_weights) -> tuple[list[str], str | None]:
    """The distances of a new sweep (LPIPS only where it runs); a resumed sweep keeps its own, and must be
    able to compute them here."""
    available, note = evaluation.choose_distances(lpips_weights)
    if stored is None:
        return list(available), note
    wanted = stored.get("config", {}).get("distances", [])
    if "lpips" in wanted and "lpips" not in available:
        raise ValueError(
            "this sweep folder computes LPIPS, whose AlexNet weights are not on this machine: pass --lpips-weights "
            f"PATH, PATH a local copy of {metrics.ALEXNET_URL}"
        )
    return wanted, None if "lpips" in wanted else evaluation.LPIPS_LEFT_OUT


def _same_config(manifest: dict, identity: dict, out_dir: Path) -> None:
    diff = differences(manifest.get("config", {}), identity)
    if diff:
        raise ValueError(
            f"{out_dir} holds a sweep with another configuration; continue it with the same options or use "
            "another output folder. Differences:\n  " + "\n  ".join(diff)
        )


def _selection(store, config, inputs: Inputs, device, workers, strict_images) -> Selection:
    dataset = inputs.dataset
    stored = store.read_json(store.selection_path)
    if stored is None:
        selection = select_images(
            inputs.model, inputs.normalizer, dataset, num_samples=config.num_samples, min_conf=config.min_conf,
            seed=config.seed, batch_size=config.eval_batch_size, device=device, workers=workers,
            strict=strict_images,
        )
        _check_selection(selection, config)  # before writing: a selection a sweep cannot use is never stored
        stored = store.write_json_once(store.selection_path, selection.to_json())
        if stored == selection.to_json():
            return selection
    selection = Selection.from_json(stored)  # written earlier, or just now by another process
    if selection.dataset_size != len(dataset):
        raise ValueError(
            f"the data set {config.data!r} now has {len(dataset)} images, but this sweep chose its images from "
            f"{selection.dataset_size}; it has changed"
        )
    _check_selection(selection, config)
    return selection


def _check_selection(selection: Selection, config: SweepConfig) -> None:
    criterion = f"classified correctly with confidence > {config.min_conf}"
    if len(selection) < 2:
        raise ValueError(
            f"only {len(selection)} of {selection.dataset_size} images are {criterion}; a sweep needs at least 2 "
            "(lower --min-conf or use more data)"
        )
    if len(selection) <= config.rounds:
        raise ValueError(
            f"only {len(selection)} images are {criterion}: too few for {config.rounds} rounds (every source "
            "needs a different target in each round); use fewer rounds or more data"
        )
    if len(selection) < config.num_samples:
        tqdm.write(
            f"lst-fast sweep: only {len(selection)} of the {config.num_samples} requested images are {criterion}"
        )


# ---------------------------------------------------------------------------------------------------------
# Phase 1: LST per round x batch


def _pending(sweep: _Sweep, kind: str, units, count: PhaseCount) -> list:
    """The units of ``kind`` that this process owns and that are not finished (missing or corrupt)."""
    todo, other_conditions = [], Counter()
    for unit in units:
        if not sweep.process.placement.owns(unit.index):
            continue
        verdict = sweep.folder.verdict(kind, unit.name, keep=())
        if verdict.verdict == FINISHED:
            count.skipped += 1
            other_conditions.update(_other_conditions(sweep, verdict.provenance))
            continue
        if verdict.verdict == CORRUPT:
            tqdm.write(f"lst-fast sweep: {verdict.problem}; computing it again")
            count.redone.append(unit.name)
        todo.append(unit)
    if other_conditions and todo:
        listed = ", ".join(f"{k}: {n} units" for k, n in other_conditions.items())
        tqdm.write(
            f"lst-fast sweep [{sweep.process.placement.label}]: finished {kind} units were computed under other (or "
            f"unrecorded) conditions than this process's ({listed}); the sweep's tables may then agree with one "
            f"uninterrupted run only to float rounding (`lst-fast info {sweep.folder.root}` lists the conditions)"
        )
    return todo


def _other_conditions(sweep: _Sweep, recorded: dict | None) -> list[str]:
    """The conditions in which a finished unit (its recorded provenance, or none) differs from this process."""
    if recorded is None:
        return ["provenance unknown"]
    mine, theirs = provenance.conditions(sweep.process.environment), provenance.conditions(recorded)
    return [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]


def _bar(sweep: _Sweep, total: int, what: str, unit: str) -> tqdm:
    placement = sweep.process.placement
    return tqdm(
        total=total, unit=unit, desc=f"[{placement.label}] {what}", position=placement.local_rank,
        disable=not sweep.process.progress, dynamic_ncols=True, leave=True,
    )


def _traverse_phase(sweep: _Sweep) -> PhaseCount:
    count = PhaseCount()
    todo = _pending(sweep, "traverse", sweep.folder.plan.traverse, count)
    if not todo:
        return count
    device = sweep.process.device
    # each unit's sources then targets, read ahead by the worker processes while the model runs
    groups = [sweep.dataset_indices(u.sources) + sweep.dataset_indices(u.targets) for u in todo]
    loader = data.group_loader(
        sweep.inputs.dataset, groups, workers=sweep.process.workers, pin_memory=device.type == "cuda"
    )
    start = time.perf_counter()
    with _bar(sweep, sum(len(u.sources) for u in todo), "LST", "pair") as bar:
        for unit, (images, _) in zip(todo, loader):
            unit_start = time.perf_counter()
            tensors = _traverse_unit(sweep, unit, images.to(device, non_blocking=True))
            _write(sweep, "traverse", unit.name, tensors, unit_start)
            count.computed += 1
            count.items += len(unit.sources)
            bar.update(len(unit.sources))
    count.seconds = time.perf_counter() - start
    return count


def _write(sweep: _Sweep, kind: str, name: str, tensors: dict[str, torch.Tensor], start: float) -> None:
    """Write a unit computed since ``start`` (its wall time goes into its provenance), checked by its schema."""
    tensors = schema.SCHEMAS[kind].pack(tensors)
    record = provenance.for_unit(sweep.process.environment, time.perf_counter() - start)
    sweep.folder.store.write_unit(kind, name, tensors, sweep.folder.config_id, provenance=record)


def _traverse_unit(sweep: _Sweep, unit: TraverseUnit, images: torch.Tensor) -> dict[str, torch.Tensor]:
    config, inputs, device, batch = sweep.config, sweep.inputs, sweep.process.device, len(unit.sources)
    srcs, tgts = images[:batch], images[batch:]
    target_labels = sweep.labels(unit.targets).to(device)
    result = traverse_batch(
        inputs.model, srcs, tgts, sweep.labels(unit.sources).to(device), target_labels=target_labels,
        normalizer=inputs.normalizer, settings=config.lst_settings(), precision=config.precision,
        generator=unit_generator(config.seed, unit.round, unit.batch, device), cuda_graphs=sweep.process.cuda_graphs,
    )
    distances = evaluation.pair_distances(result.images, tgts, sweep.distances.names, sweep.distances.lpips_weights)
    target_conf = evaluation.target_confidence(
        inputs.model, inputs.normalizer, result.images, target_labels, batch_size=config.eval_batch_size
    )
    if config.save_images:
        stems = sweep.image_stems
        for image, s, t in zip(result.images, unit.sources, unit.targets):
            path = sweep.folder.store.image_path(unit.round, stems[s], stems[t])
            sweep.folder.store.write_file(path, lambda tmp, image=image: save_image(image, tmp, format="PNG"))
    tensors = {
        schema.SOURCE.name: torch.tensor(unit.sources), schema.TARGET.name: torch.tensor(unit.targets),
        schema.LABELS.name: result.labels, schema.TARGET_LABELS.name: result.target_labels,
        schema.VALID.name: result.valid, schema.INIT_CONF.name: result.init_conf,
        schema.FINAL_CONF.name: result.final_conf, schema.FINAL_TARGET_CONF.name: target_conf,
        schema.ACCEPTED.name: result.accepted, schema.EVALUATIONS.name: result.evaluations,
        schema.FINAL_STEP_SIZE.name: result.final_step_size, schema.OUTPUTS.name: result.images, **distances,
    }
    if result.path_iters is not None:
        tensors |= {schema.PATH_ITERS.name: result.path_iters, schema.PATH_CONF.name: result.path_conf,
                    schema.PATH_TARGET_CONF.name: result.path_target_conf}
    return tensors


# ---------------------------------------------------------------------------------------------------------
# Phase 2: triangle statistics per batch of sources, once all its rounds exist


def _triangle_phase(sweep: _Sweep, wait: float, poll: float) -> tuple[PhaseCount, list[str]]:
    count = PhaseCount()
    pending = _pending(sweep, "triangles", sweep.folder.plan.triangles, count)
    label = sweep.process.placement.label
    if not pending:
        return count, []
    deadline = time.monotonic() + wait
    start = time.perf_counter()
    told = False
    with _bar(sweep, sum(len(u.sources) for u in pending), "triangles", "source") as bar:
        while pending:
            ready = [u for u in pending if all(sweep.folder.written("traverse", n.name) for n in u.needs)]
            if not ready:
                if time.monotonic() >= deadline:
                    break
                if not told:
                    tqdm.write(f"lst-fast sweep [{label}]: waiting up to {wait:.0f} s for the "
                               "LST units of other processes")
                    told = True
                time.sleep(poll)
                continue
            groups = [sweep.dataset_indices(u.sources) for u in ready]
            loader = data.group_loader(sweep.inputs.dataset, groups, workers=sweep.process.workers)
            for unit, (srcs, _) in zip(ready, loader):
                pending.remove(unit)
                unit_start = time.perf_counter()
                tensors = _triangle_unit(sweep, unit, srcs.to(sweep.process.device))
                _write(sweep, "triangles", unit.name, tensors, unit_start)
                count.computed += 1
                count.items += len(unit.sources)
                bar.update(len(unit.sources))
    count.seconds = time.perf_counter() - start
    waiting = [u.name for u in pending]
    if waiting:
        tqdm.write(
            f"lst-fast sweep [{label}]: gave up waiting after {wait:.0f} s for the traversal units "
            f"of triangle units {waiting}; run the same command again (e.g. with --phase triangles) once the "
            "other processes are done"
        )
    return count, waiting


def _triangle_unit(sweep: _Sweep, unit: TriangleUnit, srcs: torch.Tensor) -> dict[str, torch.Tensor]:
    try:
        rounds = [sweep.folder.read("traverse", n.name) for n in unit.needs]
    except CorruptUnit as err:
        raise CorruptUnit(
            f"{err}. Run the process that owns it again (it redoes corrupt units), then this one"
        ) from None
    if any(r is None for r in rounds):
        raise RuntimeError(f"traversal units of triangle unit {unit.name} disappeared while it was computed")
    device = sweep.process.device
    return evaluation.triangle_unit_stats(
        sweep.inputs.model, sweep.inputs.normalizer, srcs, rounds, unit.round_pairs, torch.tensor(unit.sources),
        sweep.labels(unit.sources).to(device), grid=sweep.config.triangle_grid,
        batch_size=sweep.config.eval_batch_size,
    )


def _finished(folder: SweepFolder) -> dict[str, tuple[int, int]]:
    """(written, total) unit files per kind of the whole sweep (cheap: ``lst-fast info`` gives the verdicts)."""
    return {
        kind: (sum(folder.written(kind, u.name) for u in folder.planned(kind)), len(folder.planned(kind)))
        for kind in folder.kinds()
    }
