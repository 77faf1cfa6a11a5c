"""Figures (matplotlib, saved as PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


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
    """Save a grid of images (R, N, C, H, W) with a caption under each cell.

    For LST: rows are targets, columns are sources, each cell the LST output captioned with its
    source-class confidence.
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
