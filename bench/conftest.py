"""pytest-benchmark set-up for the benchmarks in bench/ (``python -m pytest bench``; the README's test command
``pytest tests`` never collects them).

- markers: ``quick`` (a selection that runs in under 2 minutes on 2 CPU cores; ``.ci/run`` runs it with
  ``--benchmark-disable`` so the benchmarks never rot) and ``gpu`` (the CUDA cases, run by bench/gpu_check.sh);
- the default timer waits for queued CUDA work (``bench.harness.synced_clock``); ``--benchmark-timer`` overrides it;
- every saved run carries the machine information of bench/harness.py and the commit;
- ``comparisons``: compared implementations timed in interleaved rounds once per configuration
  (bench/harness.py), whose per-round ratios the benchmarks put into their ``extra_info``.
"""

from __future__ import annotations

import pytest
import torch

from bench import harness


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads the timer option
def pytest_configure(config):
    config.addinivalue_line("markers", "quick: the benchmark selection that runs in under 2 minutes on 2 CPU cores")
    config.addinivalue_line("markers", "gpu: benchmarks on a CUDA device (bench/gpu_check.sh)")
    if config.getoption("benchmark_timer", None) == "time.perf_counter":  # pytest-benchmark's default
        config.option.benchmark_timer = "bench.harness.synced_clock"


def pytest_benchmark_update_machine_info(config, machine_info):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine_info["lst_fast"] = harness.machine_info(device)
    machine_info["commit"] = harness.git_commit()


class Comparisons:
    """Results of interleaved comparisons, computed on first use and shared by the benchmarks of one
    configuration (pytest-benchmark times each test on its own, so the side-by-side ratios come from here)."""

    def __init__(self):
        self._found: dict = {}

    def get(self, key, compute):
        if key not in self._found:
            self._found[key] = compute()
        return self._found[key]


@pytest.fixture(scope="session")
def comparisons() -> Comparisons:
    return Comparisons()


@pytest.fixture
def selected(request):
    """The parameters of every test selected in this session (which implementations a comparison needs)."""
    return [item.callspec.params for item in request.session.items if hasattr(item, "callspec")]
