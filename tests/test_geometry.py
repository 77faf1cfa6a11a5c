"""Geometry around LST outputs (algorithm §3-§5): each statistic against a hand computation or a plain
one-at-a-time transcription of the spec, on tiny analytic classifiers and (sparingly) the offline
EfficientNet-Lite0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lst_fast import fast, geometry, reference, traversal
from lst_fast.classifier import model_guard
from lst_fast.settings import check_settings
from lst_fast.sweep import tables

FRACTIONS = ("frac_0.0", "frac_0.1", "frac_0.2", "frac_0.3")


class MeanConfidence(torch.nn.Module):
    """Two classes; p(class 0 | x) = mean pixel value of x, so it is linear along any segment or triangle."""

    def forward(self, x):
        m = x.flatten(1).mean(1).clamp(1e-6, 1 - 1e-6)
        return torch.stack([m.log(), (1 - m).log()], dim=1)


class Logistic(torch.nn.Module):
    """Three classes with logits (<w, x> + b, 0, -<w, x>): p(class 0) is a smooth non-linear function of x."""

    def __init__(self, shape=(3, 8, 8), seed=0, scale=8.0, bias=0.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(shape, generator=g)
        self.register_buffer("w", scale * w / w.norm())
        self.bias = bias

    def forward(self, x):
        z = (x * self.w).flatten(1).sum(1)
        z = z - (self.w.sum() * 0.5)  # centred: images around 0.5 sit near the decision boundary
        return torch.stack([z + self.bias, torch.zeros_like(z), -z], dim=1)


def image_with_mean(mean, shape=(3, 8, 8), seed=0):
    """An image whose pixel mean is ``mean`` (a constant plus a zero-mean pattern)."""
    pattern = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    image = mean + 0.02 * (pattern - pattern.mean())
    assert 0 <= image.min() and image.max() <= 1
    return image


def rand_images(n, shape=(3, 8, 8), seed=0):
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# One-at-a-time transcriptions of the spec (the yardstick for the batched functions)


def conf_of(model, points, label):
    with torch.no_grad():
        return F.softmax(model(points), dim=1)[:, label]


def one_triangle(model, s, a, b, label, n):
    """Algorithm §5 for one triangle: 66 points (n = 10) in one model call, statistics in plain Python."""
    grid = [(i, j) for i in range(n + 1) for j in range(n + 1 - i)]
    points = torch.stack([(1 - i / n - j / n) * s + (i / n) * a + (j / n) * b for i, j in grid])
    p = dict(zip(grid, conf_of(model, points, label).tolist()))
    p_src = p[(0, 0)]
    values = list(p.values())
    edges = [p[(i, 0)] for i in range(n + 1)] + [p[(0, j)] for j in range(n + 1)]
    stats = {"p_src": p_src, "mean": sum(values) / len(values)}
    for d in (0.0, 0.1, 0.2, 0.3):
        threshold = torch.tensor(p_src, dtype=torch.float32) - d  # float32, as the model's outputs
        stats[f"frac_{d}"] = sum(v > threshold.item() for v in values) / len(values)
    stats["edge_mean"] = sum(edges) / len(edges)
    stats["edge_min"] = min(e - p_src for e in edges)
    return stats


def one_path_width(model, x, d, label, distances, num_vecs, pthresh, generator):
    """Algorithm §4 for one sample, with numpy quantiles."""
    g = torch.randn((num_vecs, *x.shape), generator=generator).flatten(1)
    p_x = conf_of(model, x[None], label).item()
    d = d.flatten()
    if p_x < pthresh or d.norm() == 0:
        return np.zeros((len(distances) + 1, 2))
    d_hat = d / d.norm()
    u = g - (g @ d_hat)[:, None] * d_hat[None]
    u = (u / u.norm(dim=1, keepdim=True)).view(num_vecs, *x.shape)
    rows = [[p_x, p_x]]
    for r in distances:
        conf = conf_of(model, (x + r * u).clamp(0, 1), label).numpy()
        rows.append(np.quantile(conf, [0.05, 0.95]))
    return np.array(rows)


def assert_stats_close(batched: dict, expected: list[dict], atol=1e-6):
    assert list(batched) == ["p_src", "mean", *FRACTIONS, "edge_mean", "edge_min"]
    for key, values in batched.items():
        assert values.shape == (len(expected),)
        want = torch.tensor([e[key] for e in expected], dtype=values.dtype)
        torch.testing.assert_close(values, want, atol=atol, rtol=0, msg=key)


# ---------------------------------------------------------------------------------------------------------
# Triangles


def test_triangle_grid_is_the_spec_grid():
    grid = geometry.triangle_grid(10)
    assert grid.shape == (66, 3)
    torch.testing.assert_close(grid.sum(1), torch.ones(66, dtype=torch.float64))
    assert grid[0].tolist() == [1.0, 0.0, 0.0]  # the source comes first
    assert (grid >= -1e-12).all()
    t = {(round(10 * a), round(10 * b)) for a, b in grid[:, 1:].tolist()}
    assert t == {(i, j) for i in range(11) for j in range(11) if i + j <= 10}


def test_triangle_stats_by_hand():
    """p = image mean is linear over the triangle: p = 0.9 - 0.31 t1 - 0.17 t2 for means 0.9, 0.59, 0.73."""
    s, a, b = image_with_mean(0.9, seed=1), image_with_mean(0.59, seed=2), image_with_mean(0.73, seed=3)
    stats = geometry.triangle_stats(MeanConfidence().eval(), s[None], a[None], b[None], [0])
    grid = [(i, j) for i in range(11) for j in range(11 - i)]
    # p > p_src - d  <=>  0.31 i/10 + 0.17 j/10 < d  <=>  31 i + 17 j < 1000 d (no ties on this grid)
    count = {d: sum(31 * i + 17 * j < 1000 * d for i, j in grid) for d in (0.0, 0.1, 0.2, 0.3)}
    assert count == {0.0: 0, 0.1: 15, 0.2: 46, 0.3: 65}
    expected = {
        "p_src": 0.9,
        "mean": (0.9 + 0.59 + 0.73) / 3,  # the grid's average barycentric weight is 1/3 for each vertex
        **{f"frac_{d}": c / 66 for d, c in count.items()},
        "edge_mean": ((0.9 + 0.59) / 2 + (0.9 + 0.73) / 2) / 2,
        "edge_min": 0.59 - 0.9,
    }
    for key, want in expected.items():
        assert stats[key].item() == pytest.approx(want, abs=1e-5), key


def sharing_triangles(seed=0):
    """Six triangles in the layout of the sweep: two sources, three outputs each, every pair of outputs of a
    source makes a triangle (so sources and edges are shared), plus a repeat under another label."""
    images = rand_images(8, seed=seed)
    src_of, outs = [0, 1], {0: [2, 3, 4], 1: [5, 6, 7]}
    rows = [(s, a, b) for s in src_of for k, a in enumerate(outs[s]) for b in outs[s][k + 1 :]]
    srcs = torch.stack([images[s] for s, _, _ in rows] + [images[0]])
    outs_a = torch.stack([images[a] for _, a, _ in rows] + [images[2]])
    outs_b = torch.stack([images[b] for _, _, b in rows] + [images[3]])
    labels = torch.tensor([0] * len(rows) + [2])
    source_ids = torch.tensor([s for s, _, _ in rows] + [0])
    return srcs, outs_a, outs_b, labels, source_ids


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_triangle_stats_equal_one_at_a_time(batch_size):
    model = Logistic().eval()
    srcs, outs_a, outs_b, labels, _ = sharing_triangles()
    stats = geometry.triangle_stats(model, srcs, outs_a, outs_b, labels, batch_size=batch_size)
    expected = [one_triangle(model, *t, label, 10) for *t, label in zip(srcs, outs_a, outs_b, labels.tolist())]
    assert_stats_close(stats, expected)


def test_triangle_stats_other_grid_and_deltas():
    model = Logistic(seed=3).eval()
    srcs, outs_a, outs_b = rand_images(2, seed=4), rand_images(2, seed=5), rand_images(2, seed=6)
    conf = geometry.triangle_confidences(model, srcs, outs_a, outs_b, [0, 2], n=4)
    assert conf.shape == (2, 15)
    stats = geometry.triangle_stats_from_confidences(conf, n=4, deltas=(0.05, 0.5))
    assert list(stats) == ["p_src", "mean", "frac_0.05", "frac_0.5", "edge_mean", "edge_min"]
    grid = geometry.triangle_grid(4)
    for t, (s, a, b, y) in enumerate(zip(srcs, outs_a, outs_b, [0, 2])):
        points = torch.stack([w[0].float() * s + w[1].float() * a + w[2].float() * b for w in grid])
        torch.testing.assert_close(conf[t], conf_of(model, points, y), atol=1e-6, rtol=0)
        edge = [k for k, w in enumerate(grid.tolist()) if w[1] == 0 or w[2] == 0]  # s counted once here
        p = conf[t]
        assert stats["frac_0.5"][t] == pytest.approx((p > p[0] - 0.5).float().mean().item())
        assert stats["edge_min"][t] == pytest.approx((p[edge] - p[0]).min().item())


def test_aggregate_triangles_by_hand():
    stats = {
        "p_src": torch.tensor([0.9, 0.5, 0.9, 0.9, 0.5]),
        "mean": torch.tensor([0.1, 0.2, 0.3, 0.5, 0.4]),
        "edge_min": torch.tensor([-0.1, -0.3, -0.5, 0.0, -0.2]),
    }
    per_source = geometry.aggregate_triangles(stats, [3, 1, 3, 3, 1])
    torch.testing.assert_close(per_source["p_src"], torch.tensor([0.5, 0.9]))
    torch.testing.assert_close(per_source["mean"], torch.tensor([0.3, 0.3]))
    torch.testing.assert_close(per_source["edge_min"], torch.tensor([-0.3, -0.5]))


def test_aggregate_and_table_of_real_triangles():
    model = Logistic().eval()
    srcs, outs_a, outs_b, labels, source_ids = sharing_triangles()
    stats = geometry.triangle_stats(model, srcs, outs_a, outs_b, labels)
    per_source = geometry.aggregate_triangles(stats, source_ids)
    assert all(v.shape == (2,) for v in per_source.values())
    first = source_ids == 0
    torch.testing.assert_close(per_source["frac_0.2"][0], stats["frac_0.2"][first].mean())
    torch.testing.assert_close(per_source["edge_min"][1], stats["edge_min"][~first].min())
    table = tables.mean_std_table({"logistic": per_source}, digits=4)
    mean, std = per_source["mean"].double().mean().item(), per_source["mean"].double().std(correction=0).item()
    assert f"{mean:.4f} ± {std:.4f}" in table
    assert table.splitlines()[0] == "| | " + " | ".join(per_source) + " |"
    table2 = tables.mean_std_table({"a": per_source, "b": stats}, columns=geometry.TABLE2_COLUMNS)
    assert table2.splitlines()[0] == "| | p_src | mean | frac_0.0 | frac_0.1 | frac_0.2 | frac_0.3 | edge_mean |"
    assert len(table2.splitlines()) == 4 and "edge_min" not in table2
    with pytest.raises(ValueError, match="rows lack the columns"):
        tables.mean_std_table({"a": per_source}, columns=("p_src", "lpips"))


def test_default_batch_size_depends_on_device_model_and_image_size():
    assert geometry.default_batch_size(torch.zeros(1, 3, 224, 224), True) == 4  # four ImageNet images on CPU
    assert geometry.default_batch_size(torch.zeros(1, 3, 32, 32), True) == 196  # as many values in CIFAR images
    assert geometry.default_batch_size(torch.zeros(1, 3, 1024, 1024), True) == 1
    assert geometry.default_batch_size(torch.zeros(1, 3, 32, 32, device="meta"), True) == geometry.DEFAULT_BATCH_SIZE
    assert geometry.default_batch_size(torch.zeros(1, 3, 224, 224), False) == 128  # transformers


def test_mean_std_by_hand():
    summary = tables.mean_std({"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": [2.0, 2.0]})
    assert summary["a"] == pytest.approx((2.5, 1.25**0.5))
    assert summary["b"] == pytest.approx((2.0, 0.0))
    with pytest.raises(ValueError, match="empty"):
        tables.mean_std({"a": torch.tensor([])})


# ---------------------------------------------------------------------------------------------------------
# Interpolation (star-like structure)


def test_interpolation_conf_by_hand():
    s, o = image_with_mean(0.8, seed=1), image_with_mean(0.3, seed=2)
    conf = geometry.interpolation_conf(MeanConfidence().eval(), s[None], o[None], [0], n=10)
    t = torch.linspace(0, 1, 11)
    torch.testing.assert_close(conf[0], 0.8 - 0.5 * t, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 5, None])
def test_interpolation_conf_equals_one_at_a_time(batch_size):
    model = Logistic().eval()
    srcs, outs = rand_images(4, seed=1), rand_images(4, seed=2)
    srcs[2] = srcs[0]  # a shared source
    labels = torch.tensor([0, 1, 0, 2])
    conf = geometry.interpolation_conf(model, srcs, outs, labels, n=4, batch_size=batch_size)
    assert conf.shape == (4, 5)
    for k in range(4):
        points = torch.stack([(1 - t / 4) * srcs[k] + (t / 4) * outs[k] for t in range(5)])
        torch.testing.assert_close(conf[k], conf_of(model, points, labels[k]), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Path width


def test_path_width_orthogonal_to_the_gradient_is_flat():
    """Moving orthogonally to w does not change <w, x>, so every quantile equals p(x)."""
    model = Logistic(shape=(3, 16, 16), bias=2.0).eval()
    x = torch.full((1, 3, 16, 16), 0.5)
    widths = geometry.path_width(
        model, x, model.w[None].clone(), [0], distances=(0.5, 1), num_vecs=32,
        generator=torch.Generator().manual_seed(0),
    )
    p_x = conf_of(model, x, 0).item()
    assert p_x > 0.2
    torch.testing.assert_close(widths, torch.full((1, 3, 2), p_x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 13, None])
def test_path_width_equals_one_at_a_time(batch_size):
    model = Logistic(bias=1.0).eval()
    x = rand_images(4, seed=7) * 0.5 + 0.25
    directions = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    directions[2] = 0  # a zero direction reports zeros
    labels = torch.tensor([0, 0, 0, 1])  # the last has confidence below pthresh: zeros
    args = dict(distances=(0.5, 1.0, 2.0), num_vecs=16, pthresh=0.2)
    widths = geometry.path_width(
        model, x, directions, labels, **args, generator=torch.Generator().manual_seed(9), batch_size=batch_size
    )
    assert widths.shape == (4, 4, 2)
    generator = torch.Generator().manual_seed(9)
    expected = [one_path_width(model, x[i], directions[i], labels[i], **args, generator=generator) for i in range(4)]
    torch.testing.assert_close(widths, torch.tensor(np.stack(expected), dtype=widths.dtype), atol=1e-6, rtol=0)
    assert (widths[2] == 0).all() and (widths[3] == 0).all()
    assert (widths[:2, 1:, 0] < widths[:2, 1:, 1]).all()  # a real spread, 5% below 95%
    # the generator protocol: a batch draws what its rows draw one at a time
    generator = torch.Generator().manual_seed(9)
    rows = [geometry.path_width(model, x[i : i + 1], directions[i : i + 1], labels[i : i + 1], **args,
                                generator=generator) for i in range(4)]
    torch.testing.assert_close(widths, torch.cat(rows), atol=1e-6, rtol=0)


def test_random_orthogonal_units():
    d = torch.randn(3, 4, 4)
    u = geometry.random_orthogonal_units(d, 10, torch.Generator().manual_seed(0))
    assert u.shape == (10, 3, 4, 4)
    torch.testing.assert_close(u.flatten(1).norm(dim=1), torch.ones(10))
    torch.testing.assert_close(u.flatten(1) @ d.flatten(), torch.zeros(10), atol=1e-5, rtol=0)


def test_orthogonal_direction_is_the_spec_v_perp():
    x, tgt, grad = rand_images(3, seed=1), rand_images(3, seed=2), torch.randn(3, 3, 8, 8)
    grad[1] = 0
    v_perp = geometry.orthogonal_direction(x, grad, tgt)
    v = tgt - x
    torch.testing.assert_close((v_perp * grad).flatten(1).sum(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(v_perp[1], v[1])  # zero gradient: v itself
    expected = v[0] - grad[0] * (grad[0] * v[0]).sum() / (grad[0] * grad[0]).sum()
    torch.testing.assert_close(v_perp[0], expected)


# ---------------------------------------------------------------------------------------------------------
# Path widths recorded by both traversal loops


def confident_convnet():
    """A small conv net with batch norm (so the fast loop folds it) and confident predictions."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.1, 0.1)
        model[1].running_var.uniform_(0.5, 2)
        model[-1].weight.mul_(40)
    return model.eval()


