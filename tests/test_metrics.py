"""Distances between LST outputs and targets (algorithm §5): L2/sqrt(D), L-inf, SSIM and LPIPS, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from lst_fast import metrics

LPIPS_LAYERS = (1, 4, 7, 9, 11)  # AlexNet feature indices after the ReLUs that LPIPS compares


def rand_images(n, size=64, seed=0):
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Every test here fails if anything tries to fetch weights."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"attempted a download: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)  # torchvision's own name


@pytest.fixture(scope="module")
def alexnet_features_file(tmp_path_factory) -> tuple[Path, dict]:
    """A stand-in for torchvision's AlexNet weights file: random weights under the same keys (features only)."""
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in torchvision.models.alexnet(weights=None).features.state_dict().items()}
    path = tmp_path_factory.mktemp("alexnet") / metrics.ALEXNET_FILE
    torch.save(state, path)
    return path, state


@pytest.fixture
def empty_hub(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    return tmp_path


def lpips_by_hand(state: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 from its definition: AlexNet features of inputs in [-1, 1] (after lpips' fixed scaling),
    unit-normalised over channels, squared differences weighted by the package's linear layers, averaged
    over space and summed over the five layers."""
    import lpips

    alexnet = torchvision.models.alexnet(weights=None).features.eval()
    alexnet.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
    lins = torch.load(Path(lpips.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def features(images):
        h, out = ((2 * images - 1) - shift) / scale, []
        for index, layer in enumerate(alexnet):
            h = layer(h)
            if index in LPIPS_LAYERS:
                out.append(h.clone())
        return out

    total = torch.zeros(len(x))
    with torch.no_grad():
        for k, (a, b) in enumerate(zip(features(x), features(y))):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            total += ((a - b) ** 2 * lins[f"lin{k}.model.1.weight"]).sum(1).mean((1, 2))
    return total


# ---------------------------------------------------------------------------------------------------------
# L2, L-inf, SSIM


def test_l2_linf_by_hand():
    outs = torch.full((2, 3, 4, 4), 0.5)
    tgts = outs.clone()
    tgts[0] += 0.1  # every pixel off by 0.1: L2 / sqrt(D) = 0.1
    tgts[1, 0, 0, 0] = 1.0  # one pixel off by 0.5: L2 / sqrt(D) = 0.5 / sqrt(48)
    d = metrics.distances(outs, tgts, which=("l2", "linf"))
    torch.testing.assert_close(d["l2"], torch.tensor([0.1, 0.5 / 48**0.5]))
    torch.testing.assert_close(d["linf"], torch.tensor([0.1, 0.5]))


def test_ssim_is_one_for_equal_images_and_drops_with_noise():
    x = rand_images(2, size=32)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    torch.testing.assert_close(metrics.distances(x, x, which="ssim")["ssim"], torch.ones(2))
    assert (metrics.distances(noisy, x, which="ssim")["ssim"] < 0.9).all()


# ---------------------------------------------------------------------------------------------------------
# LPIPS


def test_lpips_with_local_weights_matches_its_definition(alexnet_features_file):
    path, state = alexnet_features_file
    x, y = rand_images(3, seed=1), rand_images(3, seed=2)
    got = metrics.lpips(x, y, weights=path)
    torch.testing.assert_close(got, lpips_by_hand(state, x, y), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(metrics.lpips(x, x, weights=path), torch.zeros(3))
    d = metrics.distances(x, y, which=("l2", "lpips"), lpips_weights=path)
    torch.testing.assert_close(d["lpips"], got)


def test_lpips_finds_weights_in_the_torch_hub_cache(alexnet_features_file, empty_hub):
    path, _ = alexnet_features_file
    (empty_hub / "checkpoints").mkdir()
    (empty_hub / "checkpoints" / metrics.ALEXNET_FILE).write_bytes(path.read_bytes())
    assert metrics.lpips_available()
    assert metrics.available_distances() == ("l2", "linf", "ssim", "lpips")
    x, y = rand_images(2, seed=3), rand_images(2, seed=4)
    d = metrics.distances(x, y)  # the default includes LPIPS
    assert list(d) == ["l2", "linf", "ssim", "lpips"]
    torch.testing.assert_close(d["lpips"], metrics.lpips(x, y, weights=path))


def test_missing_lpips_weights_raise_a_clear_error(empty_hub):
    assert not metrics.lpips_available()
    assert metrics.available_distances() == ("l2", "linf", "ssim")
    x = rand_images(2)
    with pytest.raises(metrics.LPIPSWeightsMissing, match=metrics.ALEXNET_FILE) as info:
        metrics.distances(x, x)
    assert "lpips_weights=" in str(info.value) and str(empty_hub) in str(info.value)
    with pytest.raises(metrics.LPIPSWeightsMissing, match="does not exist"):
        metrics.lpips(x, x, weights=empty_hub / "nothing.pth")
    assert isinstance(info.value, FileNotFoundError)
    assert set(metrics.distances(x, x, which=metrics.available_distances())) == {"l2", "linf", "ssim"}


def test_lpips_rejects_a_file_that_is_not_alexnet(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="does not hold torchvision AlexNet weights"):
        metrics.lpips(rand_images(1), rand_images(1), weights=path)


def test_lpips_random_backbone_exercises_the_code_path():
    x, y = rand_images(2, seed=5), rand_images(2, seed=6)
    d = metrics.lpips(x, y, pnet_rand=True)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(metrics.lpips(x, x, pnet_rand=True), torch.zeros(2))


def test_distances_reject_bad_input():
    x = rand_images(2)
    with pytest.raises(ValueError, match="which must name some of"):
        metrics.distances(x, x, which=("l3",))
    with pytest.raises(ValueError, match="tgts has shape"):
        metrics.distances(x, rand_images(1))
    with pytest.raises(TypeError, match="must be a path"):
        metrics.lpips(x, x, weights=3)
    with pytest.raises(TypeError, match="pnet_rand must be a bool"):
        metrics.lpips(x, x, pnet_rand=1)
