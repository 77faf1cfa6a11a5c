"""The offline demo: LST between the bundled photos with the bundled EfficientNet-Lite0 (no downloads)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Sequence

import torch
from torchvision.utils import save_image

from lst_fast import data, metrics, models, plots
from lst_fast.fast import traverse_batch

DEMO_PHOTOS = data.EMBEDDED_PHOTOS[:4]


def all_pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and target indices of every ordered pair (i, j) with i != j."""
    src, tgt = zip(*[(i, j) for i in range(n) for j in range(n) if i != j])
    return torch.tensor(src), torch.tensor(tgt)


def run_demo(
    out_dir: str | Path = "lst_fast_out/demo",
    *,
    iters: int = 400,
    photos: Sequence[str] = DEMO_PHOTOS,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Send every bundled photo towards every other one and write images, a table and a grid to ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    model, normalizer = models.load_embedded()
    model, normalizer = model.to(device), normalizer.to(device)
    images, names = data.load_embedded_photos(photos)
    images = images.to(device)
    src_idx, tgt_idx = all_pairs(len(names))
    srcs, tgts = images[src_idx], images[tgt_idx]

    start = time.perf_counter()
    result = traverse_batch(
        model, srcs, tgts, normalizer=normalizer, iters=iters, progress=progress,
        generator=torch.Generator(device).manual_seed(seed), log_every=max(1, iters // 20), record=("conf",),
    )
    seconds = time.perf_counter() - start
    dist = metrics.distances(result.images, tgts, which=metrics.available_distances())  # LPIPS if its weights are here
    rows = []
    for k, (i, j) in enumerate(zip(src_idx.tolist(), tgt_idx.tolist())):
        file = out_dir / "images" / f"{names[i]}_to_{names[j]}.png"
        save_image(result.images[k], file)
        rows.append({
            "source": names[i],
            "target": names[j],
            "label": int(result.labels[k]),
            "label_name": models.class_name(result.labels[k]),
            "valid": bool(result.valid[k]),
            "init_conf": float(result.init_conf[k]),
            "final_conf": float(result.final_conf[k]),
            "accepted": int(result.accepted[k]),
            **{f"{name}_to_target": float(values[k]) for name, values in dist.items()},
            "conf_path": [round(float(v), 5) for v in result.path_conf[k]],
        })
    _write_tables(out_dir, rows, iters, seconds)
    _write_grid(out_dir / "grid.png", images, names, result, src_idx, tgt_idx, iters)
    return {"out_dir": out_dir, "rows": rows, "seconds": seconds}


def _write_tables(out_dir: Path, rows: list[dict], iters: int, seconds: float) -> None:
    summary = {"iters": iters, "seconds": round(seconds, 2), "pairs": rows}
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    columns = [c for c in rows[0] if c != "conf_path"]
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _write_grid(path, images, names, result, src_idx, tgt_idx, iters) -> None:
    """Rows = targets, columns = sources; the diagonal shows the source photo itself."""
    n = len(names)
    cells = images.unsqueeze(0).repeat(n, 1, 1, 1, 1).cpu()  # cells[t, s]
    captions = [[""] * n for _ in range(n)]
    for s in range(n):
        label = models.class_name(result.labels[(src_idx == s).nonzero()[0, 0]])
        captions[s][s] = f"source: {label[:18]}"
    for k, (s, t) in enumerate(zip(src_idx.tolist(), tgt_idx.tolist())):
        cells[t, s] = result.images[k].cpu()
        captions[t][s] = f"p(source) = {float(result.final_conf[k]):.3f}"
    plots.image_grid(
        cells, captions, path,
        row_labels=[f"target: {name}" for name in names], col_labels=[f"source: {name}" for name in names],
        title=f"Level set traversal, {iters} iterations (EfficientNet-Lite0)",
    )
