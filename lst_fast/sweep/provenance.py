"""What produced each unit of a sweep (its provenance), and whether the units of one sweep agree on it.

``manifest.json`` holds a sweep's identity: what must match for a run to add to the folder. A unit file holds
its provenance: what may differ between the processes that computed the units (device, thread count, library
versions, ...). Units computed under the same conditions are bit-identical whichever process, shard or resume
computed them; under other conditions (another thread count, another device) they agree only to float
rounding, because e.g. a convolution then sums in another order and LST amplifies the difference. So the
tables say when a sweep mixes conditions.
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

import lst_fast

# The fields that decide the float results of a unit; units that agree on all of them are bit-identical.
CONDITIONS = (
    "device", "device_name", "threads", "precision", "backend", "schedule", "torch", "timm", "lst_fast", "commit",
)
# Also recorded, for the reader only: which process and where (counted by ``lst-fast info``), and when the unit
# finished and how long it took (``finished``, ``seconds``).
DETAILS = ("process", "host")


def environment(device: torch.device, *, precision: str, backend: str, schedule: str, process: str) -> dict:
    """The provenance fields shared by every unit this process computes (all but ``finished`` and ``seconds``)."""
    import timm

    return {
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "backend": backend,
        "schedule": schedule,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "lst_fast": lst_fast.__version__,
        "commit": git_commit(),
        "process": process,
        "host": platform.node(),
    }


def for_unit(environment_fields: dict, seconds: float) -> dict:
    """The provenance of one unit that took ``seconds`` and has just finished."""
    return environment_fields | {
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": round(seconds, 3),
    }


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags (Linux's /proc/cpuinfo; elsewhere what platform knows, no flags)."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    found_model = found_flags = False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not found_model:
            model, found_model = value.strip(), True
        elif key.strip() == "flags" and not found_flags:
            flags, found_flags = frozenset(value.split()), True
        if found_model and found_flags:
            break
    return model, flags


def cpu_model() -> str:
    """The CPU's model name, e.g. ``AMD EPYC 7R13 Processor``."""
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``avx2``, ``avx512f``, ...; empty where they are not known)."""
    return _cpuinfo()[1]


@functools.cache
def git_commit() -> str | None:
    """The commit of the lst_fast source when it runs from a git checkout, with ``+dirty`` when tracked files
    differ from it (None outside a checkout, e.g. an installed wheel)."""
    package = Path(lst_fast.__file__).resolve().parent
    try:
        head = _git(package, "rev-parse", "HEAD")
        dirty = _git(package, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) if head else None


def _git(folder: Path, *command: str) -> str:
    done = subprocess.run(["git", "-C", str(folder), *command], capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()


def encode(provenance: dict) -> str:
    return json.dumps(provenance, sort_keys=True)


def decode(text: str | None) -> dict | None:
    """A unit's provenance; None for units written before lst_fast recorded it (or an unreadable record)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def conditions(provenance: dict) -> dict:
    """The fields of a provenance that decide the float results. On a GPU the CPU thread count does not."""
    fields = {k: provenance.get(k) for k in CONDITIONS}
    if fields["device"] == "cuda":
        del fields["threads"]
    return fields


@dataclass
class Summary:
    """The conditions under which the finished units of one sweep were computed."""

    units: int = 0
    unknown: int = 0  # units without provenance (written by an older lst_fast)
    values: dict[str, Counter] = field(default_factory=dict)  # condition -> value -> how many units
    details: dict[str, Counter] = field(default_factory=dict)  # process / host -> value -> how many units
    seconds: float = 0.0  # compute time of the units with provenance

    def add(self, provenance: dict | None) -> None:
        self.units += 1
        if provenance is None:
            self.unknown += 1
            return
        for key, value in conditions(provenance).items():
            self.values.setdefault(key, Counter())[_text(value)] += 1
        for key in DETAILS:
            self.details.setdefault(key, Counter())[_text(provenance.get(key))] += 1
        self.seconds += float(provenance.get("seconds") or 0.0)

    def differing(self) -> dict[str, Counter]:
        """The conditions on which the units with provenance disagree."""
        known = self.units - self.unknown
        return {
            k: c for k, c in self.values.items() if len(c) > 1 or sum(c.values()) != known  # absent in some units
        }

    @property
    def uniform(self) -> bool:
        """Whether every unit has provenance and all agree (their results are then bit-identical to one run's)."""
        return self.unknown == 0 and not self.differing()

    def problems(self) -> list[str]:
        """One line per reason why the units may not be bit-identical to one uninterrupted run; empty if none."""
        lines = []
        differing = self.differing()
        if differing:
            lines.append(
                "units computed under different conditions (their results agree only to float rounding): "
                + "; ".join(f"{k}: " + ", ".join(f"{v} ({n} units)" for v, n in c.most_common())
                            for k, c in differing.items())
            )
        if self.unknown:
            lines.append(f"provenance unknown for {self.unknown} of {self.units} units (written by an older lst_fast)")
        return lines

    def describe(self) -> list[str]:
        """Every condition with its values and unit counts (for ``lst-fast info``)."""
        if not self.units:
            return ["no finished units yet, so no conditions to list"]
        lines = [f"conditions of the {self.units} finished units ({self.units - self.unknown} with provenance, "
                 f"{self.seconds:.1f} s of compute recorded):"]
        for key, counts in [(k, self.values[k]) for k in CONDITIONS if k in self.values] + list(self.details.items()):
            lines.append(f"  {key}: " + ", ".join(f"{v} ({n} units)" for v, n in counts.most_common()))
        return lines + [f"  ! {line}" for line in self.problems()]


def _text(value) -> str:
    return "unknown" if value is None else str(value)
