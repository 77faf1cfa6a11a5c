"""The paper's tables from sweep folders: Table 1 (distances of LST outputs to their targets) and Table 2
(triangle statistics per source), each as mean ± std, and the cost of each sweep (model evaluations and wall
time per pair), from finished or partly finished sweeps.

Every row names its sweep folder and, when several sweeps are shown, the settings in which they differ. Units
are read through :mod:`lst_fast.sweep.folder` (the same verdict as ``lst-fast info``) and their fields through
:mod:`lst_fast.sweep.schema`. Standard deviations are population standard deviations (NumPy's default, ddof = 0;
:func:`mean_std`). :func:`mean_std_table` makes such a table from any columns (e.g.
:func:`lst_fast.geometry.aggregate_triangles`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from lst_fast.choices import TABLE_FORMATS, TABLE_WHICH
from lst_fast.sweep import schema
from lst_fast.sweep.config import comparable
from lst_fast.sweep.evaluation import LPIPS_LEFT_OUT
from lst_fast.sweep.folder import CORRUPT, Survey, open_sweep
from lst_fast.sweep.provenance import Summary

FORMATS, WHICH = TABLE_FORMATS, TABLE_WHICH  # --format and --table
FIXED_COLUMNS = ["sweep", "model", "data", "schedule"]  # the first, textual columns of every table row
# The traversal unit fields the tables read, per pair (Table 1 and the cost).
PAIR_FIELDS = (schema.VALID, schema.FINAL_CONF, schema.EVALUATIONS, *schema.DISTANCE_FIELDS.values())
SOURCE_COLUMNS = schema.TRIANGLES.columns()  # Table 2: src_source (the count), then the averaged statistics


@dataclass
class Cost:
    """What the traversals of a sweep's finished units cost."""

    evaluations: torch.Tensor  # (P,) model evaluations of each valid pair whose unit recorded them
    unrecorded: int  # valid pairs of units written before evaluations were recorded
    seconds: float  # wall time recorded by the finished traversal units
    timed_pairs: int  # pairs of the units with a recorded wall time
    untimed_units: int  # finished traversal units without a recorded wall time


@dataclass
class SweepResults:
    """What the finished units of one sweep folder hold."""

    out_dir: Path
    config: dict  # the manifest's identity
    pairs: dict[str, torch.Tensor]  # per pair of the finished traversal units: valid, final_conf, dist_*
    sources: dict[str, torch.Tensor]  # per source of the finished triangle units: src_source, src_p_src, ...
    total_pairs: int
    total_sources: int
    units: dict[str, tuple[int, int]]  # (finished, total) per kind
    corrupt: list[str]  # KIND/NAME of the corrupt unit files, left out
    provenance: Summary  # under which conditions the finished units were computed
    cost: Cost

    @property
    def label(self) -> str:
        """How notes name the sweep: its folder, as given."""
        return str(self.out_dir)

    @property
    def schedule(self) -> str:
        """The traversal schedule of the sweep (folders made before schedules existed ran the paper's)."""
        return self.config.get("schedule", "paper")


def load_results(out_dir: str | Path, *, same_conditions: bool = False) -> SweepResults:
    """Read every finished unit of a sweep folder (corrupt ones are listed and left out).

    Args:
        out_dir: the sweep folder.
        same_conditions: refuse a sweep whose units were not all computed under the same recorded conditions
            (see :mod:`lst_fast.sweep.provenance`): only then are its tables bit-identical to those of one
            uninterrupted run.

    Raises:
        FileNotFoundError: ``out_dir`` holds no sweep.
        ValueError: with ``same_conditions``, the units were computed under different or unrecorded conditions.
    """
    folder = open_sweep(out_dir)
    config = folder.identity
    surveys = {"traverse": folder.survey("traverse", keep=[f.name for f in (schema.SOURCE, *PAIR_FIELDS)])}
    if config["triangles"]:
        surveys["triangles"] = folder.survey("triangles", keep=[f.name for f in SOURCE_COLUMNS])
    summary = Summary()
    for survey in surveys.values():
        for unit in survey.finished:
            summary.add(unit.provenance)
    if same_conditions and summary.problems():
        raise ValueError(
            f"{out_dir}: {'; '.join(summary.problems())}. Its tables would not be bit-identical to one uninterrupted "
            "run; recompute the differing units under one set of conditions, or leave out the same-conditions check"
        )
    traverse = surveys["traverse"]
    pair_fields = [schema.VALID, schema.FINAL_CONF] + [schema.DISTANCE_FIELDS[d] for d in config["distances"]]
    return SweepResults(
        out_dir=Path(out_dir), config=config, pairs={f.name: _concat(traverse, f) for f in pair_fields},
        sources={f.name: _concat(surveys["triangles"], f) for f in SOURCE_COLUMNS} if "triangles" in surveys else {},
        total_pairs=folder.plan.pairs, total_sources=len(folder.selection),
        units={kind: (len(s.finished), s.total) for kind, s in surveys.items()},
        corrupt=[f"{kind}/{name}" for kind, s in surveys.items() for name in s.names(CORRUPT)],
        provenance=summary, cost=_cost(traverse),
    )


