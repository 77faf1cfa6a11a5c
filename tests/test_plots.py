"""The figures: each is written as a readable PNG, draws what it is given, and rejects misshaped input."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import torch

from lst_fast import geometry, plots


def read_png(path) -> np.ndarray:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    return image[..., :3]


def count_colour(image: np.ndarray, rgb, tol=0.02) -> int:
    return int((np.abs(image - np.asarray(rgb)[None, None, :3]) < tol).all(-1).sum())


def test_triangle_plot_fills_the_triangle_with_the_confidence_colour(tmp_path):
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    grid = geometry.triangle_grid(10)
    high = plots.triangle_plot(torch.full((len(grid),), 0.99), images, tmp_path / "high.png", title="high")
    low = plots.triangle_plot(torch.full((len(grid),), 0.01), images, tmp_path / "low.png")
    top, bottom = plots.plt.cm.viridis(0.975), plots.plt.cm.viridis(0.025)  # the colours of the end levels
    high_image, low_image = read_png(high), read_png(low)
    assert count_colour(high_image, top) > 10 * count_colour(low_image, top)  # triangle in the top colour
    assert count_colour(low_image, bottom) > 10 * count_colour(high_image, bottom)


def test_triangle_plot_of_real_statistics(tmp_path):
    conf = torch.linspace(1, 0, 15)
    images = torch.rand(3, 3, 8, 8)
    path = plots.triangle_plot(conf, images, tmp_path / "sub" / "tri.png", n=4, corner_labels=("s", "a", "b"))
    assert path.is_file() and read_png(path).std() > 0.05
    with pytest.raises(ValueError, match=r"conf must have shape \(66,\) for n = 10"):
        plots.triangle_plot(conf, images, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"images must have shape \(3, C, H, W\)"):
        plots.triangle_plot(conf, images[:2], tmp_path / "bad.png", n=4)


def test_path_width_plot(tmp_path):
    steps = torch.arange(6) * 10
    widths = torch.zeros(6, 3, 2)
    widths[:, 0] = 0.9
    widths[:, 1] = torch.tensor([0.7, 0.95])
    widths[:, 2] = torch.tensor([0.4, 0.97])
    path = plots.path_width_plot(widths, tmp_path / "width.png", iters=steps, distances=(1, 2))
    assert read_png(path).std() > 0.05
    with pytest.raises(ValueError, match=r"widths must have shape \(L, 5, 2\) for 4 distances"):
        plots.path_width_plot(widths, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"iters must have shape \(6,\)"):
        plots.path_width_plot(widths, tmp_path / "bad.png", iters=steps[:3], distances=(1, 2))


def test_confidence_path_plot(tmp_path):
    steps = torch.arange(5)
    source, target = torch.rand(2, 5), torch.rand(2, 5)
    path = plots.confidence_path_plot(steps, source, target, tmp_path / "conf.png", labels=["a -> b", "b -> a"])
    assert read_png(path).std() > 0.05
    plots.confidence_path_plot(steps, source[0], target[0], tmp_path / "one.png")  # a single pair as (L,)
    with pytest.raises(ValueError, match="target_conf has shape"):
        plots.confidence_path_plot(steps, source, target[:1], tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"source_conf must have shape \(L,\) or \(N, L\) with L = 5"):
        plots.confidence_path_plot(steps, torch.rand(2, 4), target, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="labels must give one label per row"):
        plots.confidence_path_plot(steps, source, target, tmp_path / "bad.png", labels=["only one"])


def test_interpolation_plot(tmp_path):
    path = plots.interpolation_plot(torch.rand(3, 11), tmp_path / "star.png", labels=["x", "y", "z"])
    assert read_png(path).std() > 0.05
    with pytest.raises(ValueError, match="at least 2 points"):
        plots.interpolation_plot(torch.rand(3, 1), tmp_path / "bad.png")


def test_sweep_figures_name_images_and_classes(image_folder):
    """Figure titles and legends use file / photo names and class names where the data and model have them."""
    from types import SimpleNamespace

    from lst_fast import data
    from lst_fast.sweep.figures import class_namer, image_name

    photos = data.open_dataset("embedded")
    assert image_name(photos, 1, 0) == "coffee"  # data.EMBEDDED_PHOTOS[1]
    files = data.open_dataset(f"folder:{image_folder}")
    assert image_name(files, 3, 0) == "img_03.png"  # files in name order
    assert image_name(SimpleNamespace(), 7, 2) == "image 2"  # no names (e.g. CIFAR-10): the sweep's position

    imagenet = class_namer(photos, 1000)
    assert [imagenet(c) for c in (109, 282, 967)] == ["brain coral", "tiger cat", "espresso"]
    cifar_like = SimpleNamespace(classes=["airplane", "automobile", "bird"])
    assert class_namer(cifar_like, 3)(2) == "bird"
    assert class_namer(files, 10)(3) == "class 3"  # a 10-class model on unlabelled files: no names known
