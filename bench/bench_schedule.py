"""The paper's schedule against the adaptive one, side by side in one process.

    python -m bench.bench_schedule                       # offline model (12 demo pairs) + random-init timm models
    python -m bench.bench_schedule --rounds 1 --models embedded --no-sweep    # a quicker look

For each model: wall time, row-evaluations (one image's forward+backward), per-pair L2/sqrt(D) to the target
and final source-class confidence under ``schedule="paper"`` and ``schedule="adaptive"`` (same pairs, same
seed), timed in interleaved rounds (per-round ratios). On the offline model also Table 1 / Table 2 of a small
embedded sweep under each schedule, and a plot of distance to target against model evaluations: the paper's
path (its iterate recorded every 20 iterations) and the adaptive schedule's end points for budgets of 25 to 400
paper steps. Writes ``bench/results/schedule_cpu.{json,csv,png}`` ({machine, commit, config, rows}).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch

import lst_fast
from bench.harness import interleaved_rounds, write_result
from lst_fast import data, models
from lst_fast.examples import ordered_pairs
from lst_fast.schedules import schedule_names
from lst_fast.sweep import SweepConfig, run_sweep, tables

RESULTS = Path(__file__).parent / "results"
SCHEDULES = schedule_names()  # every registered schedule (lst_fast.schedules)
BUDGETS = (25, 50, 100, 200, 400)  # adaptive end points of the plot, in paper steps
# (step_growth, max_step_scale) around the defaults (1.3, 10), for --knob-grid
KNOB_GRID = ((1.3, 5.0), (1.3, 10.0), (1.2, 12.0), (2.0, 10.0), (1.5, 20.0))


def demo_pairs(device) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, names = data.load_embedded_photos()
    src, tgt = ordered_pairs(len(names))
    return images[src].to(device), images[tgt].to(device), [f"{names[i]}->{names[j]}" for i, j in zip(src, tgt)]


def l2_per_dim(images: torch.Tensor, tgts: torch.Tensor) -> torch.Tensor:
    return (images - tgts).flatten(1).norm(dim=1) / math.sqrt(images[0].numel())


def compare(name, model, normalizer, srcs, tgts, pair_names, iters: int, rounds: int, device) -> tuple[list, dict]:
    """Both schedules on the same pairs: per-pair rows, and the paper's recorded path (for the plot)."""
    runs: dict[str, lst_fast.TraversalResult] = {}

    def traverse(schedule: str):
        def run():
            record = {"log_every": 20, "record": ("images",)} if schedule == "paper" else {}
            runs[schedule] = lst_fast.traverse_batch(
                model, srcs, tgts, normalizer=normalizer, iters=iters, schedule=schedule,
                generator=torch.Generator(device).manual_seed(0), **record,
            )
        return run

    # Builds the tuned model copy (cached) outside the timed runs; then each schedule once per round.
    lst_fast.traverse_batch(model, srcs[:1], tgts[:1], normalizer=normalizer, iters=1)
    timing = interleaved_rounds({s: traverse(s) for s in SCHEDULES}, device, rounds, warmup=0)
    rows = []
    for schedule, result in runs.items():
        dist = l2_per_dim(result.images, tgts)
        for k, pair in enumerate(pair_names):
            rows.append({
                "kind": "pair", "model": name, "schedule": schedule, "pair": pair, "valid": bool(result.valid[k]),
                "evaluations": int(result.evaluations[k]), "accepted": int(result.accepted[k]),
                "final_step_size": float(result.final_step_size[k]), "l2_to_target": float(dist[k]),
                "init_conf": float(result.init_conf[k]), "final_conf": float(result.final_conf[k]),
            })
    paper, adaptive = runs["paper"], runs["adaptive"]
    valid = paper.valid & adaptive.valid
    d_paper, d_adaptive = l2_per_dim(paper.images, tgts)[valid], l2_per_dim(adaptive.images, tgts)[valid]
    summary = {
        "kind": "summary", "model": name, "pairs": int(valid.sum()), "iters": iters, "rounds": rounds,
        "paper_wall_s": timing.median("paper"), "adaptive_wall_s": timing.median("adaptive"),
        "wall_ratio": timing.ratio("paper", "adaptive"),
        "paper_evaluations": int(paper.evaluations[valid].sum()),
        "adaptive_evaluations": int(adaptive.evaluations[valid].sum()),
        "evaluation_ratio": float(paper.evaluations[valid].sum() / adaptive.evaluations[valid].sum()),
        "paper_mean_l2": float(d_paper.mean()), "adaptive_mean_l2": float(d_adaptive.mean()),
        "pairs_at_least_as_close": int((d_adaptive <= d_paper).sum()),
        "largest_l2_ratio": float((d_adaptive / d_paper).max()),
        "paper_min_conf": float(paper.final_conf[valid].min()),
        "adaptive_min_conf": float(adaptive.final_conf[valid].min()),
        "largest_conf_drop_vs_paper": float((paper.final_conf - adaptive.final_conf)[valid].max()),
    }
    print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()), flush=True)
    return rows + [summary], {"paper": paper}


def adaptive_budget_curve(model, normalizer, srcs, tgts, device) -> list[dict]:
    """End points of the adaptive schedule for budgets of BUDGETS paper steps (each a separate run)."""
    rows = []
    for budget in BUDGETS:
        result = lst_fast.traverse_batch(model, srcs, tgts, normalizer=normalizer, iters=budget, schedule="adaptive",
                                         generator=torch.Generator(device).manual_seed(0))
        dist = l2_per_dim(result.images, tgts)
        rows += [{"kind": "budget", "model": "embedded", "schedule": "adaptive", "budget": budget, "pair_index": k,
                  "evaluations": int(result.evaluations[k]), "l2_to_target": float(dist[k])}
                 for k in range(len(srcs))]
    return rows


