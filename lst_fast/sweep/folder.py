"""Reading a sweep folder: its manifest, image selection and plan, and one verdict on every unit file.

Every reader of a sweep (the runner deciding what is left to do, ``lst-fast tables``, ``lst-fast info``,
``lst-fast plot``) goes through :class:`SweepFolder`, so they agree on which units are finished. A unit file is

- ``finished``: it is there, complete, of this sweep, and its tensors match their checksum;
- ``corrupt``: it is there but cannot be trusted (truncated, emptied, damaged, or of another sweep); the
  process that owns it computes it again;
- ``missing``: never written (or not yet).

Deciding reads the whole file, so a verdict costs one read of the unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from lst_fast.sweep.plan import Plan, make_plan
from lst_fast.sweep.provenance import Summary
from lst_fast.sweep.selection import Selection
from lst_fast.sweep.store import KINDS, CorruptUnit, SweepStore

FINISHED, CORRUPT, MISSING = "finished", "corrupt", "missing"
VERDICTS = (FINISHED, CORRUPT, MISSING)


@dataclass(frozen=True)
class UnitVerdict:
    """What one unit file is worth."""

    kind: str
    name: str
    verdict: str  # one of VERDICTS
    problem: str | None = None  # why a corrupt unit cannot be trusted
    provenance: dict | None = None  # what computed a finished unit (None: not recorded)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # of a finished unit, as asked


@dataclass
class Survey:
    """The verdicts on every planned unit of one kind, in plan order."""

    kind: str
    units: list[UnitVerdict]

    def names(self, verdict: str) -> list[str]:
        return [u.name for u in self.units if u.verdict == verdict]

    @property
    def finished(self) -> list[UnitVerdict]:
        return [u for u in self.units if u.verdict == FINISHED]

    @property
    def total(self) -> int:
        return len(self.units)

    def provenance(self) -> Summary:
        """The conditions under which the finished units were computed."""
        summary = Summary()
        for unit in self.finished:
            summary.add(unit.provenance)
        return summary

    def describe(self) -> str:
        """E.g. ``traverse 4/6 finished (1 corrupt: r000_b00001; 1 missing)``."""
        corrupt, missing = self.names(CORRUPT), self.names(MISSING)
        parts = ([f"{len(corrupt)} corrupt: {', '.join(corrupt)}"] if corrupt else []) + (
            [f"{len(missing)} missing"] if missing else [])
        return f"{self.kind} {len(self.finished)}/{self.total} finished" + (f" ({'; '.join(parts)})" if parts else "")


class SweepFolder:
    """A folder that holds a sweep: its manifest, its image selection, the plan they fix, and its units."""

    def __init__(self, store: SweepStore, manifest: dict, selection: Selection):
        self.store = store
        self.manifest = manifest
        self.selection = selection
        identity = self.identity
        self.plan: Plan = make_plan(len(selection), identity["rounds"], identity["batch_size"], identity["seed"])

    @property
    def root(self) -> Path:
        return self.store.root

    @property
    def identity(self) -> dict:
        """The sweep's configuration as its manifest stores it (see :meth:`lst_fast.sweep.SweepConfig.identity`)."""
        return self.manifest["config"]

    @property
    def config_id(self) -> str:
        return self.manifest["config_id"]

    def kinds(self) -> tuple[str, ...]:
        """The kinds of unit this sweep computes (no triangle units when it was run without them)."""
        return KINDS if self.identity["triangles"] else ("traverse",)

    def planned(self, kind: str):
        """The planned units of ``kind`` (:class:`lst_fast.sweep.plan.TraverseUnit` or ``TriangleUnit``)."""
        return self.plan.traverse if kind == "traverse" else self.plan.triangles

    def written(self, kind: str, name: str) -> bool:
        """Whether a file is under the unit's final name (cheap; says nothing about its verdict)."""
        return self.store.unit_path(kind, name).exists()

    def read(self, kind: str, name: str) -> dict[str, torch.Tensor] | None:
        """A unit's tensors; None while it is missing.

        Raises:
            CorruptUnit: the unit file cannot be trusted.
        """
        return self.store.read_unit(kind, name, self.config_id)

    def verdict(self, kind: str, name: str, keep: Iterable[str] | None = None) -> UnitVerdict:
        """The verdict on one unit file; a finished unit keeps the tensors named in ``keep`` (None: all) that it
        holds."""
        try:
            stored = self.store.load_unit(kind, name, self.config_id)
        except CorruptUnit as err:
            return UnitVerdict(kind, name, CORRUPT, problem=str(err))
        if stored is None:
            return UnitVerdict(kind, name, MISSING)
        tensors = stored.tensors if keep is None else {k: stored.tensors[k] for k in keep if k in stored.tensors}
        return UnitVerdict(kind, name, FINISHED, provenance=stored.provenance, tensors=tensors)

    def survey(self, kind: str, keep: Sequence[str] = ()) -> Survey:
        """The verdict on every planned unit of ``kind``, finished ones keeping the tensors named in ``keep``."""
        return Survey(kind, [self.verdict(kind, unit.name, keep) for unit in self.planned(kind)])


def open_sweep(root: str | Path) -> SweepFolder:
    """The sweep in folder ``root``.

    Raises:
        FileNotFoundError: ``root`` holds no sweep (no manifest.json and selection.json).
        ValueError: one of them is not valid JSON.
    """
    store = SweepStore(root)
    manifest, selection = store.read_existing()
    return SweepFolder(store, manifest, Selection.from_json(selection))