def _concat(survey: Survey, f: schema.UnitField) -> torch.Tensor:
    """Field ``f`` of every finished unit of ``survey``, concatenated in plan order."""
    parts = [f.of(unit.tensors) for unit in survey.finished]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=f.dtype)


def _cost(traverse: Survey) -> Cost:
    evaluations, unrecorded, seconds, timed, untimed = [], 0, 0.0, 0, 0
    for unit in traverse.finished:
        valid, recorded = schema.VALID.of(unit.tensors), schema.EVALUATIONS.of(unit.tensors)
        if recorded is None:
            unrecorded += int(valid.sum())
        else:
            evaluations.append(recorded[valid])
        wall = (unit.provenance or {}).get("seconds")
        if wall is None:
            untimed += 1
        else:
            seconds += float(wall)
            timed += len(valid)
    found = torch.cat(evaluations) if evaluations else torch.zeros(0, dtype=schema.EVALUATIONS.dtype)
    return Cost(evaluations=found, unrecorded=unrecorded, seconds=seconds, timed_pairs=timed, untimed_units=untimed)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    numbers: list[dict[str, float]]  # per row, for CSV: column -> value (means and stds)
    notes: list[str]
    text_columns: int  # the first columns, which name the row's sweep (CSV keeps them as text)


def varying_settings(results: list[SweepResults]) -> list[str]:
    """The settings (manifest keys) in which the shown sweeps differ, besides the fixed columns, in manifest order;
    settings that a sweep's schedule ignores are not compared (see :func:`lst_fast.sweep.config.comparable`)."""
    identities = [comparable(r.config) for r in results]
    keys = list(dict.fromkeys(k for identity in identities for k in identity))
    return [k for k in keys if k not in FIXED_COLUMNS and len({_text(i.get(k, "-")) for i in identities}) > 1]


def _text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return str(value)


def _table(title: str, results: list[SweepResults], value_columns: list[str]) -> Table:
    """An empty table whose text columns name each sweep: the fixed ones, then the settings that vary."""
    varying = varying_settings(results)
    return Table(title, FIXED_COLUMNS + varying + value_columns, [], [], [], len(FIXED_COLUMNS) + len(varying))


def _row_names(r: SweepResults, table: Table) -> list[str]:
    """The text cells of ``r``'s row: its folder, model, data, schedule and the varying settings."""
    identity = comparable(r.config)
    varying = table.columns[len(FIXED_COLUMNS):table.text_columns]
    return [str(r.out_dir), r.config["model"], r.config["data"], r.schedule] + [
        _text(identity.get(k, "-")) for k in varying]


