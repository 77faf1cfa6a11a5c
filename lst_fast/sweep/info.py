"""``lst-fast info DIR``: a sweep folder's configuration, progress and the conditions its units were computed
under. Only the unit files' headers are read, so it is quick on any sweep (:mod:`lst_fast.tables` validates and
reads the tensors)."""

from __future__ import annotations

from pathlib import Path

from lst_fast.sweep.plan import make_plan
from lst_fast.sweep.provenance import Summary
from lst_fast.sweep.store import SweepStore


def sweep_summary(out_dir: str | Path) -> tuple[dict[str, tuple[int, int]], Summary]:
    """(finished, total) unit files per kind, and the provenance of the finished ones."""
    store = SweepStore(out_dir)
    manifest, selection = store.read_existing()
    config = manifest["config"]
    plan = make_plan(len(selection["indices"]), config["rounds"], config["batch_size"], config["seed"])
    kinds = {"traverse": plan.traverse} | ({"triangles": plan.triangles} if config["triangles"] else {})
    summary, progress = Summary(), {}
    for kind, units in kinds.items():
        finished = [u for u in units if store.finished(kind, u.name)]
        for unit in finished:
            summary.add(store.read_provenance(kind, unit.name))
        progress[kind] = (len(finished), len(units))
    return progress, summary


def describe(out_dir: str | Path) -> str:
    """What ``lst-fast info`` prints for one sweep folder."""
    manifest, selection = SweepStore(out_dir).read_existing()
    config = manifest["config"]
    progress, summary = sweep_summary(out_dir)
    created = manifest.get("created_by", {})
    lines = [
        f"{out_dir}: {config['model']} on {config['data']}, {len(selection['indices'])} images x {config['rounds']} "
        f"rounds, {config['iters']} iterations, seed {config['seed']} (config {manifest['config_id']})",
        "  started by: " + ", ".join(f"{k} {created[k]}" for k in ("lst_fast", "torch", "device") if k in created),
        "  finished units: " + ", ".join(f"{kind} {a}/{b}" for kind, (a, b) in progress.items()),
    ]
    skipped = selection.get("skipped", [])
    if skipped:
        lines.append(f"  skipped image files: {len(skipped)} could not be read (listed in selection.json)")
    lines += [f"  {line}" for line in summary.describe()]
    if summary.units and not summary.problems():
        lines.append("  all finished units were computed under the same conditions: their tables are bit-identical "
                     "to those of one uninterrupted run under these conditions")
    return "\n".join(lines) + "\n"
