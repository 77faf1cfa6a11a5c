"""How far apart are the tables of one sweep computed under different conditions? A numerical comparison (no
timing): the same sweep on the offline model, on CPU, run three ways into fresh folders:

- ``1 process, N threads``: a plain ``lst-fast sweep`` (``OMP_NUM_THREADS=N``, default 2);
- ``1 process, 1 thread``: the same with ``OMP_NUM_THREADS=1``;
- ``torchrun 2 ranks``: ``torchrun --nproc-per-node 2 -m lst_fast.cli sweep ...``, which gives each rank
  ``OMP_NUM_THREADS=1`` (each rank computes half of the units).

The units of the last two were computed under the same conditions (1 thread, same device and versions), so
they must be bit-identical whichever process computed which unit; the first ran on another thread count, so
its convolutions sum in another order and it agrees with them only to float rounding, amplified by LST's
iterations. The three run at the same time (this compares numbers, not speed). Prints and writes Table 1/2
side by side and the largest difference per tensor of the units, with the provenance each run recorded, to
``bench/results/provenance_cpu.{csv,json}`` (the harness's ``{machine, commit, config, rows}``: one row per
table quantity and per unit tensor).

    python -m bench.bench_provenance                 # 4 photos x 2 rounds, the paper's 400 iterations
    python -m bench.bench_provenance --iters 10 --batch-size 2   # the issue's quick check
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from bench import harness
from lst_fast.sweep import tables
from lst_fast.sweep.folder import open_sweep
from lst_fast.sweep.info import sweep_summary

RESULTS = Path(__file__).resolve().parent / "results"
TORCHRUN = "torchrun 2 ranks"
ONE_THREAD = "1 process, 1 thread"


def sweep_options(args, out: Path) -> list[str]:
    return [
        "sweep", "--model", "embedded", "--data", "embedded", "--out", str(out), "--num-samples", str(args.samples),
        "--rounds", str(args.rounds), "--batch-size", str(args.batch_size), "--iters", str(args.iters),
        "--min-conf", "0", "--seed", str(args.seed), "--eval-batch-size", "4", "--workers", "0", "--no-progress",
    ]


def start(label: str, command: list[str], threads: int | None, log: Path) -> subprocess.Popen:
    """Start one sweep, its output going to ``log``; ``threads`` None leaves the thread count to torchrun."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    print(f"{label}: {' '.join(command[1:])}", flush=True)
    with open(log, "w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(label: str, process: subprocess.Popen, log: Path) -> None:
    if process.wait() != 0:
        raise SystemExit(f"{label} failed:\n{log.read_text()}")


def table_numbers(out: Path) -> dict[str, float]:
    """Table 1 and Table 2 means and stds of a sweep folder."""
    results = [tables.load_results(out)]  # (the cost table's wall times differ between any two runs)
    first, second = tables.distance_table(results).numbers[0], tables.triangle_table(results).numbers[0]
    return {f"table1 {k}": v for k, v in first.items()} | {f"table2 {k}": v for k, v in second.items()}


def unit_differences(a: Path, b: Path) -> dict[str, float]:
    """Largest absolute difference per tensor name over all unit files of two sweep folders (0: bit-identical)."""
    worst: dict[str, float] = {}
    for path in sorted((a / "units").rglob("*.safetensors")):
        x, y = load_file(str(path)), load_file(str(b / path.relative_to(a)))
        for key in x:
            if x[key].dtype == torch.bool or not x[key].is_floating_point():
                diff = float((x[key] != y[key]).sum())  # how many entries differ
            else:
                diff = float((x[key].double() - y[key].double()).abs().max()) if x[key].numel() else 0.0
            name = f"{path.parent.name}/{key}"
            worst[name] = max(worst.get(name, 0.0), diff)
    return worst


def identical(a: Path, b: Path) -> bool:
    """Whether two sweep folders hold the same units with bit-identical tensors (their provenance may differ)."""
    names = sorted(p.relative_to(a) for p in (a / "units").rglob("*.safetensors"))
    if names != sorted(p.relative_to(b) for p in (b / "units").rglob("*.safetensors")):
        return False
    for name in names:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2, help="threads of the first single-process run")
    parser.add_argument("--name", default="provenance_cpu", help="results file name (without extension)")
    args = parser.parse_args()

    many = f"1 process, {args.threads} threads"
    cli = [sys.executable, "-m", "lst_fast.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "lst_fast.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        folders = {many: Path(tmp) / "threads", ONE_THREAD: Path(tmp) / "one", TORCHRUN: Path(tmp) / "tr"}
        commands = {many: (cli, args.threads), ONE_THREAD: (cli, 1), TORCHRUN: (torchrun, None)}
        logs = {label: Path(tmp) / f"{folder.name}.log" for label, folder in folders.items()}
        running = {label: start(label, command + sweep_options(args, folders[label]), threads, logs[label])
                   for label, (command, threads) in commands.items()}
        for label, process in running.items():
            finish(label, process, logs[label])
        numbers = {label: table_numbers(out) for label, out in folders.items()}
        conditions = {label: {k: dict(c) for k, c in sweep_summary(open_sweep(out))[1].values.items()}
                      for label, out in folders.items()}
        others = {label: out for label, out in folders.items() if label != TORCHRUN}
        units_vs_torchrun = {label: unit_differences(out, folders[TORCHRUN]) for label, out in others.items()}
        bit_identical = {label: identical(out, folders[TORCHRUN]) for label, out in others.items()}

    rows = result_rows(numbers, units_vs_torchrun, bit_identical, many)
    _print(rows, units_vs_torchrun, bit_identical)
    config = {"command": "python -m bench.bench_provenance " + " ".join(sys.argv[1:]), **vars(args),
              "conditions": conditions}
    path = harness.write_result(RESULTS / args.name, config=config, rows=rows)
    print(f"wrote {path} and its .csv")


def result_rows(numbers: dict, units_vs_torchrun: dict, bit_identical: dict, many: str) -> list[dict]:
    """The rows of the result file: one per table quantity (each run's value and the two differences to the
    torchrun sweep), one per unit tensor (the largest differences of its entries), and whether the units are
    bit-identical to the torchrun sweep's."""
    one = ONE_THREAD
    differences = {many: f"|{many.removeprefix('1 process, ')} - torchrun|", one: "|1 thread - torchrun|"}
    rows = []
    for key in numbers[TORCHRUN]:
        values = {label: numbers[label].get(key, float("nan")) for label in numbers}
        rows.append({"kind": "table", "quantity": key, **values,
                     **{differences[label]: abs(values[label] - values[TORCHRUN]) for label in (many, one)}})
    for name in units_vs_torchrun[one]:
        rows.append({"kind": "unit tensor", "quantity": name,
                     **{differences[label]: units_vs_torchrun[label].get(name) for label in (many, one)}})
    rows.append({"kind": "units", "quantity": "bit-identical to torchrun",
                 **{differences[label]: bit_identical[label] for label in (many, one)}})
    return rows


def _print(rows, units_vs_torchrun, bit_identical) -> None:
    table = [row for row in rows if row["kind"] == "table"]
    labels = [k for k in table[0] if k not in ("kind", "quantity")]
    print(f"{'quantity':<24}" + "".join(f"{label:>26}" for label in labels))
    for row in table:
        print(f"{row['quantity']:<24}" + "".join(f"{row[label]:>26.10g}" for label in labels))
    for label, diffs in units_vs_torchrun.items():
        print(f"{label} vs {TORCHRUN}: units bit-identical: {bit_identical[label]}; largest differences: "
              + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items() if v))


if __name__ == "__main__":
    main()
