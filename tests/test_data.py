"""Data sets of a sweep: spec parsing, ImageNet-style folders, CIFAR-10, plain folders, the bundled photos,
and loading groups of images in worker processes."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lst_fast import data


def _save(path, rng, size=(40, 50)):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return array


def test_parse_data_spec(tmp_path):
    assert data.parse_data_spec("embedded") == data.DataSpec("embedded")
    spec = data.parse_data_spec(f"folder:{tmp_path}")
    assert spec.kind == "folder" and spec.root == tmp_path.resolve()
    assert str(spec) == f"folder:{tmp_path.resolve()}"


@pytest.mark.parametrize(
    "text, error, match",
    [
        ("imagenette", ValueError, "unknown data 'imagenette'"),
        ("imagenet", ValueError, "needs a folder"),
        ("embedded:/x", ValueError, "takes no folder"),
        ("cifar10:/no/such/folder", FileNotFoundError, "does not exist"),
        (3, TypeError, "data must be a string"),
    ],
)
def test_parse_data_spec_rejects(text, error, match):
    with pytest.raises(error, match=match):
        data.parse_data_spec(text)


def test_folder_dataset_matches_preprocess(tmp_path):
    rng = np.random.default_rng(1)
    arrays = [_save(tmp_path / "b.png", rng, (60, 40)), _save(tmp_path / "sub" / "a.png", rng, (30, 70))]
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = data.open_dataset(f"folder:{tmp_path}", image_size=32)
    assert len(dataset) == 2  # sorted by path: b.png, sub/a.png; the text file is ignored
    for k, array in enumerate(arrays):
        image, label = dataset[k]
        assert label == data.UNLABELLED
        expected = data.preprocess(array, resize=round(32 * 256 / 224), crop=32)
        torch.testing.assert_close(image, expected, rtol=0, atol=0)
        assert image.shape == (3, 32, 32)


def test_default_image_size_is_imagenet_evaluation(tmp_path):
    _save(tmp_path / "x.png", np.random.default_rng(2), (300, 260))
    image, _ = data.open_dataset(f"folder:{tmp_path}")[0]
    assert image.shape == (3, 224, 224) and 0 <= image.min() and image.max() <= 1
    assert data.crop_and_resize(224) == (256, 224)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        data.open_dataset(f"folder:{tmp_path}")


def test_imagenet_class_folders_use_imagenet_indices(tmp_path):
    rng = np.random.default_rng(3)
    # Only two classes present: their labels must still be the ImageNet-1k indices, not 0 and 1.
    _save(tmp_path / "val" / "n01443537" / "x1.JPEG", rng)  # 1 goldfish
    _save(tmp_path / "val" / "n01443537" / "x2.JPEG", rng)
    _save(tmp_path / "val" / "n15075141" / "y.JPEG", rng)  # 999 toilet tissue
    dataset = data.open_dataset(f"imagenet:{tmp_path}", image_size=32)  # ROOT/val layout
    assert [dataset[i][1] for i in range(len(dataset))] == [1, 1, 999]


def test_imagenet_flat_validation_folder(tmp_path):
    rng = np.random.default_rng(4)
    _save(tmp_path / "ILSVRC2012_val_00000001.JPEG", rng)  # label 65 in the official ground truth
    _save(tmp_path / "ILSVRC2012_val_00000002.JPEG", rng)  # label 970
    dataset = data.open_dataset(f"imagenet:{tmp_path}", image_size=32)
    assert [dataset[0][1], dataset[1][1]] == [65, 970]


def test_imagenet_rejects_other_layouts(tmp_path):
    _save(tmp_path / "cats" / "a.png", np.random.default_rng(5))
    with pytest.raises(ValueError, match="'cats' is not the WordNet id"):
        data.open_dataset(f"imagenet:{tmp_path}")
    with pytest.raises(ValueError, match="not an ImageNet folder"):
        _save(tmp_path / "flat" / "photo.png", np.random.default_rng(5))
        data.open_dataset(f"imagenet:{tmp_path / 'flat'}")


def _write_cifar(root, images, labels):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # the python version stores CHW rows
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": flat, "labels": list(labels)}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def test_cifar10_test_split(tmp_path, monkeypatch):
    # torchvision checks the MD5 sums of the real archive's files; these hand-made files cannot match them.
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    _write_cifar(tmp_path, images, [3, 1, 4])
    dataset = data.open_dataset(f"cifar10:{tmp_path}")
    assert len(dataset) == 3
    image, label = dataset[2]
    assert label == 4 and image.shape == (3, 32, 32)
    torch.testing.assert_close(image, torch.from_numpy(images[2]).permute(2, 0, 1).float() / 255)
    # the folder itself may be named too, and a size other than 32 resizes
    resized = data.open_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", image_size=16)
    assert resized[0][0].shape == (3, 16, 16)


def test_cifar10_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 under"):
        data.open_dataset(f"cifar10:{tmp_path}")


def test_embedded_dataset_is_the_bundled_photos():
    dataset = data.open_dataset("embedded")
    assert len(dataset) == len(data.EMBEDDED_PHOTOS)
    image, label = dataset[1]
    expected, _ = data.load_embedded_photos([data.EMBEDDED_PHOTOS[1]])
    assert label == data.UNLABELLED
    torch.testing.assert_close(image, expected[0], rtol=0, atol=0)


def test_group_loader_in_worker_processes(image_folder):
    dataset = data.open_dataset(f"folder:{image_folder}", image_size=16)
    groups = [[3, 1, 4], [1, 5]]
    batches = list(data.group_loader(dataset, groups, workers=2))
    assert len(batches) == 2
    for group, (images, labels) in zip(groups, batches):
        torch.testing.assert_close(images, torch.stack([dataset[i][0] for i in group]), rtol=0, atol=0)
        assert labels.tolist() == [data.UNLABELLED] * len(group)


def test_group_loader_rejects_bad_workers(image_folder):
    dataset = data.open_dataset(f"folder:{image_folder}", image_size=16)
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        data.group_loader(dataset, [[0]], workers=-1)
