"""Batched geometry (lst_fast.geometry) against a one-at-a-time loop in the style of the original.

Offline EfficientNet-Lite0 on the bundled photos, 224x224, CPU, same model and process:

- triangle statistics for T triangles (default 20): the baseline makes one model call per triangle of 66
  points; the batched version packs all points into model batches of the device's default size (4 on CPU),
  evaluating shared points once, on the batch-norm-folded channels_last model copy. The triangles come
  from real (short) LST runs laid out as in the sweep: 2 sources with 5 outputs each, a triangle for every
  pair of a source's outputs, so sources and edges are shared. A second layout, "distinct", gives every
  triangle its own vertices (tiny per-triangle perturbations) so that nothing is shared.
- path widths for B samples (default 8) at LST outputs, direction v_perp: the baseline makes one model call
  per sample and radius (256 points); the batched version runs all points of all samples and radii in
  model batches of the default size. Both use the same generator protocol (one randn((256, C, H, W)) per
  sample), so their numbers are compared too. pthresh = 0 so that every sample is measured by both.

Medians over repeats, interleaved; the ratio baseline / batched is the speed-up. Also measured (sweep layout
and path widths): the batched path on the plain model (memory_format="contiguous", fold_batchnorm=False), to
separate the gain of chunking/sharing from the gain of the tuned model copy.

Usage: python bench/bench_geometry.py [--triangles 20] [--samples 8] [--num-vecs 256] [--repeats 3]
       [--width-repeats 1] [--no-figures] [--out bench/results]
Writes geometry_bench.json / .csv / .png and example figures geometry_*.png to --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lst_fast import data, geometry, models, plots, tables
from lst_fast.fast import traverse_batch
from lst_fast.tuning import is_convolutional

DISTANCES = (0.5, 1.0, 1.5, 2.0)
N_GRID = 10


# ---------------------------------------------------------------------------------------------------------
# One-at-a-time baselines in the style of the original


def conf_of(model, points, label):
    with torch.no_grad():
        return F.softmax(model(points), dim=1)[:, label]


def triangle_one_at_a_time(model, srcs, outs_a, outs_b, labels, n=N_GRID):
    """One model call per triangle of (n+1)(n+2)/2 points; statistics of each triangle on its own."""
    grid = geometry.triangle_grid(n).to(srcs.dtype)
    rows = []
    for s, a, b, y in zip(srcs, outs_a, outs_b, labels.tolist()):
        points = torch.stack([w[0] * s + w[1] * a + w[2] * b for w in grid])
        p = conf_of(model, points, y)
        p_src = p[0]
        edges = torch.cat([p[grid[:, 2] == 0], p[grid[:, 1] == 0]])
        row = {"p_src": p_src, "mean": p.mean()}
        for d in geometry.FRACTION_DELTAS:
            row[f"frac_{d}"] = (p > p_src - d).float().mean()
        row["edge_mean"] = edges.mean()
        row["edge_min"] = (edges - p_src).min()
        rows.append(row)
    return {key: torch.stack([r[key] for r in rows]) for key in rows[0]}


def width_one_at_a_time(model, x, directions, labels, generator, num_vecs, pthresh=0.0):
    """Per sample: draw the vectors, then one model call per radius."""
    out = torch.zeros(len(x), len(DISTANCES) + 1, 2)
    for i in range(len(x)):
        noise = torch.randn((num_vecs, *x.shape[1:]), generator=generator).flatten(1)
        d = directions[i].flatten() / directions[i].norm()
        u = noise - (noise @ d)[:, None] * d[None]
        u = (u / u.norm(dim=1, keepdim=True)).view(num_vecs, *x.shape[1:])
        p_x = conf_of(model, x[i : i + 1], labels[i]).item()
        if p_x < pthresh:
            continue
        out[i, 0] = p_x
        for k, r in enumerate(DISTANCES, start=1):
            conf = conf_of(model, (x[i] + r * u).clamp(0, 1), labels[i])
            out[i, k] = torch.quantile(conf, torch.tensor(geometry.WIDTH_QUANTILES))
    return out


# ---------------------------------------------------------------------------------------------------------
# Inputs: real LST outputs in the sweep's layout


def lst_outputs(model, normalizer, photos, sources, outputs_per_source, iters):
    """Short LST runs from each source towards ``outputs_per_source`` other photos."""
    pairs = [(s, t) for s in sources for t in [j for j in range(len(photos)) if j != s][:outputs_per_source]]
    src_idx = torch.tensor([s for s, _ in pairs])
    tgt_idx = torch.tensor([t for _, t in pairs])
    with torch.no_grad():
        labels = model(normalizer(photos)).argmax(1)[src_idx]
    result = traverse_batch(
        model, photos[src_idx], photos[tgt_idx], labels, normalizer=normalizer, iters=iters,
        generator=torch.Generator().manual_seed(0),
    )
    return src_idx, tgt_idx, result


def sweep_triangles(photos, src_idx, outs, labels, count):
    """Every pair of outputs of each source makes a triangle (as the sweep does), ``count`` in all."""
    rows = []
    for s in src_idx.unique().tolist():
        mine = (src_idx == s).nonzero().flatten().tolist()
        rows += [(s, a, b) for k, a in enumerate(mine) for b in mine[k + 1 :]]
    rows = rows[:count]
    srcs = torch.stack([photos[s] for s, _, _ in rows])
    outs_a = torch.stack([outs[a] for _, a, _ in rows])
    outs_b = torch.stack([outs[b] for _, _, b in rows])
    tri_labels = torch.stack([labels[a] for _, a, _ in rows])
    return srcs, outs_a, outs_b, tri_labels, torch.tensor([s for s, _, _ in rows])


def distinct(images, seed):
    """The same images with a tiny per-row perturbation, so that no two rows are equal."""
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + 1e-3 * (noise - 0.5)).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------
# Timing


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def compare(name, contenders: dict, repeats: int) -> dict:
    """Interleaved repeats of each contender; medians, and the results of the last repeat."""
    times = {key: [] for key in contenders}
    values = {}
    for _ in range(repeats):
        for key, fn in contenders.items():
            seconds, values[key] = timed(fn)
            times[key].append(seconds)
            print(f"  {name} {key}: {seconds:.2f} s", flush=True)
    return {"median_s": {k: statistics.median(v) for k, v in times.items()}, "all_s": times, "values": values}


def triangle_contenders(model, normalizer, plain, srcs, outs_a, outs_b, labels, plain_batched: bool) -> dict:
    contenders = {
        "one_at_a_time": lambda: triangle_one_at_a_time(plain, srcs, outs_a, outs_b, labels),
        "batched": lambda: geometry.triangle_stats(model, srcs, outs_a, outs_b, labels, normalizer=normalizer),
    }
    if plain_batched:  # the batched path on the plain model: how much comes from batching and sharing alone
        contenders["batched_plain_model"] = lambda: geometry.triangle_stats(
            plain, srcs, outs_a, outs_b, labels, memory_format="contiguous", fold_batchnorm=False)
    return contenders


def max_difference(a: dict, b: dict) -> dict:
    return {key: float((a[key].float() - b[key].float()).abs().max()) for key in a}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triangles", type=int, default=20)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--num-vecs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the triangle timings")
    parser.add_argument("--width-repeats", type=int, default=1, help="repeats of the path-width timings")
    parser.add_argument("--lst-iters", type=int, default=20, help="iterations of the LST runs that make the outputs")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, normalizer = models.load_embedded()
    plain = models.with_normalization(model, normalizer)  # the caller's model as loaded: the baseline's
    photos, names = data.load_embedded_photos(data.EMBEDDED_PHOTOS)
    sources = 2
    per_source = 5
    print(f"LST outputs: {sources} sources x {per_source} targets, {args.lst_iters} iterations", flush=True)
    src_idx, tgt_idx, result = lst_outputs(model, normalizer, photos, range(sources), per_source, args.lst_iters)
    srcs, outs_a, outs_b, tri_labels, source_ids = sweep_triangles(photos, src_idx, result.images, result.labels,
                                                                   args.triangles)
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "model": "EfficientNet-Lite0 (offline), 224x224, fp32",
        "triangles": len(srcs), "points_per_triangle": len(geometry.triangle_grid(N_GRID)),
        "samples": args.samples, "num_vecs": args.num_vecs, "distances": DISTANCES,
        "batched_batch_size": geometry.default_batch_size(photos, is_convolutional(model)),
    }

    # Triangles, sweep layout (shared sources and edges) and distinct vertices.
    layouts = {
        "sweep": (srcs, outs_a, outs_b),
        "distinct": (distinct(srcs, 1), distinct(outs_a, 2), distinct(outs_b, 3)),
    }
    for layout, (s, a, b) in layouts.items():
        print(f"triangles ({layout} layout): {len(s)} x {report['points_per_triangle']} points", flush=True)
        contenders = triangle_contenders(
            model, normalizer, plain, s, a, b, tri_labels, plain_batched=layout == "sweep"
        )
        runs = compare(f"triangles/{layout}", contenders, args.repeats)
        medians = runs["median_s"]
        report[f"triangles_{layout}"] = {
            "median_s": medians, "all_s": runs["all_s"],
            "speedup": medians["one_at_a_time"] / medians["batched"],
            "max_abs_difference": max_difference(runs["values"]["batched"], runs["values"]["one_at_a_time"]),
        }
        if "batched_plain_model" in medians:
            plain_speedup = medians["one_at_a_time"] / medians["batched_plain_model"]
            report[f"triangles_{layout}"]["speedup_plain_model"] = plain_speedup
        print(f"  speed-up {report[f'triangles_{layout}']['speedup']:.2f}x", flush=True)
    stats = geometry.triangle_stats(model, srcs, outs_a, outs_b, tri_labels, normalizer=normalizer)
    per_source = geometry.aggregate_triangles(stats, source_ids)
    report["table2_example"] = tables.mean_std_table({"EfficientNet-Lite0": per_source},
                                                     columns=geometry.TABLE2_COLUMNS)

    # Path widths at LST outputs, direction v_perp.
    count = min(args.samples, len(result.images))
    x, y, tgts = result.images[:count], result.labels[:count], photos[tgt_idx[:count]]
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(plain(x_in), y, reduction="sum"), x_in)
    directions = geometry.orthogonal_direction(x, grad, tgts)
    print(f"path widths: {count} samples x {len(DISTANCES)} radii x {args.num_vecs} vectors", flush=True)
    runs = compare("widths", {
        "one_at_a_time": lambda: width_one_at_a_time(
            plain, x, directions, y, torch.Generator().manual_seed(0), args.num_vecs),
        "batched": lambda: geometry.path_width(
            model, x, directions, y, normalizer=normalizer, num_vecs=args.num_vecs, pthresh=0.0,
            generator=torch.Generator().manual_seed(0)),
        "batched_plain_model": lambda: geometry.path_width(
            plain, x, directions, y, num_vecs=args.num_vecs, pthresh=0.0, generator=torch.Generator().manual_seed(0),
            memory_format="contiguous", fold_batchnorm=False),
    }, args.width_repeats)
    medians = runs["median_s"]
    report["path_widths"] = {
        "median_s": medians, "all_s": runs["all_s"],
        "speedup": medians["one_at_a_time"] / medians["batched"],
        "speedup_plain_model": medians["one_at_a_time"] / medians["batched_plain_model"],
        "max_abs_difference": float((runs["values"]["batched"] - runs["values"]["one_at_a_time"]).abs().max()),
    }
    print(f"  speed-up {report['path_widths']['speedup']:.2f}x", flush=True)

    write_results(out, report)
    if not args.no_figures:
        write_figures(out, model, normalizer, photos, names, srcs, outs_a, outs_b, tri_labels, src_idx, tgt_idx,
                      result)


def write_results(out: Path, report: dict) -> None:
    (out / "geometry_bench.json").write_text(json.dumps(report, indent=2, default=str))
    rows = [
        ("triangles_sweep", report["triangles_sweep"]),
        ("triangles_distinct", report["triangles_distinct"]),
        ("path_widths", report["path_widths"]),
    ]
    with open(out / "geometry_bench.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "one_at_a_time_s", "batched_s", "batched_plain_model_s", "speedup"])
        for task, r in rows:
            m = r["median_s"]
            writer.writerow([task, f"{m['one_at_a_time']:.3f}", f"{m['batched']:.3f}",
                             f"{m['batched_plain_model']:.3f}" if "batched_plain_model" in m else "",
                             f"{r['speedup']:.2f}"])
    fig, ax = plots.plt.subplots(figsize=(6.4, 3.6))
    labels = [f"{report['triangles']} triangles\n(sweep layout)", f"{report['triangles']} triangles\n(distinct)",
              f"{report['samples']} path widths\n({report['num_vecs']} x {len(report['distances'])})"]
    speedups = [r["speedup"] for _, r in rows]
    bars = ax.bar(labels, speedups, color=["C0", "C0", "C1"])
    ax.bar_label(bars, [f"{s:.2f}x" for s in speedups])
    ax.set_ylim(0, 1.15 * max(speedups + [3]))
    ax.axhline(3, color="grey", linestyle="--", linewidth=1, label="goal 3x")
    ax.axhline(1, color="black", linewidth=0.8)
    ax.set_ylabel("speed-up over one at a time")
    ax.set_title("Batched geometry, EfficientNet-Lite0 on CPU", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "geometry_bench.png", dpi=110)
    plots.plt.close(fig)


def write_figures(out, model, normalizer, photos, names, srcs, outs_a, outs_b, labels, src_idx, tgt_idx, result):
    """Example figures on these outputs, and a short recorded traversal for the path plots."""
    conf = geometry.triangle_confidences(model, srcs[:1], outs_a[:1], outs_b[:1], labels[:1], normalizer=normalizer)
    plots.triangle_plot(conf[0], torch.stack([srcs[0], outs_a[0], outs_b[0]]), out / "geometry_triangle.png",
                        corner_labels=("source", "LST output a", "LST output b"),
                        title=f"Triangle of {names[src_idx[0]]} and two of its LST outputs (EfficientNet-Lite0)")
    star = geometry.interpolation_conf(model, photos[src_idx], result.images, result.labels, normalizer=normalizer)
    plots.interpolation_plot(star, out / "geometry_interpolation.png",
                             labels=[f"{names[s]} -> {names[t]}" for s, t in zip(src_idx, tgt_idx)])
    pairs = [0, per_source_first_of_second(src_idx)]
    recorded = traverse_batch(
        model, photos[src_idx[pairs]], photos[tgt_idx[pairs]], normalizer=normalizer, iters=100, log_every=10,
        record=("conf", "widths"), width_num_vecs=32, generator=torch.Generator().manual_seed(0),
    )
    for k, pair in enumerate(pairs):
        title = f"{names[src_idx[pair]]} -> {names[tgt_idx[pair]]}"
        plots.path_width_plot(recorded.path_widths[k], out / f"geometry_path_width_{k}.png",
                              iters=recorded.path_iters, title=f"Path width (32 directions), {title}")
    plots.confidence_path_plot(recorded.path_iters, recorded.path_conf, recorded.path_target_conf,
                               out / "geometry_confidence_path.png",
                               labels=[f"{names[src_idx[p]]} -> {names[tgt_idx[p]]}" for p in pairs])


def per_source_first_of_second(src_idx: torch.Tensor) -> int:
    """Index of the first pair of the second source."""
    return int((src_idx != src_idx[0]).nonzero()[0, 0])


if __name__ == "__main__":
    main()
