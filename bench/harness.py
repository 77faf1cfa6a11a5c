"""The one timing harness of the benchmarks: interleaved rounds, per-round ratios, long-minus-short runs,
clocks, peak memory, machine information and the one result file shape.

Machines drift (a CPU's clock over minutes, neighbours on a shared machine), so implementations that are
compared are timed in interleaved rounds (each takes its turn in every round) and compared by the median of
the ratios within each round. Every script writes ``{machine, commit, config, rows}`` (``write_result``),
and the pytest benchmarks (bench/test_*.py) record the same machine information.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from lst_fast.sweep import provenance


def _process_seconds() -> float:
    """CPU time of this process and of its finished children (e.g. data loading workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,  # elapsed time, all threads
    "thread": time.thread_time,  # CPU time of the calling thread: robust to neighbours (use 1 torch thread)
    "process": _process_seconds,  # CPU time of the process and its finished children
}


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def synced_clock() -> float:
    """``time.perf_counter`` after waiting for queued CUDA work: pytest-benchmark's timer here (bench/conftest.py)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def use_thread_clock() -> None:
    """Time CPU work with one thread's CPU time (``--clock thread``): torch then runs on one thread, so the
    clock sees all of the work and none of the neighbours'."""
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------------
# Interleaved rounds


class Rounds:
    """Seconds per call of each function in each round, for one or more clocks: ``samples[clock][name]``."""

    def __init__(self, samples: dict[str, dict[str, list[float]]]):
        self.samples = samples

    def seconds(self, name: str, clock: str = "wall") -> list[float]:
        return self.samples[clock][name]

    def median(self, name: str, clock: str = "wall") -> float:
        return statistics.median(self.seconds(name, clock))

    def ratio(self, a: str, b: str, clock: str = "wall") -> float:
        """Median over rounds of a's time over b's within the same round (a > 1 means a is slower)."""
        return statistics.median(x / y for x, y in zip(self.seconds(a, clock), self.seconds(b, clock)))

    def add(self, name: str, values: list[float], clock: str = "wall") -> None:
        self.samples[clock][name] = values

    def long_minus_short(self, name: str, long: int, short: int) -> None:
        """Replace ``name_long`` and ``name_short`` (runs of ``long`` and ``short`` iterations) by ``name``: the
        seconds per iteration in each round, set-up costs cancelled."""
        for per_name in self.samples.values():
            pairs = zip(per_name.pop(f"{name}_long"), per_name.pop(f"{name}_short"))
            per_name[name] = [(a - b) / (long - short) for a, b in pairs]


def seconds_per_call(fn: Callable[[], object], device, calls: int = 1, clocks=("wall",)) -> dict[str, float]:
    """Seconds per call of ``calls`` back-to-back calls of ``fn`` on each clock (device work included)."""
    sync(device)
    start = {name: CLOCKS[name]() for name in clocks}
    for _ in range(calls):
        fn()
    sync(device)
    return {name: (CLOCKS[name]() - start[name]) / calls for name in clocks}


def calls_for(fn: Callable[[], object], device, round_seconds: float, clock: str = "wall") -> int:
    """Back-to-back calls of ``fn`` that last about ``round_seconds`` (after one warm-up call), at least one:
    short functions are timed over many calls so that timer resolution and GPU launch gaps average out."""
    fn()
    once = seconds_per_call(fn, device, 1, (clock,))[clock]
    return max(1, min(10_000, int(round_seconds / max(once, 1e-7))))


def interleaved_rounds(fns: dict[str, Callable[[], object]], device, rounds: int, *, warmup: int = 1,
                       round_seconds: float = 0.0, clocks=("wall",)) -> Rounds:
    """Time every function in each of ``rounds`` rounds, the functions taking turns, so that machine noise and
    clock drift hit all alike. Each round calls a function enough times to last ``round_seconds`` (once if 0)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    calls = {name: calls_for(fn, device, round_seconds, clocks[0]) if round_seconds else 1 for name, fn in fns.items()}
    samples = {clock: {name: [] for name in fns} for clock in clocks}
    for _ in range(rounds):
        for name, fn in fns.items():
            for clock, seconds in seconds_per_call(fn, device, calls[name], clocks).items():
                samples[clock][name].append(seconds)
    return Rounds(samples)


def rounds_for(benchmark, rounds: int) -> int:
    """Rounds of a comparison inside a pytest benchmark: one when benchmarks are disabled (a smoke run)."""
    return 1 if benchmark.disabled else rounds


def benchmark_median(benchmark) -> float | None:
    """A pytest benchmark's median seconds per call; None when benchmarks are disabled."""
    return benchmark.stats.stats.median if benchmark.stats is not None else None


# ---------------------------------------------------------------------------------------------------------
# Peak memory


def peak_memory_mb(fn: Callable[[], object], device) -> float:
    """Peak memory of one call of ``fn`` above what was in use before it, in MiB: the CUDA caching allocator's
    peak on a GPU, the peak resident set of this process on CPU (Linux; run it in a fresh process, see
    bench/bench_traverse.py, since freed memory may stay resident)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


# ---------------------------------------------------------------------------------------------------------
# Machine information and results

CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512", "amx")  # prefixes: avx512f, avx512_bf16, amx_tile, ...


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What decides whether two runs are comparable: CPU model and vector extensions, cores, threads,
    library versions, GPU, load. The CPU and GPU are named as sweep units name them (lst_fast.sweep.provenance)."""
    device = torch.device(device)
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": provenance.cpu_model(),
        "cpu_flags": sorted(f for f in provenance.cpu_flags() if f.startswith(CPU_FLAGS_OF_INTEREST)),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version_of("triton"),
        "device": str(device),
        "gpu": provenance.device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda,
    }
    return info


def _version_of(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed
        return None


def git_commit() -> str:
    """The commit of the lst_fast checkout, with "+dirty" when tracked files have changes (as sweep units record
    it); "unknown" outside git."""
    return provenance.git_commit() or "unknown"


def write_result(stem: Path, *, config: dict, rows: list[dict], device="cpu", with_csv: bool = True) -> Path:
    """``stem``.json as ``{machine, commit, config, rows}`` and (``with_csv``) ``stem``.csv with the rows;
    returns the JSON's path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(device), "commit": git_commit(), "config": config, "rows": rows}
    path = stem.with_suffix(".json")
    path.write_text(json.dumps(report, indent=1, default=str))
    if not with_csv:
        return path
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_result(path: Path) -> dict:
    """A result written by :func:`write_result`."""
    report = json.loads(Path(path).read_text())
    missing = {"machine", "commit", "config", "rows"} - set(report)
    if missing:
        raise ValueError(f"{path} is not a bench result ({{machine, commit, config, rows}}): missing {sorted(missing)}")
    return report
