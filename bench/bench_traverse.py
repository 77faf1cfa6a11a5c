"""Milliseconds per LST iteration: reference loop vs lst_fast.traverse_batch vs the model's own floor.

Everything is measured in one process, on the same model, batch and inputs, with interleaved repeats:
- floor_contiguous: one forward+backward of the caller's model w.r.t. the input (contiguous memory);
- floor_channels_last: the same with model and input in channels_last;
- floor_tuned: the same for the model copy the fast path runs (batch norm folded, best memory format,
  the row's precision), in the fast path's model calls of rows_per_call rows (lst_fast.model_runner);
- reference / fast: per-iteration cost of the two loops, (t(n_long) - t(n_short)) / (n_long - n_short) in each
  interleaved round (set-up costs cancel), median over rounds.
The fast path's "extra" is fast / floor_tuned - 1: the fraction of each iteration spent outside the
model's forward+backward. Times are medians over interleaved rounds; ratios are medians of the ratios within
each round. Peak memory is measured per loop for a short run (above what was in use before;
the fast path's includes building its tuned model copy).

    python -m bench.bench_traverse                       # offline EfficientNet-Lite0, batch 8, CPU
    python -m bench.bench_traverse --models embedded resnet50 --batch-sizes 1 8 32
    python -m bench.bench_traverse --device cuda --models resnet50 --batch-sizes 196 --precisions fp32 bf16 \
        --cuda-graphs
The reference loop always runs in fp32 without graphs: it is the original's cost.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
from pathlib import Path

import torch

import lst_fast
from bench import harness
from lst_fast import data, model_runner, models, reference
from lst_fast.classifier import input_grad_loss
from lst_fast.model_runner import (
    autocast_context,
    default_rows_per_call,
    resolve_memory_format,
    row_slices,
    tuned_model,
    with_autocast,
)
from lst_fast.schedules import schedule_named, schedule_names

REPO = Path(__file__).resolve().parent.parent
SCHEDULES = schedule_names()  # the fast path's schedules (per-iteration cost; adaptive rows stop earlier)


def load(name: str, device: torch.device):
    if name == models.EMBEDDED:
        model, normalizer = models.load_embedded()
    else:  # random-init timm model: timing does not depend on the weights
        model, normalizer = models.load_timm(name, pretrained=False)
    return model.to(device).eval().requires_grad_(False), normalizer.to(device)


def make_batch(batch: int, device: torch.device):
    photos = data.load_embedded_photos(data.EMBEDDED_PHOTOS)[0]
    srcs = photos.repeat((batch + len(photos) - 1) // len(photos), 1, 1, 1)[:batch].to(device)
    return srcs, srcs.roll(1, 0)


def floor_fn(model, normalizer, srcs, labels, layout, precision="fp32", rows_per_call=None):
    """One forward+backward w.r.t. the input of the whole batch, in calls of ``rows_per_call`` rows."""
    x = srcs.contiguous(memory_format=layout)
    forward = with_autocast(lambda x_in: model(normalizer(x_in)), autocast_context(precision, srcs.device))
    calls = row_slices(len(x), rows_per_call)

    def forward_backward():
        for rows in calls:
            x_in = x[rows].detach().requires_grad_(True)
            torch.autograd.grad(input_grad_loss(forward(x_in), labels[rows]), x_in)

    return forward_backward


def setup(name, batch, device):
    model, normalizer = load(name, device)
    srcs, tgts = make_batch(batch, device)
    with torch.no_grad():
        labels = model(normalizer(srcs)).argmax(1)
    return model, normalizer, srcs, tgts, labels


def loop_options(which: str, precision="fp32", cuda_graphs=False, schedule="paper") -> dict:
    """Keyword arguments of one loop. The reference loop always runs fp32 without graphs: the original's cost.
    The schedule is passed only when it is not the paper's (traverse_batch's default). The adaptive schedule
    runs with its step held (``step_growth=1``), so that every row takes part in every iteration and the time per
    iteration is its loop's cost; what it saves, fewer iterations, is measured by bench/bench_schedule.py."""
    if which == "reference":
        return {}
    options = dict(precision=precision, cuda_graphs=cuda_graphs)
    if schedule != "paper":
        options |= {"schedule": schedule, "step_growth": 1.0}
    return options


