"""One source of machine information for sweep units and benchmark results, and bench/bench_provenance.py's
result file in the harness's shape (no sweeps are run here)."""

import torch

from bench import bench_provenance, harness
from lst_fast.sweep import provenance


def test_benchmarks_name_the_machine_and_commit_as_sweep_units_do():
    info = harness.machine_info("cpu")
    assert info["cpu"] == provenance.cpu_model() == provenance.device_name(torch.device("cpu"))
    assert set(info["cpu_flags"]) <= provenance.cpu_flags()
    assert harness.git_commit() == (provenance.git_commit() or "unknown")


def test_provenance_comparison_writes_the_harness_result_shape(tmp_path):
    many, one, torchrun = "1 process, 2 threads", bench_provenance.ONE_THREAD, bench_provenance.TORCHRUN
    numbers = {many: {"table1 l2_mean": 0.5}, one: {"table1 l2_mean": 0.25}, torchrun: {"table1 l2_mean": 0.25}}
    units = {many: {"traverse/outputs": 0.125}, one: {"traverse/outputs": 0.0}}
    rows = bench_provenance.result_rows(numbers, units, {many: False, one: True}, many)
    assert rows == [
        {"kind": "table", "quantity": "table1 l2_mean", many: 0.5, one: 0.25, torchrun: 0.25,
         "|2 threads - torchrun|": 0.25, "|1 thread - torchrun|": 0.0},
        {"kind": "unit tensor", "quantity": "traverse/outputs", "|2 threads - torchrun|": 0.125,
         "|1 thread - torchrun|": 0.0},
        {"kind": "units", "quantity": "bit-identical to torchrun", "|2 threads - torchrun|": False,
         "|1 thread - torchrun|": True},
    ]
    report = harness.read_result(harness.write_result(tmp_path / "provenance", config={"iters": 2}, rows=rows))
    assert report["rows"] == rows and report["config"] == {"iters": 2}

