"""Model loading by name: timm (normalisation from pretrained_cfg), local checkpoints, RobustBench, overrides."""

import socket
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
    with pytest.raises(ValueError) as err:
        models.load_model(arch, checkpoint=path, num_classes=5)
    assert str(err.value) == (
        f"checkpoint {str(path)!r} does not fit timm's {arch}: 2 keys of another shape (classifier.weight (10, 256) "
        "in the file, (5, 256) in the model, classifier.bias (10,) in the file, (5,) in the model); its classifier "
        "has 10 classes: pass num_classes=10 (--num-classes)"
    )


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


# --- checkpoints that are not what they should be: one line naming the file --------------------------------------


def test_text_checkpoint_is_refused_by_name(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(ValueError) as err:
        models.load_model("test_efficientnet", checkpoint=path)
    assert str(err.value) == (f"checkpoint {str(path)!r} cannot be read as a torch state dict: it is not a file "
                              "written by torch.save (those start with a zip or pickle header, it starts b'thes')")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="'.*empty.safetensors' cannot be read as a safetensors state dict: "):
        models.load_state_dict(tmp_path / "empty.safetensors")


def test_pickled_whole_model_is_refused_by_name(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match="holds Python objects besides tensors .*save model.state_dict"):
        models.load_state_dict(path)


def test_state_dict_with_wrong_keys_names_some_of_them(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"module.fc.weight": torch.zeros(3, 3), "module.fc.bias": torch.zeros(3)}, path)
    with pytest.raises(ValueError) as err:
        models.load_model("test_efficientnet", checkpoint=path)
    message = str(err.value)
    assert message.startswith(f"checkpoint {str(path)!r} does not fit timm's test_efficientnet: ")
    n_keys = len(timm.create_model("test_efficientnet").state_dict())
    assert f"{n_keys} missing keys (conv_stem.weight, bn1.weight, bn1.bias, ...)" in message
    assert "2 unexpected keys (module.fc.weight, module.fc.bias)" in message
    assert message.endswith(
        "its keys start with 'module.' (saved from DataParallel/DDP): save model.module.state_dict()")


@pytest.mark.parametrize("content, said", [
    ("text", "cannot be read as a torch state dict: it is not a file written by torch.save"),
    ("wrong keys", "does not fit timm's test_efficientnet: 88 missing keys (conv_stem.weight, "),
])
def test_bad_checkpoint_is_one_line_and_exit_2_on_the_command_line(image_folder, tmp_path, capsys, content, said):
    from lst_fast import cli

    path = tmp_path / "bad.pth"
    if content == "text":
        path.write_text("hello\n")
    else:
        torch.save({"foo.weight": torch.zeros(3)}, path)
    out = tmp_path / "out"
    code = cli.main(["sweep", "--model", "test_efficientnet", "--checkpoint", str(path), "--data", str(image_folder),
                     "--out", str(out), "--num-samples", "3", "--rounds", "2", "--no-progress"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and err[-1].startswith(f"lst-fast sweep: error: checkpoint {str(path)!r} ") and said in err[-1]
    assert not out.exists()


# --- pretrained weights without network access -------------------------------------------------------------------


@pytest.fixture
def hub_unreachable(tmp_path, monkeypatch):
    """An empty Hugging Face and torch hub cache, and a hub endpoint that refuses connections (a port just freed)."""
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    return tmp_path / "hf_cache"


def test_pretrained_weights_not_cached_and_hub_unreachable(hub_unreachable):
    with pytest.raises(models.WeightsNotFound) as err:
        models.load_model("test_efficientnet")
    assert str(err.value) == (
        "the pretrained weights of 'test_efficientnet' (timm/test_efficientnet.r160_in1k) are not in the Hugging Face "
        f"cache ({hub_unreachable}) and 127.0.0.1 cannot be reached: pass a local state dict (--checkpoint PATH), use "
        "random weights (--no-pretrained), or copy the weights into that cache from a machine with network access"
    )
    assert isinstance(err.value, FileNotFoundError)  # one line, exit status 2 on the command line


def test_pretrained_weights_not_cached_in_offline_mode(hub_unreachable, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(models.WeightsNotFound, match="are not in the Hugging Face cache .* and Hugging Face's offline "
                       "mode is on"):
        models.load_model("test_efficientnet")


def test_cached_pretrained_weights_load_without_the_hub(hub_unreachable):
    """timm's own cache layout, written by hand: the weights are read from it (offline mode just for the load)."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    torch.manual_seed(3)
    saved = timm.create_model("test_efficientnet").state_dict()
    snapshot = hub_unreachable / "models--timm--test_efficientnet.r160_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in saved.items()}, str(snapshot / "model.safetensors"))
    (hub_unreachable / "models--timm--test_efficientnet.r160_in1k" / "refs").mkdir()
    (hub_unreachable / "models--timm--test_efficientnet.r160_in1k" / "refs" / "main").write_text("0" * 40)

    model, _ = models.load_model("test_efficientnet")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert constants.HF_HUB_OFFLINE is False  # restored


def test_no_pretrained_sweep_says_so_once(image_folder, tmp_path, capsys, one_thread):
    """A whole (tiny) sweep on random weights: one warning line, at the start."""
    from lst_fast import cli

    out = tmp_path / "random"
    code = cli.main(["sweep", "--model", "test_efficientnet", "--no-pretrained", "--data", f"folder:{image_folder}",
                     "--out", str(out), "--image-size", "16", "--num-samples", "3", "--rounds", "2", "--batch-size",
                     "3", "--iters", "1", "--min-conf", "0", "--no-progress", "--no-triangles", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 0, err
    warned = [line for line in err.splitlines() if "random weights" in line]
    assert warned == ["lst-fast sweep: warning: --no-pretrained: test_efficientnet runs on random weights (seeded "
                      "by --seed), not a trained classifier"]
    assert (out / "units" / "traverse" / "r001_b00000.safetensors").is_file()
