"""pytest-benchmark: the geometry evaluator, batched against one at a time (bench/bench_geometry.py's baselines
in the style of the original), on the offline EfficientNet-Lite0, CPU. One group per task and size:

- triangle statistics in the sweep's layout (sources and edges shared) and with distinct vertices;
- path widths (direction v_perp, pthresh 0 so that every sample is measured by both).

The vertices are blends of the bundled photos (timing does not depend on them being LST outputs).
``extra_info``: the per-round speed-up over one at a time from one interleaved comparison per group, and the
largest difference of each result from the one-at-a-time result.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from bench import harness
from bench.bench_geometry import (
    compare,
    distinct,
    sweep_triangles,
    triangle_contenders,
    width_contenders,
    width_inputs,
)
from lst_fast import data, models

SIZES = {  # name: (pixels, triangles, path-width samples, directions per radius), quick
    "quick": (64, 2, 1, 8),
    "full": (224, 10, 4, 64),
}
TASKS = {
    "triangles_sweep": ["one_at_a_time", "batched", "batched_plain_model"],
    "triangles_distinct": ["one_at_a_time", "batched"],
    "path_widths": ["one_at_a_time", "batched", "batched_plain_model"],
}
ROUNDS = 2


def cases():
    for size in SIZES:
        for task, impls in TASKS.items():
            for impl in impls:
                yield pytest.param(size, task, impl, marks=[pytest.mark.quick] if size == "quick" else [],
                                   id=f"{size}-{task}-{impl}")


@functools.cache
def inputs_of(size: str):
    """Model, normalizer, plain model, and per task the arguments of its contenders."""
    pixels, triangles, samples, num_vecs = SIZES[size]
    model, normalizer = models.load_embedded()
    plain = models.with_normalization(model, normalizer)  # the caller's model as loaded: the baseline's
    photos = F.interpolate(data.load_embedded_photos(data.EMBEDDED_PHOTOS)[0], size=(pixels, pixels),
                           mode="bilinear", antialias=True).clamp(0, 1)
    per_source = 5
    pairs = [(s, t) for s in range(2) for t in [j for j in range(len(photos)) if j != s][:per_source]]
    src_idx, tgt_idx = torch.tensor([s for s, _ in pairs]), torch.tensor([t for _, t in pairs])
    outs = 0.6 * photos[src_idx] + 0.4 * photos[tgt_idx]  # stand-ins for LST outputs
    with torch.no_grad():
        labels = plain(photos).argmax(1)[src_idx]
    srcs, outs_a, outs_b, tri_labels, _ = sweep_triangles(photos, src_idx, outs, labels, triangles)
    x, y = outs[:samples], labels[:samples]
    directions = width_inputs(plain, x, y, photos[tgt_idx[:samples]])
    return {
        "triangles_sweep": lambda: triangle_contenders(model, normalizer, plain, srcs, outs_a, outs_b, tri_labels,
                                                       plain_batched=True),
        "triangles_distinct": lambda: triangle_contenders(
            model, normalizer, plain, distinct(srcs, 1), distinct(outs_a, 2), distinct(outs_b, 3), tri_labels,
            plain_batched=False),
        "path_widths": lambda: width_contenders(model, normalizer, plain, x, directions, y, num_vecs),
    }


@pytest.mark.parametrize("size,task,impl", list(cases()))
def test_geometry(benchmark, comparisons, size, task, impl):
    contenders = inputs_of(size)[task]()
    rows = comparisons.get(("geometry", size, task), lambda: compare(
        task, contenders, harness.rounds_for(benchmark, ROUNDS)))
    pixels, triangles, samples, num_vecs = SIZES[size]
    benchmark.group = f"geometry {task} {size} ({pixels}x{pixels})"
    benchmark.pedantic(contenders[impl], rounds=ROUNDS)
    mine = next(r for r in rows if r["impl"] == impl)
    benchmark.extra_info.update(
        pixels=pixels, triangles=triangles, path_width_samples=samples, directions_per_radius=num_vecs,
        speedup_vs_one_at_a_time=mine["speedup"], max_abs_difference=mine["max_abs_difference"],
    )
