"""The offline demo: :mod:`lst_fast.examples` on the bundled photos with the bundled EfficientNet-Lite0 (no
downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lst_fast import TraversalSettings, data, models
from lst_fast.examples import ExamplesReport, run_examples

DEMO_PHOTOS = data.EMBEDDED_PHOTOS[:4]


def run_demo(
    out_dir: str | Path = "lst_fast_out/demo",
    *,
    iters: int = 400,
    photos: Sequence[str] = DEMO_PHOTOS,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    paths: bool = False,
    width_vecs: int = 256,
    lpips_weights: str | Path | None = None,
) -> ExamplesReport:
    """Send every bundled photo towards every other one and write what :func:`lst_fast.examples.run_examples`
    writes (images, tables, grid, triangles, interpolations) to ``out_dir``.

    Args:
        out_dir: output folder (created).
        iters: LST iterations (the paper's other settings).
        photos: bundled photos (:data:`lst_fast.data.EMBEDDED_PHOTOS`), at least two.
        seed: the start-point noise.
        device: torch device.
        progress: show a progress bar.
        paths: also draw the confidence and the path widths along every traversal.
        width_vecs: random directions per path-width point (with ``paths``).
        lpips_weights: local AlexNet weights for LPIPS (default the torch hub cache; without them it is left out).

    Returns:
        The :class:`lst_fast.examples.ExamplesReport`.

    Raises:
        ValueError: an unknown photo or fewer than two.
    """
    model, normalizer = models.load_embedded()
    photos = [photos] if isinstance(photos, str) else list(photos)
    return run_examples(
        model, normalizer, data.open_dataset("embedded"), out_dir, images=photos,
        settings=TraversalSettings(iters=iters, width_num_vecs=width_vecs), seed=seed, device=device,
        progress=progress, paths=paths, lpips_weights=lpips_weights,
        title=f"Level set traversal, {iters} iterations (EfficientNet-Lite0)",
    )
