"""Model loading by name: timm (normalisation from pretrained_cfg), local checkpoints, RobustBench, overrides."""

import sys

import pytest
import timm
import torch

from lst_fast import models


def test_timm_model_normalisation_comes_from_pretrained_cfg():
    model, normalizer = models.load_model("test_efficientnet", pretrained=False, num_classes=7)
    cfg = model.pretrained_cfg
    assert normalizer.mean.flatten().tolist() == pytest.approx(list(cfg["mean"]))
    assert normalizer.std.flatten().tolist() == pytest.approx(list(cfg["std"]))
    assert not model.training
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_normalisation_override():
    _, normalizer = models.load_model("test_vit", pretrained=False, normalization=((0.1, 0.2, 0.3), (1, 2, 4)))
    x = torch.ones(1, 3, 2, 2)
    torch.testing.assert_close(normalizer(x)[0, :, 0, 0], torch.tensor([0.9, 0.4, 0.175]))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_round_trip(tiny_checkpoint, tmp_path, suffix):
    path, arch, classes = tiny_checkpoint
    if suffix == ".pth":  # a torch file with the common {"state_dict": ...} wrapper
        from safetensors.torch import load_file

        wrapped = tmp_path / "tiny.pth"
        torch.save({"state_dict": load_file(str(path))}, wrapped)
        path = wrapped
    model, _ = models.load_model(arch, checkpoint=path, num_classes=classes)
    torch.manual_seed(0)
    expected = timm.create_model(arch, pretrained=False, num_classes=classes).eval()  # same seed as the fixture
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected(x), rtol=0, atol=0)


def test_checkpoint_with_wrong_head_is_refused(tiny_checkpoint):
    path, arch, _ = tiny_checkpoint
    with pytest.raises(RuntimeError, match="size mismatch"):
        models.load_model(arch, checkpoint=path, num_classes=5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(name="resnet_9000"), ValueError, "unknown model 'resnet_9000'"),
        (dict(name=""), TypeError, "name must be a model name"),
        (dict(name="embedded", checkpoint="x.pth"), ValueError, "cannot be combined with the embedded model"),
        (dict(name="robustbench:Standard", num_classes=10), ValueError, "cannot be combined with a RobustBench"),
        (dict(name="test_vit", pretrained=False, num_classes=1), ValueError, "num_classes must be an int >= 2"),
        (dict(name="test_vit", checkpoint="/no/such.pth"), FileNotFoundError, "does not exist"),
        (dict(name="robustbench:mnist/Linf/X"), ValueError, "RobustBench dataset must be one of"),
    ],
)
def test_bad_model_arguments(kwargs, error, match):
    name = kwargs.pop("name")
    with pytest.raises(error, match=match):
        models.load_model(name, **kwargs)


def test_parse_robustbench_name():
    assert models.parse_robustbench_name("robustbench:Salman2020Do_R50") == ("imagenet", "Linf", "Salman2020Do_R50")
    assert models.parse_robustbench_name("robustbench:Standard", default_dataset="cifar10") == (
        "cifar10", "Linf", "Standard")
    assert models.parse_robustbench_name("robustbench:cifar10/L2/Engstrom2019Robustness") == (
        "cifar10", "L2", "Engstrom2019Robustness")


def test_robustbench_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)
    with pytest.raises(ImportError, match="needs the robustbench package"):
        models.load_model("robustbench:cifar10/Linf/Standard")
