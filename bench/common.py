"""Timing helpers shared by the benchmarks: medians over interleaved repeats, peak memory, result files."""

from __future__ import annotations

import csv
import json
import platform
import statistics
import subprocess
import time
from datetime import date
from pathlib import Path
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (device work included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved_samples(fns: dict[str, Callable[[], object]], device, repeats: int, warmup: int = 1) -> dict:
    """Seconds of each function in each of ``repeats`` rounds, calling them in turn so that machine noise (and
    the drift of a CPU's clock over minutes) hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(timed(fn, device))
    return samples


def interleaved_medians(fns: dict[str, Callable[[], object]], device, repeats: int, warmup: int = 1) -> dict:
    """Median seconds of each function over interleaved rounds (:func:`interleaved_samples`)."""
    samples = interleaved_samples(fns, device, repeats, warmup)
    return {name: statistics.median(values) for name, values in samples.items()}


def cuda_peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak CUDA memory of one call of ``fn`` above what was allocated before it, in MiB."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def rss_peak_of(fn: Callable[[], object]) -> float:
    """Peak resident memory of one call of ``fn`` above the resident memory before it, in MiB (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def machine_info(device: torch.device) -> dict:
    info: dict = {
        "date": date.today().isoformat(),
        "commit": _git_commit(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_results(rows: list[dict], info: dict, stem: Path) -> None:
    """``stem``.json (rows + machine info) and ``stem``.csv (rows)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "results": rows}, indent=2))
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
