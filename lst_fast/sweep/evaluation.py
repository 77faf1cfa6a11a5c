"""The only place where a sweep calls the evaluation of algorithm §5: distances per pair
(:func:`lst_fast.metrics.distances`), the target-class confidence of each LST output, and the triangle
statistics (:mod:`lst_fast.geometry`). Results are keyed by the unit fields of :mod:`lst_fast.sweep.schema`."""

from __future__ import annotations

import torch

from lst_fast import metrics
from lst_fast.classifier import checked_logits, class_conf, make_forward, model_guard
from lst_fast.sweep import schema

LPIPS_LEFT_OUT = (
    f"LPIPS left out (no AlexNet weights where the sweep started); to include it, start a new sweep with "
    f"--lpips-weights PATH, PATH a local copy of {metrics.ALEXNET_URL}"
)


def choose_distances(lpips_weights=None) -> tuple[tuple[str, ...], str | None]:
    """The distances a new sweep computes: all of :data:`lst_fast.metrics.DISTANCES`, or only the pixel
    distances (and a note saying so) when LPIPS' AlexNet weights are not in the torch hub cache.

    Args:
        lpips_weights: a local copy of the AlexNet weights, which must exist; None: the torch hub cache.

    Returns:
        The distance names and the note (None when every distance runs).

    Raises:
        LPIPSWeightsMissing: ``lpips_weights`` names no file.
    """
    if lpips_weights is not None:
        metrics.alexnet_weights_path(lpips_weights)  # raises LPIPSWeightsMissing naming the file
        return tuple(metrics.DISTANCES), None
    if not metrics.lpips_available():
        return metrics.PIXEL_DISTANCES, LPIPS_LEFT_OUT
    return tuple(metrics.DISTANCES), None


def pair_distances(outs: torch.Tensor, tgts: torch.Tensor, which, lpips_weights=None) -> dict[str, torch.Tensor]:
    """The distances ``which`` of every output to its target, keyed by their unit fields (``dist_*``)."""
    found = metrics.distances(outs, tgts, which=tuple(which), lpips_weights=lpips_weights)
    return {schema.DISTANCE_FIELDS[name].name: values for name, values in found.items()}


@torch.no_grad()
def target_confidence(model, normalizer, outs: torch.Tensor, target_labels: torch.Tensor, *,
                      batch_size: int) -> torch.Tensor:
    """The target-class confidence ``p(out)[target label]`` of every LST output, in full precision.

    Args:
        model, normalizer: the sweep's classifier and its normalisation.
        outs: (B, C, H, W) LST outputs in [0, 1].
        target_labels: (B,) the targets' classes.
        batch_size: outputs per model call.

    Returns:
        (B,) confidences, in the model's output dtype.
    """
    forward = make_forward(model, normalizer)
    with model_guard(model):
        return torch.cat([
            class_conf(checked_logits(forward, chunk), labels)
            for chunk, labels in zip(outs.split(batch_size), target_labels.split(batch_size))
        ])


def triangle_unit_stats(
    model, normalizer, srcs: torch.Tensor, rounds: list[dict[str, torch.Tensor]], round_pairs, sources: torch.Tensor,
    labels: torch.Tensor, *, grid: int, batch_size: int,
) -> dict[str, torch.Tensor]:
    """Triangle statistics of a batch of sources for every pair of rounds (algorithm §5).

    ``rounds[r]`` is the traversal unit of round r for these sources (its ``outputs`` and ``valid``). A
    triangle is left out when either of its LST runs was invalid. All triangles go to the model together, so
    points they share (the source, the edges towards an output) are evaluated once. Returns the fields of a
    triangle unit (:data:`lst_fast.sweep.schema.TRIANGLES`): per-triangle ``tri_*`` (with ``tri_source``,
    ``tri_round_a``, ``tri_round_b``) and per-source ``src_*`` (sources in increasing order).
    """
    from lst_fast import geometry

    device, batch = srcs.device, len(srcs)
    outputs = torch.stack([schema.OUTPUTS.of(r) for r in rounds]).to(device)  # (R, B, C, H, W)
    valid = torch.stack([schema.VALID.of(r) for r in rounds]).to(device)  # (R, B)
    first, second = (torch.tensor(rs, device=device).repeat_interleave(batch) for rs in zip(*round_pairs))
    row = torch.arange(batch, device=device).repeat(len(round_pairs))
    keep = valid[first, row] & valid[second, row]
    first, second, row = first[keep], second[keep], row[keep]
    ids = sources.to(device)[row]
    triangles = {"source": ids, "round_a": first, "round_b": second}
    if len(row) == 0:  # no valid triangle in this batch
        empty = torch.zeros(0, dtype=torch.float32)
        per_triangle = triangles | {k: empty for k in schema.TRIANGLE_STATS}
        per_source = {"source": ids} | {k: empty for k in schema.TRIANGLE_STATS}
    else:
        stats = geometry.triangle_stats(
            model, srcs[row], outputs[first, row], outputs[second, row], labels[row], normalizer=normalizer, n=grid,
            batch_size=batch_size,
        )
        per_triangle = triangles | stats
        per_source = geometry.aggregate_triangles({k: stats[k] for k in schema.TRIANGLE_STATS}, ids)
        per_source["source"] = torch.unique(ids, sorted=True)  # the order aggregate_triangles uses
    return {schema.triangle_field(k).name: v for k, v in per_triangle.items()} | {
        schema.source_field(k).name: v for k, v in per_source.items()}
