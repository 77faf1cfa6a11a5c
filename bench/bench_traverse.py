"""Milliseconds per LST iteration: reference loop vs lst_fast.traverse_batch vs the model's own floor.

Everything is measured in one process, on the same model, batch and inputs, with interleaved repeats:
- floor_contiguous: one forward+backward of the caller's model w.r.t. the input (contiguous memory);
- floor_channels_last: the same with model and input in channels_last;
- floor_tuned: the same for the model copy the fast path runs (batch norm folded, best memory format);
- reference / fast: per-iteration cost of the two loops, (t(n_long) - t(n_short)) / (n_long - n_short),
  so set-up costs cancel.
The fast path's "extra" is fast / floor_tuned - 1: the fraction of each iteration spent outside the
model's forward+backward. Peak memory is measured per loop for a short run.

    python bench/bench_traverse.py                       # offline EfficientNet-Lite0, batch 8, CPU
    python bench/bench_traverse.py --models embedded resnet50 --batch-sizes 1 8 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, machine_info, peak_memory_mb, write_results  # noqa: E402

import lst_fast  # noqa: E402
from lst_fast import data, models, reference  # noqa: E402
from lst_fast.traversal import input_grad_loss  # noqa: E402
from lst_fast.tuning import resolve_memory_format, tuned_model  # noqa: E402


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


def floor_fn(model, normalizer, srcs, labels, layout):
    x = srcs.contiguous(memory_format=layout)

    def forward_backward():
        x_in = x.detach().requires_grad_(True)
        torch.autograd.grad(input_grad_loss(model(normalizer(x_in)), labels), x_in)

    return forward_backward


def bench_config(name, batch, device, args) -> dict:
    model, normalizer = load(name, device)
    srcs, tgts = make_batch(batch, device)
    with torch.no_grad():
        labels = model(normalizer(srcs)).argmax(1)
    layout = resolve_memory_format("auto", model)
    tuned = tuned_model(model, srcs[:4], normalizer=normalizer, layout=layout, fold=True)
    common = dict(normalizer=normalizer, generator=None)

    def loop(traverse, iters):
        return lambda: traverse(model, srcs, tgts, labels, iters=iters, **common)

    fns = {
        "floor_contiguous": floor_fn(model, normalizer, srcs, labels, torch.contiguous_format),
        "floor_channels_last": floor_fn(
            model.to(memory_format=torch.channels_last), normalizer, srcs, labels, torch.channels_last
        ),
        "floor_tuned": floor_fn(tuned, normalizer, srcs, labels, layout),
        "reference_short": loop(reference.traverse_batch, args.short),
        "reference_long": loop(reference.traverse_batch, args.long),
        "fast_short": loop(lst_fast.traverse_batch, args.short),
        "fast_long": loop(lst_fast.traverse_batch, args.long),
    }
    model.to(memory_format=torch.contiguous_format)  # the loops must see the caller's usual model
    t = interleaved_medians(fns, device, args.repeats)
    per_iter = lambda loop_name: (t[f"{loop_name}_long"] - t[f"{loop_name}_short"]) / (args.long - args.short)  # noqa: E731
    ms = {k: 1e3 * v for k, v in t.items() if k.startswith("floor")}
    ms["reference"], ms["fast"] = 1e3 * per_iter("reference"), 1e3 * per_iter("fast")
    best_floor = min(ms["floor_contiguous"], ms["floor_channels_last"])
    row = {
        "model": name,
        "batch": batch,
        "precision": "fp32",
        **{f"{k}_ms": round(v, 2) for k, v in ms.items()},
        "speedup_vs_reference": round(ms["reference"] / ms["fast"], 3),
        "reference_over_floor": round(ms["reference"] / ms["floor_contiguous"], 3),
        "fast_over_best_floor": round(ms["fast"] / best_floor, 3),
        "fast_extra_over_tuned_floor": round(ms["fast"] / ms["floor_tuned"] - 1, 3),
        "reference_peak_mb": round(peak_memory_mb(loop(reference.traverse_batch, 2), device), 1),
        "fast_peak_mb": round(peak_memory_mb(loop(lst_fast.traverse_batch, 2), device), 1),
    }
    row["memory_ratio"] = round(row["fast_peak_mb"] / max(row["reference_peak_mb"], 1e-9), 3)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        ax.plot([r["batch"] for r in mine], [r["speedup_vs_reference"] for r in mine], "o-", label=name)
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("speed-up over the reference loop")
    ax.set_title(f"lst_fast.traverse_batch vs reference ({rows[0]['precision']}, {path.stem.split('_')[-1]})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["embedded"], help="'embedded' or timm names (random init)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    parser.add_argument("--short", type=int, default=1, help="iterations of the short run")
    parser.add_argument("--long", type=int, default=5, help="iterations of the long run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for name in args.models:
        for batch in args.batch_sizes:
            row = bench_config(name, batch, device, args)
            print(row, flush=True)
            rows.append(row)
    stem = args.out / f"traverse_{device.type}"
    write_results(rows, machine_info(device), stem)
    plot(rows, stem.with_suffix(".png"))
    print(f"wrote {stem}.json/.csv/.png")


if __name__ == "__main__":
    main()
