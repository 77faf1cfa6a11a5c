"""``lst-fast info DIR``: a sweep folder's configuration, progress and the conditions its units were computed
under. Units are judged as ``lst-fast tables`` judges them (:mod:`lst_fast.sweep.folder`): a truncated or emptied
unit file is corrupt, not finished."""

from __future__ import annotations

from pathlib import Path

from lst_fast.sweep.folder import Survey, SweepFolder, open_sweep
from lst_fast.sweep.provenance import Summary


def sweep_summary(folder: SweepFolder) -> tuple[dict[str, Survey], Summary]:
    """The verdict on every unit of each kind, and the provenance of the finished ones."""
    surveys = {kind: folder.survey(kind) for kind in folder.kinds()}
    summary = Summary()
    for survey in surveys.values():
        for unit in survey.finished:
            summary.add(unit.provenance)
    return surveys, summary


def describe(out_dir: str | Path) -> str:
    """What ``lst-fast info`` prints for one sweep folder.

    Raises:
        FileNotFoundError: ``out_dir`` holds no sweep.
    """
    folder = open_sweep(out_dir)
    config, manifest = folder.identity, folder.manifest
    surveys, summary = sweep_summary(folder)
    created = manifest.get("created_by", {})
    lines = [
        f"{out_dir}: {config['model']} on {config['data']}, {len(folder.selection)} images x {config['rounds']} "
        f"rounds, {config['iters']} iterations, {config.get('schedule', 'paper')} schedule, seed {config['seed']} "
        f"(config {folder.config_id})",
        "  started by: " + ", ".join(f"{k} {created[k]}" for k in ("lst_fast", "torch", "device") if k in created),
        "  units: " + "; ".join(survey.describe() for survey in surveys.values()),
    ]
    skipped = folder.selection.skipped
    if skipped:
        lines.append(f"  skipped image files: {len(skipped)} could not be read (listed in selection.json)")
    lines += [f"  {line}" for line in summary.describe()]
    if summary.units and not summary.problems():
        lines.append("  all finished units were computed under the same conditions: their tables are bit-identical "
                     "to those of one uninterrupted run under these conditions")
    return "\n".join(lines) + "\n"
