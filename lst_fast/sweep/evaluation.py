"""The only place where a sweep calls the evaluation of spec section 5: distances per pair
(:func:`lst_fast.metrics.distances`) and the triangle statistics (:mod:`lst_fast.geometry`)."""

from __future__ import annotations

import torch

from lst_fast import metrics

DISTANCES = ("l2", "linf", "ssim", "lpips")
TRIANGLE_KEYS = ("p_src", "mean", "frac_0.0", "frac_0.1", "frac_0.2", "frac_0.3", "edge_mean", "edge_min")
# Table 2 averages the first seven per source; edge_min is the per-source minimum.
TRIANGLE_TABLE_KEYS = TRIANGLE_KEYS[:7]


def choose_distances(lpips_weights=None) -> tuple[tuple[str, ...], str | None]:
    """The distances a new sweep computes: all four, or without LPIPS when its AlexNet weights are not on this
    machine (``lpips_weights`` or the torch hub cache), with a note saying why."""
    try:
        metrics.alexnet_weights_path(lpips_weights)
    except metrics.LPIPSWeightsMissing as err:
        return DISTANCES[:3], f"LPIPS left out: {err}"
    return DISTANCES, None


def pair_distances(outs: torch.Tensor, tgts: torch.Tensor, which, lpips_weights=None) -> dict[str, torch.Tensor]:
    return metrics.distances(outs, tgts, which=tuple(which), lpips_weights=lpips_weights)


def triangle_unit_stats(
    model, normalizer, srcs: torch.Tensor, rounds: list[dict[str, torch.Tensor]], round_pairs, sources: torch.Tensor,
    labels: torch.Tensor, *, grid: int, batch_size: int,
) -> dict[str, torch.Tensor]:
    """Triangle statistics of a batch of sources for every pair of rounds (spec section 5).

    ``rounds[r]`` is the traversal unit of round r for these sources (its ``outputs`` and ``valid``). A
    triangle is left out when either of its LST runs was invalid. Returns per-triangle tensors ``tri_*``
    (with ``tri_source``, ``tri_round_a``, ``tri_round_b``) and per-source aggregates ``src_*``.
    """
    from lst_fast import geometry

    per_pair = []
    for ra, rb in round_pairs:
        keep = (rounds[ra]["valid"] & rounds[rb]["valid"]).to(srcs.device)
        if not keep.any():
            continue
        out_a, out_b = (rounds[r]["outputs"].to(srcs.device)[keep] for r in (ra, rb))
        stats = geometry.triangle_stats(
            model, srcs[keep], out_a, out_b, labels[keep], normalizer=normalizer, n=grid, batch_size=batch_size
        )
        ids = sources.to(srcs.device)[keep]
        per_pair.append({"source": ids, "round_a": torch.full_like(ids, ra), "round_b": torch.full_like(ids, rb),
                         **{k: stats[k] for k in TRIANGLE_KEYS}})
    keys = ("source", "round_a", "round_b") + TRIANGLE_KEYS
    if not per_pair:  # no valid triangle in this batch
        empty = {k: torch.zeros(0, dtype=torch.long if k in keys[:3] else torch.float32) for k in keys}
        return {f"tri_{k}": v for k, v in empty.items()} | {f"src_{k}": empty[k] for k in ("source",) + TRIANGLE_KEYS}
    triangles = {k: torch.cat([p[k] for p in per_pair]) for k in keys}
    per_source = geometry.aggregate_triangles({k: triangles[k] for k in TRIANGLE_KEYS}, triangles["source"])
    per_source["source"] = torch.unique(triangles["source"], sorted=True)  # the order aggregate_triangles uses
    return {f"tri_{k}": v for k, v in triangles.items()} | {f"src_{k}": v for k, v in per_source.items()}
