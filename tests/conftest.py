"""Shared fixtures. Models here are small so that the whole suite runs on 2 CPU cores."""

import pytest
import torch

from lst_fast import data, models
from lst_fast.sweep import run_sweep

from helpers import sweep_config


@pytest.fixture(scope="session")
def embedded_model():
    """The offline EfficientNet-Lite0 and its normaliser (loaded once per test session)."""
    return models.load_embedded()


@pytest.fixture(scope="session")
def photos():
    """The four bundled photos of the spec's section 7, (4, 3, 224, 224) in [0, 1]."""
    return data.load_embedded_photos()[0]


# --- sweep fixtures (tests/test_sweep.py, tests/test_cli.py) ------------------------------------------------

SWEEP_ARCH = "test_efficientnet"  # timm's tiny test network (~0.1 M parameters), fast at 32x32


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A folder of 10 random RGB images of assorted sizes (PNG and JPEG), for folder/ImageNet-style data."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(10):
        h, w = 36 + 2 * i, 48 - i
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(array).save(root / f"img_{i:02d}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A seeded random-init ``test_efficientnet`` with 10 classes, saved as safetensors: (path, arch, classes)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(SWEEP_ARCH, pretrained=False, num_classes=10)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, SWEEP_ARCH, 10


@pytest.fixture
def one_thread():
    """Single-threaded torch for the test (results compared bit for bit with single-threaded subprocesses)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reference_sweep(image_folder, tiny_checkpoint, tmp_path_factory):
    """One uninterrupted, single-process, single-threaded run of the test sweep: (config, folder, report)."""
    config = sweep_config(image_folder, tiny_checkpoint)
    out = tmp_path_factory.mktemp("reference_sweep")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_sweep(config, out, workers=1, progress=False)
    finally:
        torch.set_num_threads(before)
    return config, out, report
