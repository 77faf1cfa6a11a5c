"""The paper's tables from sweep folders: Table 1 (distances of LST outputs to their targets) and Table 2
(triangle statistics per source), each as mean ± std, from finished or partly finished sweeps.

Standard deviations are population standard deviations (NumPy's default, ddof = 0; :func:`mean_std`).
:func:`mean_std_table` makes such a table from any columns (e.g. :func:`lst_fast.geometry.aggregate_triangles`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from lst_fast.sweep.evaluation import LPIPS_LEFT_OUT, TRIANGLE_TABLE_KEYS
from lst_fast.sweep.plan import make_plan
from lst_fast.sweep.provenance import Summary
from lst_fast.sweep.store import CorruptUnit, SweepStore

FORMATS = ("markdown", "latex", "csv")
DISTANCE_TITLES = {"l2": "L2/sqrt(D)", "linf": "Linf", "ssim": "SSIM", "lpips": "LPIPS"}
TRIANGLE_TITLES = {
    "p_src": "p(source)", "mean": "mean p", "frac_0.0": "frac d=0", "frac_0.1": "frac d=0.1",
    "frac_0.2": "frac d=0.2", "frac_0.3": "frac d=0.3", "edge_mean": "edge mean",
}


IDENTITY_COLUMNS = ["model", "data", "schedule"]  # the first, textual columns of every table row


@dataclass
class SweepResults:
    """What the finished units of one sweep folder hold."""

    out_dir: Path
    config: dict
    pairs: dict[str, torch.Tensor]  # per pair of the finished traversal units: valid, final_conf, dist_*
    sources: dict[str, torch.Tensor]  # per source of the finished triangle units: source, p_src, ...
    total_pairs: int
    total_sources: int
    units: dict[str, tuple[int, int]]  # (finished, total) per kind
    corrupt: list[str]
    provenance: Summary  # under which conditions the finished units were computed

    @property
    def label(self) -> str:
        return f"{self.config['model']} on {self.config['data']}"

    @property
    def schedule(self) -> str:
        """The traversal schedule of the sweep (folders made before schedules existed ran the paper's)."""
        return self.config.get("schedule", "paper")

    @property
    def identity_cells(self) -> list[str]:
        """The cells that say which sweep a table row belongs to (:data:`IDENTITY_COLUMNS`)."""
        return [self.config["model"], self.config["data"], self.schedule]


def load_results(out_dir: str | Path, *, same_conditions: bool = False) -> SweepResults:
    """Read every finished unit of a sweep folder (corrupt ones are listed and left out).

    With ``same_conditions``, a sweep whose units were not all computed under the same recorded conditions
    (see :mod:`lst_fast.sweep.provenance`) is refused with a ValueError: only then are its tables bit-identical
    to those of one uninterrupted run.
    """
    store = SweepStore(out_dir)
    manifest, selection = store.read_existing()
    config = manifest["config"]
    plan = make_plan(len(selection["indices"]), config["rounds"], config["batch_size"], config["seed"])
    corrupt: list[str] = []
    summary = Summary()
    pair_units = _read_all(store, "traverse", plan.traverse, manifest["config_id"], corrupt, summary)
    pair_keys = ["valid", "final_conf"] + [f"dist_{d}" for d in config["distances"]]
    pairs = {k: _cat([u[k] for u in pair_units], torch.bool if k == "valid" else torch.float32) for k in pair_keys}
    units = {"traverse": (len(pair_units), len(plan.traverse))}
    sources: dict[str, torch.Tensor] = {}
    if config["triangles"]:
        triangle_units = _read_all(store, "triangles", plan.triangles, manifest["config_id"], corrupt, summary)
        sources = {
            k: _cat([u[f"src_{k}"] for u in triangle_units], torch.long if k == "source" else torch.float32)
            for k in ("source",) + TRIANGLE_TABLE_KEYS
        }
        units["triangles"] = (len(triangle_units), len(plan.triangles))
    if same_conditions and summary.problems():
        raise ValueError(
            f"{out_dir}: {'; '.join(summary.problems())}. Its tables would not be bit-identical to one uninterrupted "
            "run; recompute the differing units under one set of conditions, or leave out the same-conditions check"
        )
    return SweepResults(
        out_dir=Path(out_dir), config=config, pairs=pairs, sources=sources,
        total_pairs=plan.pairs, total_sources=len(selection["indices"]), units=units, corrupt=corrupt,
        provenance=summary,
    )


def _read_all(store, kind, units, config_id, corrupt, summary: Summary) -> list[dict[str, torch.Tensor]]:
    found = []
    for unit in units:
        try:
            tensors = store.read_unit(kind, unit.name, config_id)
        except CorruptUnit:
            corrupt.append(f"{kind}/{unit.name}")
            continue
        if tensors is not None:
            found.append(tensors)
            summary.add(store.read_provenance(kind, unit.name))
    return found


def _cat(parts: list[torch.Tensor], dtype) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    numbers: list[dict[str, float]]  # per row, for CSV: column -> value (means and stds)
    notes: list[str]


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
    names = [d for d in DISTANCE_TITLES if any(d in r.config["distances"] for r in results)]
    table = Table("Table 1: distance of LST outputs to their targets (mean ± std over pairs)",
                  IDENTITY_COLUMNS + ["pairs"] + [DISTANCE_TITLES[d] for d in names], [], [], [])
    for r in results:
        valid = r.pairs["valid"]
        cells = r.identity_cells + [str(int(valid.sum()))]
        numbers = {"pairs": float(valid.sum()), "pairs_total": float(r.total_pairs)}
        for d in names:
            key = f"dist_{d}"
            if key not in r.pairs:
                cells.append("n/a")
                continue
            mean, std = _mean_std(r.pairs[key][valid])
            cells.append(f"{mean:.4f} ± {std:.4f}")
            numbers |= {f"{d}_mean": mean, f"{d}_std": std}
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
    table = Table("Table 2: triangular convex hull statistics (mean ± std over sources)",
                  IDENTITY_COLUMNS + ["sources"] + [TRIANGLE_TITLES[k] for k in TRIANGLE_TABLE_KEYS], [], [], [])
    for r in results:
        if not r.config["triangles"]:
            table.notes.append(f"{r.label}: the sweep was run without triangle statistics")
            continue
        n = int(r.sources["source"].numel())
        cells = r.identity_cells + [str(n)]
        numbers = {"sources": float(n), "sources_total": float(r.total_sources)}
        for k in TRIANGLE_TABLE_KEYS:
            mean, std = _mean_std(r.sources[k])
            cells.append(f"{mean:.4f} ± {std:.4f}")
            numbers |= {f"{k}_mean": mean, f"{k}_std": std}
        table.rows.append(cells)
        table.numbers.append(numbers)
        finished, total = r.units["triangles"]
        table.notes.append(
            f"{r.label}: covers {n} of {r.total_sources} sources ({finished} of {total} triangle units finished; "
            f"a source's triangles need all {r.config['rounds']} rounds of its batch)"
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

    text_columns = len(IDENTITY_COLUMNS)
    alignment = "l" * text_columns + "r" * (len(table.columns) - text_columns)
    lines = [f"% {table.title}", r"\begin{tabular}{" + alignment + "}", r"\toprule",
             " & ".join(cell(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"] + [f"% {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def _csv(table: Table) -> str:
    keys = list(dict.fromkeys(k for numbers in table.numbers for k in numbers))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(IDENTITY_COLUMNS + keys)
    for row, numbers in zip(table.rows, table.numbers):
        writer.writerow(row[:len(IDENTITY_COLUMNS)] + [repr(numbers[k]) if k in numbers else "" for k in keys])
    return buffer.getvalue()


def render(
    out_dirs: list[str | Path], fmt: str = "markdown", which: str = "all", *, same_conditions: bool = False
) -> str:
    """Table 1, Table 2 or both (``which`` = "1", "2", "all") for one or more sweep folders, one row each.

    Notes say when a sweep's units were computed under different conditions; ``same_conditions`` refuses such
    sweeps instead (see :func:`load_results`)."""
    if which not in ("1", "2", "all"):
        raise ValueError(f"which must be '1', '2' or 'all', got {which!r}")
    results = [load_results(d, same_conditions=same_conditions) for d in out_dirs]
    tables = []
    if which in ("1", "all"):
        tables.append(distance_table(results))
    if which == "2" or (which == "all" and any(r.config["triangles"] for r in results)):
        tables.append(triangle_table(results))
    tables[-1].notes += provenance_notes(results)
    return "\n".join(format_table(t, fmt) for t in tables)


def provenance_notes(results: list[SweepResults]) -> list[str]:
    """Why a sweep's tables may not be bit-identical to one uninterrupted run's (nothing when they are)."""
    return [f"{r.label}: {line}" for r in results for line in r.provenance.problems()]
