"""How closely the fast path's options agree with the reference loop on the offline model (any device).

Runs every ordered pair of the four bundled photos (12 pairs) through the reference loop (fp32) and the
fast path in each requested configuration, and reports per configuration: the largest image and
source-class-confidence differences from the reference, whether the accepted counts agree, and the mean
L2/sqrt(D) to the target. Used on CPU for the README's tolerances and by bench/gpu_check.sh on a GPU.

    python -m bench.check_traverse_agreement --iters 100
    python -m bench.check_traverse_agreement --device cuda --iters 400 --configs fp32 fp32+graphs bf16+graphs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import lst_fast
from bench import harness
from lst_fast import data, metrics, models, reference
from lst_fast.examples import ordered_pairs


def parse_config(text: str) -> dict:
    """'bf16+graphs' -> {'precision': 'bf16', 'cuda_graphs': True}."""
    precision, *flags = text.split("+")
    return {"precision": precision, "cuda_graphs": "graphs" in flags}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--configs", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, normalizer = models.load_embedded()
    model, normalizer = model.to(device), normalizer.to(device)
    images = data.load_embedded_photos()[0].to(device)
    src_idx, tgt_idx = ordered_pairs(len(images))
    srcs, tgts = images[src_idx], images[tgt_idx]

    def run(traverse, **options):
        outcome = []
        seconds = harness.seconds_per_call(lambda: outcome.append(traverse(
            model, srcs, tgts, normalizer=normalizer, iters=args.iters,
            generator=torch.Generator(device).manual_seed(0), **options,
        )), device)["wall"]
        return outcome[0], seconds

    ref, ref_seconds = run(reference.traverse_batch)
    rows = [{"config": "reference fp32", "seconds": round(ref_seconds, 2), **summary(ref, ref, tgts)}]
    for config in args.configs:
        result, seconds = run(lst_fast.traverse_batch, **parse_config(config))
        rows.append({"config": config, "seconds": round(seconds, 2), **summary(result, ref, tgts)})
        print(rows[-1], flush=True)
    config = {"device": args.device, "iters": args.iters, "configs": args.configs}
    out = harness.write_result(args.out / f"agreement_{device.type}_{args.iters}", config=config, rows=rows,
                               device=device, with_csv=False)
    print(f"wrote {out}")


def summary(result, ref, tgts) -> dict:
    dist = metrics.distances(result.images.float(), tgts.float(), which=("l2",))["l2"]
    return {
        "max_image_diff": float((result.images - ref.images).abs().max()),
        "max_conf_diff": float((result.final_conf - ref.final_conf).abs().max()),
        "accepted_equal": bool(torch.equal(result.accepted, ref.accepted)),
        "min_final_conf": float(result.final_conf.min()),
        "max_conf_drop": float((result.init_conf - result.final_conf).max()),
        "mean_l2_to_target": float(dist.mean()),
    }


if __name__ == "__main__":
    main()
