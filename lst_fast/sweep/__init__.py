"""Dataset-scale LST sweeps (algorithm §6): resumable, sharded across processes and machines.

``run_sweep(SweepConfig(...), out_dir)`` runs or resumes this process's share of a sweep;
:mod:`lst_fast.sweep.tables` turns a sweep folder into the paper's Tables 1 and 2 and each sweep's cost. Modules:
:mod:`~lst_fast.sweep.config` (settings and their identity), :mod:`~lst_fast.sweep.plan` (pairs, units, seeds),
:mod:`~lst_fast.sweep.placement` (which process does what, on which device), :mod:`~lst_fast.sweep.selection`
(which images), :mod:`~lst_fast.sweep.schema` (what each unit file holds), :mod:`~lst_fast.sweep.store` (the
folder's files, written atomically), :mod:`~lst_fast.sweep.folder` (reading a sweep folder: one verdict per unit),
:mod:`~lst_fast.sweep.provenance` (what computed each unit), :mod:`~lst_fast.sweep.evaluation` (distances,
target confidences and triangle statistics), :mod:`~lst_fast.sweep.runner` (the phases),
:mod:`~lst_fast.sweep.tables` (``lst-fast tables``), :mod:`~lst_fast.sweep.info` (``lst-fast info``),
:mod:`~lst_fast.sweep.figures` (``lst-fast plot``).
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers; at run time each name is imported on first use (below)
    from lst_fast.sweep.config import SweepConfig
    from lst_fast.sweep.runner import SweepReport, run_sweep

__all__ = ["SweepConfig", "SweepReport", "run_sweep"]

# Each public name's module, imported on first use (PEP 562): ``lst-fast sweep --help`` reads
# lst_fast.sweep.config without the runner (torch, timm, the metrics).
_HOMES = {"SweepConfig": "lst_fast.sweep.config", "SweepReport": "lst_fast.sweep.runner",
          "run_sweep": "lst_fast.sweep.runner"}


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # a submodule, as after an eager import
    raise AttributeError(f"module 'lst_fast.sweep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_HOMES))