def mean_std(columns: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of each column (population std, ddof = 0, like numpy's default)."""
    summary = {}
    for key, values in columns.items():
        values = torch.as_tensor(values, dtype=torch.float64).flatten()
        if values.numel() == 0:
            raise ValueError(f"column {key!r} is empty")
        summary[key] = (values.mean().item(), values.std(correction=0).item())
    return summary


def mean_std_table(
    rows: dict[str, dict[str, torch.Tensor]], *, columns: Sequence[str] | None = None, digits: int = 3
) -> str:
    """A Markdown table with one row per entry of ``rows`` (e.g. a model) and a "mean ± std" cell per column.

    ``columns``: which columns, in order (default: all of the first row's). For the paper's Table 2 pass the
    output of :func:`lst_fast.geometry.aggregate_triangles` and ``columns=lst_fast.geometry.TABLE2_COLUMNS``;
    for Table 1, the distances.
    """
    if not rows:
        raise ValueError("rows must name at least one row of columns")
    columns = list(next(iter(rows.values())) if columns is None else columns)
    missing = {name: [c for c in columns if c not in values] for name, values in rows.items()}
    if any(missing.values()):
        raise ValueError(f"rows lack the columns {missing}")
    cells = []
    for name, values in rows.items():
        summary = mean_std({key: values[key] for key in columns})
        cells.append([name] + [f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in summary.values()])
    return "\n".join(_markdown([""] + columns, cells))


def _mean_std(values: torch.Tensor) -> tuple[float, float]:
    """Mean and population std (NaN for no values yet)."""
    if values.numel() == 0:
        return float("nan"), float("nan")
    return mean_std({"values": values})["values"]


def distance_table(results: list[SweepResults]) -> Table:
    """Table 1: distances between LST outputs and their targets over all valid pairs, mean ± std."""
    fields = [f for name, f in schema.DISTANCE_FIELDS.items() if any(name in r.config["distances"] for r in results)]
    table = _table("Table 1: distance of LST outputs to their targets (mean ± std over pairs)", results,
                   [schema.VALID.title] + [f.title for f in fields])
    for r in results:
        valid = schema.VALID.of(r.pairs)
        cells = _row_names(r, table) + [str(int(valid.sum()))]
        numbers = {"pairs": float(valid.sum()), "pairs_total": float(r.total_pairs)}
        for f in fields:
            values = f.of(r.pairs)
            if values is None:
                cells.append("n/a")
                continue
            mean, std = _mean_std(values[valid])
            cells.append(f"{mean:.4f} ± {std:.4f}")
            numbers |= {f"{f.column}_mean": mean, f"{f.column}_std": std}
        table.rows.append(cells)
        table.numbers.append(numbers)
        finished, total = r.units["traverse"]
        invalid = int((~valid).sum())
        table.notes.append(
            f"{r.label}: covers {int(valid.sum())} of {r.total_pairs} pairs ({finished} of {total} traversal units "
            f"finished" + (f"; {invalid} pair(s) left out because the model no longer predicted the source label"
                           if invalid else "") + ")"
        )
        if r.corrupt:
            table.notes.append(f"{r.label}: corrupt unit files left out: {', '.join(r.corrupt)}")
    if any("lpips" not in r.config["distances"] for r in results):
        table.notes.append(LPIPS_LEFT_OUT)  # said once, whatever the number of sweeps without it
    return table


def triangle_table(results: list[SweepResults]) -> Table:
    """Table 2: triangle statistics, averaged per source, then mean ± std over sources."""
    count, *stats = SOURCE_COLUMNS
    table = _table("Table 2: triangular convex hull statistics (mean ± std over sources)", results,
                   [count.title] + [f.title for f in stats])
    for r in results:
        if not r.config["triangles"]:
            table.notes.append(f"{r.label}: the sweep was run without triangle statistics")
            continue
        n = int(count.of(r.sources).numel())
        cells = _row_names(r, table) + [str(n)]
        numbers = {"sources": float(n), "sources_total": float(r.total_sources)}
        for f in stats:
            mean, std = _mean_std(f.of(r.sources))
            cells.append(f"{mean:.4f} ± {std:.4f}")
            numbers |= {f"{f.column}_mean": mean, f"{f.column}_std": std}
        table.rows.append(cells)
        table.numbers.append(numbers)
        finished, total = r.units["triangles"]
        table.notes.append(
            f"{r.label}: covers {n} of {r.total_sources} sources ({finished} of {total} triangle units finished; "
            f"a source's triangles need all {r.config['rounds']} rounds of its batch)"
        )
    return table


def cost_table(results: list[SweepResults]) -> Table:
    """The cost of each sweep's finished traversals: model evaluations per valid pair (mean, max) and wall time
    per pair, so that sweeps of the same data under different schedules compare side by side."""
    title = schema.EVALUATIONS.title
    table = _table("Cost: model evaluations and wall time per pair", results,
                   ["pairs", f"{title} (mean)", f"{title} (max)", "s/pair"])
    for r in results:
        cost, evaluations = r.cost, r.cost.evaluations.double()
        numbers = {"pairs": float(len(evaluations))}
        cells = _row_names(r, table) + [str(len(evaluations))]
        if len(evaluations):
            numbers |= {"evaluations_mean": evaluations.mean().item(), "evaluations_max": evaluations.max().item()}
            cells += [f"{numbers['evaluations_mean']:.1f}", f"{int(numbers['evaluations_max'])}"]
        else:
            cells += ["n/a", "n/a"]
        if cost.timed_pairs:
            numbers["seconds_per_pair"] = cost.seconds / cost.timed_pairs
            cells.append(f"{numbers['seconds_per_pair']:.4g}")
        else:
            cells.append("n/a")
        table.rows.append(cells)
        table.numbers.append(numbers)
        if cost.unrecorded:
            table.notes.append(f"{r.label}: {cost.unrecorded} valid pair(s) left out of the evaluations: their units "
                               "were written before lst_fast recorded them")
        if cost.untimed_units:
            table.notes.append(f"{r.label}: {cost.untimed_units} traversal unit(s) left out of s/pair: no wall time "
                               "recorded")
    table.notes.append(
        "evaluations: model evaluations of each valid pair's traversal (start point and candidates); s/pair: the "
        "traversal units' recorded wall time (LST, distances, target confidence; not data loading) over their pairs"
    )
    return table


def format_table(table: Table, fmt: str = "markdown") -> str:
    """The table as Markdown, LaTeX (tabular) or CSV (means and stds in separate numeric columns)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if fmt == "csv":
        return _csv(table)
    if fmt == "latex":
        return _latex(table)
    lines = [f"**{table.title}**", ""] + _markdown(table.columns, table.rows)
    return "\n".join(lines + [""] + [f"- {n}" for n in table.notes]) + "\n"


def _markdown(columns: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table: header, separator, one line per row."""

    def line(cells):
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    return [line(columns), "|" + "|".join("---" for _ in columns) + "|"] + [line(row) for row in rows]


def _latex(table: Table) -> str:
    def escape(text: str) -> str:
        return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")

    def cell(text: str) -> str:
        return escape(text).replace("±", r"$\pm$")

    alignment = "l" * table.text_columns + "r" * (len(table.columns) - table.text_columns)
    lines = [f"% {table.title}", r"\begin{tabular}{" + alignment + "}", r"\toprule",
             " & ".join(cell(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"] + [f"% {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def _csv(table: Table) -> str:
    keys = list(dict.fromkeys(k for numbers in table.numbers for k in numbers))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns[:table.text_columns] + keys)
    for row, numbers in zip(table.rows, table.numbers):
        writer.writerow(row[:table.text_columns] + [repr(numbers[k]) if k in numbers else "" for k in keys])
    return buffer.getvalue()


def render(
    out_dirs: list[str | Path], fmt: str = "markdown", which: str = "all", *, same_conditions: bool = False
) -> str:
    """Table 1, Table 2, the cost table or all (``which`` = "1", "2", "cost", "all") for one or more sweep
    folders, one row each.

    Notes say when a sweep's units were computed under different conditions; ``same_conditions`` refuses such
    sweeps instead (see :func:`load_results`).

    Raises:
        ValueError: an unknown ``which`` or ``fmt``, or (``same_conditions``) a sweep of mixed conditions.
        FileNotFoundError: a folder holds no sweep.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    results = [load_results(d, same_conditions=same_conditions) for d in out_dirs]
    tables = []
    if which in ("1", "all"):
        tables.append(distance_table(results))
    if which == "2" or (which == "all" and any(r.config["triangles"] for r in results)):
        tables.append(triangle_table(results))
    if which in ("cost", "all"):
        tables.append(cost_table(results))
    tables[-1].notes += provenance_notes(results)
    return "\n".join(format_table(t, fmt) for t in tables)


def provenance_notes(results: list[SweepResults]) -> list[str]:
    """Why a sweep's tables may not be bit-identical to one uninterrupted run's (nothing when they are)."""
    return [f"{r.label}: {line}" for r in results for line in r.provenance.problems()]