def knob_grid(model, normalizer, srcs, tgts, paper: lst_fast.TraversalResult, iters: int, device) -> list[dict]:
    """The adaptive schedule's outcome for each (step_growth, max_step_scale) of KNOB_GRID against the paper's."""
    rows = []
    d_paper = l2_per_dim(paper.images, tgts)
    for growth, largest in KNOB_GRID:
        result = lst_fast.traverse_batch(model, srcs, tgts, normalizer=normalizer, iters=iters, schedule="adaptive",
                                         step_growth=growth, max_step_scale=largest,
                                         generator=torch.Generator(device).manual_seed(0))
        dist = l2_per_dim(result.images, tgts)
        rows.append({
            "kind": "knobs", "model": "embedded", "step_growth": growth, "max_step_scale": largest,
            "evaluation_ratio": float(paper.evaluations.sum() / result.evaluations.sum()),
            "pairs_at_least_as_close": int((dist <= d_paper).sum()), "pairs": len(dist),
            "largest_l2_ratio": float((dist / d_paper).max()),
            "largest_conf_drop_vs_paper": float((paper.final_conf - result.final_conf).max()),
        })
        print(rows[-1], flush=True)
    return rows


def sweep_tables(samples: int, rounds: int, iters: int, device) -> list[dict]:
    """Table 1 and Table 2 of a small embedded sweep under each schedule."""
    rows = []
    for schedule in SCHEDULES:
        config = SweepConfig(model="embedded", data="embedded", num_samples=samples, rounds=rounds, batch_size=samples,
                             iters=iters, min_conf=0.0, seed=0, schedule=schedule)
        with tempfile.TemporaryDirectory() as out:
            run_sweep(config, out, device=str(device), workers=0, progress=False)
            results = tables.load_results(out)
            distances = tables.distance_table([results]).numbers[0]
            triangles = tables.triangle_table([results]).numbers[0] if config.triangles else {}
        rows.append({"kind": "tables", "model": "embedded", "schedule": schedule} | distances | triangles)
        print(rows[-1], flush=True)
    return rows


def plot(paper_path: dict, budget_rows: list[dict], tgts: torch.Tensor, stem: Path, pairs: int = 4) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paper = paper_path["paper"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k in range(pairs):
        path = paper.path_images[k]  # (L, C, H, W) iterates at path_iters
        dist = l2_per_dim(path, tgts[k:k + 1].expand_as(path))
        ax.plot(paper.path_iters + 1, dist, color=colours[k], label=f"pair {k}, paper")
        ends = [r for r in budget_rows if r["pair_index"] == k]
        ax.plot([r["evaluations"] for r in ends], [r["l2_to_target"] for r in ends], "o--", color=colours[k],
                label=f"pair {k}, adaptive (budgets {BUDGETS[0]}-{BUDGETS[-1]})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model evaluations per pair (forward+backward)")
    ax.set_ylabel("L2 / sqrt(D) to the target")
    ax.set_title("Distance to target against model evaluations (EfficientNet-Lite0, demo pairs)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = stem.with_suffix(".png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["embedded", "resnet18", "deit_small_patch16_224"],
                        help="'embedded' (the offline model, 12 demo pairs) and/or timm names (random init)")
    parser.add_argument("--iters", type=int, default=400, help="iterations (the paper's) / budget (adaptive)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved timing rounds")
    parser.add_argument("--timm-pairs", type=int, default=4, help="pairs for the random-init timm models")
    parser.add_argument("--timm-iters", type=int, default=100, help="iterations for the random-init timm models")
    parser.add_argument("--sweep-samples", type=int, default=6, help="images of the embedded sweep (at most 6)")
    parser.add_argument("--sweep-rounds", type=int, default=2, help="rounds of the embedded sweep")
    parser.add_argument("--no-sweep", action="store_true", help="skip the sweep tables")
    parser.add_argument("--knob-grid", action="store_true",
                        help="also run the adaptive schedule for the (step_growth, max_step_scale) of KNOB_GRID")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="result stem (default bench/results/schedule_<device>)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    stem = args.out or RESULTS / f"schedule_{device.type}"

    rows, paper_path, budget_rows, embedded_tgts = [], None, [], None
    for name in args.models:
        if name == "embedded":
            model, normalizer = models.load_embedded()
            srcs, tgts, pair_names = demo_pairs(device)
            iters = args.iters
        else:
            model, normalizer = models.load_timm(name, pretrained=False)
            srcs, tgts, pair_names = (t[: args.timm_pairs] for t in demo_pairs(device))  # labels: its predictions
            iters = args.timm_iters
        model, normalizer = model.to(device), normalizer.to(device)
        model_rows, path = compare(name, model, normalizer, srcs, tgts, pair_names, iters, args.rounds, device)
        rows += model_rows
        if name == "embedded":
            paper_path, embedded_tgts = path, tgts
            budget_rows = adaptive_budget_curve(model, normalizer, srcs, tgts, device)
            rows += budget_rows
            if args.knob_grid:
                rows += knob_grid(model, normalizer, srcs, tgts, path["paper"], iters, device)
    if "embedded" in args.models and not args.no_sweep:
        rows += sweep_tables(args.sweep_samples, args.sweep_rounds, args.iters, device)
    config = vars(args) | {"out": str(stem), "device": str(device), "threads": torch.get_num_threads()}
    print("wrote", write_result(stem, config=config, rows=rows, device=device))
    if paper_path is not None:
        print("wrote", plot(paper_path, budget_rows, embedded_tgts, stem))


if __name__ == "__main__":
    main()
