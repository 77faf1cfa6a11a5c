"""Helpers shared by several test modules (plain functions; fixtures live in conftest.py): a tiny CNN, test
images, and running the reference and fast loops side by side."""

import os

import torch
from safetensors.torch import load_file

import lst_fast
from lst_fast import reference
from lst_fast.sweep import SweepConfig, tables


def tiny_cnn(num_classes: int = 5, scale: float = 1.0, seed: int = 0) -> torch.nn.Module:
    """A small random CNN with batch norm (float64, eval mode). ``scale`` sharpens its logits."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, stride=2),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32, num_classes),
    ).double()
    with torch.no_grad():  # non-trivial running statistics so that folding them is really tested
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        net[-1].weight.mul_(scale)
    return net.eval()


# Sharp logits and big steps, so that some candidates are rejected and the select path is exercised.
SHARPNESS = 40
SHARP = dict(step_size=0.5, pthresh=0.05, iters=30)


def colour_patches(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Images of one random colour each plus a little texture: different classes for a random CNN."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, dtype=torch.float64, generator=g)
    return (base + 0.3 * torch.rand(n, 3, size, size, dtype=torch.float64, generator=g)).clamp(0, 1)


def run_both(model, srcs, tgts, labels=None, seed=1, **kwargs):
    results = []
    for traverse in (reference.traverse_batch, lst_fast.traverse_batch):
        generator = torch.Generator().manual_seed(seed)
        results.append(traverse(model, srcs, tgts, labels, generator=generator, **kwargs))
    return results


def assert_same_result(ref, fast, atol=1e-9):
    assert torch.equal(ref.valid, fast.valid)
    assert torch.equal(ref.labels, fast.labels)
    assert torch.equal(ref.accepted, fast.accepted)
    torch.testing.assert_close(fast.images, ref.images, atol=atol, rtol=0)
    torch.testing.assert_close(fast.init_conf, ref.init_conf, atol=atol, rtol=0)
    torch.testing.assert_close(fast.final_conf, ref.final_conf, atol=atol, rtol=0)


# --- sweeps (tests/test_sweep.py, tests/test_provenance.py) ---------------------------------------------------

N, ROUNDS, BATCH, ITERS = 8, 3, 3, 12
TRIANGLE_UNITS = 3  # batches of sources: (0, 1, 2), (3, 4, 5), (6, 7)
TRAVERSE_UNITS = ROUNDS * TRIANGLE_UNITS


def sweep_config(image_folder, tiny_checkpoint, **overrides) -> SweepConfig:
    path, arch, classes = tiny_checkpoint
    settings = dict(
        model=arch, checkpoint=str(path), num_classes=classes, data=f"folder:{image_folder}", image_size=32,
        num_samples=N, rounds=ROUNDS, batch_size=BATCH, eval_batch_size=50, iters=ITERS, min_conf=0.0, seed=7,
    )
    return SweepConfig(**(settings | overrides))


def cli_args(config: SweepConfig, out) -> list[str]:
    """The ``lst-fast sweep`` options of ``config``."""
    return [
        "sweep", "--model", config.model, "--checkpoint", config.checkpoint, "--num-classes", str(config.num_classes),
        "--data", config.data, "--image-size", str(config.image_size), "--num-samples", str(config.num_samples),
        "--rounds", str(config.rounds), "--batch-size", str(config.batch_size), "--iters", str(config.iters),
        "--eval-batch-size", str(config.eval_batch_size),
        "--min-conf", str(config.min_conf), "--seed", str(config.seed), "--out", str(out), "--no-progress",
        "--workers", "1", "--schedule", config.schedule, "--step-size", repr(config.step_size),
    ] + ([] if config.triangles else ["--no-triangles"])


def single_threaded_env() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def unit_files(out) -> dict[str, object]:
    return {str(p.relative_to(out)): p for p in sorted((out / "units").rglob("*.safetensors"))}


def table_numbers(out) -> list[dict[str, float]]:
    """Every number of a sweep's Tables 1 and 2 and its evaluations per pair (not its wall time, which differs
    between any two runs)."""
    results = [tables.load_results(out)]
    cost = {k: v for k, v in tables.cost_table(results).numbers[0].items() if k != "seconds_per_pair"}
    return tables.distance_table(results).numbers + tables.triangle_table(results).numbers + [cost]


def assert_same_sweep(out, expected):
    """Same unit files with bit-identical tensors, and the same tables."""
    got, want = unit_files(out), unit_files(expected)
    assert sorted(got) == sorted(want)
    for name in want:
        a, b = load_file(str(got[name])), load_file(str(want[name]))
        assert sorted(a) == sorted(b), name
        for key in b:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs"
    assert table_numbers(out) == table_numbers(expected)
