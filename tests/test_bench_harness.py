"""The benchmarks' harness (bench/harness.py): the arithmetic of its rounds and its result files (no timings)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import harness


def test_per_round_ratio_and_long_minus_short():
    rounds = harness.Rounds({"wall": {
        "a_long": [9.0, 18.0, 10.0], "a_short": [1.0, 2.0, 2.0],  # per iteration (long 5, short 1): 2, 4, 2
        "b": [1.0, 1.0, 4.0],
    }})
    rounds.long_minus_short("a", long=5, short=1)
    assert rounds.seconds("a") == [2.0, 4.0, 2.0]
    assert rounds.median("a") == 2.0
    # Ratios within each round are 2, 4, 0.5: their median, not the ratio of the medians (2 / 1).
    assert rounds.ratio("a", "b") == 2.0
    assert rounds.ratio("b", "a") == 0.5


def test_interleaved_rounds_calls_in_turn():
    calls = []
    rounds = harness.interleaved_rounds({"x": lambda: calls.append("x"), "y": lambda: calls.append("y")}, "cpu", 3,
                                        warmup=1, clocks=("wall", "thread"))
    assert calls == ["x", "y"] * 4
    assert {len(rounds.seconds(n, c)) for n in "xy" for c in ("wall", "thread")} == {3}


def test_result_file_shape(tmp_path):
    path = harness.write_result(tmp_path / "demo", config={"batch": 2}, rows=[{"impl": "a", "ms": 1.5}])
    report = harness.read_result(path)
    assert set(report) == {"machine", "commit", "config", "rows"}
    assert report["config"] == {"batch": 2} and report["rows"] == [{"impl": "a", "ms": 1.5}]
    assert {"cpu", "cpu_flags", "cores", "torch", "triton", "gpu"} <= set(report["machine"])
    assert (tmp_path / "demo.csv").read_text().splitlines() == ["impl,ms", "a,1.5"]


def test_read_result_rejects_other_shapes(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"machine": {}, "results": []}))
    with pytest.raises(ValueError, match="missing"):
        harness.read_result(old)


SCRIPTS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "bench").glob("*.py")
                 if p.stem not in ("__init__", "conftest", "harness") and not p.stem.startswith("test_"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_bench_script_parses_its_options(script):
    """Each script imports what the package offers today and its parser answers --help (nothing is measured), so
    a rename in lst_fast cannot silently break a benchmark that CI does not run."""
    result = subprocess.run([sys.executable, "-m", f"bench.{script}", "--help"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
