"""Measurements around LST outputs (algorithm §4-§5), batched over many pairs, triangles and samples.

- :func:`interpolation_conf`: source-class confidence on the segment source -> output (star-like structure).
- :func:`triangle_confidences`, :func:`triangle_stats`, :func:`aggregate_triangles`: confidence over the
  triangular convex hull of a source and two of its LST outputs (the paper's Table 2).
- :func:`path_width`: 5%/95% quantiles of the confidence on spheres around a point, orthogonal to a
  direction (algorithm §4); also recorded along a traversal with ``record=("widths",)``.

The original evaluates one triangle (66 points) or one radius of one sample (256 points) per model call.
Here every model evaluation goes through the model runner (:meth:`lst_fast.model_runner.ModelRunner.confidences`,
on the batch-norm-folded channels_last copy of the model that the fast loop runs), which packs the points of
many pairs, triangles or samples into model calls of ``batch_size`` points. Grid points that several
triangles share (their source, and the edge towards an output used in several triangles) are evaluated once.
Tables of these statistics (mean ± std) are made by :mod:`lst_fast.sweep.tables`.
"""

from __future__ import annotations

from typing import Sequence

import torch

# DEFAULT_BATCH_SIZE and default_batch_size stay public here (lst_fast.geometry.default_batch_size).
from lst_fast.model_runner import (
    DEFAULT_BATCH_SIZE,  # noqa: F401
    Confidences,
    ModelRunner,
    RunnerOptions,
    default_batch_size,
    guarded_runner,
)
from lst_fast.rows import memory_format_of, orthogonal_component_
from lst_fast.validation import check_generator, check_images, check_labels, check_number, check_radii

FRACTION_DELTAS = (0.0, 0.1, 0.2, 0.3)
# The paper's Table 2: mean ± std over sources of these per-source averages (edge_min is aggregated apart).
TABLE2_COLUMNS = ("p_src", "mean", *(f"frac_{d}" for d in FRACTION_DELTAS), "edge_mean")
WIDTH_QUANTILES = (0.05, 0.95)


def _check_labels(labels, batch: int, device: torch.device) -> torch.Tensor:
    if labels is None:
        raise TypeError("labels are required: the source class of each row (for example TraversalResult.labels)")
    return check_labels("labels", labels, batch, device)


def _check_n(n) -> int:
    return check_number("n", n, minimum=1, integer=True)


def _runner_options(normalizer, batch_size, memory_format: str, fold_batchnorm: bool) -> RunnerOptions:
    """The runner options of a measurement: ``batch_size`` points per model call (None: the default for the
    device, model and image size, :func:`default_batch_size`)."""
    rows = "auto" if batch_size is None else check_number("batch_size", batch_size, minimum=1, integer=True)
    return RunnerOptions(
        normalizer=normalizer, memory_format=memory_format, fold_batchnorm=fold_batchnorm, rows_per_call=rows
    )


# ---------------------------------------------------------------------------------------------------------
# Convex combinations of images: segments and triangles


def segment_grid(n: int = 10) -> torch.Tensor:
    """Weights of the points ``(1-t) src + t out`` for t = 0, 1/n, ..., 1.

    Returns:
        A (n+1, 2) float64 tensor: row k is ``((n-k)/n, k/n)``, the weights of src and out at t = k/n.

    Raises:
        TypeError: ``n`` is not an int.
        ValueError: ``n`` < 1.
    """
    k = torch.arange(_check_n(n) + 1, dtype=torch.float64)
    return torch.stack([n - k, k], dim=1) / n


def triangle_grid(n: int = 10) -> torch.Tensor:
    """Weights of the points ``(1-t1-t2) s + t1 a + t2 b``, t1 = i/n, t2 = j/n, i + j <= n.

    G = (n+1)(n+2)/2 (66 for n = 10), ordered i = 0..n, then j = 0..n-i: point 0 is the source s. The source's
    weight is computed as (n - i - j) / n, so it is exactly 0 on the edge a-b.

    Returns:
        A (G, 3) float64 tensor: row g holds the weights ``((n-i-j)/n, i/n, j/n)`` of s, a and b.

    Raises:
        TypeError: ``n`` is not an int.
        ValueError: ``n`` < 1.
    """
    n = _check_n(n)
    ij = torch.tensor([(n - i - j, i, j) for i in range(n + 1) for j in range(n + 1 - i)], dtype=torch.float64)
    return ij / n


