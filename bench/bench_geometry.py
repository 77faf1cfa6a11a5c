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

Medians over interleaved rounds (bench/harness.py); the speed-up is the per-round ratio baseline / batched.
Also measured (sweep layout and path widths): the batched path on the plain model
(memory_format="contiguous", fold_batchnorm=False), to separate the gain of chunking/sharing from the gain
of the tuned model copy.

Usage: python -m bench.bench_geometry [--triangles 20] [--samples 8] [--num-vecs 256] [--repeats 3]
       [--width-repeats 1] [--no-figures] [--out bench/results]
Writes geometry_bench.json / .csv / .png and example figures geometry_*.png to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import harness
from lst_fast import data, geometry, models, plots
from lst_fast.fast import traverse_batch
from lst_fast.model_runner import is_convolutional
from lst_fast.sweep import tables

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


def compare(task: str, contenders: dict, repeats: int, device="cpu") -> list[dict]:
    """Interleaved rounds of each contender: one row per contender with its median seconds, its speed-up over
    one_at_a_time (per-round ratio) and the largest difference of its result from one_at_a_time's."""
    values = {}
    fns = {name: (lambda name=name, fn=fn: values.__setitem__(name, fn())) for name, fn in contenders.items()}
    timed = harness.interleaved_rounds(fns, device, repeats, warmup=0)
    rows = []
    for name in contenders:
        rows.append({"task": task, "impl": name, "median_s": round(timed.median(name), 3),
                     "all_s": [round(x, 3) for x in timed.seconds(name)],
                     "speedup": round(timed.ratio("one_at_a_time", name), 3),
                     "max_abs_difference": max_difference(values[name], values["one_at_a_time"])})
        print(f"  {task} {name}: {rows[-1]['median_s']:.2f} s, speed-up {rows[-1]['speedup']:.2f}x", flush=True)
    return rows


def triangle_contenders(model, normalizer, plain, srcs, outs_a, outs_b, labels, plain_batched: bool) -> dict:
    contenders = {
        "one_at_a_time": lambda: triangle_one_at_a_time(plain, srcs, outs_a, outs_b, labels),
        "batched": lambda: geometry.triangle_stats(model, srcs, outs_a, outs_b, labels, normalizer=normalizer),
    }
    if plain_batched:  # the batched path on the plain model: how much comes from batching and sharing alone
        contenders["batched_plain_model"] = lambda: geometry.triangle_stats(
            plain, srcs, outs_a, outs_b, labels, memory_format="contiguous", fold_batchnorm=False)
    return contenders


def max_difference(a, b) -> float:
    """Largest absolute difference of two results (tensors, or dicts of tensors with the same keys)."""
    if isinstance(a, dict):
        return max(max_difference(a[key], b[key]) for key in a)
    return float((a.float() - b.float()).abs().max())


def width_contenders(model, normalizer, plain, x, directions, labels, num_vecs: int) -> dict:
    """Path widths one sample and radius at a time, batched, and batched on the plain model; the same
    generator protocol, so that their numbers agree."""
    return {
        "one_at_a_time": lambda: width_one_at_a_time(
            plain, x, directions, labels, torch.Generator().manual_seed(0), num_vecs),
        "batched": lambda: geometry.path_width(
            model, x, directions, labels, normalizer=normalizer, num_vecs=num_vecs, pthresh=0.0,
            generator=torch.Generator().manual_seed(0)),
        "batched_plain_model": lambda: geometry.path_width(
            plain, x, directions, labels, num_vecs=num_vecs, pthresh=0.0, generator=torch.Generator().manual_seed(0),
            memory_format="contiguous", fold_batchnorm=False),
    }


def width_inputs(plain, x, labels, tgts):
    """Directions v_perp at ``x`` (the orthogonal component of tgt - x w.r.t. the input gradient)."""
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(plain(x_in), labels, reduction="sum"), x_in)
    return geometry.orthogonal_direction(x, grad, tgts)


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
    config = {
        "model": "EfficientNet-Lite0 (offline), 224x224, fp32", **{k: v for k, v in vars(args).items()
                                                                 if k not in ("out", "no_figures")},
        "triangles": len(srcs), "points_per_triangle": len(geometry.triangle_grid(N_GRID)),
        "distances": DISTANCES, "batched_batch_size": geometry.default_batch_size(photos, is_convolutional(model)),
    }

    # Triangles, sweep layout (shared sources and edges) and distinct vertices.
    layouts = {
        "sweep": (srcs, outs_a, outs_b),
        "distinct": (distinct(srcs, 1), distinct(outs_a, 2), distinct(outs_b, 3)),
    }
    rows = []
    for layout, (s, a, b) in layouts.items():
        print(f"triangles ({layout} layout): {len(s)} x {config['points_per_triangle']} points", flush=True)
        contenders = triangle_contenders(
            model, normalizer, plain, s, a, b, tri_labels, plain_batched=layout == "sweep"
        )
        rows += compare(f"triangles_{layout}", contenders, args.repeats)
    stats = geometry.triangle_stats(model, srcs, outs_a, outs_b, tri_labels, normalizer=normalizer)
    per_source = geometry.aggregate_triangles(stats, source_ids)
    print(tables.mean_std_table({"EfficientNet-Lite0": per_source}, columns=geometry.TABLE2_COLUMNS))

    # Path widths at LST outputs, direction v_perp.
    count = min(args.samples, len(result.images))
    x, y, tgts = result.images[:count], result.labels[:count], photos[tgt_idx[:count]]
    directions = width_inputs(plain, x, y, tgts)
    print(f"path widths: {count} samples x {len(DISTANCES)} radii x {args.num_vecs} vectors", flush=True)
    contenders = width_contenders(model, normalizer, plain, x, directions, y, args.num_vecs)
    rows += compare("path_widths", contenders, args.width_repeats)

    path = harness.write_result(out / "geometry_bench", config=config, rows=rows)
    plot_speedups(harness.read_result(path), out / "geometry_bench.png")
    if not args.no_figures:
        write_figures(out, model, normalizer, photos, names, srcs, outs_a, outs_b, tri_labels, src_idx, tgt_idx,
                      result)


def plot_speedups(report: dict, path: Path) -> None:
    config = report["config"]
    batched = {r["task"]: r["speedup"] for r in report["rows"] if r["impl"] == "batched"}
    labels = {"triangles_sweep": f"{config['triangles']} triangles\n(sweep layout)",
              "triangles_distinct": f"{config['triangles']} triangles\n(distinct)",
              "path_widths": f"{config['samples']} path widths\n({config['num_vecs']} x {len(config['distances'])})"}
    fig, ax = plots.plt.subplots(figsize=(6.4, 3.6))
    speedups = list(batched.values())
    bars = ax.bar([labels[task] for task in batched], speedups, color=["C0", "C0", "C1"])
    ax.bar_label(bars, [f"{s:.2f}x" for s in speedups])
    ax.set_ylim(0, 1.15 * max(speedups + [3]))
    ax.axhline(3, color="grey", linestyle="--", linewidth=1, label="goal 3x")
    ax.axhline(1, color="black", linewidth=0.8)
    ax.set_ylabel("speed-up over one at a time")
    ax.set_title("Batched geometry, EfficientNet-Lite0 on CPU", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
