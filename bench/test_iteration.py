"""pytest-benchmark: LST iterations, reference loop against the fast path, one group per device, model and batch.

Each benchmark times a run of ``ITERS`` iterations (set-up included, so a regression anywhere in a call
shows). ``extra_info`` carries, from one interleaved comparison per configuration (bench/bench_traverse.py's
``measure``): ms per iteration (long minus short run, set-up cancelled), the model's own forward+backward
floor (``floor_tuned_ms``: the fast path's model copy and calls; ``floor_contiguous_ms``: the caller's model),
the fraction of the fast path's iteration spent outside that floor, and the per-round speed-up over the
reference loop. Models: the offline EfficientNet-Lite0 (``embedded``) and random-init timm models.
"""

from __future__ import annotations

import functools

import pytest
import torch

from bench import harness
from bench.bench_traverse import SCHEDULES, loop_options, measure, run_loop, setup

ITERS = 2  # iterations per timed call
ROUNDS = 3
# (model, batch, precisions, quick); the reference loop runs once per group, in fp32 (the original's cost).
CONFIGS = {
    "cpu": [
        ("embedded", 2, ["fp32"], True),
        ("embedded", 8, ["fp32", "bf16"], False),
        ("resnet18", 8, ["fp32", "bf16"], False),
        ("vit_tiny_patch16_224", 8, ["fp32", "bf16"], False),
    ],
    "cuda": [("resnet50", 196, ["fp32", "bf16"], False)],  # the paper's batch
}
# The comparison's long and short runs per device: on a GPU, CUDA-graph capture (after 3 warm-up iterations)
# happens in both and cancels.
SHORT_LONG = {"cpu": (1, 3), "cuda": (4, 8)}


def cases():
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        variants = [("fast", False)] + ([("fast", True)] if device == "cuda" else [])  # (loop, cuda_graphs)
        for model, batch, precisions, quick in CONFIGS[device]:
            marks = ([pytest.mark.quick] if quick else []) + ([pytest.mark.gpu] if device == "cuda" else [])
            yield pytest.param(device, model, batch, "reference", "fp32", False, "paper", marks=marks,
                               id=f"{device}-{model}-{batch}-reference")
            for loop, graphs in variants:
                for precision in precisions:
                    for schedule in SCHEDULES if not graphs else ["paper"]:  # graphs: the paper's only
                        yield pytest.param(
                            device, model, batch, loop, precision, graphs, schedule, marks=marks,
                            id=f"{device}-{model}-{batch}-{loop}-{precision}{'-graphs' if graphs else ''}-{schedule}")


@functools.cache
def setup_of(model: str, batch: int, device: str):
    return setup(model, batch, torch.device(device))


@pytest.mark.parametrize("device,model,batch,loop,precision,cuda_graphs,schedule", list(cases()))
def test_iteration(benchmark, comparisons, device, model, batch, loop, precision, cuda_graphs, schedule):
    setup_args = setup_of(model, batch, device)
    short, long = SHORT_LONG[device]
    long = short + 1 if benchmark.disabled else long
    found = comparisons.get(("iteration", device, model, batch, precision, cuda_graphs, schedule), lambda: measure(
        setup_args, precision, cuda_graphs, schedule, device=torch.device(device), short=short, long=long,
        rounds=harness.rounds_for(benchmark, ROUNDS)))

    options = loop_options(loop, precision, cuda_graphs, schedule)
    run_loop(loop, *setup_args, iters=1, **options)  # warm-up: the fast path's model copy is built once per model
    benchmark.group = f"iteration {device} {model} batch {batch}"
    benchmark.pedantic(lambda: run_loop(loop, *setup_args, iters=ITERS, **options), rounds=ROUNDS)

    keys = ["floor_contiguous_ms", "floor_tuned_ms", "rows_per_call"]
    if loop == "reference":
        keys += ["reference_ms", "reference_over_floor"]
    else:
        keys += ["fast_ms", "fast_extra_over_tuned_floor", "fast_over_best_floor", "speedup_vs_reference"]
    benchmark.extra_info.update(iters_per_call=ITERS, comparison_short_long=[short, long],
                                **{k: found[k] for k in keys})