def test_recorded_widths_follow_the_documented_protocol():
    model = confident_convnet()
    srcs, tgts = rand_images(3, seed=11), rand_images(3, seed=12)
    settings = dict(iters=4, log_every=2, width_distances=(0.25, 1.0), width_num_vecs=8, pthresh=0.3)
    ref = reference.traverse_batch(
        model, srcs, tgts, record=("widths", "images"), generator=torch.Generator().manual_seed(5), **settings
    )
    assert ref.valid.all() and ref.path_iters.tolist() == [0, 2]
    assert ref.path_widths.shape == (3, 2, 3, 2)
    assert (ref.path_widths[:, :, 0, 0] > 0.3).any()  # some rows are confident enough to be measured

    # Independent replay: the start-point noise, then one path_width call per recorded iteration.
    generator = torch.Generator().manual_seed(5)
    torch.rand(srcs.shape, generator=generator)
    for k in range(2):
        x = ref.path_images[:, k].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), ref.labels, reduction="sum"), x)
        v = tgts - x.detach()
        v_perp = v - grad * ((grad * v).flatten(1).sum(1) / (grad * grad).flatten(1).sum(1)).view(-1, 1, 1, 1)
        widths = geometry.path_width(
            model, x.detach(), v_perp, ref.labels, distances=(0.25, 1.0), num_vecs=8, pthresh=0.3,
            generator=generator, fold_batchnorm=False, memory_format="contiguous",
        )
        torch.testing.assert_close(ref.path_widths[:, k], widths, atol=1e-5, rtol=0)

    got = fast.traverse_batch(
        model, srcs, tgts, record=("widths",), generator=torch.Generator().manual_seed(5), **settings
    )
    torch.testing.assert_close(got.path_widths, ref.path_widths, atol=1e-5, rtol=0)