def run_loop(which: str, model, normalizer, srcs, tgts, labels, iters: int, **options):
    traverse = reference.traverse_batch if which == "reference" else lst_fast.traverse_batch
    return traverse(model, srcs, tgts, labels, iters=iters, normalizer=normalizer, **options)


def peak_memory_mb(which: str, name, batch, options: dict, device, setup_args) -> float:
    """Peak memory of a 2-iteration run of one loop, above the memory in use after set-up, in MiB.

    Set-up includes a 1-iteration warm-up run of the same loop, so the fast path's tuned model copy (built
    once per model and cached, reported apart as model_copy_mb) counts as in use, like the model itself.
    CUDA: the caching allocator's peak in this process. CPU: the peak resident set of a fresh process,
    reset after set-up (/proc/self/clear_refs), with glibc's dynamic mmap threshold pinned so that freed
    tensors go back to the OS and the resident set tracks live memory.
    """
    if device.type == "cuda":
        run_loop(which, *setup_args, iters=1, **options)
        return harness.peak_memory_mb(lambda: run_loop(which, *setup_args, iters=2, **options), device)
    command = [sys.executable, "-m", "bench.bench_traverse", "--peak-of", which, "--models", name,
               "--batch-sizes", str(batch), "--precisions", options.get("precision", "fp32"),
               "--schedules", options.get("schedule", "paper"), "--device", str(device)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env, cwd=REPO).stdout
    return float(out.strip().splitlines()[-1])


def print_peak_rss(which: str, args) -> None:
    """Child process of peak_memory_mb: set up, reset the peak, run one loop, print its peak in MiB."""
    device = torch.device(args.device)
    setup_args = setup(args.models[0], args.batch_sizes[0], device)
    options = loop_options(which, args.precisions[0], schedule=args.schedules[0])
    run_loop(which, *setup_args, iters=1, **options)  # warm-up: builds and caches the fast path's model copy
    gc.collect()
    print(harness.peak_memory_mb(lambda: run_loop(which, *setup_args, iters=2, **options), device))


def measure(setup_args, precision="fp32", cuda_graphs=False, schedule="paper", *, device, short=1, long=9,
            rounds=3, compiled_floor=False) -> dict:
    """ms per iteration of both loops and the model's floors on one set-up (model, normalizer, srcs, tgts,
    labels), in interleaved rounds, and their per-round ratios. ``compiled_floor`` adds the tuned floor under
    torch.compile (``floor_tuned_compiled``) and the seconds of its first, compiling call."""
    model, normalizer, srcs, tgts, labels = setup_args
    layout = resolve_memory_format("auto", model)
    tuned = tuned_model(model, srcs[:4], normalizer=normalizer, layout=layout, fold=True)
    rows = None if cuda_graphs else default_rows_per_call(srcs, model_runner.is_convolutional(model))
    fast = loop_options("fast", precision, cuda_graphs, schedule)

    def loop(which, iters, **options):
        return lambda: run_loop(which, *setup_args, iters=iters, **options)

    fns = {
        "floor_contiguous": floor_fn(model, normalizer, srcs, labels, torch.contiguous_format),
        "floor_channels_last": floor_fn(
            model.to(memory_format=torch.channels_last), normalizer, srcs, labels, torch.channels_last
        ),
        "floor_tuned": floor_fn(tuned, normalizer, srcs, labels, layout, precision, rows),
        "reference_short": loop("reference", short),
        "reference_long": loop("reference", long),
        "fast_short": loop("fast", short, **fast),
        "fast_long": loop("fast", long, **fast),
    }
    first_call = {}
    if compiled_floor:
        fns["floor_tuned_compiled"] = floor_fn(torch.compile(tuned), normalizer, srcs, labels, layout, precision, rows)
        seconds = harness.seconds_per_call(fns["floor_tuned_compiled"], device)["wall"]
        first_call["compile_first_call_s"] = round(seconds, 1)
    model.to(memory_format=torch.contiguous_format)  # the loops must see the caller's usual model
    t = harness.interleaved_rounds(fns, device, rounds)
    for loop_name in ("reference", "fast"):
        t.long_minus_short(loop_name, long, short)
    t.add("best_floor", [min(pair) for pair in zip(t.seconds("floor_contiguous"), t.seconds("floor_channels_last"))])
    return {
        "precision": precision,
        "cuda_graphs": cuda_graphs,
        "schedule": schedule,
        "rows_per_call": max(s.stop - s.start for s in row_slices(len(srcs), rows)),
        **{f"{k}_ms": round(1e3 * t.median(k), 2) for k in fns if not k.endswith(("_short", "_long"))},
        "reference_ms": round(1e3 * t.median("reference"), 2),
        "fast_ms": round(1e3 * t.median("fast"), 2),
        "speedup_vs_reference": round(t.ratio("reference", "fast"), 3),
        "reference_over_floor": round(t.ratio("reference", "floor_contiguous"), 3),
        "fast_over_best_floor": round(t.ratio("fast", "best_floor"), 3),
        "fast_extra_over_tuned_floor": round(t.ratio("fast", "floor_tuned") - 1, 3),
        "model_copy_mb": round(sum(x.nbytes for x in (*tuned.parameters(), *tuned.buffers())) / 2**20, 1),
        **first_call,
    }


