"""Pairs per second of a whole sweep on the offline model: ``lst_fast.sweep.run_sweep`` against a loop in the
style of the original evaluation script.

- original style: every selected image in memory; for each round and batch the reference traversal
  (:func:`lst_fast.reference.traverse_batch`); the distances of all pairs at the end; the triangle
  statistics one triangle at a time (its 66 grid points in one forward of the caller's model); everything
  kept in memory, nothing written.
- lst_fast: :func:`lst_fast.sweep.run_sweep` into a fresh folder, end to end: image selection, data loading in
  worker processes, the fast loop, distances, checksummed unit files, batched triangle statistics.

Both run the same pairs (the same derangements) with the same settings; pairs/s = pairs / wall time (model
loading excluded), medians over interleaved repeats; speed-ups are medians of per-round ratios. On a shared,
busy machine wall time mostly measures the neighbours, so the CPU time of this process (and of finished data
loading workers) is reported as well; with
``OMP_NUM_THREADS=1 --workers 0`` it is the work each side does. Both results are also compared (mean L2
distance and mean triangle confidence) so the timing is of the same work.

    python -m bench.bench_sweep                 # offline EfficientNet-Lite0, 6 photos x 3 rounds, 20 iterations
    OMP_NUM_THREADS=1 python -m bench.bench_sweep --workers 1   # on a busy machine: no thread oversubscription
"""

from __future__ import annotations

import argparse
import tempfile
from itertools import combinations
from pathlib import Path

import torch

from bench import harness
from lst_fast import data, geometry, metrics, models, reference
from lst_fast.classifier import class_conf
from lst_fast.sweep import SweepConfig, run_sweep, schema, tables
from lst_fast.sweep.folder import open_sweep
from lst_fast.sweep.plan import candidate_order, make_plan, unit_generator


def original_style(config: SweepConfig, model, normalizer, device) -> dict:
    """The sweep as one in-memory loop in the style of the original evaluation script."""
    dataset = data.open_dataset(config.data)
    order = candidate_order(len(dataset), config.seed)  # the order in which lst_fast considers the images
    images = torch.stack([dataset[int(i)][0] for i in order]).to(device)
    with torch.no_grad():
        probs = model(normalizer(images)).softmax(1)
    conf, labels = probs.max(1)
    keep = (conf > config.min_conf).nonzero().squeeze(1)[: config.num_samples]  # unlabelled photos
    images, labels = images[keep], labels[keep]
    plan = make_plan(len(images), config.rounds, config.batch_size, config.seed)
    outputs = torch.empty(config.rounds, *images.shape, device=device)
    for unit in plan.traverse:
        src, tgt = list(unit.sources), list(unit.targets)
        result = reference.traverse_batch(
            model, images[src], images[tgt], labels[src], normalizer=normalizer,
            settings=config.lst_settings(record=()),
            generator=unit_generator(config.seed, unit.round, unit.batch, device),
        )
        outputs[unit.round, src] = result.images
    targets = torch.as_tensor(plan.targets, device=device)
    dist = metrics.distances(outputs.flatten(0, 1), images[targets].flatten(0, 1), which=metrics.PIXEL_DISTANCES)
    weights = geometry.triangle_grid(config.triangle_grid).to(device, images.dtype)
    p_src = []
    for s in range(len(images)):
        for ra, rb in combinations(range(config.rounds), 2):
            vertices = torch.stack([images[s], outputs[ra, s], outputs[rb, s]])
            points = torch.einsum("gk,kchw->gchw", weights, vertices)
            with torch.no_grad():
                grid_conf = class_conf(model(normalizer(points)), labels[s].repeat(len(points)))
            p_src.append(geometry.triangle_stats_from_confidences(grid_conf[None], config.triangle_grid)["mean"])
    return {"l2": dist["l2"].mean().item(), "triangle_mean": torch.cat(p_src).mean().item(), "pairs": plan.pairs}


def lst_fast_sweep(config: SweepConfig, device, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        run_sweep(config, out, device=str(device), workers=workers, progress=False)
        results = tables.load_results(out)
        triangle_mean = schema.triangle_field("mean")
        triangles = open_sweep(out).survey("triangles", keep=[triangle_mean.name]).finished
        return {
            "l2": schema.DISTANCE_FIELDS["l2"].of(results.pairs).double().mean().item(),
            "triangle_mean": torch.cat([triangle_mean.of(u.tensors) for u in triangles]).double().mean().item(),
            "pairs": results.total_pairs,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20, help="LST iterations per pair")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each of the 6 photos is a source per round)")
    parser.add_argument("--batch-size", type=int, default=6, help="pairs per LST batch")
    parser.add_argument("--eval-batch-size", type=int, default=8,
                        help="lst_fast's images per forward-only call (small batches are fastest on CPU)")
    parser.add_argument("--workers", type=int, default=2, help="lst_fast's data loading processes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = torch.device(args.device)
    config = SweepConfig(
        model="embedded", data="embedded", num_samples=6, rounds=args.rounds, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, iters=args.iters, min_conf=0.0,
    )
    model, normalizer = models.load_embedded()
    model, normalizer = model.to(device), normalizer.to(device)
    answers = {}

    def run(name, fn):
        return lambda: answers.__setitem__(name, fn())

    timed = harness.interleaved_rounds(
        {
            "original_style": run("original_style", lambda: original_style(config, model, normalizer, device)),
            "lst_fast": run("lst_fast", lambda: lst_fast_sweep(config, device, args.workers)),
        },
        device, args.repeats, warmup=0, clocks=("wall", "process"),
    )
    wall = {name: timed.median(name, "wall") for name in ("original_style", "lst_fast")}
    cpu = {name: timed.median(name, "process") for name in ("original_style", "lst_fast")}
    ours, theirs = answers["lst_fast"], answers["original_style"]
    pairs = theirs["pairs"]
    row = {
        "model": "embedded", "pairs": pairs, "rounds": args.rounds, "iters": args.iters, "batch": args.batch_size,
        "eval_batch": args.eval_batch_size, "workers": args.workers,
        "threads": torch.get_num_threads(),
        "original_style_s": round(wall["original_style"], 2), "lst_fast_s": round(wall["lst_fast"], 2),
        "original_style_pairs_per_s": round(pairs / wall["original_style"], 3),
        "lst_fast_pairs_per_s": round(pairs / wall["lst_fast"], 3),
        "speedup": round(timed.ratio("original_style", "lst_fast", "wall"), 3),
        "original_style_cpu_s": round(cpu["original_style"], 2), "lst_fast_cpu_s": round(cpu["lst_fast"], 2),
        "speedup_cpu_time": round(timed.ratio("original_style", "lst_fast", "process"), 3),
        "mean_l2_original_style": round(theirs["l2"], 5), "mean_l2_lst_fast": round(ours["l2"], 5),
        "triangle_mean_original_style": round(theirs["triangle_mean"], 5),
        "triangle_mean_lst_fast": round(ours["triangle_mean"], 5),
    }
    print(row, flush=True)
    stem = args.out / f"sweep_{device.type}"
    harness.write_result(stem, config={k: v for k, v in vars(args).items() if k != "out"}, rows=[row], device=device)
    print(f"wrote {stem}.json/.csv")


if __name__ == "__main__":
    main()
