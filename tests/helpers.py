"""Helpers shared by several test modules (plain functions; fixtures live in conftest.py): a tiny CNN, test
images, and running the reference and fast loops side by side."""

import torch

import lst_fast
from lst_fast import reference


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