def _distinct_images(vertices: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct images among the rows of the (T, C, H, W) ``vertices`` (exact equality), and the index of
    each vertex among them, shape (T, K)."""
    rows, ids, seen = [], [], {}
    for vertex in vertices:
        flat = vertex.reshape(len(vertex), -1).contiguous()
        for row in flat:
            candidates = seen.setdefault(hash(row.view(torch.uint8).cpu().numpy().tobytes()), [])
            index = next((i for i in candidates if torch.equal(rows[i], row)), None)
            if index is None:
                index = len(rows)
                rows.append(row)
                candidates.append(index)
            ids.append(index)
    bank = torch.stack(rows).view(-1, *vertices[0].shape[1:])
    return bank, torch.tensor(ids, device=bank.device).view(len(vertices), -1).T


def _mixture_confidences(
    runner: ModelRunner, vertices: Sequence[torch.Tensor], weights: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``p(sum_k weights[g, k] * vertices[k][t])[labels[t]]`` for every row t and grid point g: (T, G).

    Each point is the same float computation as for one row alone (terms with weight 0 add an exact 0), so
    points shared by several rows (same label, same images with the same non-zero weights in the same order)
    are evaluated once.
    """
    bank, ids = _distinct_images(vertices)  # ids (T, K)
    rows, k = ids.shape
    grid = weights.shape[0]
    w = weights.to(bank.device).unsqueeze(0).expand(rows, grid, k)
    ids = torch.where(w != 0, ids.unsqueeze(1).expand(rows, grid, k), -1)
    keys = torch.cat([labels.view(rows, 1, 1).expand(rows, grid, 1).double(), ids.double(), w], dim=2)
    unique, point_of = torch.unique(keys.view(rows * grid, 2 * k + 1), dim=0, return_inverse=True)
    point_labels = unique[:, 0].long()
    point_ids = unique[:, 1 : k + 1].long().clamp(min=0)
    point_weights = unique[:, k + 1 :].to(bank.dtype).view(-1, k, *([1] * (bank.dim() - 1)))

    def blocks():
        for start in range(0, len(unique), runner.batch_size):
            chunk = slice(start, start + runner.batch_size)
            ids_, w_ = point_ids[chunk], point_weights[chunk]
            points = w_[:, 0] * bank[ids_[:, 0]]
            for term in range(1, k):
                points = points + w_[:, term] * bank[ids_[:, term]]
            yield points, point_labels[chunk]

    conf = torch.cat(runner.confidences(blocks()))
    return conf[point_of].view(rows, grid)


def _check_pair_inputs(srcs, others: dict, labels):
    srcs = check_images("srcs", srcs)
    others = [check_images(name, images, like=srcs) for name, images in others.items()]
    return srcs, others, _check_labels(labels, len(srcs), srcs.device)


def interpolation_conf(
    model: torch.nn.Module,
    srcs: torch.Tensor,
    outs: torch.Tensor,
    labels,
    *,
    normalizer=None,
    n: int = 10,
    batch_size: int | None = None,
    memory_format: str = "auto",
    fold_batchnorm: bool = True,
) -> torch.Tensor:
    """Source-class confidence ``p((1-t) src + t out)[y]`` at t = 0, 1/n, ..., 1 for each pair.

    ``srcs``, ``outs``: (P, C, H, W) images in [0, 1]; ``labels``: (P,) source classes y.
    ``batch_size`` bounds the points per model call (default :func:`default_batch_size`); ``memory_format``
    and ``fold_batchnorm`` choose the model copy as in :func:`lst_fast.traverse_batch` (results change only by
    float rounding).

    Returns:
        A (P, n+1) tensor in the images' dtype, on their device: column k is the confidence at t = k/n (the
        :func:`segment_grid` points), so column 0 is at the source and column n at the output.

    Raises:
        TypeError: an image batch is not a floating-point tensor, ``labels`` are missing or not integers,
            ``n`` or ``batch_size`` is not an int, or ``model`` is not a torch.nn.Module.
        ValueError: an image batch is not (P, C, H, W) with finite values in [0, 1], the other images are not
            like ``srcs`` (shape, dtype, device), ``labels`` are not (P,) or not classes of the model, ``n`` or
            ``batch_size`` is < 1, or ``memory_format`` is unknown.
    """
    weights = segment_grid(n)
    srcs, (outs,), labels = _check_pair_inputs(srcs, {"outs": outs}, labels)
    options = _runner_options(normalizer, batch_size, memory_format, fold_batchnorm)
    with guarded_runner(model, options, srcs) as runner:
        return _mixture_confidences(runner, [srcs, outs], weights, labels)


def triangle_confidences(
    model: torch.nn.Module,
    srcs: torch.Tensor,
    outs_a: torch.Tensor,
    outs_b: torch.Tensor,
    labels,
    *,
    normalizer=None,
    n: int = 10,
    batch_size: int | None = None,
    memory_format: str = "auto",
    fold_batchnorm: bool = True,
) -> torch.Tensor:
    """Source-class confidence at the :func:`triangle_grid` points of each triangle (src, out_a, out_b).

    All grid points of all triangles are evaluated in model batches of ``batch_size`` points;
    points shared by several triangles are evaluated once.

    Args:
        model: the classifier (images -> logits).
        srcs, outs_a, outs_b: (T, C, H, W) images in [0, 1]: the corners of triangle t are row t of each.
        labels: (T,) source classes.
        normalizer, n, batch_size, memory_format, fold_batchnorm: as in :func:`interpolation_conf`.

    Returns:
        A (T, G) tensor in the images' dtype, on their device, G = (n+1)(n+2)/2: column g is the confidence at
        :func:`triangle_grid` point g (column 0 at the source).

    Raises:
        TypeError: an image batch is not a floating-point tensor, ``labels`` are missing or not integers,
            ``n`` or ``batch_size`` is not an int, or ``model`` is not a torch.nn.Module.
        ValueError: an image batch is not (T, C, H, W) with finite values in [0, 1], the other images are not
            like ``srcs`` (shape, dtype, device), ``labels`` are not (T,) or not classes of the model, ``n`` or
            ``batch_size`` is < 1, or ``memory_format`` is unknown.
    """
    weights = triangle_grid(n)
    srcs, (outs_a, outs_b), labels = _check_pair_inputs(srcs, {"outs_a": outs_a, "outs_b": outs_b}, labels)
    options = _runner_options(normalizer, batch_size, memory_format, fold_batchnorm)
    with guarded_runner(model, options, srcs) as runner:
        return _mixture_confidences(runner, [srcs, outs_a, outs_b], weights, labels)


def _check_deltas(deltas) -> tuple[float, ...]:
    if isinstance(deltas, (str, bytes)) or not isinstance(deltas, Sequence):
        raise TypeError(f"deltas must be a sequence of numbers in [0, 1], got {deltas!r}")
    if not deltas:
        raise ValueError("deltas must name at least one threshold")
    checked = tuple(check_number(f"deltas[{i}]", d, minimum=0) for i, d in enumerate(deltas))
    if any(d > 1 for d in checked):
        raise ValueError(f"deltas must be in [0, 1], got {list(deltas)}")
    return checked


def triangle_stats_from_confidences(
    conf: torch.Tensor, n: int = 10, deltas: Sequence[float] = FRACTION_DELTAS
) -> dict[str, torch.Tensor]:
    """Algorithm §5's per-triangle statistics from the confidences (T, G) at the :func:`triangle_grid` points.

    Returns:
        A dict of (T,) tensors in ``conf``'s dtype, in this key order: ``p_src`` (at the source), ``mean`` (over
        all G points), ``frac_<d>`` = fraction of the points with ``p > p_src - d`` for each d in ``deltas``
        (named with d as a float, e.g. ``frac_0.0``), ``edge_mean`` (over the 2(n+1) points of the edges s->a
        and s->b together, s counted twice) and ``edge_min`` (min over both edges of ``p - p_src``).

    Raises:
        TypeError: ``deltas`` is not a sequence of numbers, or ``n`` is not an int.
        ValueError: ``deltas`` is empty or has a value outside [0, 1], ``n`` < 1, or ``conf`` is not a (T, G)
            tensor for G = (n+1)(n+2)/2.
    """
    deltas = _check_deltas(deltas)
    weights = triangle_grid(n)
    if not isinstance(conf, torch.Tensor) or conf.dim() != 2 or conf.shape[1] != len(weights):
        shape = tuple(conf.shape) if isinstance(conf, torch.Tensor) else type(conf).__name__
        raise ValueError(f"conf must have shape (T, {len(weights)}) for n = {n}, got {shape}")
    p_src = conf[:, 0]
    edges = torch.cat([conf[:, weights[:, 2] == 0], conf[:, weights[:, 1] == 0]], dim=1)
    stats = {"p_src": p_src, "mean": conf.mean(1)}
    for d in deltas:
        stats[f"frac_{d}"] = (conf > (p_src - d).unsqueeze(1)).to(conf.dtype).mean(1)
    stats["edge_mean"] = edges.mean(1)
    stats["edge_min"] = (edges - p_src.unsqueeze(1)).amin(1)
    return stats


def triangle_stats(
    model: torch.nn.Module,
    srcs: torch.Tensor,
    outs_a: torch.Tensor,
    outs_b: torch.Tensor,
    labels,
    *,
    normalizer=None,
    n: int = 10,
    batch_size: int | None = None,
    deltas: Sequence[float] = FRACTION_DELTAS,
    memory_format: str = "auto",
    fold_batchnorm: bool = True,
) -> dict[str, torch.Tensor]:
    """Statistics of the triangles (srcs[t], outs_a[t], outs_b[t]) with source classes labels[t] (algorithm §5).

    Returns ``p_src``, ``mean``, ``frac_0.0``, ``frac_0.1``, ``frac_0.2``, ``frac_0.3``, ``edge_mean``,
    ``edge_min``, each (T,) (see :func:`triangle_stats_from_confidences`); per source, combine them with
    :func:`aggregate_triangles`. Arguments as in :func:`triangle_confidences`.
    """
    _check_deltas(deltas)
    conf = triangle_confidences(
        model, srcs, outs_a, outs_b, labels, normalizer=normalizer, n=n, batch_size=batch_size,
        memory_format=memory_format, fold_batchnorm=fold_batchnorm,
    )
    return triangle_stats_from_confidences(conf, n, deltas)


def aggregate_triangles(stats: dict[str, torch.Tensor], source_ids) -> dict[str, torch.Tensor]:
    """Per source (algorithm §5): the mean of every statistic over the source's triangles, except ``edge_min``,
    which takes the minimum.

    Args:
        stats: the dict of (T,) tensors that :func:`triangle_stats` returns.
        source_ids: (T,) integers (tensor or sequence) naming each triangle's source.

    Returns:
        A dict with the keys of ``stats``, each an (S,) tensor in that statistic's dtype and device, one entry
        per distinct source id in increasing order.

    Raises:
        TypeError: ``stats`` is not a dict with ``edge_min``, or ``source_ids`` are not integers.
        ValueError: a statistic is not a (T,) tensor like ``stats['edge_min']``, or ``source_ids`` does not
            have T entries.
    """
    if not isinstance(stats, dict) or "edge_min" not in stats:
        raise TypeError("stats must be the dict that triangle_stats returns")
    count = len(stats["edge_min"])
    for key, values in stats.items():
        if not isinstance(values, torch.Tensor) or values.shape != (count,):
            raise ValueError(f"stats[{key!r}] must be a ({count},) tensor like stats['edge_min']")
    if len(source_ids) != count:
        raise ValueError(f"source_ids must name the source of each of the {count} triangles, got {len(source_ids)}")
    ids = check_labels("source_ids", source_ids, count, stats["edge_min"].device)
    sources, index = torch.unique(ids, sorted=True, return_inverse=True)
    return {
        key: torch.zeros(len(sources), dtype=values.dtype, device=values.device).scatter_reduce_(
            0, index, values, reduce="amin" if key == "edge_min" else "mean", include_self=False
        )
        for key, values in stats.items()
    }


# ---------------------------------------------------------------------------------------------------------
# Path width (algorithm §4)


def orthogonal_direction(x: torch.Tensor, grad: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """The LST direction ``v_perp = v - grad <grad, v> / <grad, grad>``, ``v = tgt - x`` (``v`` where grad = 0),
    computed as the fast step's PyTorch twin does (:func:`lst_fast.rows.orthogonal_component_`).

    Args:
        x: (B, ...) iterates.
        grad: (B, ...) gradients at ``x``, like ``x``.
        tgt: (B, ...) targets, like ``x``.

    Returns:
        A new (B, ...) tensor ``v_perp``, one row per sample (the projection is per row); the inputs are not
        modified.
    """
    return orthogonal_component_(tgt - x, grad)


def random_orthogonal_units(direction: torch.Tensor, num_vecs: int, generator=None) -> torch.Tensor:
    """``num_vecs`` random unit vectors (num_vecs, *direction.shape) orthogonal to ``direction``.

    Exactly one ``torch.randn((num_vecs, *direction.shape))`` draw from ``generator``; the component along
    ``direction / |direction|`` is removed (nothing is removed for a zero direction) and each row normalised.

    Returns:
        A (num_vecs, *direction.shape) tensor in ``direction``'s dtype, on its device: each row (flattened) has
        L2 norm 1 and is orthogonal to ``direction``.
    """
    noise = torch.randn(
        (num_vecs, *direction.shape), generator=generator, dtype=direction.dtype, device=direction.device
    )
    flat = noise.view(num_vecs, -1)
    unit = direction.flatten()
    norm = unit.norm()
    if norm > 0:
        unit = unit / norm
        flat -= torch.outer(flat @ unit, unit)
    flat /= flat.norm(dim=1, keepdim=True)
    return noise


def _path_width(confidences, x, directions, labels, radii, num_vecs, pthresh, generator) -> torch.Tensor:
    """Path widths (B, R+1, 2) of checked inputs, ``confidences`` evaluating streams of points (as
    :meth:`ModelRunner.confidences`); draws the random vectors of every sample in row order."""
    (at_x,) = confidences([(x, labels)])
    active = (at_x >= pthresh) & (directions.flatten(1).norm(dim=1) > 0)

    def blocks():
        for i in range(len(x)):
            units = random_orthogonal_units(directions[i], num_vecs, generator)  # drawn for every sample
            if active[i]:
                for r in radii:
                    yield (x[i] + r * units).clamp_(0, 1), labels[i].expand(num_vecs)

    conf = confidences(blocks())
    widths = torch.zeros(len(x), len(radii) + 1, 2, dtype=x.dtype, device=x.device)
    widths[active, 0] = at_x[active].unsqueeze(1)
    if conf:
        conf = torch.stack(conf).view(-1, len(radii), num_vecs)
        quantiles = torch.quantile(conf, torch.tensor(WIDTH_QUANTILES, dtype=conf.dtype, device=conf.device), dim=2)
        widths[active, 1:] = quantiles.permute(1, 2, 0)
    return widths


def _check_directions(directions, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(directions, torch.Tensor):
        raise TypeError(f"directions must be a torch.Tensor like x, got {type(directions).__name__}")
    if directions.shape != x.shape or directions.dtype != x.dtype or directions.device != x.device:
        raise ValueError(
            f"directions must match x: shape {tuple(x.shape)}, {x.dtype} on {x.device}; got shape "
            f"{tuple(directions.shape)}, {directions.dtype} on {directions.device}"
        )
    if not torch.isfinite(directions).all():
        raise ValueError("directions contains NaN or infinite values")
    return directions


def path_width(
    model: torch.nn.Module,
    x: torch.Tensor,
    directions: torch.Tensor,
    labels,
    *,
    normalizer=None,
    distances: Sequence[float] = (0.5, 1, 1.5, 2),
    num_vecs: int = 256,
    pthresh: float = 0.2,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    memory_format: str = "auto",
    fold_batchnorm: bool = True,
) -> torch.Tensor:
    """The extent of the level set around each point ``x[i]``, orthogonal to ``directions[i]`` (algorithm §4).

    For each sample, ``num_vecs`` random unit vectors u orthogonal to the direction (see
    :func:`random_orthogonal_units`); for each radius r in ``distances`` (L2, [0, 1] pixel units), the 5% and
    95% quantiles (linear interpolation, as ``torch.quantile``) of ``p(clamp(x + r u, 0, 1))[y]``: row 1 + k
    of the result. Row 0 is ``p(x)[y]`` in both columns. Samples with ``p(x)[y] < pthresh`` or a zero
    direction report zeros.

    Random numbers: one ``randn((num_vecs, C, H, W))`` draw from ``generator`` (the global RNG if None) per
    sample, in row order, for every sample (also those that report zeros), the same vectors for all radii.
    So a batch gives the same numbers as its rows one at a time with the same generator.
    All points of all samples and radii run in model batches of ``batch_size`` points (default
    :func:`default_batch_size`).

    Returns:
        A (B, R+1, 2) tensor in ``x``'s dtype, on its device, R = len(distances): ``[i, 0]`` holds ``p(x[i])[y]``
        twice, ``[i, 1 + k]`` the (5%, 95%) quantiles at radius ``distances[k]``; all zeros for the samples
        below ``pthresh`` or with a zero direction.

    Raises:
        TypeError: ``x`` or ``directions`` is not a (floating-point) tensor, ``labels`` are missing or not
            integers, ``distances`` is not a sequence of numbers, ``num_vecs`` or ``batch_size`` is not an int,
            ``pthresh`` is not a number, ``generator`` is not a torch.Generator, or ``model`` is not a
            torch.nn.Module.
        ValueError: ``x`` is not (B, C, H, W) with finite values in [0, 1], ``directions`` does not match ``x``
            (shape, dtype, device) or is not finite, ``labels`` are not (B,) or not classes of the model, a
            radius is <= 0 or ``distances`` is empty, ``num_vecs`` < 2, ``pthresh`` < 0, ``batch_size`` < 1,
            ``generator`` is on another device type than ``x``, or ``memory_format`` is unknown.
    """
    x = check_images("x", x)
    directions = _check_directions(directions, x)
    labels = _check_labels(labels, len(x), x.device)
    radii = check_radii("distances", distances)
    num_vecs = check_number("num_vecs", num_vecs, minimum=2, integer=True)
    pthresh = check_number("pthresh", pthresh, minimum=0)
    generator = check_generator(generator, x.device)
    options = _runner_options(normalizer, batch_size, memory_format, fold_batchnorm)
    with guarded_runner(model, options, x) as runner:
        return _path_width(runner.confidences, x, directions, labels, radii, num_vecs, pthresh, generator)


def widths_along_path(forward, x: torch.Tensor, grad: torch.Tensor, problem, settings):
    """Path widths at a traversal iterate (algorithm §3) for ``record=("widths",)``, in both loops.

    Direction: that iteration's v_perp (from the gradient ``grad`` at ``x``); threshold: the traversal's
    ``pthresh``; random vectors: drawn from the traversal's generator (after its start-point noise), at each
    recorded iteration in turn, sample by sample in row order, so both loops draw the same vectors.

    Args:
        forward: the loop's model call (images -> logits).
        x: (B, C, H, W) iterates.
        grad: (B, C, H, W) gradients at ``x``.
        problem: the traversal's :class:`lst_fast.traversal.Problem` (its ``tgt``, ``labels``, ``generator``
            and ``convolutional``).
        settings: the traversal's settings (``width_distances``, ``width_num_vecs``, ``pthresh``).

    Returns:
        A (B, R+1, 2) tensor in ``x``'s dtype, R = len(settings.width_distances), laid out as
        :func:`path_width` describes.
    """
    direction = orthogonal_direction(x, grad, problem.tgt)
    confidences = Confidences(forward, default_batch_size(x, problem.convolutional), memory_format_of(x))
    return _path_width(
        confidences, x, direction, problem.labels, settings.width_distances, settings.width_num_vecs, settings.pthresh,
        problem.generator,
    )
