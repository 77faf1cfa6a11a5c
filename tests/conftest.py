"""Shared fixtures. Models here are small so that the whole suite runs on 2 CPU cores."""

import pytest
import torch

from lst_fast import data, models


@pytest.fixture(scope="session")
def embedded_model():
    """The offline EfficientNet-Lite0 and its normaliser (loaded once per test session)."""
    return models.load_embedded()


@pytest.fixture(scope="session")
def photos():
    """The four bundled photos of the spec's section 7, (4, 3, 224, 224) in [0, 1]."""
    return data.load_embedded_photos()[0]


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
