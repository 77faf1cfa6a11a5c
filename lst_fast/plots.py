"""Figures (matplotlib, saved as PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.tri import Triangulation  # noqa: E402

from lst_fast.geometry import triangle_grid  # noqa: E402


def _to_hwc(image: torch.Tensor):
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def image_grid(
    images: torch.Tensor,
    captions: Sequence[Sequence[str]],
    path: str | Path,
    *,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    title: str | None = None,
) -> Path:
    """Save a grid of images (R, N, C, H, W) with a caption under each cell (see :func:`image_grid_figure`).

    Args:
        path: the PNG file to write; the other arguments as in :func:`image_grid_figure`.

    Returns:
        ``path`` as a :class:`pathlib.Path`, where the PNG was written.

    Raises:
        ValueError: as :func:`image_grid_figure`.
    """
    return save_figure(
        image_grid_figure(images, captions, row_labels=row_labels, col_labels=col_labels, title=title), path
    )


def image_grid_figure(
    images: torch.Tensor,
    captions: Sequence[Sequence[str]],
    *,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    title: str | None = None,
) -> Figure:
    """A grid of images (R, N, C, H, W) with a caption under each cell, one axes per cell (R x N axes).

    For LST: rows are targets, columns are sources, each cell the LST output captioned with its
    source-class confidence. ``col_labels`` title the top row, ``row_labels`` label the first column.

    Args:
        images: (R, N, C, H, W) images in [0, 1].
        captions: R x N strings, one under each cell.
        row_labels, col_labels: one label per row / column (or fewer; empty: none).
        title: the figure's title.

    Returns:
        The open figure (save it with :func:`save_figure`, which also closes it).

    Raises:
        ValueError: ``images`` is not 5-dimensional or ``captions`` is not R x N.
    """
    if images.dim() != 5:
        raise ValueError(f"images must have shape (rows, cols, C, H, W), got {tuple(images.shape)}")
    n_rows, n_cols = images.shape[:2]
    if len(captions) != n_rows or any(len(row) != n_cols for row in captions):
        raise ValueError(f"captions must be a {n_rows} x {n_cols} nested sequence of strings")
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.4 * n_rows), squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.imshow(_to_hwc(images[r, c]))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(captions[r][c], fontsize=8)
            if r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=9)
            if c == 0 and r < len(row_labels):
                ax.set_ylabel(row_labels[r], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its folder is created) and close it.

    Returns:
        ``path`` as a :class:`pathlib.Path`, where the PNG was written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _as_rows(name: str, values, length: int | None = None) -> torch.Tensor:
    """A (N, L) float tensor from (L,) or (N, L) values, checked against ``length`` if given."""
    values = torch.as_tensor(values).detach().float().cpu()
    values = values.unsqueeze(0) if values.dim() == 1 else values
    if values.dim() != 2 or (length is not None and values.shape[1] != length):
        expected = "(L,) or (N, L)" if length is None else f"(L,) or (N, L) with L = {length}"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(values.shape)}")
    return values


def _line_labels(name: str, labels: Sequence[str], count: int) -> list:
    if labels and len(labels) != count:
        raise ValueError(f"{name} must give one label per row ({count}), got {len(labels)}")
    return list(labels) if labels else [None] * count


# Corners of the triangle plot (source, output a, output b) and where their images go, in data coordinates.
_CORNERS = ((0.0, 0.0), (1.0, 0.0), (0.5, 3**0.5 / 2))
_CORNER_IMAGES = ((-0.42, -0.40), (1.06, -0.40), (0.32, 0.92))
_IMAGE_SIZE = 0.36


def triangle_plot(
    conf: torch.Tensor,
    images: torch.Tensor,
    path: str | Path,
    *,
    n: int = 10,
    corner_labels: Sequence[str] = ("source", "output a", "output b"),
    title: str | None = None,
) -> Path:
    """Source-class confidence over one triangle (algorithm §5) as a filled contour, with its three images.

    ``conf``: (G,) confidences at :func:`lst_fast.geometry.triangle_grid` ``(n)`` points (one row of
    :func:`lst_fast.geometry.triangle_confidences`); ``images``: (3, C, H, W) source, output a, output b.
    Saved at ``path`` (see :func:`triangle_figure`).

    Returns:
        ``path`` as a :class:`pathlib.Path`, where the PNG was written.

    Raises:
        TypeError: ``n`` is not an int.
        ValueError: ``n`` < 1, or as :func:`triangle_figure`.
    """
    return save_figure(triangle_figure(conf, images, n=n, corner_labels=corner_labels, title=title), path)


def triangle_figure(
    conf: torch.Tensor,
    images: torch.Tensor,
    *,
    n: int = 10,
    corner_labels: Sequence[str] = ("source", "output a", "output b"),
    title: str | None = None,
) -> Figure:
    """The figure of :func:`triangle_plot`: the contour's axes, its colour bar and one inset per corner image.

    Args:
        conf: (G,) confidences at the :func:`lst_fast.geometry.triangle_grid` ``(n)`` points.
        images: (3, C, H, W) the source, output a and output b.
        n: the grid's steps per edge.
        corner_labels: the three corners' names.
        title: the figure's title.

    Returns:
        The open figure (save it with :func:`save_figure`, which also closes it).

    Raises:
        ValueError: a misshaped ``conf`` or ``images``, or not three ``corner_labels``.
    """
    weights = triangle_grid(n).numpy()
    conf = torch.as_tensor(conf).detach().float().cpu()
    if conf.shape != (len(weights),):
        raise ValueError(f"conf must have shape ({len(weights)},) for n = {n}, got {tuple(conf.shape)}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] != 3:
        raise ValueError("images must have shape (3, C, H, W): the source and the two outputs")
    if len(corner_labels) != 3:
        raise ValueError(f"corner_labels must name the 3 corners, got {len(corner_labels)}")
    corners = np.array(_CORNERS)
    xy = weights @ corners  # barycentric -> plane
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    levels = torch.linspace(0, 1, 21).numpy()
    triangles = Triangulation(xy[:, 0], xy[:, 1])
    filled = ax.tricontourf(triangles, conf.numpy(), levels=levels, cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(filled, ax=ax, ticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0], label="source-class confidence")
    ax.plot(*corners[[0, 1, 2, 0]].T, color="black", linewidth=0.8)
    for image, (x0, y0), label, value in zip(images, _CORNER_IMAGES, corner_labels, conf[[0, -1, n]].tolist()):
        inset = ax.inset_axes([x0, y0, _IMAGE_SIZE, _IMAGE_SIZE], transform=ax.transData)
        inset.imshow(_to_hwc(image))
        inset.set_xticks([])
        inset.set_yticks([])
        inset.set_title(f"{label}\np = {value:.3f}", fontsize=7)
    ax.set_xlim(-0.45, 1.45)
    ax.set_ylim(-0.45, 1.45)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def path_width_plot(
    widths: torch.Tensor,
    path: str | Path,
    *,
    iters: Sequence[int] | torch.Tensor | None = None,
    distances: Sequence[float] = (0.5, 1, 1.5, 2),
    title: str | None = None,
) -> Path:
    """Path width along one traversal, two panels: for each radius, the band between the 5% and 95% quantiles
    of the source-class confidence around the iterate (with the confidence at the iterate itself), and the
    drop of the 5% quantile below that confidence (small = the level set is wide there).

    ``widths``: (L, len(distances) + 1, 2), one row of ``TraversalResult.path_widths``; ``iters``: the (L,)
    recorded iterations (``TraversalResult.path_iters``; default 0..L-1).

    Returns:
        ``path`` as a :class:`pathlib.Path`, where the PNG was written.

    Raises:
        ValueError: ``widths`` is not (L, len(distances) + 1, 2), or ``iters`` is not (L,).
    """
    widths = torch.as_tensor(widths).detach().float().cpu()
    if widths.dim() != 3 or widths.shape[1:] != (len(distances) + 1, 2):
        raise ValueError(f"widths must have shape (L, {len(distances) + 1}, 2) for {len(distances)} distances, "
                         f"got {tuple(widths.shape)}")
    steps = torch.arange(len(widths)) if iters is None else torch.as_tensor(iters)
    if steps.shape != (len(widths),):
        raise ValueError(f"iters must have shape ({len(widths)},) like widths, got {tuple(steps.shape)}")
    fig, (bands, drops) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.cm.plasma(torch.linspace(0.1, 0.85, len(distances)).numpy())
    at_iterate = widths[:, 0, 0]
    for k, (r, colour) in enumerate(zip(distances, colours), start=1):
        bands.fill_between(steps, widths[:, k, 0], widths[:, k, 1], color=colour, alpha=0.3, linewidth=0)
        bands.plot(steps, widths[:, k, 0], color=colour, linewidth=1, label=f"r = {r:g}: 5% / 95%")
        bands.plot(steps, widths[:, k, 1], color=colour, linewidth=1)
        drops.plot(steps, at_iterate - widths[:, k, 0], color=colour, marker=".", label=f"r = {r:g}")
    bands.plot(steps, at_iterate, color="black", linewidth=1.5, label="at the iterate")
    bands.set_ylabel("source-class confidence")
    bands.set_title("5%-95% band on spheres orthogonal to the path", fontsize=9)
    drops.set_ylabel("confidence at the iterate - 5% quantile")
    drops.set_title("drop of the 5% quantile", fontsize=9)
    for ax in (bands, drops):
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def confidence_path_plot(
    iters: Sequence[int] | torch.Tensor,
    source_conf: torch.Tensor,
    target_conf: torch.Tensor,
    path: str | Path,
    *,
    labels: Sequence[str] = (),
    title: str | None = None,
) -> Path:
    """Source-class (solid) and target-class (dashed) confidence along each traversal.

    ``iters``: (L,) recorded iterations; ``source_conf``, ``target_conf``: (L,) or (N, L)
    (``TraversalResult.path_conf`` and ``path_target_conf``); ``labels``: one legend entry per pair.

    Returns:
        ``path`` as a :class:`pathlib.Path`, where the PNG was written.

    Raises:
        ValueError: ``source_conf`` or ``target_conf`` is not (L,) or (N, L) with L = len(iters), the two differ
            in shape, or ``labels`` is neither empty nor one per pair.
    """
    steps = torch.as_tensor(iters)
    source = _as_rows("source_conf", source_conf, len(steps))
    target = _as_rows("target_conf", target_conf, len(steps))
    if source.shape != target.shape:
        raise ValueError(
            f"target_conf has shape {tuple(target.shape)}, expected {tuple(source.shape)} like source_conf"
        )
    names = _line_labels("labels", labels, len(source))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, (src_row, tgt_row, name) in enumerate(zip(source, target, names)):
        colour = f"C{k % 10}"
        ax.plot(steps, src_row, color=colour, label=name)
        ax.plot(steps, tgt_row, color=colour, linestyle="--")
    ax.plot([], [], color="grey", label="source class")
    ax.plot([], [], color="grey", linestyle="--", label="target class")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("iteration")
    ax.set_ylabel("confidence")
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title or "Confidence along the level set traversal", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def interpolation_plot(
    conf: torch.Tensor, path: str | Path, *, labels: Sequence[str] = (), title: str | None = None
) -> Path:
    """Source-class confidence on the segment source -> LST output (star-like structure), one line per pair
    and their mean. ``conf``: (n+1,) or (P, n+1) from :func:`lst_fast.geometry.interpolation_conf`.

    Returns:
        ``path`` as a :class:`pathlib.Path`, where the PNG was written.

    Raises:
        ValueError: ``conf`` is not (n+1,) or (P, n+1), holds fewer than 2 points per pair, or ``labels`` is
            neither empty nor one per pair.
    """
    conf = _as_rows("conf", conf)
    if conf.shape[1] < 2:
        raise ValueError(f"conf must hold at least 2 points per pair, got {conf.shape[1]}")
    names = _line_labels("labels", labels, len(conf))
    t = torch.linspace(0, 1, conf.shape[1])
    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    for k, (row, name) in enumerate(zip(conf, names)):
        ax.plot(t, row, color=f"C{k % 10}", alpha=0.6, linewidth=1, label=name)
    ax.plot(t, conf.mean(0), color="black", linewidth=2, label="mean")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("t  (point (1 - t) source + t output)")
    ax.set_ylabel("source-class confidence")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes: lines fill them
    ax.set_title(title or "Star-like structure: confidence from source to LST output", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