def test_static_loop_records_the_same_widths():
    """The CUDA-graph loop's iteration, run eagerly on CPU (mode="static"), records widths like the others."""
    model = confident_convnet()
    srcs, tgts = rand_images(3, seed=11), rand_images(3, seed=12)
    widths = dict(width_distances=(0.25, 1.0), width_num_vecs=8)
    ref = reference.traverse_batch(
        model, srcs, tgts, iters=4, log_every=2, pthresh=0.3, record="widths",
        generator=torch.Generator().manual_seed(5), **widths,
    )
    settings = check_settings(
        step_size=1e-2, iters=4, pthresh=0.3, adv_step_size=2e-3, init_noise=4 / 255, log_every=2,
        record=("widths",), **widths,
    )
    with model_guard(model):
        problem = traversal.prepare(
            model, srcs, tgts, None, None, None, settings, torch.Generator().manual_seed(5)
        )
        static = fast.run_schedule(problem, problem.forward, settings, torch.channels_last, "torch", mode="static")
    torch.testing.assert_close(static.path_widths, ref.path_widths, atol=1e-5, rtol=0)


def test_recorded_widths_of_invalid_rows_are_nan():
    model = confident_convnet()
    srcs, tgts = rand_images(2, seed=13), rand_images(2, seed=14)
    with torch.no_grad():
        wrong = (model(srcs).argmax(1) + 1) % 4
    labels = torch.stack([model(srcs[:1]).argmax(1)[0], wrong[1]]).detach()
    result = fast.traverse_batch(
        model, srcs, tgts, labels, iters=2, log_every=1, record="widths", width_distances=(1,), width_num_vecs=4
    )
    assert result.valid.tolist() == [True, False]
    assert result.path_widths.shape == (2, 2, 2, 2)
    assert result.path_widths[1].isnan().all() and not result.path_widths[0].isnan().any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(width_distances=(1, 0)), r"width_distances\[1\] must be > 0"),
        (dict(width_distances=()), "width_distances must name at least one radius"),
        (dict(width_distances=1.0), "width_distances must be a sequence of radii"),
        (dict(width_num_vecs=1), "width_num_vecs must be >= 2"),
        (dict(record=("widths",)), "needs log_every > 0"),
    ],
)
def test_traversal_width_settings_are_checked(kwargs, match):
    srcs = rand_images(1)
    with pytest.raises((ValueError, TypeError), match=match):
        reference.traverse_batch(confident_convnet(), srcs, srcs, iters=1, **kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        fast.traverse_batch(confident_convnet(), srcs, srcs, iters=1, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_rejected():
    model = Logistic().eval()
    imgs = rand_images(2)
    small = rand_images(2, shape=(3, 4, 4))
    with pytest.raises(ValueError, match="outs has shape"):
        geometry.interpolation_conf(model, imgs, small, [0, 0])
    with pytest.raises(ValueError, match="outs_b has shape"):
        geometry.triangle_stats(model, imgs, imgs, small, [0, 0])
    with pytest.raises(ValueError, match="n must be >= 1"):
        geometry.interpolation_conf(model, imgs, imgs, [0, 0], n=0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        geometry.triangle_stats(model, imgs, imgs, imgs, [0, 0], n=0)
    with pytest.raises(TypeError, match="n must be an int"):
        geometry.triangle_stats(model, imgs, imgs, imgs, [0, 0], n=2.5)
    with pytest.raises(ValueError, match=r"deltas must be in \[0, 1\]"):
        geometry.triangle_stats(model, imgs, imgs, imgs, [0, 0], deltas=(0.1, 1.5))
    with pytest.raises(ValueError, match=r"deltas\[0\] must be >= 0"):
        geometry.triangle_stats_from_confidences(torch.rand(2, 66), deltas=(-0.1,))
    with pytest.raises(ValueError, match=r"conf must have shape \(T, 66\)"):
        geometry.triangle_stats_from_confidences(torch.rand(2, 65))
    with pytest.raises(TypeError, match="labels are required"):
        geometry.interpolation_conf(model, imgs, imgs, None)
    with pytest.raises(ValueError, match="labels must have shape"):
        geometry.interpolation_conf(model, imgs, imgs, [0])
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\)"):
        geometry.interpolation_conf(model, imgs, imgs, [0, 3])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        geometry.interpolation_conf(model, imgs, imgs, [0, 0], batch_size=0)
    with pytest.raises(ValueError, match=r"distances\[0\] must be > 0"):
        geometry.path_width(model, imgs, imgs, [0, 0], distances=(0, 1))
    with pytest.raises(ValueError, match=r"distances\[1\] must be > 0"):
        geometry.path_width(model, imgs, imgs, [0, 0], distances=(1, -2))
    with pytest.raises(ValueError, match="num_vecs must be >= 2"):
        geometry.path_width(model, imgs, imgs, [0, 0], num_vecs=1)
    with pytest.raises(ValueError, match="directions must match x"):
        geometry.path_width(model, imgs, small, [0, 0])
    with pytest.raises(ValueError, match="pthresh must be >= 0"):
        geometry.path_width(model, imgs, imgs, [0, 0], pthresh=-0.1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        geometry.path_width(model, imgs, imgs, [0, 0], generator=0)
    with pytest.raises(ValueError, match="source_ids must name the source of each of the 2"):
        geometry.aggregate_triangles({"edge_min": torch.zeros(2)}, [0])
    with pytest.raises(ValueError, match="x must have values in"):
        geometry.path_width(model, imgs + 2, imgs, [0, 0])


# ---------------------------------------------------------------------------------------------------------
# The offline EfficientNet-Lite0 (a few 224x224 photos, few points)


@pytest.fixture(scope="module")
def efficientnet(embedded_model, photos):
    """The offline model (conftest) with chelsea, coffee and rocket and its predicted labels."""
    model, normalizer = embedded_model
    photos = photos[:3]
    with torch.no_grad():
        labels = model(normalizer(photos)).argmax(1)
    return model, normalizer, photos, labels


@pytest.mark.slow
def test_efficientnet_triangles_and_widths_equal_one_at_a_time(efficientnet):
    model, normalizer, photos, labels = efficientnet
    plain = torch.nn.Sequential(normalizer, model).eval()
    srcs = photos[[0, 1]]
    outs_a, outs_b = photos[[1, 2]], photos[[2, 0]]
    # the tuned (batch-norm-folded, channels_last) model against the plain one, one triangle at a time
    stats = geometry.triangle_stats(model, srcs, outs_a, outs_b, labels[:2], normalizer=normalizer, n=2)
    expected = [one_triangle(plain, *t, int(y), 2) for *t, y in zip(srcs, outs_a, outs_b, labels[:2])]
    for key in stats:
        want = torch.tensor([e[key] for e in expected])
        torch.testing.assert_close(stats[key], want, atol=1e-4, rtol=0, msg=key)
    assert stats["p_src"][1] > 0.9  # coffee -> espresso, confidently
    star = geometry.interpolation_conf(model, srcs, outs_a, labels[:2], normalizer=normalizer, n=2)
    for k in range(2):
        points = torch.stack([(1 - t / 2) * srcs[k] + (t / 2) * outs_a[k] for t in range(3)])
        torch.testing.assert_close(star[k], conf_of(plain, points, labels[k]), atol=1e-4, rtol=0)

    directions = photos[[1, 2]] - photos[[0, 1]]
    args = dict(distances=(2.0,), num_vecs=3, pthresh=0.2)
    widths = geometry.path_width(
        model, photos[[0, 1]], directions, labels[:2], normalizer=normalizer, **args,
        generator=torch.Generator().manual_seed(0),
    )
    generator = torch.Generator().manual_seed(0)
    expected = [
        one_path_width(plain, photos[i], directions[i], labels[i], **args, generator=generator) for i in range(2)
    ]
    torch.testing.assert_close(widths, torch.tensor(np.stack(expected), dtype=widths.dtype), atol=1e-4, rtol=0)