def bench_config(name, batch, precision, cuda_graphs, schedule, device, args) -> dict:
    setup_args = setup(name, batch, device)
    row = {"model": name, "batch": batch, **measure(
        setup_args, precision, cuda_graphs, schedule, device=device, short=args.short, long=args.long,
        rounds=args.repeats, compiled_floor=args.compiled_floor)}
    for which in ("reference", "fast"):
        options = loop_options(which, precision, cuda_graphs, schedule)
        row[f"{which}_peak_mb"] = round(peak_memory_mb(which, name, batch, options, device, setup_args), 1)
    row["memory_ratio"] = round(row["fast_peak_mb"] / max(row["reference_peak_mb"], 1e-9), 3)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in dict.fromkeys((r["model"], r["precision"], r["cuda_graphs"], r["schedule"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["precision"], r["cuda_graphs"], r["schedule"]) == variant]
        label = f"{variant[0]} {variant[1]}" + (" +graphs" if variant[2] else "")
        label += f" {variant[3]}" if variant[3] != "paper" else ""
        ax.plot([r["batch"] for r in mine], [r["speedup_vs_reference"] for r in mine], "o-", label=label)
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("speed-up over the reference loop")
    ax.set_title(f"lst_fast.traverse_batch vs reference loop ({path.stem.split('_')[-1]})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["embedded"], help="'embedded' or timm names (random init)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8])
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--schedules", nargs="+", default=["paper"], choices=SCHEDULES)
    parser.add_argument("--cuda-graphs", action="store_true", help="also measure the fast path with CUDA graphs")
    parser.add_argument("--compiled-floor", action="store_true",
                        help="also time the fast path's model copy under torch.compile (floor_tuned_compiled)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--short", type=int, default=1, help="iterations of the short run")
    parser.add_argument("--long", type=int, default=9, help="iterations of the long run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="", help="suffix for the result files")
    parser.add_argument("--peak-of", choices=["reference", "fast"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_of:
        return print_peak_rss(args.peak_of, args)
    device = torch.device(args.device)
    rows = []
    graph_options = [False, True] if args.cuda_graphs else [False]
    for name in args.models:
        for batch in args.batch_sizes:
            for precision in args.precisions:
                for graphs in graph_options:
                    for schedule in args.schedules:
                        if graphs and not schedule_named(schedule).fixed_shapes:  # CUDA graphs need fixed shapes
                            continue
                        row = bench_config(name, batch, precision, graphs, schedule, device, args)
                        print(row, flush=True)
                        rows.append(row)
    stem = args.out / f"traverse_{device.type}{'_' + args.tag if args.tag else ''}"
    config = {k: v for k, v in vars(args).items() if k not in ("out", "peak_of")}
    harness.write_result(stem, config=config, rows=rows, device=device)
    plot(rows, stem.with_suffix(".png"))
    print(f"wrote {stem}.json/.csv/.png")


if __name__ == "__main__":
    main()
