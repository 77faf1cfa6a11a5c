"""The only place where a sweep calls the evaluation of spec section 5: distances per pair
(:func:`lst_fast.metrics.distances`) and the triangle statistics (:mod:`lst_fast.geometry`)."""

from __future__ import annotations

import torch

from lst_fast import metrics
from lst_fast.geometry import TABLE2_COLUMNS

DISTANCES = ("l2", "linf", "ssim", "lpips")
# Table 2 averages these per source; edge_min is the per-source minimum.
TRIANGLE_TABLE_KEYS = TABLE2_COLUMNS
TRIANGLE_KEYS = (*TABLE2_COLUMNS, "edge_min")


LPIPS_LEFT_OUT = (
    f"LPIPS left out (no AlexNet weights where the sweep started); to include it, start a new sweep with "
    f"--lpips-weights PATH, PATH a local copy of {metrics.ALEXNET_URL}"
)


def choose_distances(lpips_weights=None) -> tuple[tuple[str, ...], str | None]:
    """The distances a new sweep computes: all four, or without LPIPS (and a note saying so) when its AlexNet
    weights are not in the torch hub cache. Weights given as ``lpips_weights`` must exist."""
    if lpips_weights is not None:
        metrics.alexnet_weights_path(lpips_weights)  # raises LPIPSWeightsMissing naming the file
        return DISTANCES, None
    if not metrics.lpips_available():
        return DISTANCES[:3], LPIPS_LEFT_OUT
    return DISTANCES, None


def pair_distances(outs: torch.Tensor, tgts: torch.Tensor, which, lpips_weights=None) -> dict[str, torch.Tensor]:
    return metrics.distances(outs, tgts, which=tuple(which), lpips_weights=lpips_weights)


def triangle_unit_stats(
    model, normalizer, srcs: torch.Tensor, rounds: list[dict[str, torch.Tensor]], round_pairs, sources: torch.Tensor,
    labels: torch.Tensor, *, grid: int, batch_size: int,
) -> dict[str, torch.Tensor]:
    """Triangle statistics of a batch of sources for every pair of rounds (spec section 5).

    ``rounds[r]`` is the traversal unit of round r for these sources (its ``outputs`` and ``valid``). A
    triangle is left out when either of its LST runs was invalid. All triangles go to the model together, so
    points they share (the source, the edges towards an output) are evaluated once. Returns per-triangle
    tensors ``tri_*`` (with ``tri_source``, ``tri_round_a``, ``tri_round_b``) and per-source aggregates
    ``src_*`` (sources in increasing order).
    """
    from lst_fast import geometry

    device, batch = srcs.device, len(srcs)
    outputs = torch.stack([r["outputs"] for r in rounds]).to(device)  # (R, B, C, H, W)
    valid = torch.stack([r["valid"] for r in rounds]).to(device)  # (R, B)
    first, second = (torch.tensor(rs, device=device).repeat_interleave(batch) for rs in zip(*round_pairs))
    row = torch.arange(batch, device=device).repeat(len(round_pairs))
    keep = valid[first, row] & valid[second, row]
    first, second, row = first[keep], second[keep], row[keep]
    ids = sources.to(device)[row]
    triangles = {"source": ids, "round_a": first, "round_b": second}
    if len(row) == 0:  # no valid triangle in this batch
        empty = torch.zeros(0, dtype=torch.float32)
        return {f"tri_{k}": v for k, v in triangles.items()} | {f"tri_{k}": empty for k in TRIANGLE_KEYS} | {
            "src_source": ids} | {f"src_{k}": empty for k in TRIANGLE_KEYS}
    stats = geometry.triangle_stats(
        model, srcs[row], outputs[first, row], outputs[second, row], labels[row], normalizer=normalizer, n=grid,
        batch_size=batch_size,
    )
    per_source = geometry.aggregate_triangles({k: stats[k] for k in TRIANGLE_KEYS}, ids)
    per_source["source"] = torch.unique(ids, sorted=True)  # the order aggregate_triangles uses
    return {f"tri_{k}": v for k, v in (triangles | stats).items()} | {f"src_{k}": v for k, v in per_source.items()}
